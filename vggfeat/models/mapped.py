"""A weight file opened once per run: one private memory map serves both its sha256 (recorded in store and
index manifests, cache keys) and its tensors, instead of reading the file once to hash it and again to load it.

The map is kept while the file is unchanged (same size, mtime and inode), for the few files a run uses.
safetensors are parsed here from the map (zero-copy tensor views, as safetensors' own safe_open gives).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import TypeGuard

import torch

from vggfeat.utils.files import parse_json

# a weight file's bytes: a private memory map, or b"" for an empty file (mmap cannot map zero bytes)
Mapped = mmap.mmap | bytes

_KEEP = 4  # files mapped at once: a run uses one or two nets (the paper's D & E fusion)
_MAPS: OrderedDict[tuple, tuple[Mapped, list[str]]] = OrderedDict()  # file key -> (map, [sha256] once known)

_MAX_DIMS = 64  # dims of one tensor (torch allows 64)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _entry(path: str | Path) -> tuple[Mapped, list[str]]:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _MAPS:
        _MAPS.move_to_end(key)
        return _MAPS[key]
    with open(path, "rb") as f:
        # ACCESS_COPY: writable pages (torch.frombuffer wants them) whose writes never reach the file
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if st.st_size else b""
    _MAPS[key] = (data, [])
    while len(_MAPS) > _KEEP:
        _MAPS.popitem(last=False)
    return _MAPS[key]


def map_weights(path: str | Path) -> Mapped:
    """The file's bytes as a private memory map (b"" for an empty file), shared with `weights_sha256`."""
    return _entry(path)[0]


def weights_sha256(path: str | Path) -> str:
    """sha256 of the file, from the same map its tensors are read from: no second pass over the file."""
    data, digest = _entry(path)
    if not digest:
        digest.append(hashlib.sha256(data).hexdigest())
    return digest[0]


def read_safetensors(data: Mapped) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of safetensors bytes: an 8-byte little-endian header size, a JSON header naming
    each tensor's dtype, shape and byte range, then the data. Raises ValueError on anything inconsistent,
    after work linear in the file's size (every shape is checked against the bytes before any view is made)."""
    if len(data) < 8:
        raise ValueError("file shorter than the 8-byte header size")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header size {n} exceeds the file")
    header = parse_json(bytes(data[8 : 8 + n]))  # '[' * 200000 is a ValueError too, not a RecursionError
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta  # null: no metadata, as safetensors itself reads it
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not a JSON object of strings")
    start, size = 8 + n, len(data) - 8 - n
    tensors = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _entry_fields(name, info)
        count = 0 if 0 in shape else 1
        for s in shape:  # stop as soon as the count exceeds the data: no huge product of a long shape
            count *= s
            if count > size:
                break
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= size or end - begin != count * itemsize:
            raise ValueError(f"tensor {name!r}: byte range {begin}..{end} of {size} does not fit shape {shape}")
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin) if count else torch.empty(0)
        tensors[name] = flat.to(dtype).reshape(shape)
    return tensors, meta


def _entry_fields(name: str, info: object) -> tuple[torch.dtype, list[int], tuple[int, int]]:
    """A header entry's dtype, shape and byte range, each of the type the format prescribes."""

    def ints(value: object) -> TypeGuard[list[int]]:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

    if not isinstance(info, dict):
        raise ValueError(f"tensor {name!r}: entry is not a JSON object")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise ValueError(f"tensor {name!r}: unknown dtype {info.get('dtype')!r}; valid: {', '.join(_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not ints(shape) or any(s < 0 for s in shape) or len(shape) > _MAX_DIMS:
        raise ValueError(f"tensor {name!r}: shape {str(shape)[:80]} is not a list of at most {_MAX_DIMS} sizes >= 0")
    if not ints(offsets) or len(offsets) != 2:
        raise ValueError(f"tensor {name!r}: data_offsets {str(offsets)[:80]} is not a [begin, end] pair of integers")
    return dtype, shape, (offsets[0], offsets[1])
