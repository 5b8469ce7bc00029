"""Benchmark: `--fast-decode` (JPEG draft decoding at 1/2..1/8 size, then rescale) against the default exact
rescale of the fully decoded image, on large photos (Appendix B's rescale to smallest side Q).

Photos: scikit-learn's china.jpg and flower.jpg upscaled with PIL to at least 2000 px (JPEG q=90). For each
scale set, prints the decode+rescale time per image (the loader's work), end-to-end `extract_features` time,
and the descriptor deviation of the fast path (max abs, lowest cosine) with both side by side and their ratio.

    python scripts/bench_decode.py --images 6 --scale-sets 256 256,384,512
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

import vggfeat
from vggfeat.features.extract import extract_features
from vggfeat.features.loader import ScaledImages
from vggfeat.features.protocol import Protocol

SIZES = [(2000, 2600), (2400, 3200), (2048, 3072)]  # (short, long) sides, landscape


def large_photos(folder: Path, n: int) -> list[Path]:
    photos = load_sample_images().images  # china 427x640, flower 427x640
    paths = []
    for i in range(n):
        short, long = SIZES[i % len(SIZES)]
        img = Image.fromarray(photos[i % 2]).resize((long, short), Image.BICUBIC)
        paths.append(folder / f"photo{i}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def decode_time(paths: list[Path], scales: tuple[int, ...], fast: bool, repeat: int) -> float:
    ds = ScaledImages(paths, Protocol(scales=scales, fast_decode=fast))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for k in range(len(ds)):
            assert ds[k][2] is None
        best = min(best, time.perf_counter() - t)
    return best / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--scale-sets", nargs="+", default=["256", "256,384,512"])
    ap.add_argument("--model", default="vgg_d")
    ap.add_argument("--width-mult", type=float, default=1.0, help="Net width (1 = the paper's VGG-16).")
    ap.add_argument("--repeat", type=int, default=3, help="Decode timings: best of this many passes.")
    ap.add_argument("--extract-repeat", type=int, default=2, help="Extraction timings: best of this many passes.")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    net = vggfeat.create_model(args.model, seed=0, width_mult=args.width_mult).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = large_photos(Path(tmp), args.images)
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        extract_features(net, arrays[:1], scales=(256,), device="cpu")  # warm-up: first-call costs out of the timings
        print(f"{len(paths)} photos, {', '.join('x'.join(map(str, Image.open(p).size)) for p in paths[:3])} ...")
        print(
            f"{'Q':<12} {'decode+rescale ms/img':>24} {'ratio':>6} {'extract s/img':>20} {'ratio':>6} "
            f"{'max |dev|':>10} {'min cos':>9}"
        )
        print(f"{'':<12} {'exact':>11} {'fast':>12} {'':>6} {'exact':>9} {'fast':>10}")
        for spec in args.scale_sets:
            scales = tuple(int(q) for q in spec.split(","))
            d_exact = decode_time(paths, scales, False, args.repeat)
            d_fast = decode_time(paths, scales, True, args.repeat)
            e_exact = e_fast = float("inf")
            for _ in range(args.extract_repeat):  # alternated, best of each: a shared machine's noise hits both
                t = time.perf_counter()
                exact = extract_features(net, paths, scales=scales, device="cpu")
                e_exact = min(e_exact, (time.perf_counter() - t) / len(paths))
                t = time.perf_counter()
                fast = extract_features(net, paths, scales=scales, device="cpu", fast_decode=True)
                e_fast = min(e_fast, (time.perf_counter() - t) / len(paths))
            same = extract_features(net, arrays, scales=scales, device="cpu")
            assert np.abs(same - exact).max() < 1e-5  # a path and its decoded array: the same descriptor
            cos = (exact * fast).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(fast, axis=1))
            print(
                f"{spec:<12} {1e3 * d_exact:11.1f} {1e3 * d_fast:12.1f} {d_exact / d_fast:5.2f}x "
                f"{e_exact:9.2f} {e_fast:10.2f} {e_exact / e_fast:5.2f}x {np.abs(exact - fast).max():10.4f} "
                f"{cos.min():9.5f}"
            )


if __name__ == "__main__":
    main()
