"""Disk usage of directory trees, a hard-linked file counted once."""

from __future__ import annotations

import os
from collections.abc import Iterable


def tree_usage(roots: Iterable[tuple[str, str]]) -> tuple[dict[str, int], int]:
    """Walk each ``(key, path)`` and return bytes per key and the grand total.

    A file reached through several hard links (conda links packages from its cache into every
    environment) is counted once in the total, and once per key in the per-key figure, where the
    first key to reach it gets it. Symlinks are not followed. Sizes are allocated bytes
    (``st_blocks * 512``), what ``du`` reports.
    """
    seen: set[tuple[int, int]] = set()
    per_key: dict[str, int] = {}
    total = 0
    for key, root in roots:
        used = 0
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*filenames, *dirnames):
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                ident = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    if ident in seen:
                        continue
                    seen.add(ident)
                used += st.st_blocks * 512
        per_key[key] = used
        total += used
    return per_key, total
