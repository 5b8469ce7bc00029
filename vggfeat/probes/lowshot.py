"""Low-shot VOC-2007, beyond the paper: linear SVMs trained on k positives per class (issue 14.7).

The protocol of self-supervised benchmark suites (e.g. VISSL's low-shot VOC07): for each class, a seeded sample
of k positive and 19 k negative trainval images (the rest of that class's column, 'difficult' included, is
ignored); that class's SVM is trained on its sample alone and scored on the full test set with the devkit's
11-point AP. Five samples per k; mAP is reported as mean and std over the samples. The metric, its names and
the scoring are voc2007's entry in the benchmark registry, as for the full probe.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vggfeat.benchmarks.registry import get_benchmark
from vggfeat.errors import InputError
from vggfeat.probes.svm import fit_linear_svms
from vggfeat.utils.files import atomic_write_figure, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

LOW_SHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
NEGATIVES_PER_POSITIVE = 19
LOW_SHOT_SAMPLES = 5
LOW_SHOT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
BENCHMARK = "voc2007"  # the registry entry whose metric, names and scoring the low-shot report uses


def draw_low_shot(
    labels: np.ndarray, k: int, *, seed: int, sample: int, negatives_per_positive: int = NEGATIVES_PER_POSITIVE
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class of `labels` (N, K) in {1, -1, 0}: (positive rows, negative rows) of one seeded sample.

    The generator is keyed by (seed, k, sample), so a sample does not change when other k values or samples
    are added. A class with fewer than k positives (or 19 k negatives) gives all it has.
    """
    rng = np.random.default_rng([seed, k, sample])
    draws = []
    for c in range(labels.shape[1]):
        pos, neg = np.flatnonzero(labels[:, c] > 0), np.flatnonzero(labels[:, c] < 0)
        n_pos, n_neg = min(k, len(pos)), min(negatives_per_positive * k, len(neg))
        draws.append((np.sort(rng.choice(pos, n_pos, replace=False)), np.sort(rng.choice(neg, n_neg, replace=False))))
    return draws


@dataclass
class LowShotResult:
    """Test AP of every (k, sample, C, class); mAP at each k is reported at the C best on average over samples."""

    ks: tuple[int, ...]
    Cs: tuple[float, ...]
    classes: tuple[str, ...]
    seed: int
    ap: np.ndarray  # (len(ks), samples, len(Cs), K) test AP; NaN for a class without test positives
    drawn: np.ndarray  # (len(ks), samples, K, 2) positives and negatives actually trained on
    features: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # per k
    benchmark: str = BENCHMARK  # registry name: the metric and its names in the report

    @property
    def map_table(self) -> np.ndarray:
        """(len(ks), samples, len(Cs)) mAP over the classes."""
        return np.nanmean(self.ap, axis=3)

    @property
    def chosen_C(self) -> np.ndarray:
        """(len(ks),) per k, the C with the best mean test mAP over samples. Picked on the test set, as the
        low-shot suites do: at k = 1 there is no training image to hold out."""
        return np.asarray(self.Cs)[self.map_table.mean(axis=1).argmax(axis=1)]

    def _at_chosen(self) -> np.ndarray:
        table = self.map_table  # (len(ks), samples, len(Cs))
        best = table.mean(axis=1).argmax(axis=1)
        return table[np.arange(len(self.ks)), :, best]  # (len(ks), samples)

    @property
    def mean(self) -> np.ndarray:
        """(len(ks),) mAP at the chosen C, mean over the samples."""
        return self._at_chosen().mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """(len(ks),) standard deviation over the samples (population std, ddof 0)."""
        return self._at_chosen().std(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in percent; metric and names from the benchmark registry (as probes.report does)."""
        bench = get_benchmark(self.benchmark)
        table = self.map_table
        at_chosen, best = self._at_chosen(), table.mean(axis=1).argmax(axis=1)
        rows = []
        for i, k in enumerate(self.ks):
            with warnings.catch_warnings():  # a class without test positives is NaN in every sample: stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                per_class = np.nanmean(self.ap[i, :, best[i]], axis=0)  # (K,) mean over samples
            fewest = self.drawn[i].min(axis=0)  # (K, 2) over samples
            rows.append(
                {
                    "k": int(k),
                    "negatives": NEGATIVES_PER_POSITIVE * int(k),
                    "mAP": round(100 * float(self.mean[i]), 2),
                    "std": round(100 * float(self.std[i]), 2),
                    "chosen_C": float(self.chosen_C[i]),
                    "per_sample": [round(100 * float(v), 2) for v in at_chosen[i]],
                    "mAP_per_C": {str(c): round(100 * float(table[i, :, j].mean()), 2) for j, c in enumerate(self.Cs)},
                    "per_class": {
                        name: None if np.isnan(v) else round(100 * float(v), 2)
                        for name, v in zip(self.classes, per_class, strict=False)
                    },
                    "fewer_than_asked": {
                        name: [int(p), int(n)]
                        for name, (p, n) in zip(self.classes, fewest, strict=False)
                        if p < k or n < NEGATIVES_PER_POSITIVE * k
                    },
                    "seconds": round(self.seconds[i], 3) if i < len(self.seconds) else None,
                }
            )
        return {
            "benchmark": f"{bench.name}-lowshot",
            "title": bench.title,
            "metric": bench.metric,
            "metric_title": bench.metric_title,
            "headline_name": bench.headline,
            "protocol": (
                f"per class k positives and {NEGATIVES_PER_POSITIVE}k negatives from trainval (rest "
                f"ignored), {self.ap.shape[1]} seeded samples per k; one SVM per class on its sample; "
                f"{bench.metric_title} on the full test set; C chosen per k by mean test {bench.headline} over the "
                "samples"
            ),
            "ks": list(map(int, self.ks)),
            "Cs": list(map(float, self.Cs)),
            "samples": int(self.ap.shape[1]),
            "seed": self.seed,
            "rows": rows,
            "features": self.features,
        }


def run_low_shot(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    ks: Sequence[int] = LOW_SHOT_KS,
    samples: int = LOW_SHOT_SAMPLES,
    Cs: Sequence[float] = LOW_SHOT_CS,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    tol: float = 1e-6,
    device: torch.device | str | None = None,
    features: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LowShotResult:
    """The low-shot protocol on descriptors: x (N, D), VOC labels y (N, K) in {1, -1, 0}.

    For each k, every (sample, class, C) problem is one column of a single batched solve over the union of
    the rows any sample drew; a row outside a problem's sample has weight 0 there (see `fit_linear_svms`).
    """
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if y_train.ndim != 2 or y_test.ndim != 2 or y_train.shape[1] != y_test.shape[1]:
        raise InputError(
            f"low-shot needs VOC label matrices (N, K) with the same K, got {y_train.shape} and {y_test.shape}"
        )
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise InputError(
            f"features and labels disagree: {len(x_train)} vs {len(y_train)} train rows, "
            f"{len(x_test)} vs {len(y_test)} test rows"
        )
    ks = tuple(int(k) for k in ks)
    Cs = tuple(float(c) for c in Cs)
    if not ks or min(ks) < 1 or samples < 1 or not Cs or min(Cs) <= 0:
        raise InputError(
            f"low-shot needs k >= 1, samples >= 1 and positive C values; got ks={ks}, samples={samples}, Cs={Cs}"
        )
    score = get_benchmark(BENCHMARK).score  # (scores (N, K), labels) -> (per-class AP, mAP)
    n_classes = y_train.shape[1]
    classes = tuple(classes) if classes is not None else tuple(map(str, range(n_classes)))
    ap = np.full((len(ks), samples, len(Cs), n_classes), np.nan)
    drawn = np.zeros((len(ks), samples, n_classes, 2), dtype=np.int64)
    seconds = []
    for i, k in enumerate(ks):
        start = time.perf_counter()
        draws = [draw_low_shot(y_train, k, seed=seed, sample=s) for s in range(samples)]
        rows = np.unique(np.concatenate([np.concatenate(d) for draw in draws for d in draw]))
        where = np.full(len(y_train), -1)
        where[rows] = np.arange(len(rows))  # trainval row -> row of the union
        # columns ordered (sample, class, C): (N_union, samples * K * len(Cs))
        Y = np.repeat(np.where(y_train[rows] > 0, 1.0, -1.0), len(Cs), axis=1)
        Y = np.tile(Y, samples).astype(np.float32)
        S = np.zeros_like(Y)
        for s, draw in enumerate(draws):
            for c, (pos, neg) in enumerate(draw):
                drawn[i, s, c] = len(pos), len(neg)
                col = (s * n_classes + c) * len(Cs)
                S[where[np.concatenate([pos, neg])], col : col + len(Cs)] = 1.0
        C = np.tile(np.asarray(Cs), samples * n_classes)
        coef, intercept, _ = fit_linear_svms(x_train[rows], Y, S, C, tol=tol, device=device)
        scores = (x_test @ coef.T + intercept).reshape(len(x_test), samples, n_classes, len(Cs))
        for s in range(samples):
            for j in range(len(Cs)):
                ap[i, s, j] = score(scores[:, s, :, j], y_test)[0]
        seconds.append(time.perf_counter() - start)
        log.info(
            "low-shot k=%d: %d problems on %d rows, best mAP %.4f (%.1f s)",
            k,
            Y.shape[1],
            len(rows),
            np.nanmean(ap[i], axis=2).mean(0).max(),
            seconds[-1],
        )
        if progress is not None:
            progress(k, i)
    return LowShotResult(ks, Cs, classes, seed, ap, drawn, dict(features or {}), seconds)


def plot_low_shot(result: LowShotResult, path: str | Path) -> Path:
    """One plot, the benchmark's headline (%) against k on a log axis, mean +- std over the samples; written
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = get_benchmark(result.benchmark)
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(result.ks, 100 * result.mean, yerr=100 * result.std, marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.ks, [str(k) for k in result.ks])
    ax.set_xlabel(f"k positives per class (+ {NEGATIVES_PER_POSITIVE}k negatives)")
    ax.set_ylabel(f"test {bench.headline} %")
    ax.set_title(f"low-shot {bench.title}: mean +- std over {result.ap.shape[1]} samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    return path


def low_shot_lines(report: dict[str, Any]) -> list[str]:
    """The terminal table of `LowShotResult.to_dict()`: the headline's mean +- std per k, and the C chosen at each k."""
    lines = [f"{'k':>4}  {'negatives':>9}  {report['headline_name'] + ' %':>14}  {'C':>6}"]
    for row in report["rows"]:
        lines.append(
            f"{row['k']:>4}  {row['negatives']:>9}  {row['mAP']:>7.2f} +- {row['std']:<4.2f}  {row['chosen_C']:>6g}"
        )
    lines.append(
        f"low-shot {report['title']} (ours; beyond the paper, which has no low-shot table): {report['protocol']}"
    )
    return lines


def write_low_shot(result: LowShotResult, out: str | Path, stem: str = "low-shot") -> dict[str, Path]:
    """OUT/STEM.json (every k, sample, C), OUT/STEM.md (mean +- std of the headline per k) and OUT/STEM.png,
    atomically."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = result.to_dict()
    files = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    atomic_write_json(files["json"], report)
    md = [
        f"# Low-shot {report['title']}: linear SVMs on k positives per class",
        "",
        f"Protocol: {report['protocol']}. Beyond the paper (no published reference).",
        "",
        f"| k | negatives | {report['headline_name']} % (mean +- std over samples) | chosen C | per sample |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        per = ", ".join(f"{v:.1f}" for v in row["per_sample"])
        md.append(
            f"| {row['k']} | {row['negatives']} | {row['mAP']:.2f} +- {row['std']:.2f} | {row['chosen_C']:g} | {per} |"
        )
    models = (report.get("features") or {}).get("models") or []
    md += ["", f"Features: `{report.get('features')}`" if models or report.get("features") else "", ""]
    atomic_write_text(files["markdown"], "\n".join(md))
    plot_low_shot(result, files["plot"])
    return files
