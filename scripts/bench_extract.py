"""Benchmark: `vggfeat extract` against a naive torchvision baseline on the same images and weights.

The baseline is what a user would write from the paper's Appendix B with torchvision: one image at a
time, PIL resizing, one forward per scale and per flip, FC layers applied as convolutions by hand, torch's
default threads. Each side runs in a process of its own (vggfeat's sized as the `vggfeat` command sizes
itself: utils.cpus), optionally beside K busy processes (`--contend K`, another user's jobs on the same
cores). Prints both throughputs, their ratio, the largest deviation between the two sets of descriptors,
vggfeat's distinct forward shapes per scale and its loader share (time waiting for decoded images) and,
on CUDA, the fraction of the card's bf16 peak reached (multiply-adds of the dense protocol).

    python scripts/bench_extract.py --images 16 --scales 256,384,512            # full-size VGG-16
    python scripts/bench_extract.py --images 8 --contend 2                     # beside 2 busy processes
    python scripts/bench_extract.py --device cuda --images 2048 --batch-size 32 --workers 12 --chunk-size 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from contention import Contenders
from PIL import Image, ImageOps

import vggfeat
from vggfeat.data.photos import VOC_SIZES, photo_jpegs
from vggfeat.features.extract import extract_to_store
from vggfeat.features.protocol import Protocol, scaled_size
from vggfeat.features.runtime import Runtime
from vggfeat.utils.device import resolve_device


def baseline(tv: torch.nn.Module, paths: list[Path], scales: list[int], device: torch.device) -> np.ndarray:
    """One image at a time, one forward per scale and flip, PIL resizing: the naive Appendix B."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    fc6_w = tv.classifier[0].weight.view(4096, 512, 7, 7)
    fc7_w = tv.classifier[3].weight.view(4096, 4096, 1, 1)
    out = []
    with torch.no_grad():
        for path in paths:
            img = Image.open(path).convert("RGB")
            per_scale = []
            for q in scales:
                h, w = scaled_size(img.height, img.width, q)
                resized = img.resize((w, h), Image.BILINEAR)
                pooled = []
                for view in (resized, ImageOps.mirror(resized)):
                    x = torch.from_numpy(np.array(view)).permute(2, 0, 1)[None].to(device).float() / 255
                    x = (x - mean) / std
                    x = tv.features(x)
                    x = F.relu(F.conv2d(x, fc6_w, tv.classifier[0].bias))
                    x = F.relu(F.conv2d(x, fc7_w, tv.classifier[3].bias))
                    pooled.append(x.mean(dim=(2, 3))[0])
                per_scale.append((pooled[0] + pooled[1]) / 2)
            d = torch.stack(per_scale).mean(0)
            out.append((d / d.norm()).cpu().numpy())
    return np.stack(out)


def loader_alone(paths: list[Path], protocol: Protocol, runtime: Runtime, device: torch.device) -> None:
    """The loader's share: decoding, rescaling to every scale and pinning, with no net behind it."""
    from vggfeat.features.loader import ScaledImages, make_loader

    start = time.perf_counter()
    loader = make_loader(
        ScaledImages(paths, protocol), runtime.workers, pin_memory=device.type == "cuda", device=device.type
    )
    n = sum(len(batch) for batch in loader)
    seconds = time.perf_counter() - start
    print(f"loader alone    : {seconds:8.2f} s  {n / seconds:8.2f} images/s ({runtime.workers} workers)")


def profile(
    paths: list[Path], out: Path, protocol: Protocol, runtime: Runtime, weights: Path, device: torch.device
) -> None:
    """torch.profiler over a fresh extraction: the ops that took the time, on the device and on the host."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        extract_to_store(paths, out, protocol, runtime, models=[("vgg16", weights)], progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    print(f"profiled run    : {len(paths)} images in {time.perf_counter() - start:.2f} s (profiler overhead included)")
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def dense_macs(model: torch.nn.Module, height: int, width: int, scales: list[int], layer: str = "fc7") -> int:
    """Multiply-adds of the dense protocol for one image (all scales, with flips)."""
    total = 0
    for q in scales:
        h, w = scaled_size(height, width, q)
        x = torch.zeros(1, 3, h, w, device="meta")
        for name, act in model.to("meta").iter_layers(x, until=layer):
            module = getattr(model, name)
            if isinstance(module, torch.nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                total += act.shape[2] * act.shape[3] * module.in_channels * module.out_channels * k
    return 2 * total  # the image and its mirror


def run_side(side: str, args: argparse.Namespace, tmp: Path, contend: int) -> dict:
    """One side in a fresh process (its own threads and OpenMP settings), beside `contend` busy processes."""
    env = dict(os.environ)
    if side == "ours":
        from vggfeat.utils.cpus import quiet_env

        quiet_env(env)  # what the vggfeat command does before torch loads
    cmd = [sys.executable, __file__, "--side", side, "--tmp", str(tmp), *sys.argv[1:]]
    with Contenders(contend):
        subprocess.run(cmd, env=env, check=True)
    return json.loads((tmp / f"{side}.json").read_text())


def side_ours(args: argparse.Namespace, tmp: Path, paths: list[Path], device: torch.device) -> dict:
    import vggfeat.features.extract as extract_module

    engines = []

    class Capturing(extract_module.DescriptorEngine):  # the engine extract_to_store makes, for its report
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            engines.append(self)

    extract_module.DescriptorEngine = Capturing
    scales = [int(s) for s in args.scales.split(",")]
    weights = tmp / "vgg16.pth"
    # warm-up on two images (cuDNN autotuning, oneDNN primitive caches), then the timed run
    protocol = Protocol(scales=tuple(scales))
    runtime = Runtime(
        device=str(device),
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        winograd=args.winograd,
        cudnn_benchmark=args.cudnn_benchmark == "on",
        compile=args.compile,
        gpu_decode=args.gpu_decode,
    )
    extract_to_store(
        paths[:2], tmp / "warm", protocol, replace(runtime, workers=0), models=[("vgg16", weights)], progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    store = extract_to_store(
        paths,
        tmp / "store",
        protocol,
        runtime,
        models=[("vgg16", weights)],
        progress=False,
        chunk_size=args.chunk_size,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    np.save(tmp / "ours.npy", np.asarray(store.features))
    engine = engines[-1]
    if args.loader:
        loader_alone(paths, protocol, runtime, device)
    if args.profile:
        profile(paths[: args.profile], tmp / "profiled", protocol, runtime, weights, device)
    return {
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "shapes": engine.distinct_shapes(),
        "loader_wait": engine.loader_wait_s,
        "batches": len(engine.shapes_run),
    }


def side_naive(args: argparse.Namespace, tmp: Path, paths: list[Path], device: torch.device) -> dict:
    scales = [int(s) for s in args.scales.split(",")]
    tv = torchvision.models.vgg16(weights=None).eval()
    tv.load_state_dict(torch.load(tmp / "vgg16.pth"))
    tv = tv.to(device)
    baseline(tv, paths[:1], scales, device)  # warm-up
    start = time.perf_counter()
    base = baseline(tv, paths, scales, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    np.save(tmp / "naive.npy", base)
    return {"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--scales", default="256,384,512")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=256, help="images per store chunk (batches never span two)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="vggfeat's compute precision (auto: bf16 on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM: 989)")
    p.add_argument(
        "--no-winograd",
        dest="winograd",
        action="store_false",
        help="vggfeat with direct convolutions only (no Winograd F(4x4,3x3) on the CPU)",
    )
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--cudnn-benchmark",
        choices=("on", "off"),
        default="off",
        help="vggfeat's cuDNN autotuning, for the plan's recurring bucket shapes only",
    )
    p.add_argument("--compile", action="store_true", help="vggfeat with torch.compile per bucket shape")
    p.add_argument("--gpu-decode", action="store_true", help="vggfeat decoding JPEGs on the GPU (CUDA only)")
    p.add_argument("--contend", type=int, default=0, help="run K busy processes beside each side")
    p.add_argument("--image-dir", help="keep the generated images here and reuse them in later runs")
    p.add_argument("--save", help="save vggfeat's descriptors to this .npy file (to compare runs)")
    p.add_argument("--loader", action="store_true", help="also time the loader alone (decode, rescale, pin)")
    p.add_argument("--profile", type=int, default=0, help="profile vggfeat on this many images; print the top ops")
    p.add_argument("--side", choices=("ours", "naive"), help=argparse.SUPPRESS)  # a side's own process
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    device = resolve_device(args.device)

    if args.side:
        tmp = Path(args.tmp)
        paths = sorted((tmp / "imgs").glob("*.jpg"))
        result = (side_ours if args.side == "ours" else side_naive)(args, tmp, paths, device)
        (tmp / f"{args.side}.json").write_text(json.dumps(result))
        return

    # this process only prepares the inputs and waits: one thread, so that no OpenMP thread of its own (spinning
    # after its last parallel region under torch's default wait policy) shares the cores with the timed sides
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = Path(args.image_dir) if args.image_dir else tmp / "imgs"
        paths = sorted(images.glob("*.jpg")) if images.is_dir() else []
        if len(paths) != args.images:
            paths = photo_jpegs(images, args.images, VOC_SIZES)
        if images != tmp / "imgs":
            (tmp / "imgs").symlink_to(images.resolve())
        torch.save(tv.state_dict(), tmp / "vgg16.pth")  # the same weights for both, torchvision layout
        print(
            f"{args.images} VOC-sized images, scales {scales}, full-size VGG-16 fc7, device {device} "
            f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
            f"torch {torch.__version__}, {os.cpu_count()} CPUs"
            f"{'' if args.winograd or device.type != 'cpu' else ', direct convolutions only'}"
            f"{f', beside {args.contend} busy processes' if args.contend else ''}; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start"
        )
        ours = run_side("ours", args, tmp, args.contend)
        ours_ips = args.images / ours["seconds"]
        print(
            f"vggfeat extract : {ours['seconds']:8.2f} s  {ours_ips:8.2f} images/s ({ours['threads']} threads, "
            f"cuDNN autotuning {args.cudnn_benchmark}{', compiled' if args.compile else ''}"
            f"{', GPU decode' if args.gpu_decode else ''})"
        )
        print(
            f"forward shapes  : {ours['batches']} batches, distinct (batch, H, W) per scale "
            f"{', '.join(f'Q={scales[int(s)]}: {n}' for s, n in ours['shapes'].items())}"
        )
        print(
            f"loader share    : {ours['loader_wait']:.2f} s waiting for decoded images "
            f"({100 * ours['loader_wait'] / ours['seconds']:.1f}% of the run)"
        )
        sizes = [Image.open(p).size[::-1] for p in paths]
        per_size = {hw: dense_macs(vggfeat.create_model("vgg16", device="meta"), *hw, scales) for hw in set(sizes)}
        macs = np.mean([per_size[hw] for hw in sizes])
        achieved = 2 * macs * ours_ips / 1e12
        print(f"dense protocol  : {macs / 1e9:.0f} GMACs per image -> {achieved:.2f} TFLOP/s achieved")
        if device.type == "cuda":
            print(" " * 18 + f"{100 * achieved / args.peak_tflops:.1f}% of a {args.peak_tflops:.0f} TFLOP/s bf16 peak")
        if args.save:
            shutil.copyfile(tmp / "ours.npy", args.save)
        if args.skip_baseline:
            return
        naive = run_side("naive", args, tmp, args.contend)
        base_ips = args.images / naive["seconds"]
        print(
            f"naive baseline  : {naive['seconds']:8.2f} s  {base_ips:8.2f} images/s ({naive['threads']} threads, "
            "torch's defaults: no cuDNN autotuning)"
        )
        a, b = np.load(tmp / "ours.npy"), np.load(tmp / "naive.npy")
        print(
            f"speed-up        : {ours_ips / base_ips:.2f}x   max |ours - baseline| = {np.abs(a - b).max():.2e} "
            f"(L2-normalised {a.shape[1]}-D descriptors); load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end"
        )


if __name__ == "__main__":
    main()
