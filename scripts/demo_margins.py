"""Measure what `vggfeat demo --quick` exists to show: trained net D minus the random net D, in
linear-SVM and kNN mAP on the generated voc2007, seed by seed. Each seed runs the whole quick demo in a fresh
temporary folder (training included), so the times are a user's first run. Prints a markdown table, then the
smallest and mean margins. `--recipes DIR` measures a candidate copy of recipes/demo (with ../train beside it).
`--random-draws K` also scores K more random nets per seed (other init seeds, same target, same protocol) and
prints their spread: how much of a margin is the one random net's luck rather than the trained net.

    python scripts/demo_margins.py --seeds 0-4
    python scripts/demo_margins.py --seeds 0-9 --recipes /tmp/candidate/demo
    python scripts/demo_margins.py --seeds 0-9 --random-draws 4
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0-4", "0,3,7" or both ("0-2,5")."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += range(int(lo), int(hi or lo) + 1)
    return seeds


def random_draws(out: Path, seed: int, report: dict, draws: int) -> list[tuple[float, float]]:
    """(linear, kNN) mAP of `draws` more random twins of the seed's trained net D, each through the demo's
    extraction and probes on its target; init seeds continue the demo's own (random_seed + seed + 1000 i)."""
    import torch

    from vggfeat.benchmarks.base import benchmark_images
    from vggfeat.benchmarks.registry import load_benchmark
    from vggfeat.demo.config import load_demo_config
    from vggfeat.demo.pipeline import random_twin
    from vggfeat.features.protocol import Protocol
    from vggfeat.features.runtime import Runtime
    from vggfeat.probes.features import ExtractionSettings, cached_store
    from vggfeat.probes.run import run_knn_probe, run_linear_probe
    from vggfeat.train.recipe import load_recipe

    cfg, path = load_demo_config(quick=True)
    torch.set_num_threads(cfg.threads)
    splits = load_benchmark("voc2007", out / (f"target-seed{seed}" if seed else "target"))
    images = benchmark_images(splits)
    trained = Path(report["training"]["net_d"]["run"]) / "model.safetensors"
    fc = cfg.features
    protocol = Protocol(layer=fc.layer, scales=tuple(fc.scales), aggregate=fc.aggregate)
    scores = []
    runtime = Runtime(device="cpu", batch_size=32, workers=0)
    for i in range(cfg.random_nets, cfg.random_nets + draws):
        weights = random_twin(
            trained,
            load_recipe(path.parent / cfg.net_d),
            cfg.random_seed + seed + 1000 * i,
            out / f"draw{i}" / "w.safetensors",
        )
        settings = ExtractionSettings((("auto", str(weights)),), protocol)
        store = cached_store(images, out / f"draw{i}" / "probe", settings, runtime, progress=False)
        linear = run_linear_probe(splits, store, Cs=cfg.probe.Cs, device="cpu")
        knn = run_knn_probe(splits, store, k=cfg.probe.k)
        scores.append((100 * linear.headline, 100 * knn.headline))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="seeds to run: 0-4, 0,3,7 (default 0-4)")
    parser.add_argument("--recipes", type=Path, help="a folder laid out like recipes/demo (default: the shipped one)")
    parser.add_argument("--random-draws", type=int, default=0, help="K more random nets per seed: their spread")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import vggfeat.demo.config as demo_config
    from vggfeat.demo.pipeline import run_demo

    if args.recipes is not None:
        demo_config.RECIPES = args.recipes.resolve()  # demo_file() reads it at call time
    print(f"quick demo from {demo_config.RECIPES}, {os.cpu_count()} CPUs\n")
    print(
        "| seed | linear trained | random | margin | kNN trained | random | margin | linear margin: source's classes "
        "| other classes | top-1 A | top-1 D | s | load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    margins: dict[str, list[float]] = {"linear_map": [], "knn_map": []}
    seconds: list[float] = []
    spread: dict[int, tuple[tuple[float, float], list[tuple[float, float]]]] = {}  # seed: trained, randoms
    for seed in parse_seeds(args.seeds):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="vggfeat-demo-margins-") as tmp:
            start = time.perf_counter()
            report = run_demo(Path(tmp) / "out", quick=True, seed=seed, progress=False, echo=lambda _: None)
            seconds.append(time.perf_counter() - start)
            if args.random_draws:
                tr = report["results"]["trained"]
                own = report["results"]["random"].get("draws", [report["results"]["random"]])
                spread[seed] = (
                    (tr["linear_map"], tr["knn_map"]),
                    [
                        *((rr["linear_map"], rr["knn_map"]) for rr in own),
                        *random_draws(Path(tmp) / "out", seed, report, args.random_draws),
                    ],
                )
        r, m, t = report["results"], report["margin"], report["training"]
        for key in margins:
            margins[key].append(m[key])
        split = report.get("by_source_class")  # a pictogram source: its classes apart from the target's others
        parts = [split[p] for p in ("source", "other")] if split else []
        by_class = [f"{p['trained'] - p['random']:+.1f}" if parts else "-" for p in parts or [None, None]]
        print(
            f"| {seed} | {r['trained']['linear_map']:.1f} | {r['random']['linear_map']:.1f} | {m['linear_map']:+.1f} "
            f"| {r['trained']['knn_map']:.1f} | {r['random']['knn_map']:.1f} | {m['knn_map']:+.1f} "
            f"| {by_class[0]} | {by_class[1]} "
            f"| {t['net_a']['curve'][-1]['val_top1']:.0f} | {t['net_d']['curve'][-1]['val_top1']:.0f} "
            f"| {seconds[-1]:.1f} | {load:.2f} |",
            flush=True,
        )
    for key, name in (("linear_map", "linear"), ("knn_map", "kNN")):
        values = margins[key]
        print(f"\n{name} margin: min {min(values):+.1f}, mean {sum(values) / len(values):+.1f}", end="")
    if spread:
        print(f"\n\nrandom nets per seed: the demo's and {args.random_draws} more (other init seeds, same target)")
        print("(trained - mean: the margin against the mean of them all)\n")
        print("| seed | linear: random min-max | mean | trained - mean | kNN: random min-max | mean | trained - mean |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for seed, (trained, scores) in spread.items():
            cells = []
            for j in range(2):  # linear, kNN
                vals = [v[j] for v in scores]
                mean = sum(vals) / len(vals)
                cells.append(f"{min(vals):.1f}-{max(vals):.1f} | {mean:.1f} | {trained[j] - mean:+.1f}")
            print(f"| {seed} | " + " | ".join(cells) + " |")
    print(f"\nseconds per run (run_demo, without the CLI's start-up): mean {sum(seconds) / len(seconds):.1f}")


if __name__ == "__main__":
    main()
