"""Benchmark: peak memory of `vggfeat extract` and of a full read of the store, at two corpus sizes.

The point is the bookkeeping, not the convs: tiny 32-px PNGs through a tiny VGG (fc6 spans pool5's 1x1), so
what grows with N is only what the store writer and reader keep per row. Each measurement runs in a fresh
process (its peak RSS, VmHWM); the larger corpus should stay within 100 MB of the smaller.

    python scripts/bench_store.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vggfeat

TINY32 = dict(width_mult=1 / 16, fc_dim=32, fc6_kernel=1, num_classes=10, init="glorot")

# VmHWM, this process's own peak: getrusage's ru_maxrss keeps the forking parent's peak across exec on Linux
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
EXTRACT = f"""
import sys
from vggfeat.cli.main import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_KB", {PEAK}, file=sys.stderr)
"""

READ = f"""
import sys
import numpy as np
import vggfeat
store = vggfeat.load_store(sys.argv[1])
rows, total, paths = 0, 0.0, 0
for block, block_paths in store.blocks():
    rows += len(block)
    total += float(np.abs(block).sum())
    paths += len(block_paths)
assert rows == paths == len(store), (rows, paths, len(store))
print("ROWS", rows, "PEAK_KB", {PEAK})
"""


def make_images(folder: Path, n: int) -> None:
    """n distinct 32 x 32 PNGs in subfolders of 1,000 (a file system's comfortable folder size)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{i:07d}.png", compress_level=1)


def run(code: str, args: list[str]) -> tuple[float, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"failed: {args}\n{p.stderr[-2000:]}")
    return seconds, p.stdout, p.stderr


def peak_mb(text: str) -> float:
    return int(text.split("PEAK_KB")[-1].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="corpus sizes, comma-separated")
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY32), tmp / "tiny.safetensors")
        results = []
        for n in sizes:
            images, out = tmp / f"imgs{n}", tmp / f"store{n}"
            t0 = time.perf_counter()
            make_images(images, n)
            made = time.perf_counter() - t0
            cmd = ["extract", str(images), "-o", str(out), "--weights", str(weights), "--scales", "32", "--no-flip"]
            cmd += ["--workers", "0", "--quiet", "--batch-size", "64", "--shard-size", str(args.shard_size)]
            ext_s, _, err = run(EXTRACT, cmd)
            read_s, read_out, _ = run(READ, [str(out)])
            row = {
                "n": n,
                "make_images_s": round(made, 1),
                "extract_s": round(ext_s, 1),
                "extract_peak_mb": round(peak_mb(err), 1),
                "read_s": round(read_s, 1),
                "read_peak_mb": round(peak_mb(read_out), 1),
                "shards": len(list((out / "emb").glob("*.npy"))),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        if len(results) >= 2:
            a, b = results[0], results[-1]
            for what in ("extract_peak_mb", "read_peak_mb"):
                print(
                    f"{what}: {b['n']} images {b[what]} MB vs {a['n']} images {a[what]} MB: +{b[what] - a[what]:.1f} MB"
                )


if __name__ == "__main__":
    main()
