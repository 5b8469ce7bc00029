"""Reading a feature store without loading it: a folder of shards, each `emb/<i>.npy` (N_i x D) beside
`meta/<i>.parquet` (one row per descriptor, same order: path, key, size, mtime_ns[, sha256]), and a small
`manifest.json` (protocol, models, weight hashes, the shard list with counts and checksums; no per-row data).

Rows are read per shard by index or in bounded blocks (plain reads: npy_rows); paths are read from the parquet
files only when asked for. Stores of the single-file format before shards (`features.npy` + a manifest
listing every path) still load, read-only; `vggfeat store convert` rewrites one.
"""

from __future__ import annotations

import heapq
import os
import reprlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.utils.files import load_json_file, open_regular, read_json
from vggfeat.utils.inputs import input_identities, paths_sha256, same_input

from . import shard_files
from .npy_rows import NpyRows, open_npy_rows
from .store_layout import (
    BLOCK_ROWS,
    DONE_DIR,
    EMB_DIR,
    FEATURES_FILE,
    FORMAT,
    MANIFEST_FILE,
    META_DIR,
    PLAN_FILE,
    StoreError,
    decode_path,
    emb_file,
    meta_file,
)

REBUILD = "rerun `vggfeat extract IMAGES -o STORE --overwrite` to rebuild it"

__all__ = [
    "BLOCK_ROWS",
    "DONE_DIR",
    "EMB_DIR",
    "FEATURES_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "META_DIR",
    "PLAN_FILE",
    "FeatureStore",
    "ShardRows",
    "StoreError",
    "is_complete_store",
    "is_single_file_store",
    "load_store",
]


class ShardRows:
    """The rows of every shard as one (N, D) array-like: `rows[i]`, `rows[a:b]`, `rows[index_array]` read only
    those rows, with plain reads (npy_rows: never a memory map); `np.asarray(rows)` reads all of them. Each part's
    header is read on first use and must hold the rows, dimension and dtype recorded for it."""

    def __init__(
        self,
        files: list[Path],
        counts: list[int],
        dim: int,
        dtype: str | np.dtype,
        error: Callable[[str], Exception] = StoreError,
        fix: str = REBUILD,
    ) -> None:
        self.files, self.dim, self.dtype = files, dim, np.dtype(dtype)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._error, self._fix = error, fix
        self._parts: dict[int, NpyRows] = {}

    @classmethod
    def of_parts(cls, parts: list[NpyRows], error: Callable[[str], Exception], fix: str) -> ShardRows:
        """Rows of .npy files already opened (their headers are what they hold), of one dimension."""
        dims = sorted({p.dim for p in parts})
        if len(dims) > 1:
            raise error(f"{parts[0].path.parent}: the .npy files have different dimensions {dims}; {fix}")
        dim = dims[0] if dims else 0
        dtype = np.result_type(*[p.dtype for p in parts]) if parts else np.dtype(np.float32)  # rows come out in it
        rows = cls([p.path for p in parts], [p.rows for p in parts], dim, dtype, error, fix)
        rows._parts = dict(enumerate(parts))
        return rows

    def part(self, s: int) -> NpyRows:
        """Shard s's rows, its header checked against what the manifest records for it."""
        if s not in self._parts:
            p = open_npy_rows(self.files[s], self._error, self._fix)
            want = (int(self.offsets[s + 1] - self.offsets[s]), self.dim, self.dtype)
            if (p.rows, p.dim, p.dtype) != want:
                raise self._error(
                    f"{p.path}: holds {p.rows} x {p.dim} {p.dtype} but {want[0]} x {want[1]} {want[2]} are recorded "
                    f"for it; {self._fix}"
                )
            self._parts[s] = p
        return self._parts[s]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.offsets[-1]), self.dim

    ndim = 2

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            s = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.part(s).read(i - int(self.offsets[s]), i - int(self.offsets[s]) + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._range(start, stop)
            key = np.arange(start, stop, step)
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64).ravel()
        index = np.where(index < 0, index + n, index)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(index), self.dim), dtype=self.dtype)
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == s)
            out[where] = self.part(s).take(index[where] - self.offsets[s])
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        blocks = [b for b, _ in self.blocks(max(1, stop - start), start, stop)]
        return np.concatenate(blocks) if blocks else np.empty((0, self.dim), dtype=self.dtype)

    def blocks(self, rows: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """(rows as stored, index of the first) for rows start..stop, at most `rows` at a time and never across two
        shards: memory for one block, whatever the store's size."""
        stop = len(self) if stop is None else min(stop, len(self))
        for s in range(len(self.files)):
            base, end = int(self.offsets[s]), int(self.offsets[s + 1])
            lo, hi = max(start, base), min(stop, end)
            if lo >= hi:
                continue
            for i, block in zip(range(lo, hi, rows), self.part(s).blocks(rows, lo - base, hi - base), strict=True):
                yield block, i

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass
class FeatureStore:
    root: Path
    # (N, D), float32 or float16: a store's files read by row index, block or whole (never memory-mapped), or the
    # rows themselves for a store made in memory (probes.features.stack_stores)
    features: ShardRows | np.ndarray
    manifest: dict[str, Any]
    already_complete: bool = False  # set by extract_to_store when it found the store finished: nothing computed
    _meta_cache: dict[str, list] = field(default_factory=dict, repr=False)
    _shard_numbers: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def sharded(self) -> bool:
        return self.manifest.get("format") == FORMAT

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self.manifest.get("shards", [])]

    def shard_meta(self, name: str, columns: list[str] | None = None) -> dict[str, list]:
        """The parquet columns of one shard as lists (read on demand, one shard at a time)."""
        import pyarrow.parquet as pq

        path = meta_file(self.root, name)
        try:
            with open_regular(path) as fh:  # a FIFO is refused, not waited on
                table = pq.read_table(fh, columns=columns)
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise StoreError(f"{path}: unreadable ({e}); rerun the extraction into {self.root} to redo it") from None
        if isinstance(self.features, ShardRows):  # a row's path must be its own row's, never a neighbour's
            s = self._shard_index()[name]
            count = int(self.features.offsets[s + 1] - self.features.offsets[s])
            if table.num_rows != count:
                raise StoreError(f"{path}: holds {table.num_rows} paths but shard {name} has {count} rows; {REBUILD}")
        return table.to_pydict()

    def _shard_index(self) -> dict[str, int]:
        if not self._shard_numbers:
            self._shard_numbers.update({name: s for s, name in enumerate(self.shard_names)})
        return self._shard_numbers

    def shard_paths(self, name: str) -> list[str]:
        """The input paths of one shard's rows, as given to `vggfeat extract` (a name that is not UTF-8 as the
        file system spells it)."""
        cols = self.shard_meta(name, ["path", "path_raw"])
        return [decode_path(p, r) for p, r in zip(cols["path"], cols["path_raw"], strict=True)]

    def _column(self, name: str) -> list:
        if name not in self._meta_cache:
            values: list = []
            for shard in self.shard_names:
                values.extend(self.shard_paths(shard) if name == "path" else self.shard_meta(shard, [name])[name])
            self._meta_cache[name] = values
        return self._meta_cache[name]

    @property
    def paths(self) -> list[str]:
        """Row i's input path as given to `vggfeat extract` (read from the shards' parquet files on first use)."""
        if not self.sharded:
            return self.manifest["paths"]
        return self._column("path")

    @property
    def keys(self) -> list[str]:
        """Row i's key: the webdataset `__key__` of a tar sample, the path of a file."""
        return self._column("key") if self.sharded else self.paths

    @property
    def skipped(self) -> list[dict[str, str]]:
        """The inputs that have no row, with why: [{"path", "reason"}], in shard order."""
        if not self.sharded:
            return self.manifest.get("skipped", [])
        out: list[dict[str, str]] = []
        for name in self.shard_names:
            record = shard_files.read_done_record(self.root, name) or {}
            out.extend(record.get("skipped", []))
        return out

    @property
    def row_identities(self) -> list[list | None]:
        """Row i's input identity when extracted: [size, mtime_ns] or [size, mtime_ns, sha256]; None unknown."""
        if self.sharded:  # the parquet columns, row by row
            sizes, mtimes = self._column("size"), self._column("mtime_ns")
            hashes = self._column("sha256")  # None where --hash-inputs was not given
            return [
                None if s is None else [s, m] if h is None else [s, m, h]
                for s, m, h in zip(sizes, mtimes, hashes, strict=True)
            ]
        # the single-file format records them per input, skipped ones included, in input order; rows are the
        # usable inputs in that order, so with skipped inputs the order is rebuilt and confirmed by the recorded
        # hash of the list
        ids, skipped = self.manifest.get("input_identities"), [s["path"] for s in self.manifest.get("skipped", [])]
        unknown: list[list | None] = [None] * len(self)
        if not isinstance(ids, list) or len(ids) != len(self.paths) + len(skipped):
            return unknown
        if not skipped:
            return list(ids)
        inputs = list(heapq.merge(self.paths, skipped))  # inputs of one folder are found in sorted order
        if paths_sha256(inputs) != (self.manifest.get("settings") or {}).get("inputs_sha256"):
            return unknown
        usable = set(self.paths)
        return [ident for p, ident in zip(inputs, ids, strict=True) if p in usable]

    @property
    def absolute_paths(self) -> list[str]:
        """Row paths that open from any folder: relative ones joined to the folder extraction ran in (recorded
        as `cwd`; stores written before it was recorded keep their paths as given)."""
        return list(self.iter_absolute_paths())

    def iter_absolute_paths(self) -> Iterator[str]:
        """`absolute_paths` one at a time, read shard by shard: memory for one shard's paths, not the store's."""
        return (absolute for _, _, absolute in self._iter_rows_paths())

    def _absolute(self, path: str) -> str:
        cwd = self.manifest.get("cwd")
        return path if cwd is None or os.path.isabs(path) else os.path.join(cwd, path)

    @property
    def _shard_rows(self) -> ShardRows | None:
        """The rows by shard, for a sharded store (None for the single-file format and in-memory stores)."""
        return self.features if self.sharded and isinstance(self.features, ShardRows) else None

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def rows(self, index: Any) -> np.ndarray:
        """Rows by index (an int array, a slice), as float32."""
        return np.asarray(self.features[index], dtype=np.float32)

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(float32 rows, their paths) in store order, at most `rows` at a time: a full read in bounded memory
        (one block of rows and one shard's paths)."""
        feats, shard, paths = self.features, -1, []
        if isinstance(feats, np.ndarray):
            for i in range(0, len(feats), rows):
                yield np.asarray(feats[i : i + rows], dtype=np.float32), self.paths[i : i + rows]
            return
        for block, i in feats.blocks(rows):  # never across two shards
            s = int(np.searchsorted(feats.offsets, i, side="right")) - 1
            if s != shard:
                shard, paths = s, self.shard_paths(self.shard_names[s]) if self.sharded else self.paths
            j = i - int(feats.offsets[s])
            yield np.asarray(block, dtype=np.float32), paths[j : j + len(block)]

    def _shard_of(self, rows: ShardRows, row: int) -> int:
        return int(np.searchsorted(rows.offsets, row, side="right")) - 1

    def _iter_rows_paths(self) -> Iterator[tuple[int, str, str]]:
        """(row, path as given, absolute path) for every row, shard by shard: one shard's paths in memory."""
        rows = self._shard_rows
        shards: Iterator[tuple[int, list[str]]] = (
            ((int(rows.offsets[s]), self.shard_paths(name)) for s, name in enumerate(self.shard_names))
            if rows is not None
            else iter([(0, self.paths)])
        )
        for first, paths in shards:
            for i, p in enumerate(paths, start=first):
                yield i, p, self._absolute(p)

    def absolute_path(self, row: int) -> str:
        """Row `row`'s path as `absolute_paths` gives it, reading one shard's paths."""
        rows = self._shard_rows
        if rows is None:
            return self._absolute(self.paths[row])
        s = self._shard_of(rows, row)
        return self._absolute(self.shard_paths(self.shard_names[s])[row - int(rows.offsets[s])])

    def identities_of(self, rows: Sequence[int]) -> list[list | None]:
        """`row_identities` of `rows` only, reading the parquet columns of just the shards that hold them."""
        shard_rows = self._shard_rows
        if shard_rows is None:
            every = self.row_identities
            return [every[r] for r in rows]
        by_shard: dict[int, dict[str, list]] = {}
        out: list[list | None] = []
        for r in rows:
            s = self._shard_of(shard_rows, r)
            if s not in by_shard:
                by_shard[s] = self.shard_meta(self.shard_names[s], ["size", "mtime_ns", "sha256"])
            cols, j = by_shard[s], r - int(shard_rows.offsets[s])
            size, mtime, digest = cols["size"][j], cols["mtime_ns"][j], cols["sha256"][j]
            out.append(None if size is None else [size, mtime] if digest is None else [size, mtime, digest])
        return out

    def rows_for(self, paths: Sequence[str]) -> np.ndarray:
        """Row indices of `paths`. A store records paths as given to `vggfeat extract` (often relative to where
        it ran), so a path matches by resolved absolute path, then by its last two components (e.g.
        JPEGImages/000005.jpg, accordion/image_0001.jpg) when those are unique in the store. A path with no
        row is an error (naming why it was skipped at extraction, when it was), and so is a row whose recorded
        file is not the file at `path` (`check_row_files`): another dataset's rows never pass for these.

        The store's paths are streamed, one shard at a time, and only those whose file name is one asked for are
        resolved (a row of a corpus of 10^7 costs a string compare); only when a path finds no row that way are
        all of them resolved (a row reached through a link of another name)."""
        resolved = [str(Path(p).resolve()) for p in paths]
        wanted, tails_wanted = set(resolved), {_tail(p) for p in paths}
        names = {os.path.basename(p) for p in [*paths, *resolved]}
        lasts = {t.rsplit("/", 1)[-1] for t in tails_wanted}
        exact: dict[str, int] = {}
        tails: dict[str, int] = {}
        for every in (False, True):
            for i, p, absolute in self._iter_rows_paths():
                if not every and p.rsplit("/", 1)[-1] in lasts and (t := _tail(p)) in tails_wanted:
                    tails[t] = -1 if t in tails else i  # -1 marks an ambiguous tail
                if every or os.path.basename(absolute) in names:
                    r = str(Path(absolute).resolve())
                    if r in wanted:
                        exact[r] = i
            if wanted <= exact.keys():
                break
        rows = np.array([exact.get(r, tails.get(_tail(p), -1)) for p, r in zip(paths, resolved, strict=True)])
        rows = rows.astype(np.int64)
        missing = [p for p, i in zip(paths, rows, strict=False) if i < 0]
        if missing:
            skipped = {_tail(s["path"]): s["reason"] for s in self.skipped}
            why = skipped.get(_tail(missing[0]))
            hint = f" (skipped at extraction: {why})" if why else ""
            # a skipped image cannot be extracted again as it is: its fix is the image (or the scales)
            fix = (
                "replace or remove that image (or choose other --scales) and rerun"
                if why
                else ("extract every image of the benchmark into the store")
            )
            raise StoreError(
                f"{self.root}: {len(missing)} of the {len(paths)} images asked for have no row in the "
                f"store, e.g. {missing[0]}{hint}; {fix}"
            )
        check_row_files(self, paths, rows, by_path=[r in exact for r in resolved])
        return rows


def _identity_text(ident: Any) -> str:
    if not ident:
        return "unreadable"
    seconds, ns = divmod(int(ident[1]), 10**9)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}"
    return f"{ident[0]} bytes, modified {when} UTC" + (f", sha256 {ident[2][:16]}" if len(ident) > 2 else "")


def check_row_files(store: FeatureStore, paths: Sequence[str], rows: np.ndarray, by_path: list[bool]) -> None:
    """A StoreError unless each row of `rows` was extracted from the file now at the matching path of `paths`:
    same size and modification time as recorded, or the same sha256 where the store recorded one. A row whose
    identity the store did not record passes only when matched by its full path (a file name proves nothing)."""
    recorded = store.identities_of(rows.tolist())
    wrong, by_name = [], []
    for i, (path, old) in enumerate(zip(paths, recorded, strict=True)):
        if old is None:
            if not by_path[i]:
                by_name.append(i)
            continue
        (now,) = input_identities([path])
        if now is not None and len(old) > 2 and now[:2] != old[:2] and now[0] == old[0]:
            (now,) = input_identities([path], content_hash=True)  # touched, perhaps not changed: compare content
        if not same_input(old, now):
            wrong.append((i, old, now))
    fix = "extract the benchmark's own images into a store (`vggfeat extract IMAGES -o STORE`) and probe that"
    if wrong:
        i, old, now = wrong[0]
        raise StoreError(
            f"{store.root}: {len(wrong)} of the {len(paths)} images asked for are not the files the store's rows "
            f"were extracted from, e.g. {paths[i]} ({_identity_text(now)}) has the row of "
            f"{store.absolute_path(int(rows[i]))} ({_identity_text(old)} at extraction) - a store of another dataset, "
            f"or images changed since; {fix} (with --hash-inputs, a copy whose times changed still matches)"
        )
    if by_name:
        i = by_name[0]
        raise StoreError(
            f"{store.root}: {len(by_name)} of the {len(paths)} images asked for match a row by file name only "
            f"(e.g. {paths[i]} matched {store.absolute_path(int(rows[i]))}) and the store records no file sizes or "
            f"times to show they are the same images; {fix}"
        )


def _tail(path: str, parts: int = 2) -> str:
    return "/".join(Path(path).parts[-parts:])


def is_single_file_store(root: str | Path) -> bool:
    """A finished store of the format before shards: features.npy beside a manifest listing every path."""
    root = Path(root)
    return (root / FEATURES_FILE).is_file() and (root / MANIFEST_FILE).is_file()


def is_complete_store(root: str | Path) -> bool:
    """A finished store of either format (a sharded one: its manifest says every shard is done)."""
    root = Path(root)
    if is_single_file_store(root):
        return True
    try:
        manifest = load_json_file(root / MANIFEST_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT and bool(manifest.get("complete"))


def load_store(root: str | Path) -> FeatureStore:
    """Open a finished store written by `vggfeat extract` (rows read on demand, paths read on demand). An
    unfinished sharded store is refused with its status: the shards done, missing and failed, and the command
    that finishes it."""
    root = Path(root)
    if is_single_file_store(root):
        return _load_single_file(root)
    if (root / PLAN_FILE).is_file() or (root / MANIFEST_FILE).is_file():
        status = shard_files.store_status(root, rebuild=True)
        if not status.complete:
            raise StoreError(f"{root}: an unfinished feature store - {status.summary(one_line=True)}")
        manifest = status.manifest or _manifest_without_plan(root)
        shards = manifest["shards"]  # each checked by store_status: present, with its recorded size
        files = [emb_file(root, s["name"]) for s in shards]
        rows = ShardRows(files, [s["rows"] for s in shards], manifest["dim"], manifest["dtype"])
        return FeatureStore(root, rows, manifest)
    raise StoreError(
        f"{root}: not a finished feature store (no {MANIFEST_FILE}); run `vggfeat extract IMAGES -o STORE` first"
    )


def _manifest_without_plan(root: Path) -> dict:
    """manifest.json of a store without plan.json (whose manifest store_status rebuilds from the plan and the done
    records), its shard list, row counts, dimension and dtype checked."""
    path = root / MANIFEST_FILE
    manifest = read_json(path, StoreError, REBUILD)
    shard_files.check_shard_list(manifest, path, REBUILD)
    shard_files.check_rows_format(manifest, path, REBUILD)
    for s in manifest["shards"]:
        if not shard_files.is_count(s.get("rows")):
            raise StoreError(f"{path}: shard {s['name']} has rows {reprlib.repr(s.get('rows'))}; {REBUILD}")
    return manifest


def _load_single_file(root: Path) -> FeatureStore:
    manifest = read_json(root / MANIFEST_FILE, StoreError, REBUILD)
    if not isinstance(manifest, dict):
        raise StoreError(f"{root / MANIFEST_FILE}: not a store manifest (a JSON object); {REBUILD}")
    part = open_npy_rows(root / FEATURES_FILE, StoreError, REBUILD)
    if part.rows != len(manifest.get("paths", ())):
        raise StoreError(
            f"{root}: {FEATURES_FILE} has shape {(part.rows, part.dim)} but the manifest lists "
            f"{len(manifest.get('paths', ()))} images"
        )
    return FeatureStore(root, ShardRows.of_parts([part], StoreError, REBUILD), manifest)
