"""Indices past RAM (faiss's demos/demo_ondisk_ivf.py): the trained, empty index is written once; rows are added
block by block into small indices on disk (by any number of parts at once, `--part I/N`); one merge then joins
their inverted lists into a single OnDiskInvertedLists file that searches memory-mapped.

The blocks live in OUT.blocks/ beside the index folder, with plan.json naming the settings they belong to, so a
rerun resumes (finished blocks are kept) and blocks of other settings are never merged. Each index file there is
written after NAME.sha256, its checksum, and read only when it matches: a damaged or swapped file is refused by
name, never trained on or merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vggfeat.errors import InputError
from vggfeat.utils.files import atomic_write_bytes, atomic_write_json, load_json_file, open_regular, sha256_file
from vggfeat.utils.locks import folder_lock

from .faiss_io import read_index_file

log = logging.getLogger(__name__)

IVFDATA_FILE = "index.ivfdata"
PLAN_FILE, TRAINED_FILE = "plan.json", "trained.index"
# the `index build` option that sets a plan field whose name does not say it
SET_BY = {"train_rows": "--max-memory", "train_device": "--device", "k": "--recall-k", "queries": "--queries"}


def blocks_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".blocks")


def check_plan(folder: Path, plan: dict[str, Any]) -> None:
    """Write plan.json into a new blocks folder, or check that an existing one was started with the same plan."""
    path = folder / PLAN_FILE
    if path.exists():
        try:
            old = load_json_file(path)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); {_remove(folder)}") from None
        if not isinstance(old, dict):
            raise InputError(f"{path}: not a plan (a JSON object); {_remove(folder)}")
        differ = [k for k in plan if old.get(k) != plan.get(k)]
        if differ == ["source_identity"]:  # the same command, but the vectors were rewritten since those blocks
            raise InputError(
                f"{folder} holds blocks built from other vectors: {plan.get('source')} was rewritten since (its "
                "files' checksums, sizes or times differ); remove that folder to build from the vectors as they are"
            )
        if differ:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {plan.get(k)!r}" + _set_by(k) for k in differ)
            raise InputError(
                f"{folder} holds blocks of another build ({diff}); use the same settings, or remove that folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)


def _set_by(field: str) -> str:
    return f" ({SET_BY[field]})" if field in SET_BY else ""


def _remove(folder: Path) -> str:
    return f"remove the folder {folder} (its blocks are rebuilt)"


def waiting_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """folder_lock, waiting for the holder (another part training the shared index) instead of failing."""
    return folder_lock(folder, "trained", "wait", wait=True)


def write_index(index: faiss.Index, path: Path) -> None:
    """`path` and, first, its checksum: a `path` that exists has its NAME.sha256 written whole beside it."""
    data = faiss.serialize_index(index).tobytes()
    atomic_write_bytes(_sha_file(path), hashlib.sha256(data).hexdigest().encode())
    atomic_write_bytes(path, data)


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def check_index_file(path: Path, fix: str) -> None:
    """InputError naming `path`, with `fix`, unless its content has the sha256 recorded beside it (write_index).
    Reads it whole once, as the read that follows does."""
    try:
        with open_regular(_sha_file(path)) as f:
            recorded = f.read(100).decode("ascii", "replace")
        actual = sha256_file(path)
    except OSError as e:
        raise InputError(f"{e.filename or path}: unreadable ({e.strerror or e}); {fix}") from None
    if actual != recorded:
        raise InputError(f"{path}: does not match the sha256 in {_sha_file(path).name} (damaged); {fix}")


def read_trained(folder: Path) -> faiss.Index:
    """The trained, empty index every block starts from, checked against its checksum."""
    path = folder / TRAINED_FILE
    check_index_file(path, _remove(folder))
    return read_index_file(path, InputError, _remove(folder))


def block_files(folder: Path, b: int) -> tuple[Path, Path]:
    return folder / f"block_{b:06d}.index", folder / f"block_{b:06d}.truth.npz"


def block_done(folder: Path, b: int) -> bool:
    index, truth = block_files(folder, b)
    return index.is_file() and truth.is_file()  # the index is written last


def write_block(folder: Path, b: int, index: faiss.Index, scores: np.ndarray, ids: np.ndarray) -> None:
    """One block's index and its queries' exact top-K within the block; the index file last marks it done."""
    index_path, truth_path = block_files(folder, b)
    import io

    buf = io.BytesIO()
    np.savez(buf, scores=scores, ids=ids)
    atomic_write_bytes(truth_path, buf.getvalue())
    write_index(index, index_path)


def _remove_block(folder: Path, b: int) -> str:
    index, truth = block_files(folder, b)
    return f"delete {index.name} and {truth.name} (that block is rebuilt by the next run), or {_remove(folder)}"


def read_truth(folder: Path, b: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Block b's exact top-K: (scores, ids), float32 and int64 of `shape` (queries, K). The zip's CRC-32 of each
    member makes a damaged file an error, never other numbers."""
    path = block_files(folder, b)[1]
    try:
        with open_regular(path) as f, np.load(f) as z:
            scores, ids = z["scores"], z["ids"]
    except Exception as e:  # zipfile and numpy raise BadZipFile, ValueError, KeyError, EOFError, zlib.error, ...
        raise InputError(
            f"{path}: unreadable ({type(e).__name__}: {str(e)[:100]}); {_remove_block(folder, b)}"
        ) from None
    if (scores.shape, ids.shape, scores.dtype, ids.dtype) != (shape, shape, np.float32, np.int64):
        raise InputError(
            f"{path}: {scores.dtype} {scores.shape} scores and {ids.dtype} {ids.shape} ids, not the float32 and int64 "
            f"{shape} of this build; {_remove_block(folder, b)}"
        )
    return scores, ids


def merge(trained: faiss.Index, folder: Path, n_blocks: int, ivfdata: Path) -> faiss.Index:
    """`trained` (empty) filled with every block's lists, held in one OnDiskInvertedLists file `ivfdata`. Each
    block is checked against its checksum first: one more sequential read of the blocks (as large as the index)."""
    from faiss.contrib.ondisk import merge_ondisk

    for b in range(n_blocks):
        check_index_file(block_files(folder, b)[0], _remove_block(folder, b))
    ivfdata.unlink(missing_ok=True)  # left by a merge that was killed
    merge_ondisk(trained, [str(block_files(folder, b)[0]) for b in range(n_blocks)], str(ivfdata))
    return trained


def point_to(index: faiss.Index, ivfdata: Path) -> None:
    """Record where the on-disk lists will live (the final index folder) in the index that refers to them."""
    invlists = faiss.extract_index_ivf(index).invlists
    lists = faiss.downcast_InvertedLists(invlists) if invlists is not None else None
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # only an on-disk index is pointed to its lists
    lists.filename = str(ivfdata)


def is_ondisk(index: faiss.Index) -> bool:
    ivf = faiss.try_extract_index_ivf(index)
    lists = ivf.invlists if ivf is not None else None
    return lists is not None and isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(folder.parent / f".{folder.name}.lock")
