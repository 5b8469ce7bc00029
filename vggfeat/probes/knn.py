"""Nearest neighbours over stored descriptors with faiss: indexes, retrieval and a kNN classifier.

A cheap companion to the linear SVMs of Sect. 4 (the paper's probe): inner product on L2-normalised
descriptors is cosine similarity. `knn_scores` is the weighted kNN vote of DINO's evaluation: each of the k
nearest training images votes for its classes with weight exp(cos / T), and the score of a class is its
share of the weighted vote, so scores compare across test images (VOC AP) and argmax is the prediction.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import VggfeatError
from ..features.protocol import l2_normalize
from ..index.row_paths import ROW_PATH_FILES, RowPaths, RowPathsError, write_row_paths
from ..utils.files import atomic_write_bytes, atomic_write_json, read_json, replace_dir, sha256_file
from ..utils.locks import folder_lock

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
INDEX_FILE, META_FILE, IVFDATA_FILE = "index.faiss", "index.json", "index.ivfdata"
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


class FaissIndexError(VggfeatError, ValueError):
    """An index folder that is truncated, or whose index.faiss and index.json do not belong together."""


class IndexNotFoundError(FaissIndexError, FileNotFoundError):
    """A folder without index.faiss or index.json."""


def _as_matrix(X: np.ndarray, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {X.shape}")
    return X


def default_nlist(n: int) -> int:
    """IVF lists: ~4 sqrt(N), but at least 39 training points per list (faiss's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_pq_m(d: int) -> int:
    """PQ sub-quantizers: the largest divisor of D not above min(64, D/8) (8+ dims per sub-vector)."""
    target = max(1, min(64, d // 8))
    return max(m for m in range(1, target + 1) if d % m == 0)


def _gpu_wanted(use_gpu: bool | None) -> bool:
    gpus = faiss.get_num_gpus()
    if use_gpu and gpus == 0:
        raise FaissIndexError("use_gpu=True asked for, but faiss sees no GPU; build on the CPU (use_gpu=None or False)")
    return bool(gpus) and use_gpu is not False


def kind_factory(kind: str, n: int, d: int, m: int | None = None) -> str:
    """The faiss.index_factory string of a named kind for n x d rows: flat (exact), ivf / ivfpq (inverted lists,
    `default_nlist(n)` of them; pq codes of `m` sub-quantizers of up to 8 bits, fewer when N < 39 * 256), hnsw
    (a graph of `m` links per node, default 32)."""
    if kind not in INDEX_KINDS:
        raise FaissIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    nlist = default_nlist(n)
    if kind == "ivfpq":
        m = m or default_pq_m(d)
        if d % m:
            raise FaissIndexError(f"ivfpq: m={m} must divide the dimension {d}")
        nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))  # 39 points per PQ centroid
        return f"IVF{nlist},PQ{m}x{nbits}"
    return {"flat": "Flat", "ivf": f"IVF{nlist},Flat", "hnsw": f"HNSW{m or 32}"}[kind]


def build_index(
    X: np.ndarray,
    kind: str = "flat",
    *,
    metric: str = "ip",
    m: int | None = None,
    use_gpu: bool | None = None,
) -> faiss.Index:
    """An in-memory index of the rows of X (N, D) built from `kind_factory(kind, ...)`, trained on X itself; ivf
    kinds probe max(4, sqrt(nlist)) lists, hnsw searches with efSearch 128. On the GPU(s) when faiss has one and
    use_gpu is not False (hnsw stays on the CPU). `vggfeat index build` chooses and tunes its own (vggfeat.index)."""
    X = _as_matrix(X, "X")
    n, d = X.shape
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose 'ip' or 'l2'")
    index = faiss.index_factory(d, kind_factory(kind, n, d, m), _METRICS[metric])
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(4, int(math.sqrt(ivf.nlist))))
    elif kind == "hnsw":
        hnsw = faiss.downcast_index(index)
        assert isinstance(hnsw, faiss.IndexHNSW)  # kind_factory's hnsw is an IndexHNSWFlat
        hnsw.hnsw.efSearch = 128
    if kind != "hnsw" and _gpu_wanted(use_gpu):
        try:
            index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as e:  # e.g. a PQ size the GPU code lacks: the CPU index still works
            if use_gpu:
                raise
            log.warning("faiss could not move the %s index to the GPU (%s); staying on the CPU", kind, e)
    if not index.is_trained:
        index.train(X)
    index.add(X)
    return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (what faiss can serialise); a CPU index is returned as it is."""
    gpu_types = tuple(getattr(faiss, t) for t in ("GpuIndex", "IndexReplicas", "IndexShards") if hasattr(faiss, t))
    return faiss.index_gpu_to_cpu(index) if gpu_types and isinstance(index, gpu_types) else index


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
    (OnDiskInvertedLists) brings their file `ivfdata`, moved in as index.ivfdata and recorded by size.
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
                meta = {**meta, "ivfdata_bytes": (tmp / IVFDATA_FILE).stat().st_size}
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
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    try:
        index = faiss.read_index(str(path / INDEX_FILE), flags)
    except RuntimeError as e:
        raise FaissIndexError(f"{path / INDEX_FILE}: unreadable ({str(e).splitlines()[0][:200]}); {fix}") from None
    info = describe_index(index)
    if (info["dim"], info["ntotal"], len(meta["paths"])) != (meta.get("dim"), meta.get("ntotal"), info["ntotal"]):
        raise FaissIndexError(
            f"{path}: {INDEX_FILE} holds {info['ntotal']} x {info['dim']} but {META_FILE} says "
            f"{meta.get('ntotal')} x {meta.get('dim')} with {len(meta['paths'])} paths; {fix}"
        )
    return index, meta


def search(index: faiss.Index, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (M, k), ids (M, k)), best first; k is capped at the index size.

    Scores are inner products ('ip', larger is nearer) or squared distances ('l2', smaller is nearer).
    An IVF search that probes fewer than k rows pads with id -1.
    """
    Q = _as_matrix(Q, "Q")
    if Q.shape[1] != index.d:
        raise FaissIndexError(f"queries have dimension {Q.shape[1]} but the index has {index.d}")
    k = max(1, min(int(k), int(index.ntotal)))
    scores, ids = index.search(Q, k)
    return scores, ids


def knn_scores(
    train_X: np.ndarray,
    train_labels: np.ndarray,
    test_X: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    kind: str = "flat",
    multilabel: bool | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """(M, K) class scores of the test rows by a weighted vote of their k nearest training rows.

    Rows are L2-normalised here, so similarity s is cosine. Neighbour j of test row i has weight
    w_ij = exp(s_ij / T), computed as exp((s_ij - max_j s_ij) / T) so that no T overflows;
    score[i, c] = sum_j w_ij [j is in class c] / sum_j w_ij. Multi-label
    (train_labels (N, K) in {1, -1, 0}, VOC): 'in class c' means label 1, so a 'difficult' 0 neighbour
    counts as not positive; the scores rank test images per class for AP. Multi-class (train_labels (N,)
    class ids): argmax of a row is the prediction. `multilabel` defaults to train_labels being 2-D.
    """
    labels = np.asarray(train_labels)
    multilabel = labels.ndim == 2 if multilabel is None else multilabel
    train_X, test_X = l2_normalize(_as_matrix(train_X, "train_X")), l2_normalize(_as_matrix(test_X, "test_X"))
    if len(labels) != len(train_X):
        raise ValueError(f"{len(train_X)} training rows but {len(labels)} labels")
    if not (math.isfinite(temperature) and temperature > 0):  # NaN would pass a plain `<= 0` test
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not multilabel and len(np.unique(labels)) < 2:
        # one class: every vote is for it and the 'accuracy' is 100 %; refused like the linear probe's SVMs
        raise FaissIndexError(f"need at least 2 classes for a kNN probe, got {len(np.unique(labels))}")
    sims, ids = search(build_index(train_X, kind, metric="ip"), test_X, k)  # (M, k) each
    valid = ids >= 0  # -1: IVF padding
    # exp(s / T) overflows float64 once s / T > 709 (cos 0.93 at T = 0.0013); the vote is a ratio of weights, so
    # each row's best similarity is subtracted first: the same shares, every weight in (0, 1]
    best = np.max(np.where(valid, sims, -np.inf), axis=1, keepdims=True)
    shifted = (sims.astype(np.float64) - np.where(np.isfinite(best), best, 0.0)) / temperature
    weights = np.where(valid, np.exp(np.minimum(shifted, 0.0)), 0.0)
    ids = np.maximum(ids, 0)
    if multilabel:
        if labels.ndim != 2:
            raise ValueError(f"multilabel needs (N, K) labels, got shape {labels.shape}")
        positive = (labels == 1).astype(np.float64)  # (N, K)
        votes = np.einsum("mk,mkc->mc", weights, positive[ids])  # (M, k) x (M, k, K) -> (M, K)
    else:
        labels = labels.astype(np.int64).reshape(-1)
        K = num_classes or int(labels.max()) + 1
        votes = np.zeros((len(test_X), K))
        np.add.at(votes, (np.arange(len(test_X))[:, None], labels[ids]), weights)
    return (votes / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)
