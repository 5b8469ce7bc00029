"""Which inputs a feature store was made from, beyond their paths: each file's size and modification time
(and, on request, its sha256), so a rerun notices an image replaced at the same path.

A changed input is re-extracted, not refused: each shard records its inputs' identities, and a rerun redoes
the shards whose inputs changed (features.extract).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from vggfeat.utils.files import sha256_file

log = logging.getLogger(__name__)

Identity = list | None  # [size, mtime_ns] or [size, mtime_ns, sha256]; None for a file that cannot be read


def input_identities(paths: Sequence[str], content_hash: bool = False) -> list[Identity]:
    """Size and mtime (ns) of every input, plus its sha256 with `content_hash` (reads every file once)."""

    out: list[Identity] = []
    for p in paths:
        try:
            st = os.stat(p)
            ident: list[int | str] = [st.st_size, st.st_mtime_ns]
            if content_hash:
                ident.append(sha256_file(p))
            out.append(ident)
        except OSError:
            out.append(None)  # reported as unreadable when it is decoded
    return out


def same_input(old: Identity, new: Identity) -> bool:
    """Equal sizes and, when both carry a content hash, equal hashes (a touched but identical file is the
    same input); otherwise equal mtimes."""
    if old is None or new is None:
        return old == new
    if old[0] != new[0]:
        return False
    if len(old) > 2 and len(new) > 2:
        return old[2] == new[2]
    return old[1] == new[1]
