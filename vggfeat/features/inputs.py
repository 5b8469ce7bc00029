"""Which inputs a feature store was made from, beyond their paths: each file's size and modification time
(and, on request, its sha256), so a rerun notices an image replaced at the same path (issue 12.4).

A changed input is re-extracted, not refused: the finished store is turned back into chunk files under
OUT/.partial except the chunks holding changed inputs, and the usual resume recomputes just those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vggfeat.utils.files import sha256_file

from . import store as fs

log = logging.getLogger(__name__)

INPUTS_FILE = "inputs.json"  # in OUT/.partial: the identities the unfinished run's chunks were made from

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


def changed_inputs(old: Sequence[Identity] | None, new: Sequence[Identity]) -> list[int]:
    """Indices of the inputs that differ from what was recorded; none for a store that recorded nothing
    (made by vggfeat before 0.1.1: it cannot tell)."""
    if old is None or len(old) != len(new):
        return []
    return [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if not same_input(a, b)]


def describe_changes(paths: Sequence[str], changed: Sequence[int]) -> str:
    first = ", ".join(paths[i] for i in changed[:3])
    return f"{len(changed)} input(s) changed since they were extracted ({first}{', ...' if len(changed) > 3 else ''})"


def reopen_store(root: Path, paths: Sequence[str], chunk_size: int, changed: Sequence[int]) -> int:
    """Write the finished store's rows back as chunk files under root/.partial, except the chunks that hold
    a changed input; returns how many chunks were kept. The store's files stay in place (and loadable) until
    the resumed run assembles the new ones."""
    store = fs.load_store(root)
    skipped = {s["path"]: s["reason"] for s in store.manifest.get("skipped", [])}
    row_of = np.full(len(paths), -1, dtype=np.int64)
    r = 0
    for i, p in enumerate(paths):  # rows are the usable inputs in input order
        if p in skipped:
            continue
        if r >= len(store) or store.paths[r] != p:
            log.warning("%s: rows do not follow the inputs; re-extracting every input", root)
            return 0
        row_of[i], r = r, r + 1
    bad_chunks = {i // chunk_size for i in changed}
    fs.partial_dir(root).mkdir(parents=True, exist_ok=True)
    kept = 0
    for c_id, start in enumerate(range(0, len(paths), chunk_size)):
        if c_id in bad_chunks or fs.chunk_path(root, c_id).is_file():
            continue
        chunk = range(start, min(start + chunk_size, len(paths)))
        index = np.array([i for i in chunk if row_of[i] >= 0], dtype=np.int64)
        feats = np.asarray(store.features[row_of[index]], dtype=np.float32)
        fs.write_chunk(root, c_id, index, feats, [(i, skipped[paths[i]]) for i in chunk if row_of[i] < 0])
        kept += 1
    return kept
