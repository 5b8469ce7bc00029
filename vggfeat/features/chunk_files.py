"""The finished chunks of a shard being written, kept under OUT/.partial/<shard>/ until the shard is: an
interrupted run (Ctrl-C, kill -9) loses at most one chunk's work, however large the shard.

Each chunk file appears atomically; the folder records what its chunks were made from (settings, inputs,
chunk size), so chunks of another run are dropped, never mixed in. A chunk file that does not read back (cut
short, emptied) is named in a warning and computed again.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.utils.files import atomic_write_bytes, atomic_write_json, load_json_file

log = logging.getLogger(__name__)
PARTIAL_DIR = ".partial"
IDENTITY_FILE = "identity.json"

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

    def read(self, k: int) -> Chunk | None:
        path = self.path(k)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                bad = list(zip(z["skipped_index"].tolist(), z["skipped_reason"].tolist(), strict=True))
                return z["index"], z["features"], bad
        except (OSError, ValueError, EOFError, KeyError) as e:  # cut short, emptied, not an npz
            log.warning("%s: unreadable (%s); computing that chunk again", path, e)
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
