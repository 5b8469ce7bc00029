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
            ident = [st.st_size, st.st_mtime_ns]
            if content_hash:
                ident.append(sha256_file(p))
        except OSError:
            ident = None  # reported as unreadable when it is decoded
        out.append(ident)
    return out
