"""Seeded random mutations of small valid weight files, read the way `vggfeat weights info` reads them.

Run as a script by test_weights_fuzz.py (in a subprocess, so that a hang or a blowup fails the test instead of
stalling the suite): `python fuzz_weights.py FORMAT SEED COUNT FOLDER` writes a valid tiny net as FORMAT
(caffemodel, safetensors or pth), reads COUNT mutants of it and prints one JSON object: per mutant, what it ended in
(ok, one Error line, or any other exception: a bug), its time and the peak of what it allocated.
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
from caffe_wire import caffe_layers, net_pieces, write_caffemodel
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


def main(fmt: str, seed: int, count: int, folder: Path) -> dict:
    rng = random.Random(seed)
    data = valid_file(fmt, folder)
    path = folder / f"mutant.{fmt}"
    weights_info(folder / f"valid.{fmt}")  # the valid file reads: warm every import before timing
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = []
    tracemalloc.start()
    for i in range(count):
        mutant = mutate(data, rng, fmt)
        path.write_bytes(mutant)
        tracemalloc.reset_peak()
        start = time.perf_counter()
        try:
            weights_info(path)
            outcome = "ok"
        except VggfeatError as e:
            outcome = "error" if "\n" not in str(e) and str(path) in str(e) else f"bad message: {e!r}"
        except Exception as e:  # noqa: BLE001 (anything else is what the test looks for)
            outcome = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        results.append({"i": i, "size": len(mutant), "outcome": outcome, "seconds": seconds, "peak": peak})
        if outcome not in ("ok", "error"):
            (folder / f"failing-{i}.{fmt}").write_bytes(mutant)
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return {"size": len(data), "results": results, "rss_growth": rss_growth}


if __name__ == "__main__":
    np.seterr(all="raise")  # a float warning is a bug too
    fmt, seed, count, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    print(json.dumps(main(fmt, seed, count, folder)))
