"""An index folder: `index.faiss`, `index.json` (what it is, how it was built, what it measured), the row paths
beside them (row_paths) and, for inverted lists on disk, `index.ivfdata`. Written whole into a temporary folder
that replaces the old one, read back with every cross-check that costs O(1) per file."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss

from ..errors import InputError, VggfeatError
from ..utils.files import atomic_write_bytes, atomic_write_json, read_json, replace_dir, sha256_file
from ..utils.locks import folder_lock
from .faiss_io import read_index_file
from .gpu import to_cpu
from .meta_check import check_meta
from .ondisk import IVFDATA_FILE
from .row_paths import ROW_PATH_FILES, RowPaths, RowPathsError, write_row_paths

INDEX_FILE, META_FILE = "index.faiss", "index.json"


class FaissIndexError(VggfeatError, ValueError):
    """An index folder that is truncated, or whose index.faiss and index.json do not belong together."""


class IndexNotFoundError(FaissIndexError, FileNotFoundError):
    """A folder without index.faiss or index.json."""


def describe_index(index: faiss.Index) -> dict[str, Any]:
    """kind, metric, dim and row count of an index (a CPU one)."""
    inner = faiss.downcast_index(index)
    kind = {
        "IndexFlat": "flat",
        "IndexFlatIP": "flat",
        "IndexFlatL2": "flat",
        "IndexIVFFlat": "ivf",
        "IndexIVFPQ": "ivfpq",
        "IndexHNSWFlat": "hnsw",
    }.get(type(inner).__name__, type(inner).__name__)
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    return {"kind": kind, "metric": metric, "dim": int(index.d), "ntotal": int(index.ntotal)}


def save_index(
    index: faiss.Index,
    path: str | Path,
    meta: dict[str, Any],
    *,
    paths: Iterable[str],
    ivfdata: Path | None = None,
) -> Path:
    """Write `index.faiss`, `index.json` (meta plus kind, metric, dim, ntotal) and the row paths (`paths`, one per
    row, any iterable: consumed once, streamed into row_paths.bin / row_offsets.npy, never held) into folder `path`.

    Both files are written into a sibling temporary folder that then replaces `path` whole (utils.files.
    replace_dir): a build that dies at any moment leaves the old index with its own paths, searchable. The
    json also records the sha256 of index.faiss, so files mixed by hand are refused by `load_index`. `meta`
    should carry the feature store's manifest summary. A folder
    holding anything but an index is refused rather than replaced. An index whose inverted lists are on disk
    (OnDiskInvertedLists) brings their file `ivfdata`, moved in as index.ivfdata and recorded by size and sha256.
    """
    path = Path(path)
    cpu = to_cpu(index)
    info = describe_index(cpu)
    if "paths" in meta:
        raise ValueError("row paths go in save_index(paths=...), written beside index.json, not in it")
    with folder_lock(path, "written", "wait for that `vggfeat index build` to finish, or choose another -o"):
        if path.is_dir():
            other = sorted(
                p.name for p in path.iterdir() if p.name not in (INDEX_FILE, META_FILE, IVFDATA_FILE, *ROW_PATH_FILES)
            )
            if other:
                raise FaissIndexError(
                    f"{path} holds files that are not an index ({', '.join(other[:3])}"
                    f"{', ...' if len(other) > 3 else ''}); choose another -o, an empty or index folder"
                )
        elif path.exists():
            raise FaissIndexError(f"{path} is a file, not an index folder; choose another -o")
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            if ivfdata is not None:
                os.replace(ivfdata, tmp / IVFDATA_FILE)  # the lists already mapped stay valid through the rename
                size, sha = (tmp / IVFDATA_FILE).stat().st_size, sha256_file(tmp / IVFDATA_FILE)
                meta = {**meta, "ivfdata_bytes": size, "ivfdata_sha256": sha}
                # plain faiss.read_index finds the lists where the folder ends up; load_index looks beside it
                invlists = faiss.extract_index_ivf(cpu).invlists
                lists = faiss.downcast_InvertedLists(invlists) if invlists is not None else None
                assert isinstance(lists, faiss.OnDiskInvertedLists)  # an ivfdata file comes with on-disk lists
                lists.filename = str(path.resolve() / IVFDATA_FILE)
            try:
                paths_bytes = write_row_paths(tmp, paths, info["ntotal"])
            except ValueError as e:
                raise ValueError(f"{path}: {e} (the index holds {info['ntotal']} rows)") from None
            data = faiss.serialize_index(cpu).tobytes()
            atomic_write_bytes(tmp / INDEX_FILE, data)
            atomic_write_json(
                tmp / META_FILE,
                {
                    **meta,
                    **info,
                    "row_paths": {"rows": info["ntotal"], "bytes": paths_bytes},
                    "faiss_version": faiss.__version__,
                    "index_sha256": hashlib.sha256(data).hexdigest(),
                },
            )
            replace_dir(tmp, path)
        except OSError as e:  # a full disk: name the index folder asked for, not the removed temporary one
            shutil.rmtree(tmp, ignore_errors=True)
            if e.filename is not None and Path(e.filename).parent == tmp:
                raise OSError(e.errno, e.strerror, str(path / Path(e.filename).name)) from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def load_index(path: str | Path) -> tuple[faiss.Index, dict[str, Any]]:
    """(index, meta) of a folder written by `save_index`; the index is on the CPU. meta["paths"] is the row paths:
    a RowPaths that reads only the rows asked for (a list for an index written before they left index.json)."""
    path = Path(path)
    if not (path / INDEX_FILE).is_file() or not (path / META_FILE).is_file():
        raise IndexNotFoundError(
            f"{path}: not a saved index (needs {INDEX_FILE} and {META_FILE}); "
            "build one with `vggfeat index build STORE -o FOLDER`"
        )
    fix = "rebuild it with `vggfeat index build STORE -o FOLDER`"
    meta = read_json(path / META_FILE, FaissIndexError, fix)
    if not isinstance(meta, dict):
        raise FaissIndexError(f"{path / META_FILE}: not an index description; {fix}")
    try:
        check_meta(meta)
    except InputError as e:
        raise FaissIndexError(f"{path / META_FILE}: {e}; {fix}") from None
    rows = meta.get("row_paths")
    if isinstance(rows, dict) and all(type(rows.get(k)) is int and rows[k] >= 0 for k in ("rows", "bytes")):
        try:
            meta["paths"] = RowPaths(path, rows["rows"], rows["bytes"], fix)
        except RowPathsError as e:
            raise FaissIndexError(str(e)) from None
    elif not isinstance(meta.get("paths"), list):  # written before the paths left index.json: a list there
        raise FaissIndexError(f"{path / META_FILE}: no row paths recorded; {fix}")
    if "index_sha256" in meta and sha256_file(path / INDEX_FILE) != meta["index_sha256"]:
        raise FaissIndexError(f"{path}: {INDEX_FILE} does not belong to {META_FILE} (an interrupted build?); {fix}")
    flags = 0
    if "ivfdata_bytes" in meta:  # inverted lists on disk: memory-mapped read-only from beside index.faiss
        size = (path / IVFDATA_FILE).stat().st_size if (path / IVFDATA_FILE).is_file() else None
        if size != meta["ivfdata_bytes"]:
            raise FaissIndexError(
                f"{path / IVFDATA_FILE}: {'missing' if size is None else f'{size} bytes'} but {META_FILE} records "
                f"{meta['ivfdata_bytes']}; {fix}"
            )
        # the lists' content too: a crash can leave a file of the right size holding zeros, which faiss would
        # search. This reads the whole file once per load, sequentially (about a second per GB from disk, less
        # from the page cache): the price of never answering from damaged lists, paid by each `index search`
        if "ivfdata_sha256" in meta and sha256_file(path / IVFDATA_FILE) != meta["ivfdata_sha256"]:
            raise FaissIndexError(
                f"{path / IVFDATA_FILE}: its content differs from what {META_FILE} records (damaged); {fix}"
            )
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    index = read_index_file(path / INDEX_FILE, FaissIndexError, fix, flags)
    info = describe_index(index)
    if (info["dim"], info["ntotal"], len(meta["paths"])) != (meta.get("dim"), meta.get("ntotal"), info["ntotal"]):
        raise FaissIndexError(
            f"{path}: {INDEX_FILE} holds {info['ntotal']} x {info['dim']} but {META_FILE} says "
            f"{meta.get('ntotal')} x {meta.get('dim')} with {len(meta['paths'])} paths; {fix}"
        )
    return index, meta
