"""Where indexed vectors come from: a vggfeat store (features.npy + manifest.json) or an embedding-reader-style
folder (emb/*.npy + meta/*.parquet with a `path` column, e.g. clip-retrieval's output), read in blocks.

Both are read by the store's own reader (features.store.ShardRows over features.npy_rows): plain file reads,
never a memory map, since mapped pages count in a process's RSS and streaming a memmap through would grow the
build to the store's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.errors import VggfeatError
from vggfeat.features.npy_rows import open_npy_rows
from vggfeat.features.runtime import recorded_precision
from vggfeat.features.store import FEATURES_FILE, MANIFEST_FILE, PLAN_FILE, ShardRows, load_store
from vggfeat.utils.files import NotRegularFileError, check_regular, open_regular

PATH_BATCH_ROWS = 1 << 12  # meta rows read at a time: a few MB of paths in flight, whatever the rows
STORE_KEYS = ("models", "layer", "scales", "flip", "aggregate", "l2", "l2_parts", "snap", "fast_decode")
# the store's settings that also decide its descriptors, when present: a random net's seed, GPU-decoded pixels
SETTINGS_KEYS = ("seed", "gpu_decode")
REWRITE = "rewrite that file"


class SourceError(VggfeatError, ValueError):
    """A folder that is neither a vggfeat store nor an emb/meta folder, or whose files do not agree."""


def _natural(p: Path) -> list[Any]:
    """img_emb_2 before img_emb_10: the order clip-retrieval numbered its partitions. The name splits into text
    and runs of ASCII digits, alternately; a run compares as its number (fewer significant digits first), without
    int(), which refuses digits other than ASCII ones."""
    parts = re.split(r"([0-9]+)", p.name)
    return [(len(t.lstrip("0")), t.lstrip("0")) if i % 2 else t for i, t in enumerate(parts)]


@dataclass
class VectorSource:
    """N x D vectors in one or more .npy parts, with one path per row (read only when asked for)."""

    root: Path
    kind: str  # "store" or "emb_meta"
    rows: ShardRows
    features: dict[str, Any] = field(default_factory=dict)  # how a store's rows were made, for image queries
    _meta: list[Path] = field(default_factory=list)
    _store: Any = None  # a vggfeat FeatureStore: its absolute paths, read on first use

    @property
    def count(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        return self.rows.dim

    @property
    def nbytes(self) -> int:
        return self.count * self.dim * self.rows.dtype.itemsize

    def identity(self) -> str:
        """A sha256 of what the vectors and paths are, cheap to take: a sharded store's shards by the checksums
        its manifest recorded when they were written; other files (an older store's, an emb/meta folder's) by
        name, size and modification time. Whatever rewrites them changes it."""
        manifest = self._store.manifest if self._store is not None else {}
        if manifest.get("shards"):
            what: Any = [[s.get(k) for k in ("name", "rows", "emb_sha256", "meta_sha256")] for s in manifest["shards"]]
        else:
            files = [*self.rows.files, *self._meta] + ([self.root / MANIFEST_FILE] if self._store is not None else [])
            what = []
            for f in files:
                st = os.stat(f)
                what.append([f.name, st.st_size, st.st_mtime_ns])
        return hashlib.sha256(json.dumps([self.kind, self.dim, what]).encode()).hexdigest()

    def iter_paths(self) -> Iterator[str]:
        """One path per row, in row order, read part by part (never the whole list at once): the store's absolute
        paths, or the meta parquet files' `path` column."""
        if self._store is not None:
            yield from self._store.iter_absolute_paths()  # results open from wherever `index search` runs
            return
        import pyarrow.parquet as pq

        counts = np.diff(self.rows.offsets).tolist()
        for emb, rows, meta in zip(self.rows.files, counts, self._meta, strict=True):
            try:
                with open_regular(meta) as fh:  # a FIFO is refused, not waited on
                    f = pq.ParquetFile(fh)
                    if f.metadata.num_rows != rows:
                        raise SourceError(f"{meta}: {f.metadata.num_rows} rows but {emb.name} has {rows}")
                    # in batches: a clip-retrieval meta file holds a million rows
                    for batch in f.iter_batches(batch_size=PATH_BATCH_ROWS, columns=["path"]):
                        yield from (str(p) for p in batch.column(0).to_pylist())
            except NotRegularFileError as e:
                raise SourceError(f"{e}; {REWRITE}") from None
            except (OSError, ValueError, KeyError) as e:  # pyarrow's errors derive from these
                if isinstance(e, SourceError):
                    raise
                raise SourceError(f"{meta}: no readable `path` column ({e}); {REWRITE}") from None

    def iter_vector_blocks(
        self, block_rows: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, int]]:
        """(rows (B, D) float32, index of its first row) for rows start..stop, at most `block_rows` at a time."""
        for block, i in self.rows.blocks(block_rows, start, stop):
            yield np.ascontiguousarray(block, dtype=np.float32), i

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of the given row indices (any order), float32 (len(rows), D); a read per run of rows."""
        return np.ascontiguousarray(self.rows[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


def is_emb_meta(root: Path) -> bool:
    return (root / "emb").is_dir() and (root / "meta").is_dir()


def open_source(root: str | Path) -> VectorSource:
    """The vectors of a vggfeat store or an emb/meta folder; a one-line SourceError/StoreError otherwise."""
    root = Path(root)
    if (root / PLAN_FILE).is_file() or (root / FEATURES_FILE).is_file() or (root / MANIFEST_FILE).is_file():
        # a vggfeat store, sharded or single-file: its reader refuses an unfinished one, with its status
        fs = load_store(root)
        rows = fs.features
        assert isinstance(rows, ShardRows)  # a store on disk (only a probe's stacked store is made in memory)
        for s in range(len(rows.files)):  # every shard's header, checked now rather than hours in
            rows.part(s)
        # paths are read when the index is saved, shard by shard: the parts of a split build never read them
        settings = fs.manifest.get("settings") or {}
        features = {k: fs.manifest.get(k) for k in STORE_KEYS}
        features.update((k, settings[k]) for k in SETTINGS_KEYS if k in settings)
        # what image queries are computed in (index search), as the store's rows were
        features["precision"] = recorded_precision(settings)
        return VectorSource(root, "store", rows, features=features, _store=fs)
    if is_emb_meta(root):
        embs = sorted((root / "emb").glob("*.npy"), key=_natural)
        metas = sorted((root / "meta").glob("*.parquet"), key=_natural)
        if not embs:
            raise SourceError(f"{root / 'emb'}: no .npy files; write the embeddings there as emb/<i>.npy")
        if len(embs) != len(metas):
            raise SourceError(
                f"{root}: {len(embs)} emb/*.npy files but {len(metas)} meta/*.parquet files; each embedding "
                "file needs its metadata file (paired in sorted order)"
            )
        parts = [open_npy_rows(p, SourceError, REWRITE) for p in embs]
        for meta in metas:  # read at the end of a build: checked now rather than hours in
            check_regular(meta, "metadata file", error=SourceError)
        return VectorSource(root, "emb_meta", ShardRows.of_parts(parts, SourceError, REWRITE), _meta=metas)
    raise SourceError(
        f"{root}: neither a vggfeat store (features.npy + manifest.json) nor an emb/meta folder "
        "(emb/*.npy + meta/*.parquet); give one of those"
    )
