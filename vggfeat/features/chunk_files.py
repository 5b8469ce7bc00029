"""The finished chunks of a shard being written, kept under OUT/.partial/<shard>/ until the shard is: an
interrupted run (Ctrl-C, kill -9) loses at most one chunk's work, however large the shard.

Each chunk file appears atomically; the folder records what its chunks were made from (settings, inputs,
chunk size), so chunks of another run are dropped, never mixed in. A chunk file that does not read back as a
chunk of the shard (cut short, emptied, a FIFO, arrays of another shape) is named in a warning and computed again;
its arrays are read only after their declared sizes are checked against the file's.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.utils.files import atomic_write_bytes, atomic_write_json, load_json_file, open_regular

from .npy_rows import read_npz

log = logging.getLogger(__name__)
PARTIAL_DIR = ".partial"
IDENTITY_FILE = "identity.json"
ARRAYS = ("index", "features", "skipped_index", "skipped_reason")  # the members of a chunk .npz

Chunk = tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]  # (ok indices in the chunk, rows, [(index, reason)])


class ChunkCache:
    def __init__(self, out: Path, shard: str, identity: dict[str, Any]) -> None:
        self.folder = Path(out) / PARTIAL_DIR / shard
        try:
            same = load_json_file(self.folder / IDENTITY_FILE) == identity
        except (OSError, ValueError):
            same = False
        if not same:  # chunks of other settings, inputs or chunk size: not this shard's
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / IDENTITY_FILE, identity)

    def path(self, k: int) -> Path:
        return self.folder / f"chunk_{k:06d}.npz"

    def read(self, k: int, rows: int, dim: int) -> Chunk | None:
        """Chunk k as written, for a chunk of `rows` images with descriptors of `dim` numbers; None when it has no
        file. A file that is not such a chunk (a FIFO, cut short, emptied, damaged, arrays of another shape) is
        named in a warning and removed: the chunk is computed again."""
        path = self.path(k)
        if not path.exists():
            return None
        try:
            with open_regular(path) as f:  # a FIFO is refused, not waited on
                z = read_npz(f, os.fstat(f.fileno()).st_size, ARRAYS)
            _check_chunk(z, rows, dim)
            bad = zip(z["skipped_index"].tolist(), z["skipped_reason"].tolist(), strict=True)
            return z["index"], z["features"], list(bad)
        except Exception as e:  # whatever a damaged archive raises (zipfile's errors included): only a cache
            log.warning("%s: unreadable (%s: %s); computing that chunk again", path, type(e).__name__, e)
            path.unlink(missing_ok=True)
            return None

    def write(self, k: int, index: np.ndarray, feats: np.ndarray, bad: list[tuple[int, str]]) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            index=np.asarray(index, dtype=np.int64),
            features=np.asarray(feats, dtype=np.float32),
            skipped_index=np.array([i for i, _ in bad], dtype=np.int64),
            skipped_reason=np.array([r for _, r in bad], dtype=np.str_),
        )
        atomic_write_bytes(self.path(k), buf.getvalue())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # the last shard's chunks gone: no empty .partial left behind
        except OSError:
            pass


def _check_chunk(z: dict[str, np.ndarray], rows: int, dim: int) -> None:
    """A ValueError unless `z` holds what `write` writes for a chunk of `rows` images: each image once, either a
    row of `dim` float32 numbers or a skip reason."""
    index, feats, skipped, reasons = z["index"], z["features"], z["skipped_index"], z["skipped_reason"]
    for name, a in (("index", index), ("skipped_index", skipped)):
        if a.dtype != np.int64 or a.ndim != 1:
            raise ValueError(f"{name} is {a.dtype} of shape {a.shape}, not a list of int64")
    if feats.dtype != np.float32 or feats.shape != (len(index), dim):
        raise ValueError(f"features are {feats.dtype} of shape {feats.shape}, not float32 {(len(index), dim)}")
    if reasons.dtype.kind != "U" or reasons.shape != skipped.shape:
        raise ValueError(f"skipped_reason is {reasons.dtype} of shape {reasons.shape} for {len(skipped)} images")
    if not np.array_equal(np.sort(np.concatenate([index, skipped])), np.arange(rows)):
        raise ValueError(f"index and skipped_index do not name each of the chunk's {rows} images once")
