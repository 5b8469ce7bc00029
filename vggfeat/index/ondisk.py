"""Indices past RAM (faiss's demos/demo_ondisk_ivf.py): the trained, empty index is written once; rows are added
block by block into small indices on disk (by any number of parts at once, `--part I/N`); one merge then joins
their inverted lists into a single OnDiskInvertedLists file that searches memory-mapped.

The blocks live in OUT.blocks/ beside the index folder, with plan.json naming the settings they belong to, so a
rerun resumes (finished blocks are kept) and blocks of other settings are never merged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vggfeat.errors import InputError
from vggfeat.utils.files import atomic_write_bytes, atomic_write_json, load_json_file
from vggfeat.utils.locks import folder_lock

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
            raise InputError(f"{path}: unreadable ({e}); remove the folder {folder} (blocks are rebuilt)") from None
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


def waiting_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """folder_lock, waiting for the holder (another part training the shared index) instead of failing."""
    return folder_lock(folder, "trained", "wait", wait=True)


def write_index(index: faiss.Index, path: Path) -> None:
    atomic_write_bytes(path, faiss.serialize_index(index).tobytes())


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


def read_truth(folder: Path, b: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(block_files(folder, b)[1]) as z:
        return z["scores"], z["ids"]


def merge(trained: faiss.Index, folder: Path, n_blocks: int, ivfdata: Path) -> faiss.Index:
    """`trained` (empty) filled with every block's lists, held in one OnDiskInvertedLists file `ivfdata`."""
    from faiss.contrib.ondisk import merge_ondisk

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
