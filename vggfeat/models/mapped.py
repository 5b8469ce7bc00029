"""A weight file opened once per run: one private memory map serves both its sha256 (recorded in store and
index manifests, cache keys) and its tensors (issue 15.4: the file was read once to hash, again to load).

The map is kept while the file is unchanged (same size, mtime and inode), for the few files a run uses.
safetensors are parsed here from the map (zero-copy tensor views, as safetensors' own safe_open gives).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections import OrderedDict
from pathlib import Path

import torch

# a weight file's bytes: a private memory map, or b"" for an empty file (mmap cannot map zero bytes)
Mapped = mmap.mmap | bytes

_KEEP = 4  # files mapped at once: a run uses one or two nets (the paper's D & E fusion)
_MAPS: OrderedDict[tuple, tuple[Mapped, list[str]]] = OrderedDict()  # file key -> (map, [sha256] once known)

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
    each tensor's dtype, shape and byte range, then the data. Raises ValueError on anything inconsistent."""
    if len(data) < 8:
        raise ValueError("file shorter than the 8-byte header size")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header size {n} exceeds the file")
    header = json.loads(bytes(data[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    start, size = 8 + n, len(data) - 8 - n
    tensors = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unknown dtype {info!r}")
        begin, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = 1
        for s in shape:
            count *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= size or end - begin != count * itemsize:
            raise ValueError(f"tensor {name!r}: byte range {begin}..{end} does not fit shape {shape}")
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin) if count else torch.empty(0)
        tensors[name] = flat.to(dtype).reshape(shape)
    return tensors, {str(k): str(v) for k, v in meta.items()}
