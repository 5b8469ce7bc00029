"""What a cached result was made from, beyond its inputs' paths: each file's size and modification time (and,
on request, its sha256), so a rerun notices an image replaced at the same path.

A changed input is recomputed, not refused: a feature store's shards record their inputs' identities and a rerun
redoes the shards whose inputs changed (features.extract); mean_rgb.json records
a digest of its images' paths and identities (data.stats).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence

from vggfeat.utils.files import sha256_file, sha256_json

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


def listing_digest(paths: Sequence[str], content_hash: bool = False) -> str:
    """A sha256 of the paths in order with each file's size and mtime (with `content_hash`, its size and sha256:
    a file only touched is the same input). It changes when a file is added, removed, renamed or replaced."""
    ids = input_identities(paths, content_hash)
    if content_hash:
        ids = [i if i is None else [i[0], i[2]] for i in ids]
    return sha256_json([[os.fsencode(p).hex(), i] for p, i in zip(paths, ids, strict=True)])


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


class PathsHash:
    """The sha256 of paths joined by newlines (a store's `inputs_sha256`), fed one path at a time, so a listing
    of 10^8 paths is hashed without being held."""

    def __init__(self) -> None:
        self._digest, self.count = hashlib.sha256(), 0

    def add(self, path: str) -> None:
        self._digest.update(b"\n" if self.count else b"")
        self._digest.update(path.encode("utf-8", "surrogateescape"))
        self.count += 1

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def paths_sha256(paths: Iterable[str]) -> str:
    hashed = PathsHash()
    for p in paths:
        hashed.add(p)
    return hashed.hexdigest()
