"""A test-side writer of Caffe .caffemodel files (protobuf wire format), independent of the reader.

Writes a NetParameter the way Caffe does (field numbers of BVLC's caffe.proto): V1 `layers` (field 2,
the 2014 VGG release), V2 `layer` (field 100) or V0 (a V1 layer wrapping a `layer`, field 1); blobs with
legacy num/channels/height/width or a `shape`, floats packed or one key per value, or double_data. Big
arrays are written straight from numpy, so the benchmark can write a full-size net D (scripts/bench_caffe.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "Dropout": 6, "Softmax": 20}
V0_NAMES = {"Convolution": "conv", "InnerProduct": "innerproduct", "ReLU": "relu", "Pooling": "pool"}

Piece = bytes | np.ndarray  # a message is a list of pieces: header bytes and raw arrays


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as ten-byte two's complement
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def size(pieces: list[Piece]) -> int:
    return sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in pieces)


def submessage(number: int, pieces: list[Piece]) -> list[Piece]:
    return [key(number, 2) + varint(size(pieces)), *pieces]


def string(number: int, text: str) -> bytes:
    data = text.encode()
    return key(number, 2) + varint(len(data)) + data


def blob(array: np.ndarray, *, legacy: bool, packed: bool = True, double: bool = False) -> list[Piece]:
    """A BlobProto: dims first as Caffe writes them, then the values."""
    array = np.asarray(array)
    pieces: list[Piece] = []
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape  # legacy blobs are 4-D, leading dims 1
        pieces += [key(n, 0) + varint(d) for n, d in zip((1, 2, 3, 4), dims, strict=True)]
    else:
        dims = b"".join(varint(d) for d in array.shape)
        pieces += submessage(7, [key(1, 2) + varint(len(dims)) + dims])
    number, dtype, wire = (8, "<f8", 1) if double else (5, "<f4", 5)
    values = np.ascontiguousarray(array.reshape(-1), dtype=dtype)
    if packed:
        pieces += [key(number, 2) + varint(values.nbytes), values]
    else:  # one (key, value) record per number, as a writer that ignores [packed = true] would
        records = np.empty(values.size, [("key", "u1"), ("value", dtype)])
        records["key"], records["value"] = key(number, wire)[0], values
        pieces.append(records)
    return pieces


def layer(name: str, type_: str, blobs: list[list[Piece]], fmt: str) -> list[Piece]:
    """One layer message (its NetParameter field header included) in format V1, V2 or V0."""
    if fmt == "V2":  # LayerParameter: name 1, type 2 (string), blobs 7
        body = [string(1, name), string(2, type_)] + [p for b in blobs for p in submessage(7, b)]
        return submessage(100, body)
    if fmt == "V1":  # V1LayerParameter: name 4, type 5 (enum), blobs 6
        body = [string(4, name), key(5, 0) + varint(V1_ENUM[type_])] + [p for b in blobs for p in submessage(6, b)]
        return submessage(2, body)
    if fmt == "V0":  # V1LayerParameter holding a V0LayerParameter (field 1): name 1, type 2 (string), blobs 50
        body = [string(1, name), string(2, V0_NAMES[type_])] + [p for b in blobs for p in submessage(50, b)]
        return submessage(2, submessage(1, body))
    raise ValueError(fmt)


def caffe_layers(state: dict, *, bgr: bool = True) -> list[tuple[str, str, list[np.ndarray]]]:
    """(name, type, [weight, bias]) of a vggfeat VGG state dict as Caffe stores it: fc weights as
    InnerProduct matrices (out, C*k*k), pool5 flattened in C order; with `bgr`, conv1_1 takes BGR input."""
    layers = []
    names = [k[: -len(".weight")] for k in state if k.endswith(".weight")]
    for name in names:
        weight = np.asarray(state[f"{name}.weight"], dtype=np.float32)
        bias = np.asarray(state[f"{name}.bias"], dtype=np.float32)
        if name == "conv1_1" and bgr:
            weight = weight[:, ::-1]  # a net trained on BGR input: same net, input channels reversed
        if name.startswith("fc"):
            layers.append((name, "InnerProduct", [weight.reshape(weight.shape[0], -1), bias]))
        else:
            layers.append((name, "Convolution", [weight, bias]))
    return layers


def net_pieces(
    layers: list[tuple[str, str, list[np.ndarray]]],
    *,
    fmt: str = "V1",
    legacy: bool = True,
    packed: bool = True,
    double: bool = False,
    name: str = "VGG_ILSVRC_16_layers",
) -> list[Piece]:
    """A NetParameter with a ReLU after each weighted layer and a final Softmax, as a deploy net has."""
    pieces: list[Piece] = [string(1, name)] if name else []
    for layer_name, type_, arrays in layers:
        blobs = [blob(a, legacy=legacy, packed=packed, double=double) for a in arrays]
        pieces += layer(layer_name, type_, blobs, fmt)
        if layer_name != "fc8":
            pieces += layer(layer_name.replace("conv", "relu").replace("fc", "relu"), "ReLU", [], fmt)
    pieces += layer("prob", "Softmax", [], "V1" if fmt == "V0" else fmt)
    return pieces


def write_caffemodel(path: str | Path, pieces: list[Piece]) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        for p in pieces:
            f.write(np.ascontiguousarray(p).view(np.uint8) if isinstance(p, np.ndarray) else p)
    return path
