"""Where indexed vectors come from: a vggfeat store (features.npy + manifest.json) or an embedding-reader-style
folder (emb/*.npy + meta/*.parquet with a `path` column, e.g. clip-retrieval's output), read in blocks.

Blocks are read with plain file reads, never a memory map: mapped pages count in a process's RSS, so
streaming a memmap through would grow the build to the store's size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.errors import VggfeatError
from vggfeat.features.store import FEATURES_FILE, MANIFEST_FILE, PLAN_FILE, StoreError, emb_file, load_store

PATH_BATCH_ROWS = 1 << 15  # meta rows read at a time
STORE_KEYS = ("models", "layer", "scales", "flip", "aggregate", "l2", "l2_parts", "snap", "fast_decode")


class SourceError(VggfeatError, ValueError):
    """A folder that is neither a vggfeat store nor an emb/meta folder, or whose files do not agree."""


@dataclass(frozen=True)
class _NpyPart:
    path: Path
    offset: int  # bytes before row 0
    rows: int
    dim: int
    dtype: np.dtype


def _npy_part(path: Path) -> _NpyPart:
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version} (write it with numpy's np.save)")
            shape, fortran, dtype = read(f)  # the header only: no data is read
            offset = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise SourceError(f"{path}: unreadable .npy ({e}); rewrite that file") from None
    if len(shape) != 2 or fortran or dtype.kind != "f":
        raise SourceError(f"{path}: holds a {dtype} array of shape {shape}; need a C-order (N, D) float matrix")
    size = path.stat().st_size
    if size < offset + shape[0] * shape[1] * dtype.itemsize:
        raise SourceError(f"{path}: truncated ({size} bytes for {shape[0]} x {shape[1]} {dtype}); rewrite that file")
    return _NpyPart(path, offset, int(shape[0]), int(shape[1]), dtype)


def _natural(p: Path) -> list[Any]:
    """img_emb_2 before img_emb_10: the order clip-retrieval numbered its partitions."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


@dataclass
class VectorSource:
    """N x D vectors in one or more .npy parts, with one path per row (read only when asked for)."""

    root: Path
    kind: str  # "store" or "emb_meta"
    parts: list[_NpyPart]
    dim: int
    features: dict[str, Any] = field(default_factory=dict)  # a store's protocol, for image queries
    _meta: list[Path] = field(default_factory=list)
    _store: Any = None  # a vggfeat FeatureStore: its absolute paths, read on first use

    @property
    def count(self) -> int:
        return sum(p.rows for p in self.parts)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(p.rows * self.dim * p.dtype.itemsize for p in self.parts)

    def iter_paths(self) -> Iterator[str]:
        """One path per row, in row order, read part by part (never the whole list at once): the store's absolute
        paths, or the meta parquet files' `path` column."""
        if self._store is not None:
            yield from self._store.iter_absolute_paths()  # results open from wherever `index search` runs
            return
        import pyarrow.parquet as pq

        for part, meta in zip(self.parts, self._meta, strict=True):
            try:
                f = pq.ParquetFile(meta)
                if f.metadata.num_rows != part.rows:
                    raise SourceError(f"{meta}: {f.metadata.num_rows} rows but {part.path.name} has {part.rows}")
                # in batches: a clip-retrieval meta file holds a million rows
                for batch in f.iter_batches(batch_size=PATH_BATCH_ROWS, columns=["path"]):
                    yield from (str(p) for p in batch.column(0).to_pylist())
            except (OSError, ValueError, KeyError) as e:  # pyarrow's errors derive from these
                if isinstance(e, SourceError):
                    raise
                raise SourceError(f"{meta}: no readable `path` column ({e}); rewrite that file") from None

    def iter_vector_blocks(
        self, block_rows: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, int]]:
        """(rows (B, D) float32, index of its first row) for rows start..stop, at most `block_rows` at a time."""
        stop = self.count if stop is None else min(stop, self.count)
        base = 0
        for part in self.parts:
            lo, hi = max(start, base), min(stop, base + part.rows)
            with open(part.path, "rb") as f:
                for i in range(lo, hi, block_rows):
                    n = min(block_rows, hi - i)
                    f.seek(part.offset + (i - base) * self.dim * part.dtype.itemsize)
                    x = np.fromfile(f, dtype=part.dtype, count=n * self.dim).reshape(n, self.dim)
                    yield np.ascontiguousarray(x, dtype=np.float32), i
            base += part.rows

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of the given row indices (any order), float32 (len(rows), D); one seek per row."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        bounds = np.cumsum([0] + [p.rows for p in self.parts])
        which = np.searchsorted(bounds, rows[order], side="right") - 1
        handles: dict[int, Any] = {}
        try:
            for j, w in zip(order.tolist(), which.tolist(), strict=True):
                part = self.parts[w]
                f = handles.get(w) or handles.setdefault(w, open(part.path, "rb"))  # noqa: SIM115
                f.seek(part.offset + (int(rows[j]) - int(bounds[w])) * self.dim * part.dtype.itemsize)
                out[j] = np.fromfile(f, dtype=part.dtype, count=self.dim)
        finally:
            for f in handles.values():
                f.close()
        return out


def is_emb_meta(root: Path) -> bool:
    return (root / "emb").is_dir() and (root / "meta").is_dir()


def open_source(root: str | Path) -> VectorSource:
    """The vectors of a vggfeat store or an emb/meta folder; a one-line SourceError/StoreError otherwise."""
    root = Path(root)
    if (root / PLAN_FILE).is_file():  # a sharded vggfeat store: its reader refuses an unfinished one, with its status
        fs = load_store(root)
        parts = [_npy_part(emb_file(root, name)) for name in fs.shard_names]
        # paths are read when the index is saved, shard by shard: the parts of a split build never read them
        return VectorSource(
            root, "store", parts, fs.dim, features={k: fs.manifest.get(k) for k in STORE_KEYS}, _store=fs
        )
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
        parts = [_npy_part(p) for p in embs]
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise SourceError(f"{root / 'emb'}: the .npy files have different dimensions {sorted(dims)}")
        return VectorSource(root, "emb_meta", parts, dims.pop(), _meta=metas)
    if not (root / FEATURES_FILE).is_file() and not (root / MANIFEST_FILE).is_file():
        raise SourceError(
            f"{root}: neither a vggfeat store (features.npy + manifest.json) nor an emb/meta folder "
            "(emb/*.npy + meta/*.parquet); give one of those"
        )
    fs = load_store(root)  # validates the manifest against features.npy (StoreError)
    part = _npy_part(root / FEATURES_FILE)
    if part.rows != len(fs):
        raise StoreError(f"{root}: {FEATURES_FILE} has {part.rows} rows but the manifest lists {len(fs)} images")
    return VectorSource(root, "store", [part], fs.dim, features={k: fs.manifest.get(k) for k in STORE_KEYS}, _store=fs)
