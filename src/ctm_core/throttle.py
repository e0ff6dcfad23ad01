"""Login throttling: when a run of failed logins blocks a (username, address) pair or an address.

Failures are counted per (username, client address) pair and per address, never per username
alone: an attacker can then lock out only the pairs and the address they use, and the owner of
an account logs in from any address of theirs that has no recent failures.

A key (pair or address) is locked out when ``limit`` of its failures fall within ``window``;
the k-th lockout in the remembered past lasts ``window × 2^(k-1)`` (at most ``cap``), counted
from the failure that caused it. Attempts during a lockout are refused without a password
check and are not counted, so the stored failures of a key stay few (at most ``limit`` per
lockout), and replaying them is cheap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import datetime, timedelta


def lockout_end(
    failures: Iterable[datetime], *, limit: int, window: timedelta, cap: timedelta
) -> datetime | None:
    """When the latest lockout that ``failures`` (of one key, any order) caused ends, or None
    when they caused none."""
    recent: list[datetime] = []
    lockouts = 0
    until: datetime | None = None
    for at in sorted(failures):
        if until is not None and at < until:
            continue  # booked by an attempt that passed its check just before the lockout
        recent = [t for t in recent if t > at - window]
        recent.append(at)
        if len(recent) >= limit:
            lockouts += 1
            until = at + min(window * 2 ** min(lockouts - 1, 30), cap)
            recent = []
    return until


def client_key(address: str) -> str:
    """The address that failures are counted under: an IPv6 client by its /64 network (one
    host usually has the whole of it), an IPv4-mapped IPv6 address as IPv4, anything else (a
    unix socket's name, "unknown") as given."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:128]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
