"""Measure what `vggfeat demo --quick` exists to show (issue 13.8): trained net D minus the random net D, in
linear-SVM and kNN mAP on the generated voc2007, seed by seed. Each seed runs the whole quick demo in a fresh
temporary folder (training included), so the times are a user's first run. Prints a markdown table, then the
smallest and mean margins. `--recipes DIR` measures a candidate copy of recipes/demo (with ../train beside it).

    python scripts/demo_margins.py --seeds 0-4
    python scripts/demo_margins.py --seeds 0-9 --recipes /tmp/candidate/demo
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="seeds to run: 0-4, 0,3,7 (default 0-4)")
    parser.add_argument("--recipes", type=Path, help="a folder laid out like recipes/demo (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import vggfeat.demo.config as demo_config
    from vggfeat.demo.pipeline import run_demo

    if args.recipes is not None:
        demo_config.RECIPES = args.recipes.resolve()  # demo_file() reads it at call time
    print(f"quick demo from {demo_config.RECIPES}, {os.cpu_count()} CPUs\n")
    print("| seed | linear trained | random | margin | kNN trained | random | margin | top-1 A | top-1 D | s | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    margins: dict[str, list[float]] = {"linear_map": [], "knn_map": []}
    seconds: list[float] = []
    for seed in parse_seeds(args.seeds):
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="vggfeat-demo-margins-") as tmp:
            start = time.perf_counter()
            report = run_demo(Path(tmp) / "out", quick=True, seed=seed, progress=False, echo=lambda _: None)
            seconds.append(time.perf_counter() - start)
        r, m, t = report["results"], report["margin"], report["training"]
        for key in margins:
            margins[key].append(m[key])
        print(
            f"| {seed} | {r['trained']['linear_map']:.1f} | {r['random']['linear_map']:.1f} | {m['linear_map']:+.1f} "
            f"| {r['trained']['knn_map']:.1f} | {r['random']['knn_map']:.1f} | {m['knn_map']:+.1f} "
            f"| {t['net_a']['curve'][-1]['val_top1']:.0f} | {t['net_d']['curve'][-1]['val_top1']:.0f} "
            f"| {seconds[-1]:.1f} | {load:.2f} |",
            flush=True,
        )
    for key, name in (("linear_map", "linear"), ("knn_map", "kNN")):
        values = margins[key]
        print(f"\n{name} margin: min {min(values):+.1f}, mean {sum(values) / len(values):+.1f}", end="")
    print(f"\nseconds per run (run_demo, without the CLI's start-up): mean {sum(seconds) / len(seconds):.1f}")


if __name__ == "__main__":
    main()
