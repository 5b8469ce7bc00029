"""Training benchmarks: the training step's images/s for nets A-E at 224 with bf16 autocast +
channels_last on and off, and the data pipeline's images/s per worker (one process) against a
torchvision-transforms baseline doing the same augmentation (Sect. 3.1): JPEGs of ImageNet's usual
500 x 375 size cut from real photos, one thread (as in a DataLoader worker), best of three passes each.
With `--contend K`: only the CPU training step of a narrow net, sized as the `vggfeat` command sizes itself
(utils.cpus: passive OpenMP waits, threads from the usable CPUs) against torch's defaults (a user's script),
each in a fresh process, quiet and beside K busy processes.

    python scripts/bench_train.py [--device auto] [--batch 64] [--steps 5] [--nets vgg_a,...,vgg_e]
    python scripts/bench_train.py --contend 2 [--net vgg_a --width 0.25 --size 128 --batch 16 --steps 8]
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
import torch
from contention import Contenders


def forward_macs(name: str, size: int = 224) -> int:
    """Multiply-adds of one forward pass of the classification net on a size x size crop (convs and the dense head)."""
    import vggfeat

    model = vggfeat.create_model(name, device="meta")
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.shape[2] * output.shape[3] * module.in_channels * module.out_channels * k
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    if total == 0:  # a dense head not built of Conv2d/Linear modules would be missed: fail loudly
        raise RuntimeError(f"no multiply-adds counted for {name}")
    return total


def bench_step(name: str, device: torch.device, batch: int, steps: int, fast: bool, compile: bool = False) -> float:
    import vggfeat

    model = vggfeat.create_model(name).to(device)
    if fast and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if fast and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (cuDNN autotuning, compilation)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def bench_ours(paths, scale, crop) -> tuple[float, float]:
    """(images/s of a loader worker's work, images/s with the batched normalisation on this CPU too).

    A worker decodes, crops, draws the colour-shift coefficients and collates uint8 crops; training then
    converts, colour-shifts and mean-subtracts the whole batch in one op on the device (the GPU for real
    runs), which the second figure charges to this CPU core as well."""
    from vggfeat.data.images import load_rgb_tensor
    from vggfeat.data.transforms import normalize_batch, sample_rng, train_crop
    from vggfeat.train.recipe import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN

    t = time.perf_counter()
    crops, alphas = [], []
    for i, p in enumerate(paths):
        rng = sample_rng(0, 0, i)
        crops.append(train_crop(load_rgb_tensor(p, min_side=scale[1]), rng, scale=scale, crop=crop))
        alphas.append(torch.from_numpy(rng.normal(0, 0.1, 3).astype(np.float32)))
    batch, alpha = torch.stack(crops), torch.stack(alphas)  # the DataLoader's collate, in the worker
    worker = time.perf_counter() - t
    normalize_batch(batch, IMAGENET_MEAN, IMAGENET_EIGVAL, IMAGENET_EIGVEC, alpha)
    return len(paths) / worker, len(paths) / (time.perf_counter() - t)


def bench_torchvision(paths, scale, crop) -> float:
    from PIL import Image
    from torchvision import transforms as T

    from vggfeat.train.recipe import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN

    vec, val = torch.tensor(IMAGENET_EIGVEC), torch.tensor(IMAGENET_EIGVAL)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)

    def lighting(x):  # AlexNet PCA colour shift, 0-255 units, then mean subtraction
        return x * 255.0 + (vec @ (torch.randn(3) * 0.1 * val)).view(3, 1, 1) - mean

    tf = T.Compose(
        [
            T.RandomChoice([T.Resize(s) for s in range(scale[0], scale[1] + 1)]),
            T.RandomCrop(crop),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Lambda(lighting),
        ]
    )
    t = time.perf_counter()
    out = [tf(Image.open(p).convert("RGB")) for p in paths]
    torch.stack(out)
    return len(paths) / (time.perf_counter() - t)


def narrow_step_times(args: argparse.Namespace) -> list[float]:
    """Seconds per training step (fp32, SGD with momentum, cross-entropy) of a narrow net on the CPU, one
    figure per timed step after two warm-ups; the input stays in memory, so this is the compute alone."""
    import vggfeat

    torch.manual_seed(0)
    fc6 = args.size // 32  # fc6 spans all of pool5
    model = vggfeat.create_model(args.net, width_mult=args.width, fc_dim=256, fc6_kernel=fc6, num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 100, (args.batch,))
    times = []
    for k in range(args.steps + 2):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= 2:
            times.append(time.perf_counter() - t)
    return times


def share_side(side: str, contend: int) -> dict:
    """One side's step times in a fresh process (its own OpenMP settings), beside `contend` busy processes."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    if side == "ours":
        from vggfeat.utils.cpus import quiet_env, share_cpus

        quiet_env(env, cpus=share_cpus(0).threads)  # what the vggfeat command does before torch loads
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.json"
        cmd = [sys.executable, __file__, "--side", side, "--side-out", str(out), *sys.argv[1:]]
        with Contenders(contend):
            subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text())


def run_side(args: argparse.Namespace) -> None:
    if args.side == "ours":
        from vggfeat.utils.cpus import prepare_process
        from vggfeat.utils.heap import keep_freed_memory

        prepare_process()  # torch is loaded here: sets the compute threads (the env already has the rest)
        keep_freed_memory()  # as vggfeat.train does on the CPU
    times = narrow_step_times(args)
    result = {"times": times, "threads": torch.get_num_threads(), "wait": os.environ.get("OMP_WAIT_POLICY", "-")}
    Path(args.side_out).write_text(json.dumps(result))


def contention_table(args: argparse.Namespace) -> None:
    print(
        f"CPU training step, {args.net} x{args.width} width, {args.size} px, batch {args.batch}, fp32, "
        f"{args.steps} timed steps (median s/step; min-max), {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start"
    )
    print(f"{'busy procs':<11} {'vggfeat sizing':>24} {'torch defaults':>24} {'ratio':>7}")
    for contend in sorted({0, args.contend}):
        row = {}
        for side in ("ours", "torch"):
            r = share_side(side, contend)
            t = sorted(r["times"])
            row[side] = (t[len(t) // 2], t[0], t[-1], r["threads"], r["wait"])
        cells = [f"{m:6.3f} ({lo:.3f}-{hi:.3f}) {th}t" for m, lo, hi, th, _ in row.values()]
        ratio = row["torch"][0] / row["ours"][0]
        print(f"{contend:<11} {cells[0]:>24} {cells[1]:>24} {ratio:6.2f}x")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, help="default 64 (16 with --contend)")
    ap.add_argument("--steps", type=int, help="default 5 (8 with --contend)")
    ap.add_argument("--nets", default="vgg_a,vgg_b,vgg_c,vgg_d,vgg_e")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--skip-step", action="store_true", help="data pipeline only")
    ap.add_argument("--fp32-only", action="store_true", help="skip bf16+channels_last (CPU bf16 is emulated, slow)")
    ap.add_argument("--compile", default="", help="nets to time once more with torch.compile (bf16+cl), e.g. vgg_d")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument(
        "--contend",
        type=int,
        default=-1,
        help="CPU step only: vggfeat's sizing vs torch's, quiet and beside K busy processes",
    )
    ap.add_argument("--net", default="vgg_a", help="with --contend: the net")
    ap.add_argument("--width", type=float, default=0.25, help="with --contend: width multiplier")
    ap.add_argument("--size", type=int, default=128, help="with --contend: input side (a multiple of 32)")
    ap.add_argument("--side", choices=("ours", "torch"), help=argparse.SUPPRESS)  # a side's own process
    ap.add_argument("--side-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contend >= 0:
        args.batch, args.steps = args.batch or 16, args.steps or 8
        return run_side(args) if args.side else contention_table(args)
    args.batch, args.steps = args.batch or 64, args.steps or 5
    from vggfeat.utils.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training runs it: one crop size, autotuned once
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    if not args.skip_step:
        print(f"\ntraining step at 224, batch {args.batch}, {args.steps} steps (images/s)")
        print("TFLOP/s counts 3x the forward multiply-adds x 2 (forward + backward), the usual training estimate")
        print(f"{'net':<8} {'fp32':>10} {'bf16+cl':>10} {'ratio':>7} {'bf16 TFLOP/s':>13} {'% of peak':>10}")
        for name in args.nets.split(","):
            flops = 6 * forward_macs(name)  # per image
            base = bench_step(name, device, args.batch, args.steps, fast=False)
            if args.fp32_only:
                print(f"{name:<8} {base:10.2f} {'-':>10} {'-':>7} {'-':>13} {'-':>10}")
                continue
            fast = bench_step(name, device, args.batch, args.steps, fast=True)
            tflops = fast * flops / 1e12
            print(
                f"{name:<8} {base:10.2f} {fast:10.2f} {fast / base:6.2f}x {tflops:13.1f} "
                f"{100 * tflops / args.peak_tflops:9.1f}%"
            )
        for name in filter(None, args.compile.split(",")):
            flops = 6 * forward_macs(name)
            eager = bench_step(name, device, args.batch, args.steps, fast=True)
            compiled = bench_step(name, device, args.batch, args.steps, fast=True, compile=True)
            print(
                f"{name} torch.compile (bf16+cl): {compiled:.2f} images/s against eager {eager:.2f} "
                f"({compiled / eager:.2f}x), {compiled * flops / 1e12:.1f} TFLOP/s, "
                f"{100 * compiled * flops / 1e12 / args.peak_tflops:.1f}% of peak"
            )
    torch.set_num_threads(1)  # a DataLoader worker is one single-threaded process
    with tempfile.TemporaryDirectory() as tmp:
        from vggfeat.data.photos import IMAGENET_SIZES, photo_jpegs

        paths = photo_jpegs(Path(tmp), args.images, IMAGENET_SIZES)
        print(f"\ndata pipeline, one worker (1 thread), {args.images} photo JPEGs of 500x375 -> 224 crops (images/s)")
        print(
            f"{'S':<12} {'torchvision':>12} {'vggfeat worker':>15} {'ratio':>7} {'+ normalise on CPU':>19} {'ratio':>7}"
        )
        for scale in ((256, 256), (384, 384), (256, 512)):
            bench_ours(paths[:4], scale, 224)  # warm-up
            base = max(bench_torchvision(paths, scale, 224) for _ in range(3))
            runs = [bench_ours(paths, scale, 224) for _ in range(3)]
            ours, ours_norm = max(r[0] for r in runs), max(r[1] for r in runs)
            print(
                f"{str(list(scale)):<12} {base:12.1f} {ours:15.1f} {ours / base:6.2f}x {ours_norm:19.1f} "
                f"{ours_norm / base:6.2f}x"
            )


if __name__ == "__main__":
    main()
