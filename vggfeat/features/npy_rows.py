"""Rows of an (N, D) float .npy file read with plain reads: the one reader of a store's `emb/<i>.npy` shards, its
older single `features.npy`, and an embedding-reader folder's `emb/*.npy`; and the one reader of whole small
arrays (query vectors, the members of a chunk .npz).

The header is parsed once (numpy's own parser, bounded in size) and checked against the file's size before
anything is allocated, so a header declaring more than the file holds costs nothing; rows are then read by
`pread` - never a memory map, whose pages count in the RSS of a process that streams a store larger than its
memory, and never a whole file unless asked for.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from vggfeat.utils.files import NotRegularFileError, open_regular


@dataclass(frozen=True)
class NpyRows:
    path: Path
    offset: int  # bytes before row 0
    rows: int
    dim: int
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop (as stored: float16 or float32), one read."""
        stop = self.rows if stop is None else min(stop, self.rows)
        n = max(0, stop - start)
        with open_regular(self.path) as f:
            data = os.pread(f.fileno(), n * self.row_bytes, self.offset + start * self.row_bytes)
        if len(data) != n * self.row_bytes:  # the file shrank since its header was read
            raise OSError(f"{self.path}: ends before row {stop} (was it rewritten meanwhile?)")
        return np.frombuffer(data, dtype=self.dtype).reshape(n, self.dim)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` (int64, in range, any order, repeats allowed), one read per run of consecutive rows."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.dim), dtype=self.dtype)
        if not len(index):
            return out
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        # runs of consecutive (or repeated) row numbers are read at once
        breaks = np.flatnonzero(np.diff(wanted) > 1) + 1
        with open_regular(self.path) as f:
            for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(wanted)].tolist(), strict=True):
                first, last = int(wanted[lo]), int(wanted[hi - 1])
                size = (last - first + 1) * self.row_bytes
                data = os.pread(f.fileno(), size, self.offset + first * self.row_bytes)
                if len(data) != size:
                    raise OSError(f"{self.path}: ends before row {last} (was it rewritten meanwhile?)")
                block = np.frombuffer(data, dtype=self.dtype).reshape(-1, self.dim)
                out[order[lo:hi]] = block[wanted[lo:hi] - first]
        return out

    def blocks(self, rows: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Rows start..stop, at most `rows` at a time."""
        stop = self.rows if stop is None else min(stop, self.rows)
        for lo in range(start, stop, rows):
            yield self.read(lo, min(lo + rows, stop))


def read_npy_header(f: BinaryIO | io.BufferedIOBase) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the header of the .npy file open at its start, leaving `f` at the first
    data byte. numpy's own parser, at most its 10,000 header bytes; it raises ValueError, SyntaxError, EOFError
    and more on a damaged header (a caller catches Exception)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy format version {version}")
    shape, fortran, dtype = read(f)
    if any(n < 0 for n in shape):  # numpy's parser lets a negative length through
        raise ValueError(f"shape {shape} has a negative length")
    return shape, fortran, dtype


def read_npy(f: io.BufferedIOBase, size: int) -> np.ndarray:
    """The whole array of the .npy data open at its start in `f`, `size` bytes in all (header included). The
    data the header declares must be exactly what follows it, checked before anything is allocated: memory and
    time stay within `size`, whatever the header claims. A ValueError (or what read_npy_header raises) otherwise;
    pickled objects are refused."""
    shape, fortran, dtype = read_npy_header(f)
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"holds a {dtype} array, not numbers or text")
    need, holds = math.prod(shape) * dtype.itemsize, size - f.tell()
    if need != holds:
        raise ValueError(f"declares a {dtype} array of shape {shape}: {need} bytes, but the file holds {holds}")
    data = bytearray(need)  # writable, unlike the bytes of f.read
    if f.readinto(data) != need or f.read(1):  # the read to the end checks a zip member's CRC
        raise ValueError(f"not the {need} bytes of data its header declares (was it rewritten meanwhile?)")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_npz(f: BinaryIO, size: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays `names` of the .npz archive open in `f` (`size` bytes), each member read as `read_npy` reads a
    file, after checking that it declares no more bytes than the archive has: a member that inflates beyond
    its archive is refused unread. A ValueError (or what zipfile and read_npy_header raise) otherwise."""
    out = {}
    with zipfile.ZipFile(f) as z:
        for name in names:
            info = z.getinfo(f"{name}.npy")
            if info.file_size > size:
                raise ValueError(f"member {info.filename} declares {info.file_size} bytes in a {size}-byte archive")
            with z.open(info) as member:
                out[name] = read_npy(cast(io.BufferedIOBase, member), info.file_size)  # a zipfile.ZipExtFile
    return out


@contextlib.contextmanager
def _refusing(path: Path, error: Callable[[str], Exception], fix: str) -> Iterator[None]:
    """Whatever reading .npy file `path` raises, as `error(message)` naming it and ending with `fix`."""
    try:
        yield
    except NotRegularFileError as e:
        raise error(f"{e}; {fix}") from None
    except OSError as e:
        raise error(f"{path}: {e.strerror or e}; {fix}") from None
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, EOFError, ...
        raise error(f"{path}: unreadable .npy ({type(e).__name__}: {str(e)[:200]}); {fix}") from None


def load_npy(path: str | Path, error: Callable[[str], Exception], fix: str) -> np.ndarray:
    """The whole array of .npy file `path` (as `read_npy` reads it). An .npz archive, a FIFO, or a file whose
    header declares other than the data it holds raises `error(message)`, naming the file, ending with `fix`."""
    path = Path(path)
    with _refusing(path, error, fix), open_regular(path) as f:  # a FIFO is refused, not waited on
        if f.read(4) != b"PK\x03\x04":
            f.seek(0)
            return read_npy(f, os.fstat(f.fileno()).st_size)
        names = [n.removesuffix(".npy") for n in zipfile.ZipFile(f).namelist()]  # np.savez's archive
    raise error(f"{path}: an .npz archive ({', '.join(names[:3]) or 'empty'}); {fix}")


def open_npy_rows(path: str | Path, error: Callable[[str], Exception], fix: str) -> NpyRows:
    """The rows of .npy file `path`, its header checked: a C-order 2-D float16/32/64 array of at least one column
    whose data the file holds whole. Anything else raises `error(message)`, the message naming the file and ending
    with `fix`."""
    path = Path(path)
    with _refusing(path, error, fix), open_regular(path) as f:  # a FIFO is refused, not waited on
        shape, fortran, dtype = read_npy_header(f)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
    if len(shape) != 2 or fortran or dtype.kind != "f" or dtype.hasobject:
        raise error(f"{path}: holds a {dtype} array of shape {shape}; need a C-order (N, D) float matrix; {fix}")
    rows, dim = int(shape[0]), int(shape[1])
    if dim < 1:  # rows of no numbers: nothing to index or probe, and every row size would be 0
        raise error(f"{path}: holds {rows} rows of dimension {dim}; need vectors of at least one number; {fix}")
    if size < offset + rows * dim * dtype.itemsize:
        raise error(f"{path}: truncated ({size} bytes for {rows} x {dim} {dtype}); {fix}")
    return NpyRows(path, offset, rows, dim, np.dtype(dtype))
