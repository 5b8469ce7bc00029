"""Benchmark: VGG-16's 3x3 convs (+ ReLU) in fp32 CPU inference, Winograd F(4x4, 3x3) against oneDNN's direct
convolution, layer by layer at one scale, with each kernel's rounding error against a float64 conv2d.

The layer shapes are those of a 4:3 image rescaled to smallest side Q, with its mirror image in the batch
(Appendix B), as `vggfeat extract` runs them. Prints a markdown table.

    python scripts/bench_conv.py                 # Q=512: a 512 x 683 image and its mirror
    python scripts/bench_conv.py --q 256 --repeat 10
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.models import fastconv

# (layer, input channels, output channels, downsampling of the map)
LAYERS = [
    ("conv1_2", 64, 64, 1),
    ("conv2_1", 64, 128, 2),
    ("conv2_2", 128, 128, 2),
    ("conv3_1", 128, 256, 4),
    ("conv3_2", 256, 256, 4),
    ("conv4_1", 256, 512, 8),
    ("conv4_2", 512, 512, 8),
    ("conv5_x", 512, 512, 16),
]


def seconds(fn, repeat: int) -> float:
    fn(), fn()  # warm-up: primitive caches, the transformed kernel
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--q", type=int, default=512, help="smallest image side")
    p.add_argument("--views", type=int, default=2, help="batch: the image and its mirror")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    height, width = args.q, round(args.q * 4 / 3)
    torch.manual_seed(0)
    print(
        f"VGG-16 3x3 convs at Q={args.q} ({height} x {width}, {args.views} views), fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print(
        "| layer | C -> K | map | oneDNN direct + ReLU | Winograd F(4x4,3x3) | speed-up "
        "| rel. error direct / Winograd |"
    )
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for name, c, k, down in LAYERS:
            h, w = height // down, width // down  # each 2x2 max-pool floors
            x = torch.randn(args.views, c, h, w).relu().contiguous(memory_format=torch.channels_last)
            conv = nn.Conv2d(c, k, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight)
            conv = conv.to(memory_format=torch.channels_last)
            ref = F.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1))
            direct = lambda conv=conv, x=x: fastconv.onednn_conv_relu(conv, x)  # noqa: E731
            winograd = lambda conv=conv, x=x: fastconv.winograd_conv3x3_relu(x, conv.weight, conv.bias)  # noqa: E731
            t_direct, t_winograd = seconds(direct, args.repeat), seconds(winograd, args.repeat)
            print(
                f"| {name} | {c} -> {k} | {args.views} x {h} x {w} | {1e3 * t_direct:.1f} ms | "
                f"{1e3 * t_winograd:.1f} ms | {t_direct / t_winograd:.2f}x | "
                f"{relative_error(direct(), ref):.1e} / {relative_error(winograd(), ref):.1e} |"
            )


if __name__ == "__main__":
    main()
