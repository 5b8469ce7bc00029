"""The authors' released Caffe models (`VGG_ILSVRC_16_layers.caffemodel`) read directly.

A .caffemodel is one protobuf `NetParameter`: layers in the V1 `layers` field (2, what the 2014 release
uses; V0's nested `layer` too) or the V2 `layer` field (100), each with `blobs` of float data. We read the
wire format ourselves instead of using the `protobuf` package: that is a dependency plus a caffe_pb2 compiled
from caffe.proto (hundreds of fields; we need about fifteen), and its repeated float fields reach numpy one
Python float at a time (138 M of them for net D). Here each packed float field is read straight from the
file into its final numpy array (one readinto per blob), or copied out of the file's map when
`read_weights` already mapped it to hash it (models.mapped: the file is opened once per run): read time is
I/O bound and the extra memory is one copy of the weights (docs/benchmarks.md).
Caffe names are vggfeat's (conv1_1 ... fc8); the InnerProduct fc6 (4096 x 25088, Caffe's C-order flattening
of pool5's (C, H, W)) becomes the 7x7 conv of Sect. 3.2, and the weights carry Caffe's preprocessing (BGR,
0-255, mean pixel 103.939, 116.779, 123.68).
"""

from __future__ import annotations

import math
import mmap
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from vggfeat.errors import WeightsError

from .preprocessing import CAFFE

if TYPE_CHECKING:
    from .mapped import Mapped

# Field numbers of caffe.proto (BVLC). NetParameter: name 1, layers 2 (V1LayerParameter), layer 100.
NET_NAME, NET_LAYERS_V1, NET_LAYER_V2 = 1, 2, 100
# LayerParameter (V2): name 1, type 2 (string), blobs 7. V1LayerParameter: name 4, type 5 (enum), blobs 6,
# layer 1 (a nested V0LayerParameter: name 1, type 2 (string), blobs 50).
V2_NAME, V2_TYPE, V2_BLOBS = 1, 2, 7
V1_NAME, V1_TYPE, V1_BLOBS, V1_V0LAYER = 4, 5, 6, 1
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50
# BlobProto: num/channels/height/width 1-4 (legacy), data 5 (float), double_data 8, shape 7 (BlobShape: dim 1)
BLOB_LEGACY_DIMS, BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_SHAPE = (1, 2, 3, 4), 5, 8, 7
# V1LayerParameter.LayerType values of the layers a VGG holds (others are shown by number)
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 5: "Data", 6: "Dropout", 15: "LRN", 17: "Pooling", 18: "ReLU"}
V1_TYPES.update({20: "Softmax", 21: "SoftmaxWithLoss", 1: "Accuracy", 12: "ImageData", 29: "MemoryData"})

V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct"}  # V0 named types by strings
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types (3 and 4, groups, never occur in caffe.proto)
_WINDOW = 1 << 16  # bytes read at a time while walking message headers
_UNPACKED = {BLOB_DATA: ("<f4", 0x2D), BLOB_DOUBLE_DATA: ("<f8", 0x41)}  # dtype, one-byte key of one value
_MAX_AXES = 32  # Caffe's kMaxBlobAxes
_MAX_LAYERS = 10_000  # a VGG has 40-odd (ReLUs, pools, dropouts included); the deepest Caffe nets a few thousand
_MAX_BLOBS = 16  # blobs of one layer: weight and bias for a VGG, a few more for batch norm


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)  # float32, shaped by the blob's dims


@dataclass
class CaffeNet:
    name: str
    format: str  # "V1 layers" (V0 nets nest in them), "V2 layer", or both
    layers: list[CaffeLayer]  # every layer, with or without weights, in file order


class _Damaged(Exception):
    """Raised inside the reader; turned into one WeightsError naming the file."""


_COPY_STEP = 1 << 24  # bytes copied out of a map between two page releases (16 MiB)


class _BinaryFile(Protocol):
    """What a _Reader needs of its file: an open binary file or a _MappedFile."""

    def seek(self, pos: int, /) -> object: ...

    def read(self, n: int, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _MappedFile:
    """The seek/read/readinto a _Reader uses, over a file's bytes that are already mapped (no second open)."""

    def __init__(self, data: Mapped) -> None:
        self.data, self.view, self.pos = data, memoryview(data), 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = bytes(self.view[self.pos : self.pos + n])
        self.pos += len(out)
        return out

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), len(self.view) - self.pos)
        for at in range(0, n, _COPY_STEP):  # in steps, each step's pages given back once copied
            start, end = self.pos + at, self.pos + min(at + _COPY_STEP, n)
            buffer[at : end - self.pos] = self.view[start:end]
            self._release(start, end)
        self.pos += n
        return n

    def _release(self, start: int, end: int) -> None:
        """Give back the map's pages of a blob once copied: they stay in the page cache (a later hash of
        the map reads them from there) but stop counting in this process's memory next to the copy."""
        if isinstance(self.data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside [start, end)
            if end - first >= mmap.PAGESIZE:
                self.data.madvise(mmap.MADV_DONTNEED, first, (end - first) // mmap.PAGESIZE * mmap.PAGESIZE)


class _Reader:
    """Protobuf wire format over a seekable binary file: message headers through a small window, packed
    numbers straight into numpy arrays."""

    def __init__(self, f: _BinaryFile, size: int) -> None:
        self.f, self.size = f, size
        self.buf, self.start = b"", 0

    def bytes(self, pos: int, n: int) -> bytes:
        if not (self.start <= pos and pos + n <= self.start + len(self.buf)):
            self.f.seek(pos)
            self.buf, self.start = self.f.read(max(n, _WINDOW)), pos
        out = self.buf[pos - self.start : pos - self.start + n]
        if len(out) < n:
            raise _Damaged(f"needs {n} bytes at byte {pos} but the file ends at byte {self.size}")
        return out

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        chunk = self.bytes(pos, min(10, end - pos)) if pos < end else b""
        value = 0
        for i, byte in enumerate(chunk):
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value, pos + i + 1
        raise _Damaged(f"bad varint at byte {pos}")

    def field(self, pos: int, end: int) -> tuple[int, int, Any, int]:
        """(field number, wire type, value, position after): a varint's value, a length-delimited
        field's (start, length), a fixed field's start."""
        at = pos
        key, pos = self.varint(pos, end)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int]  # a varint or a fixed field's start; (start, length) of a length-delimited one
        if number == 0:
            raise _Damaged(f"field number 0 at byte {at}")
        if wire == VARINT:
            value, after = self.varint(pos, end)
        elif wire == LENGTH:
            length, pos = self.varint(pos, end)
            value, after = (pos, length), pos + length
        elif wire in (FIXED64, FIXED32):
            value, after = pos, pos + (8 if wire == FIXED64 else 4)
        else:
            raise _Damaged(f"wire type {wire} of field {number} at byte {at} does not occur in a Caffe file")
        if after > end:
            where = "the file ends" if end == self.size else "its message ends"
            raise _Damaged(f"field {number} at byte {at} runs to byte {after} but {where} at byte {end}")
        return number, wire, value, after

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
        pos = start
        while pos < end:
            number, wire, value, pos = self.field(pos, end)
            yield number, wire, value

    def string(self, span: tuple[int, int]) -> str:
        return self.bytes(*span).decode("utf-8", errors="replace")

    def array(self, pos: int, count: int, dtype: str) -> np.ndarray:
        out = np.empty(count, dtype)
        self.f.seek(pos)
        if self.f.readinto(out.data.cast("B")) != out.nbytes:
            raise _Damaged(f"{count} values at byte {pos} run past the end of the file (byte {self.size})")
        return out

    def packed_varints(self, span: tuple[int, int]) -> list[int]:
        pos, end, values = span[0], span[0] + span[1], []
        while pos < end:
            value, pos = self.varint(pos, end)
            values.append(value)
        return values


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 varints are two's complement


def _unpacked_run(r: _Reader, pos: int, end: int, number: int, out: list[np.ndarray | bytearray]) -> int:
    """Append the values of a run of (one-byte key, value) records of field `number` from `pos` to `out`;
    returns the position after the run. Read in windows that double from a few records, so a run costs time
    linear in its own length however often the file breaks runs up (a blob is never re-read to its end)."""
    dtype, key = _UNPACKED[number]
    record = np.dtype([("key", "u1"), ("value", dtype)])  # itemsize 5 or 9, no padding
    window = 16
    while (count := min(window, (end - pos) // record.itemsize)) > 0:
        raw = np.frombuffer(r.array(pos, count * record.itemsize, "u1"), record)
        stop = np.flatnonzero(raw["key"] != key)
        run = int(stop[0]) if stop.size else count
        values = raw["value"][:run].tobytes()
        if out and isinstance(out[-1], bytearray):  # one buffer for a blob's runs: no array per value
            out[-1] += values
        else:
            out.append(bytearray(values))
        pos += run * record.itemsize
        if run < count:
            break
        window *= 2
    return pos


def _read_blob(r: _Reader, start: int, end: int) -> np.ndarray:
    legacy: dict[int, int] = {}
    shape: list[int] | None = None
    # per field: packed arrays as read, runs of unpacked values as bytearrays (in file order)
    chunks: dict[int, list[np.ndarray | bytearray]] = {BLOB_DATA: [], BLOB_DOUBLE_DATA: []}
    pos = start
    while pos < end:
        key_pos = pos
        number, wire, value, pos = r.field(pos, end)
        if number in BLOB_LEGACY_DIMS and wire == VARINT:
            legacy[number] = _signed(value)
        elif number == BLOB_SHAPE and wire == LENGTH:
            shape = []
            for dim_number, dim_wire, dim in r.fields(value[0], value[0] + value[1]):
                if dim_number == 1:  # BlobShape.dim: packed (the default) or one varint each
                    shape += [_signed(d) for d in r.packed_varints(dim)] if dim_wire == LENGTH else [_signed(dim)]
                if len(shape) > _MAX_AXES:
                    raise _Damaged(f"blob at byte {start} has more than {_MAX_AXES} dims (Caffe's limit)")
        elif number in chunks and wire == LENGTH:  # packed: the values back to back, little-endian
            dtype, _ = _UNPACKED[number]
            width = np.dtype(dtype).itemsize
            if value[1] % width:
                raise _Damaged(
                    f"packed field {number} at byte {value[0]} is {value[1]} bytes, not a multiple of {width}"
                )
            chunks[number].append(r.array(value[0], value[1] // width, dtype))
        elif number in chunks and wire in (FIXED32, FIXED64):
            if wire != (FIXED32 if number == BLOB_DATA else FIXED64):
                raise _Damaged(
                    f"field {number} at byte {key_pos} has wire type {wire}: its values are "
                    f"{'32-bit floats (wire type 5)' if number == BLOB_DATA else '64-bit doubles (wire type 1)'}"
                )
            # unpacked: a run of (one-byte key, value) records, read at once, vectorised
            run_end = _unpacked_run(r, key_pos, end, number, chunks[number])
            if run_end == key_pos:  # its key written in more than one byte (legal, if odd): this value alone
                chunks[number].append(r.array(value, 1, _UNPACKED[number][0]))
                run_end = pos
            pos = run_end
    number = BLOB_DATA if chunks[BLOB_DATA] else BLOB_DOUBLE_DATA  # double_data only in double-precision nets
    data_chunks = [np.frombuffer(c, _UNPACKED[number][0]) if isinstance(c, bytearray) else c for c in chunks[number]]
    data = np.concatenate(data_chunks) if len(data_chunks) > 1 else data_chunks[0] if data_chunks else None
    if data is None:
        raise _Damaged(f"blob at byte {start} holds no data (a diff-only or empty blob)")
    with np.errstate(over="ignore"):  # a double beyond float32's range becomes inf, which read_weights refuses
        data = data.astype(np.float32, copy=False)  # '<f4' is float32 itself on little-endian machines
    if shape is None:
        shape = [legacy.get(n, 0) for n in BLOB_LEGACY_DIMS] if legacy else [data.size]
    if any(d < 0 for d in shape) or math.prod(shape) != data.size:
        raise _Damaged(f"blob at byte {start} holds {data.size} values but its shape is {tuple(shape)}")
    return data.reshape(shape)


def _read_layer(r: _Reader, span: tuple[int, int], version: str) -> CaffeLayer:
    name_field, type_field, blobs_field = {"V2": (V2_NAME, V2_TYPE, V2_BLOBS), "V1": (V1_NAME, V1_TYPE, V1_BLOBS)}[
        version
    ]
    layer = CaffeLayer(name="", type="")
    for number, wire, value in r.fields(span[0], span[0] + span[1]):
        if number == name_field and wire == LENGTH:
            layer.name = r.string(value)
        elif number == type_field and wire == LENGTH:
            layer.type = r.string(value)
        elif number == type_field and wire == VARINT:  # V1's LayerType enum
            layer.type = V1_TYPES.get(value, f"V1 type {value}")
        elif number == blobs_field and wire == LENGTH:
            _check_blobs(layer, span)
            layer.blobs.append(_read_blob(r, value[0], value[0] + value[1]))
        elif version == "V1" and number == V1_V0LAYER and wire == LENGTH:  # V0: everything in a nested layer
            for v0_number, v0_wire, v0_value in r.fields(value[0], value[0] + value[1]):
                if v0_number == V0_NAME and v0_wire == LENGTH:
                    layer.name = layer.name or r.string(v0_value)
                elif v0_number == V0_TYPE and v0_wire == LENGTH:
                    v0_type = r.string(v0_value)
                    layer.type = layer.type or V0_TYPES.get(v0_type, v0_type)
                elif v0_number == V0_BLOBS and v0_wire == LENGTH:
                    _check_blobs(layer, span)
                    layer.blobs.append(_read_blob(r, v0_value[0], v0_value[0] + v0_value[1]))
    return layer


def _check_blobs(layer: CaffeLayer, span: tuple[int, int]) -> None:
    if len(layer.blobs) >= _MAX_BLOBS:  # each blob is an array: bound the objects a small file can make
        raise _Damaged(f"layer at byte {span[0]} has more than {_MAX_BLOBS} blobs")


def parse_caffemodel(path: str | Path, data: Mapped | None = None) -> CaffeNet:
    """Every layer of a .caffemodel with its blobs as float32 arrays; a damaged file is a WeightsError.
    `data`: the file's bytes when they are already mapped (models.mapped), so the file is not opened again."""
    path = Path(path)
    size = path.stat().st_size if data is None else len(data)
    if size == 0:
        raise WeightsError(f"{path}: empty file, not a Caffe model")
    name, versions = "", set()
    layers: list[CaffeLayer] = []
    try:
        with open(path, "rb") if data is None else nullcontext(_MappedFile(data)) as f:
            r = _Reader(f, size)
            for number, wire, value in r.fields(0, size):
                if number == NET_NAME and wire == LENGTH:
                    name = r.string(value)
                elif number in (NET_LAYERS_V1, NET_LAYER_V2) and wire == LENGTH:
                    if len(layers) >= _MAX_LAYERS:
                        raise _Damaged(f"more than {_MAX_LAYERS:,} layers: not a VGG")
                    version = "V1" if number == NET_LAYERS_V1 else "V2"
                    layers.append(_read_layer(r, value, version))
                    versions.add(version)
    except _Damaged as e:
        raise WeightsError(
            f"{path}: not a readable Caffe model - truncated or damaged ({e}); download it again"
        ) from None
    except MemoryError:
        raise WeightsError(f"{path}: damaged Caffe model (a field claims more memory than there is)") from None
    if not layers:
        raise WeightsError(f"{path}: holds no Caffe layers (field 2 or 100 of a NetParameter): not a .caffemodel")
    fmt = " + ".join({"V1": "V1 layers", "V2": "V2 layer"}[v] for v in sorted(versions))
    return CaffeNet(name=name, format=fmt, layers=layers)


_CONV = re.compile(r"conv(\d)_(\d)$")
_FC = ("fc6", "fc7", "fc8")


def caffe_state_dict(net: CaffeNet, origin: str = "Caffe model") -> dict[str, torch.Tensor]:
    """vggfeat's state dict (conv1_1.weight ... fc8.bias) of a Caffe VGG; fc layers as convs (Sect. 3.2)."""
    weighted = [layer for layer in net.layers if layer.blobs]
    names = [layer.name for layer in weighted]
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)
    if dupes:
        raise WeightsError(f"{origin}: layers {', '.join(dupes)} appear twice")
    others = [n for n in names if not _CONV.match(n) and n not in _FC]
    if others or not weighted:
        raise WeightsError(
            f"{origin}: not one of the paper's VGG nets: its layers with weights are "
            f"{', '.join(names[:12]) or 'none'}{' ...' if len(names) > 12 else ''}; a VGG has conv1_1 ... conv5_x, "
            "fc6, fc7, fc8"
        )
    state: dict[str, torch.Tensor] = {}
    for layer in sorted(weighted, key=lambda la: (la.name.startswith("fc"), la.name)):
        if len(layer.blobs) != 2:
            raise WeightsError(f"{origin}: layer {layer.name} has {len(layer.blobs)} blobs, expected weight and bias")
        weight, bias = layer.blobs
        if weight.size == 0 or bias.size == 0:
            raise WeightsError(
                f"{origin}: layer {layer.name} has weights {weight.shape} and biases {bias.shape}: a layer without "
                "inputs or outputs; the file is damaged or not a VGG"
            )
        if _CONV.match(layer.name):
            if weight.ndim != 4 or layer.type not in ("Convolution", ""):
                raise WeightsError(
                    f"{origin}: layer {layer.name} ({layer.type}) has weights {weight.shape}, not a conv"
                )
        elif layer.type != "Convolution":  # InnerProduct: (1, 1, out, in) legacy dims or (out, in)
            while weight.ndim > 2 and weight.shape[0] == 1:
                weight = weight.reshape(weight.shape[1:])
            if weight.ndim != 2:
                raise WeightsError(f"{origin}: layer {layer.name} has weights {weight.shape}, not a fully-connected")
            c_in = weight.shape[1] if layer.name != "fc6" else _last_conv_channels(state, origin)
            k = math.isqrt(weight.shape[1] // c_in)
            if c_in * k * k != weight.shape[1]:
                raise WeightsError(
                    f"{origin}: fc6 takes {weight.shape[1]} inputs, not conv5's {c_in} channels times k x k"
                )
            weight = weight.reshape(weight.shape[0], c_in, k, k)  # Caffe flattens pool5 (C, H, W) in C order
        if bias.size != weight.shape[0]:
            raise WeightsError(f"{origin}: layer {layer.name} has {bias.size} biases for {weight.shape[0]} outputs")
        state[f"{layer.name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{layer.name}.bias"] = torch.from_numpy(bias.reshape(-1))
    missing = [f"{n}" for n in _FC if f"{n}.weight" not in state]
    if missing:
        raise WeightsError(f"{origin}: Caffe model lacks {', '.join(missing)}: not a complete VGG")
    return state


def _last_conv_channels(state: dict[str, torch.Tensor], origin: str) -> int:
    convs = sorted(
        (tuple(int(d) for d in m.groups()), key) for key in state if (m := re.match(r"conv(\d)_(\d)\.weight$", key))
    )
    if not convs:
        raise WeightsError(f"{origin}: Caffe model has fc6 but no conv layers: not a VGG")
    return int(state[convs[-1][1]].shape[0])


def read_caffemodel(path: str | Path, data: Mapped | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors in vggfeat's layout, metadata with Caffe's preprocessing): what `read_weights` returns.
    `data`: the file's mapped bytes, when the caller has them (read_weights does)."""
    net = parse_caffemodel(path, data)
    tensors = caffe_state_dict(net, origin=str(path))
    meta = {"format": "caffe", "caffe_format": net.format, "caffe_name": net.name, "preprocessing": CAFFE.to_dict()}
    return tensors, meta


def is_caffemodel(path: str | Path, data: Mapped | None = None) -> bool:
    """Whether a file starts like a NetParameter (optional name, then a layer): for .caffemodel files renamed.
    `data`: the file's bytes when they are already mapped (models.mapped), so the file is not opened again."""
    if data is not None:
        head = bytes(data[:300])
    else:
        with open(path, "rb") as f:
            head = f.read(300)
    pos = 0
    if head[:1] == b"\x0a":  # name: a short string first
        n = head[1] if len(head) > 1 else 0xFF
        if n >= 0x80 or len(head) < 2 + n + 1 or not head[2 : 2 + n].isascii():
            return False
        pos = 2 + n
    return head[pos : pos + 1] == b"\x12" or head[pos : pos + 2] == b"\xa2\x06"
