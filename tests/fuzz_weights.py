"""Seeded random mutations of small valid weight files, read the way `vggfeat weights info` reads them.

Run as a script by test_weights_fuzz.py (in a subprocess, so that a hang or a blowup fails the test instead of
stalling the suite): `python fuzz_weights.py SEED FOLDER FORMAT:COUNT ...` writes a valid tiny net as each FORMAT
(caffemodel, safetensors or pth), reads COUNT mutants of it and prints one JSON object: per mutant, what it ended
in (ok, one Error line, or any other exception: a bug), its time and the peak of what it allocated. FORMAT caffegrid
reads instead every field number / wire type / payload / nesting combination of a .caffemodel (grid()).
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from caffe_wire import caffe_layers, net_pieces, varint, write_caffemodel
from helpers import TINY

import vggfeat
from vggfeat.errors import VggfeatError
from vggfeat.models.convert import weights_info


def valid_file(fmt: str, folder: Path) -> bytes:
    model = vggfeat.create_model("vgg_a", seed=0, **{**TINY, "width_mult": 1 / 32, "fc_dim": 8, "num_classes": 3})
    if fmt == "caffemodel":
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        # unpacked floats and legacy dims (the 2014 release's blobs) give the reader its every path to walk
        path = write_caffemodel(folder / "valid.caffemodel", net_pieces(caffe_layers(state), packed=False))
    elif fmt == "pth":
        path = folder / "valid.pth"
        torch.save(model.state_dict(), path)
    else:
        path = vggfeat.save_weights(model, folder / "valid.safetensors")
    return path.read_bytes()


def varint_edit(data: bytearray, rng: random.Random) -> None:
    """Rewrite a byte that may be part of a varint (a key, a length) as another varint's first byte."""
    at = rng.randrange(len(data))
    data[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    if rng.random() < 0.5:  # a run of continuation bytes: an over-long varint or a length beyond the file
        data[at:at] = bytes([0xFF] * rng.randrange(1, 11))


EVIL = [-1, 0, 2**62, 2**64, 1.5, 1e400, True, None, "F32", "x", [], [-2, -1], [2**31, 2**31], [0.5], [[1]], {}]


def header_edit(data: bytes, rng: random.Random) -> bytes:
    """A safetensors file whose JSON header has one value replaced by one of another type or range (a shape,
    dtype, offset pair or the metadata), re-serialised with its size field fixed."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = rng.choice(sorted(header))
    if name == "__metadata__" or rng.random() < 0.1:
        header["__metadata__"] = rng.choice([*EVIL, ["a"], {"a": 1}, {"options": "{"}])
    else:
        entry = header[name]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        value = rng.choice(EVIL)
        if isinstance(entry.get(field), list) and entry[field] and rng.random() < 0.5:
            entry[field][rng.randrange(len(entry[field]))] = value  # one size or offset
        else:
            entry[field] = value
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def mutate(data: bytes, rng: random.Random, fmt: str) -> bytes:
    if fmt == "safetensors" and rng.random() < 0.5:
        data = header_edit(data, rng)
        if rng.random() < 0.5:
            return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        kind, at = rng.randrange(5), rng.randrange(len(out) or 1)
        if kind == 0 and out:  # bit flip
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            out = out[: rng.randrange(len(out) + 1)]
        elif kind == 2:  # inserted bytes
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif kind == 3 and out:  # deleted bytes
            del out[at : at + rng.randrange(1, 16)]
        elif out:
            varint_edit(out, rng)
    if rng.random() < 0.3 and len(out) > 16:  # header-size or first-field edits hit the parsers hardest
        out[rng.randrange(16)] = rng.randrange(256)
    return bytes(out)


# Every place a field can sit in a .caffemodel (the enclosing length-delimited fields, outermost first) with the
# field numbers that mean something there, plus one that does not; every wire type with payloads that fit, end
# early, or claim more than there is.
LEVELS = {
    (): (1, 2, 100, 3),  # NetParameter
    (2,): (1, 4, 5, 6, 9),  # V1 layer
    (100,): (1, 2, 7, 9),  # V2 layer
    (2, 1): (1, 2, 50, 9),  # V0 layer inside a V1 one
    (2, 6): (1, 2, 3, 4, 5, 6, 7, 8),  # blob of a V1 layer
    (100, 7): (1, 5, 7, 8),  # blob of a V2 layer
    (2, 1, 50): (1, 5, 8),  # blob of a V0 layer
    (100, 7, 7): (1, 2),  # BlobShape
}
PAYLOADS = {
    0: [b"\x00", b"\x01", b"\xff" * 9 + b"\x01", b"\xff" * 11],  # varints: 0, 1, 2^64 - 1, too long
    1: [bytes(8), bytes(3)],
    2: [b"\x00", b"\x04" + bytes(4), b"\x04" + bytes(2), b"\x80\x80\x80\x80\x80\x01"],  # lengths: 0, 4, 4 cut, 2^35
    5: [bytes(4), bytes(2)],
    **{wire: [b"", b"\x01"] for wire in (3, 4, 6, 7)},  # groups and wire types that do not exist
}


def grid() -> list[bytes]:
    """Each field number, wire type and payload of LEVELS and PAYLOADS, once and three times in a row, wrapped
    in its enclosing messages."""
    files = []
    for path, numbers in LEVELS.items():
        for number in numbers:
            for wire, payloads in PAYLOADS.items():
                for payload, times in ((p, t) for p in payloads for t in (1, 3)):
                    body = (varint(number << 3 | wire) + payload) * times
                    for outer in reversed(path):
                        body = varint(outer << 3 | 2) + varint(len(body)) + body
                    files.append(body)
    return files


def main(fmt: str, seed: int, count: int, folder: Path) -> dict:
    """Mutants of a valid file (count of them), or with fmt "caffegrid" the files of grid()."""
    rng = random.Random(seed)
    data = valid_file("caffemodel" if fmt == "caffegrid" else fmt, folder)
    mutants = grid() if fmt == "caffegrid" else (mutate(data, rng, fmt) for _ in range(count))
    fmt = "caffemodel" if fmt == "caffegrid" else fmt
    path = folder / f"mutant.{fmt}"
    weights_info(folder / f"valid.{fmt}")  # the valid file reads: warm every import before timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    tracemalloc.start()
    for i, mutant in enumerate(mutants):
        path.write_bytes(mutant)
        tracemalloc.reset_peak()
        held = tracemalloc.get_traced_memory()[0]  # what earlier work still holds: not this mutant's
        start = time.perf_counter()
        try:
            weights_info(path)
            outcome = "ok"
        except VggfeatError as e:
            outcome = "error" if "\n" not in str(e) and str(path) in str(e) else f"bad message: {e!r}"
        except Exception as e:  # noqa: BLE001 (anything else is what the test looks for)
            outcome = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - held
        results.append({"i": i, "size": len(mutant), "outcome": outcome, "seconds": seconds, "peak": peak})
        if outcome not in ("ok", "error"):
            (folder / f"failing-{i}.{fmt}").write_bytes(mutant)
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return {"size": len(data), "results": results, "rss_growth": rss_growth}


if __name__ == "__main__":
    np.seterr(all="raise")  # a float warning is a bug too
    seed, folder, runs = int(sys.argv[1]), Path(sys.argv[2]), [a.split(":") for a in sys.argv[3:]]
    out = {}
    for fmt, count in runs:
        (folder / fmt).mkdir()
        out[fmt] = main(fmt, seed, int(count), folder / fmt)
    print(json.dumps(out))
