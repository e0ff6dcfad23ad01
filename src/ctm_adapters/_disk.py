"""Disk usage of directory trees, a hard-linked file counted once."""

from __future__ import annotations

import os
from collections.abc import Iterable


def tree_usage(roots: Iterable[tuple[str, str]]) -> tuple[dict[str, int], int]:
    """Walk each ``(key, path)`` and return bytes per key and the grand total.

    A file reached through several hard links (conda links packages from its cache into every
    environment) counts once within each key's figure (what ``du`` says of that folder alone),
    and once in the grand total however many keys reach it. Symlinks are not followed. Sizes
    are allocated bytes (``st_blocks * 512``).
    """
    seen_anywhere: set[tuple[int, int]] = set()
    per_key: dict[str, int] = {}
    total = 0
    for key, root in roots:
        used = 0
        seen_here: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*filenames, *dirnames):
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                size = st.st_blocks * 512
                if st.st_nlink > 1:
                    ident = (st.st_dev, st.st_ino)
                    if ident in seen_here:
                        continue
                    seen_here.add(ident)
                    if ident in seen_anywhere:
                        used += size
                        continue
                    seen_anywhere.add(ident)
                used += size
                total += size
        per_key[key] = used
    return per_key, total
