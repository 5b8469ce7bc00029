"""Reading faiss files that a crash, a disk error or a hand may have damaged. faiss trusts the sizes a file
declares, so a few bytes could make it allocate terabytes: each read is bounded by the file's own size (no vector,
and no count of lists, can be larger than the file holding it), and whatever faiss raises becomes one line naming
the file. faiss's own printf output is kept off stdout, where it would land in the middle of a command's
output (`index search --json` must print JSON only)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import faiss


@contextlib.contextmanager
def bounded_by(nbytes: int) -> Iterator[None]:
    """faiss reads allocate no vector of more than `nbytes` and run no loop of more than `nbytes` steps. The limits
    are process-wide: set around one read at a time, as every caller here does."""
    vector, loop = faiss.get_deserialization_vector_byte_limit(), faiss.get_deserialization_loop_limit()
    faiss.set_deserialization_vector_byte_limit(nbytes)
    faiss.set_deserialization_loop_limit(max(nbytes, 1))  # 0 would mean no limit
    try:
        yield
    finally:
        faiss.set_deserialization_vector_byte_limit(vector)
        faiss.set_deserialization_loop_limit(loop)


@contextlib.contextmanager
def c_stdout_silenced() -> Iterator[None]:
    """File descriptor 1 points at /dev/null inside (for the whole process: a library call at a time, never
    around threads that print): reading an index with on-disk lists makes faiss printf
    "IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename ...", with no option to turn it off."""
    libc = ctypes.CDLL(None)
    if sys.stdout is not None:
        sys.stdout.flush()
    libc.fflush(None)  # C output buffered before goes where it was going
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to keep clean
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        libc.fflush(None)  # what faiss buffered meanwhile goes to /dev/null, not to the restored stdout
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def read_index_file(path: Path, error: type[Exception], fix: str, flags: int = 0) -> faiss.Index:
    """faiss.read_index(path, flags), bounded by the file's size; a file that faiss cannot read raises `error`
    naming it, with `fix` (what to do). The caller has checked that `path` is a regular file (faiss would wait on
    a FIFO)."""
    try:
        size = path.stat().st_size
        with bounded_by(size), c_stdout_silenced():
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError as e:
                if "precomputed_table" not in str(e):
                    raise
            # an IVFPQ's precomputed table is not stored but derived at load, and may outgrow the file (faiss
            # checks it against the same bound): read without it, then build it within a bound of its own
            index = faiss.read_index(str(path), flags | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
    except OSError as e:
        raise error(f"{path}: unreadable ({e.strerror or e}); {fix}") from None
    except (RuntimeError, MemoryError) as e:  # faiss's checks raise RuntimeError; MemoryError: no room even for
        # what the file's size allows
        raise error(f"{path}: unreadable ({_reason(e)}); {fix}") from None
    _precompute_table(index, size)
    return index


def _reason(e: Exception) -> str:
    """faiss's message without the C++ function and source line it starts with ("Error in void faiss::read_xb_vector
    (...) at faiss/impl/index_read.cpp:276: Error: 'size < ...' failed" -> "'size < ...' failed")."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)
    return text if len(text) <= 160 else text[:157] + "..."


def _precompute_table(index: faiss.Index, nbytes: int) -> None:
    """The table faiss builds at load for an IVFPQ searched by L2 on residuals (none for inner products): nlist x M
    x ksub floats, at most 256 times the nlist x d centroids stored in the file for 8-bit codes (M <= d). A larger
    one, which only damaged sizes or rare wide codes ask for, is not built: the search then computes the same
    distances list by list, more slowly."""
    ivf = faiss.try_extract_index_ivf(index)
    ivfpq = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(ivfpq, faiss.IndexIVFPQ) and ivfpq.nlist * ivfpq.pq.M * ivfpq.pq.ksub * 4 <= 256 * nbytes:
        ivfpq.precompute_table()
