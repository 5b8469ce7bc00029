"""Benchmark: reading a full-size Caffe model - vggfeat's wire-format reader against baselines.

Writes a net D caffemodel the way the 2014 release is laid out (V1 `layers`, legacy num/channels/height/width
blobs, packed floats, ReLU/pool/dropout layers between; random weights, ~553 MB) to a temporary folder, then
in a fresh process each: `read_caffemodel` (our reader), `load_model` (reader + building the net), np.fromfile
of the same bytes (the I/O floor) and a naive per-float parse (one Python float per value, as a generic
protobuf decoder gives) of fc7 extrapolated to the whole file. Prints time and peak extra resident memory
(VmHWM minus the process's RSS after imports) against the file size. The file is deleted afterwards.

    python scripts/bench_caffe.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test-side writer (tests/caffe_wire.py)
MB = 1e6


def write_net_d(path: Path, seed: int = 0) -> int:
    """Net D as Caffe stores it, written layer by layer (only one layer's weights in memory at a time)."""
    from caffe_wire import blob, layer, string

    from vggfeat.models.vgg import CONFIGS

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:

        def emit(pieces):
            for p in pieces:
                f.write(p.view(np.uint8) if isinstance(p, np.ndarray) else p)

        emit([string(1, "VGG_ILSVRC_16_layers")])
        c_in = 3
        for s, stage in enumerate(CONFIGS["D"], start=1):
            for i, (c, k) in enumerate(stage, start=1):
                weight = rng.standard_normal((c, c_in, k, k), dtype=np.float32) * 0.01
                emit(
                    layer(
                        f"conv{s}_{i}", "Convolution", [blob(weight, legacy=True), blob(np.zeros(c), legacy=True)], "V1"
                    )
                )
                emit(layer(f"relu{s}_{i}", "ReLU", [], "V1"))
                c_in = c
            emit(layer(f"pool{s}", "Pooling", [], "V1"))
        for name, n_in, n_out in (("fc6", 512 * 7 * 7, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)):
            weight = rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.01
            emit(layer(name, "InnerProduct", [blob(weight, legacy=True), blob(np.zeros(n_out), legacy=True)], "V1"))
            del weight
            if name != "fc8":
                emit(layer(name.replace("fc", "relu"), "ReLU", [], "V1"))
                emit(layer(name.replace("fc", "drop"), "Dropout", [], "V1"))
        emit(layer("prob", "Softmax", [], "V1"))
    return path.stat().st_size


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def child(method: str, path: str) -> dict:
    """One measurement in this (fresh) process: seconds and peak resident memory above the start."""
    import torch

    import vggfeat
    from vggfeat.models.caffe import parse_caffemodel, read_caffemodel

    torch.set_num_threads(1)
    base = rss_mb("VmRSS")
    t = time.perf_counter()
    extra = {}
    if method == "read_caffemodel":
        tensors, _ = read_caffemodel(path)
        extra["values"] = sum(v.numel() for v in tensors.values())
    elif method == "load_model":
        model = vggfeat.load_model(path)
        extra["values"] = sum(p.numel() for p in model.parameters())
    elif method == "fromfile":
        extra["values"] = np.fromfile(path, dtype=np.uint8).size // 4
    elif method == "naive_fc7":
        # a generic decoder's way: fc7's packed floats turned into Python floats one at a time
        raw = next(la for la in parse_caffemodel(path).layers if la.name == "fc7").blobs[0].tobytes()
        base = rss_mb("VmRSS")  # the parse above raised the high-water mark: measure what the list holds
        t = time.perf_counter()
        values = [struct.unpack_from("<f", raw, 4 * i)[0] for i in range(len(raw) // 4)]
        seconds = time.perf_counter() - t
        return {"method": method, "seconds": seconds, "peak_extra_mb": rss_mb("VmRSS") - base, "values": len(values)}
    seconds = time.perf_counter() - t
    return {"method": method, "seconds": seconds, "peak_extra_mb": rss_mb("VmHWM") - base, **extra}


def run_child(method: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=2, help="Best of this many runs of each reader.")
    ap.add_argument("--tmp", default=None, help="Folder for the temporary caffemodel (default: the system's).")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "VGG_ILSVRC_16_layers.caffemodel"
        t = time.perf_counter()
        size = write_net_d(path)
        print(f"wrote {path.name}: {size / MB:.1f} MB in {time.perf_counter() - t:.1f} s (page cache warm)")
        total_values = None
        rows = {}
        for method in ("fromfile", "read_caffemodel", "load_model", "naive_fc7"):
            runs = [run_child(method, path) for _ in range(1 if method == "naive_fc7" else args.repeat)]
            rows[method] = min(runs, key=lambda r: r["seconds"])
            if method == "read_caffemodel":
                total_values = rows[method]["values"]
        naive = rows.pop("naive_fc7")
        scale = total_values / naive["values"]  # fc7 (16.8 M floats) extrapolated to the whole net
        rows[f"naive per-float (fc7 x{scale:.1f})"] = {
            "seconds": naive["seconds"] * scale,
            "peak_extra_mb": naive["peak_extra_mb"] * scale,
        }
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"file {size / MB:.1f} MB, {total_values / 1e6:.1f} M values\n")
    print(f"{'method':<32}{'seconds':>9}{'MB/s':>9}{'peak extra MB':>15}{'x file':>8}{'time vs ours':>14}")
    ours = rows["read_caffemodel"]["seconds"]
    for name, r in rows.items():
        print(
            f"{name:<32}{r['seconds']:>9.2f}{size / MB / r['seconds']:>9.0f}{r['peak_extra_mb']:>15.0f}"
            f"{r['peak_extra_mb'] * MB / size:>8.2f}{r['seconds'] / ours:>13.1f}x"
        )


if __name__ == "__main__":
    main()
