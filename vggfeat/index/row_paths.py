"""The path of every indexed row, beside the index rather than in index.json: `row_paths.bin` (row by row: the
path's bytes as the file system names it, then a little-endian CRC-32 of the row number (int64 LE) and those
bytes) and `row_offsets.npy` (N + 1 int64 byte offsets into it, a plain .npy any numpy reads). Written streaming
and read by seeks, so building and searching an index of 10^8 rows never holds its paths in memory: a search
reads only the paths of the rows it returns. The CRC makes a damaged file an error, never another row's path.

Paths go through os.fsencode / os.fsdecode, so a name that is not UTF-8 (kept with surrogate escapes, as a store's
`path_raw` gives it) comes back byte for byte.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from vggfeat.errors import VggfeatError
from vggfeat.features.npy_rows import read_npy_header
from vggfeat.utils.files import NotRegularFileError, open_regular

PATHS_FILE, OFFSETS_FILE = "row_paths.bin", "row_offsets.npy"
ROW_PATH_FILES = (PATHS_FILE, OFFSETS_FILE)
_CHUNK = 1 << 12  # paths encoded and written at a time (65,536 of 200 bytes held 67 MB more at the peak)
_OFFSET = np.dtype("<i8")
_CRC = struct.Struct("<I")


def _check(row: int, path: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(path, zlib.crc32(struct.pack("<q", row))))


MAX_PATH_BYTES = 1 << 16  # a longer "path" is a damaged offsets file, not a name (PATH_MAX is 4096)


class RowPathsError(VggfeatError, ValueError):
    """Row-path files that are missing, truncated, or do not match the index they sit beside."""


def write_row_paths(folder: str | Path, paths: Iterable[str], rows: int) -> int:
    """Write the `rows` paths of `paths` (any iterable, consumed once) into `folder`; returns the bytes of
    row_paths.bin. A count other than `rows` raises ValueError (the files are then incomplete: the caller writes
    into a temporary folder and drops it)."""
    folder = Path(folder)
    header = {"descr": _OFFSET.str, "fortran_order": False, "shape": (rows + 1,)}
    written = 0
    with open(folder / PATHS_FILE, "wb") as data, open(folder / OFFSETS_FILE, "wb") as offsets:
        np.lib.format.write_array_header_1_0(offsets, header)
        offsets.write(np.zeros(1, _OFFSET).tobytes())
        end, chunk = 0, list[str]()

        def flush() -> None:
            nonlocal end
            names = [os.fsencode(p) for p in chunk]
            long = [p for p, b in zip(chunk, names, strict=True) if len(b) > MAX_PATH_BYTES]
            if long:
                n = len(os.fsencode(long[0]))
                raise ValueError(f"a row path of {n} bytes (at most {MAX_PATH_BYTES}): {long[0][:80]}...")
            first = written - len(chunk)  # the row number of chunk[0]
            encoded = [b + _check(first + j, b) for j, b in enumerate(names)]
            ends = end + np.cumsum([len(b) for b in encoded], dtype=np.int64)
            data.write(b"".join(encoded))
            offsets.write(ends.astype(_OFFSET).tobytes())
            end = int(ends[-1])
            chunk.clear()

        for p in paths:
            if written == rows:
                raise ValueError(f"more than {rows} row paths")
            chunk.append(p)
            written += 1
            if len(chunk) == _CHUNK:
                flush()
        if chunk:
            flush()
    if written != rows:
        raise ValueError(f"{written} row paths for {rows} rows")
    return end


class RowPaths(Sequence[str]):
    """The row paths written by `write_row_paths`, read on demand: `paths[i]` and `paths.lookup(ids)` read those
    rows only. Opening checks what is O(1) to check: the offsets file holds exactly `rows` + 1 offsets, the first
    is 0 and the last is the size of row_paths.bin (`paths_bytes`, as recorded). Both files stay open, so an index
    folder replaced by a rebuild meanwhile still answers with the paths of the index that was loaded."""

    def __init__(self, folder: str | Path, rows: int, paths_bytes: int, fix: str) -> None:
        self.folder, self.rows, self.fix = Path(folder), int(rows), fix
        self._data_path, self._offsets_path = self.folder / PATHS_FILE, self.folder / OFFSETS_FILE
        try:
            self._data = open_regular(self._data_path)  # kept open: see the class docstring
            self._offsets = open_regular(self._offsets_path)
        except NotRegularFileError as e:
            raise RowPathsError(f"{e}; {fix}") from None
        except OSError as e:
            raise RowPathsError(f"{e.filename}: {e.strerror}; {fix}") from None
        size = os.fstat(self._data.fileno()).st_size
        if size != paths_bytes:
            raise RowPathsError(f"{self._data_path}: {size} bytes but {paths_bytes} were written; {fix}")
        try:
            shape, fortran, dtype = read_npy_header(self._offsets)
        except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors, ...
            raise RowPathsError(f"{self._offsets_path}: unreadable header ({type(e).__name__}); {fix}") from None
        self._start = self._offsets.tell()
        have = os.fstat(self._offsets.fileno()).st_size
        if (shape, fortran, dtype) != ((self.rows + 1,), False, _OFFSET) or have != self._start + (
            self.rows + 1
        ) * _OFFSET.itemsize:
            raise RowPathsError(
                f"{self._offsets_path}: {shape} {dtype} ({have} bytes) is not the {self.rows + 1} offsets of "
                f"{self.rows} rows; {fix}"
            )
        first, last = self._offset(0), self._offset(self.rows)
        if (first, last) != (0, size):
            raise RowPathsError(f"{self._offsets_path}: offsets run {first}..{last}, not 0..{size}; {fix}")

    def _offset(self, i: int) -> int:
        raw = os.pread(self._offsets.fileno(), _OFFSET.itemsize, self._start + i * _OFFSET.itemsize)
        return int(np.frombuffer(raw, _OFFSET)[0])

    def _bounds(self, i: int) -> tuple[int, int]:
        """Byte range of row i's path in row_paths.bin."""
        raw = os.pread(self._offsets.fileno(), 2 * _OFFSET.itemsize, self._start + i * _OFFSET.itemsize)
        start, end = (int(v) for v in np.frombuffer(raw, _OFFSET))
        return start, end

    def close(self) -> None:
        for f in (getattr(self, "_data", None), getattr(self, "_offsets", None)):  # (an __init__ that failed)
            if f is not None:
                f.close()

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return self.rows

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return self.lookup(range(*i.indices(self.rows)))
        return self.lookup([i])[0]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, self.rows, _CHUNK):
            yield from self.lookup(range(start, min(start + _CHUNK, self.rows)))

    def lookup(self, ids: Iterable[int]) -> list[str]:
        """The paths of rows `ids` (any order, repeats allowed), two reads per row."""
        ids = [int(i) + (self.rows if int(i) < 0 else 0) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.rows]
        if bad:
            raise IndexError(f"row {bad[0]} out of range for {self.rows} rows")
        out: dict[int, str] = {}
        for i in sorted(set(ids)):
            start, end = self._bounds(i)
            if not 0 <= start <= end - _CRC.size or end - start > MAX_PATH_BYTES + _CRC.size:
                raise RowPathsError(f"{self._offsets_path}: row {i} has offsets {start}..{end}; {self.fix}")
            raw = os.pread(self._data.fileno(), end - start, start)
            name = raw[: -_CRC.size]
            if len(raw) != end - start or raw[-_CRC.size :] != _check(i, name):
                raise RowPathsError(
                    f"{self.folder}: row {i}'s path in {PATHS_FILE} fails its check at the place {OFFSETS_FILE} "
                    f"gives (one of them is damaged); {self.fix}"
                )
            out[i] = os.fsdecode(name)
        return [out[i] for i in ids]
