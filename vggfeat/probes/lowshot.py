"""Low-shot VOC-2007, beyond the paper: linear SVMs trained on k positives per class.

Scored as the self-supervised benchmark suites score it (VISSL's `low_shot_transfer/voc07` config and
fair_self_supervision_benchmark, which share the code): per class a seeded sample of k positive and (K-1) k
negative trainval images ('difficult' never drawn; a class short of either is refused, as their sampler is),
features scaled by 1 / (|x| + 1e-5), a squared-hinge L2 SVM with class weight {1: 2, -1: 1} on that sample
alone, all-point AP (area under the monotone precision envelope) on the full test set, and the C of their grid
best on test by mean mAP over the samples. The scoring vggfeat used before (11-point AP, no class weight, raw
features, grid 0.01..100) is kept as the named variant '11point-unweighted'.
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

from vggfeat import defaults
from vggfeat.benchmarks.registry import get_benchmark
from vggfeat.errors import InputError
from vggfeat.probes.svm import fit_linear_svms
from vggfeat.utils.files import atomic_write_figure, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

LOW_SHOT_KS = defaults.LOW_SHOT_KS
LOW_SHOT_SAMPLES = defaults.LOW_SHOT_SAMPLES
BENCHMARK = "voc2007"  # the registry entry whose title and headline name the low-shot report uses


@dataclass(frozen=True)
class LowShotScoring:
    """How each low-shot sample is trained and scored; `SCORINGS` holds the named variants."""

    name: str
    metric_from: str  # registry entry whose metric scores the test set: its score, id and title
    positive_weight: float  # per-row weight of a positive (LinearSVC's class_weight {1: w, -1: 1})
    Cs: tuple[float, ...]  # the default cost grid; C is chosen per k on test
    normalize: bool  # scale every feature by 1 / (|x| + 1e-5) first, as the suites' trainer does
    negatives_per_positive: int | None  # None: K - 1 for K classes (the suites' sampler), else this many

    def negatives_for(self, n_classes: int) -> int:
        """Negatives drawn per positive for a label matrix of `n_classes` columns."""
        return self.negatives_per_positive if self.negatives_per_positive is not None else n_classes - 1


# VISSL vissl/utils/svm_utils: SVMLowShotTrainer (LinearSVC(C, class_weight={1: 2, -1: 1}, squared hinge, L2,
# normalize: True), evaluate.calculate_ap (all-point; the same area as the VOC2010+ AP of voc2012's entry),
# create_low_shot_samples (k positives, (K - 1) k negatives) and the voc07 low-shot config's costs_list.
SUITES = LowShotScoring(
    name="suites",
    metric_from="voc2012",
    positive_weight=2.0,
    Cs=defaults.LOW_SHOT_SUITES_COSTS,
    normalize=True,
    negatives_per_positive=None,
)
# vggfeat's first scoring, kept so its numbers stay reproducible: the 2007 devkit's 11-point AP (the paper's
# metric), no class weight, the features as given, 19 k negatives whatever K, a coarser grid.
ELEVEN_POINT_UNWEIGHTED = LowShotScoring(
    name="11point-unweighted",
    metric_from="voc2007",
    positive_weight=1.0,
    Cs=defaults.COARSE_COSTS,
    normalize=False,
    negatives_per_positive=19,
)
SCORINGS = {s.name: s for s in (SUITES, ELEVEN_POINT_UNWEIGHTED)}
LOW_SHOT_CS = SUITES.Cs


def get_scoring(scoring: str | LowShotScoring) -> LowShotScoring:
    """A `LowShotScoring` by name (or as given); an InputError listing the names otherwise."""
    if isinstance(scoring, LowShotScoring):
        return scoring
    if scoring not in SCORINGS:
        raise InputError(f"unknown low-shot scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    return SCORINGS[scoring]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """x / (|x| + 1e-5) per row, in float64 as the suites' trainer (their `_normalize_features`), as float32."""
    x = np.asarray(x, np.float64)
    return (x / (np.linalg.norm(x, axis=1) + 1e-5)[:, None]).astype(np.float32)


def check_low_shot_ks(
    labels: np.ndarray, ks: Sequence[int], negatives_per_positive: int, classes: Sequence[str] | None = None
) -> None:
    """Refuse (InputError) any k that some class of `labels` (N, K) cannot meet with k positives and
    `negatives_per_positive` * k negatives, as the suites' sampler refuses it: a sample short of k would be
    reported as k while fewer images were used."""
    labels = np.asarray(labels)
    names = list(classes) if classes is not None else [str(c) for c in range(labels.shape[1])]
    n_pos, n_neg = (labels > 0).sum(axis=0), (labels < 0).sum(axis=0)
    m = negatives_per_positive
    capacity = np.minimum(n_pos, n_neg // m) if m > 0 else n_pos  # (K,) the largest k each class meets
    worst = int(capacity.argmin())
    too_big = [int(k) for k in ks if int(k) > int(capacity[worst])]
    if not too_big:
        return
    k = max(too_big)
    short = f"{names[worst]!r} has {int(n_pos[worst])} positives and {int(n_neg[worst])} negatives"
    fix = (
        f"give ks up to {int(capacity[worst])} (--low-shot-ks)"
        if capacity[worst] > 0
        else f"every class needs at least 1 positive and {m} negatives in trainval: check the label lists"
    )
    raise InputError(
        f"low-shot k={k} needs {k} positives and {m * k} negatives of every class in "
        f"trainval ('difficult' not counted), but {short}; {fix}"
    )


def draw_low_shot(
    labels: np.ndarray, k: int, *, seed: int, sample: int, negatives_per_positive: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class of `labels` (N, K) in {1, -1, 0}: (positive rows, negative rows) of one seeded sample, k
    positives and (K - 1) k negatives (or `negatives_per_positive` k); a class short of either is refused.

    The generator is keyed by (seed, k, sample), so a sample does not change when other k values or samples
    are added.
    """
    labels = np.asarray(labels)
    m = negatives_per_positive if negatives_per_positive is not None else labels.shape[1] - 1
    check_low_shot_ks(labels, (k,), m)
    rng = np.random.default_rng([seed, k, sample])
    draws = []
    for c in range(labels.shape[1]):
        pos, neg = np.flatnonzero(labels[:, c] > 0), np.flatnonzero(labels[:, c] < 0)
        draws.append((np.sort(rng.choice(pos, k, replace=False)), np.sort(rng.choice(neg, m * k, replace=False))))
    return draws


@dataclass
class LowShotResult:
    """Test AP of every (k, sample, C, class); mAP at each k is reported at the C best on average over samples."""

    ks: tuple[int, ...]
    Cs: tuple[float, ...]
    classes: tuple[str, ...]
    seed: int
    ap: np.ndarray  # (len(ks), samples, len(Cs), K) test AP; NaN for a class without test positives
    drawn: np.ndarray  # (len(ks), samples, K, 2) positives and negatives trained on (always k and m k)
    features: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # per k
    benchmark: str = BENCHMARK  # registry name: the title and headline name in the report
    scoring: LowShotScoring = SUITES

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

    @property
    def negatives_per_positive(self) -> int:
        """Negatives drawn per positive: K - 1 under the suites' scoring."""
        return self.scoring.negatives_for(len(self.classes))

    def describe(self) -> dict[str, Any]:
        """The scoring in words and values, for every report format (metric, class weight, features, negatives)."""
        bench, metric = get_benchmark(self.benchmark), get_benchmark(self.scoring.metric_from)
        m = self.negatives_per_positive
        weight = self.scoring.positive_weight
        return {
            "scoring": self.scoring.name,
            "metric": metric.metric,
            "metric_title": metric.metric_title,
            "class_weight": {"1": weight, "-1": 1.0},
            "normalize": "x / (|x| + 1e-5)" if self.scoring.normalize else None,
            "negatives_per_positive": m,
            "protocol": (
                f"per class k positives and {m}k negatives from trainval ('difficult' never drawn; a class short "
                f"of either is refused), {self.ap.shape[1]} seeded samples per k; "
                + ("features scaled by 1/(|x| + 1e-5); " if self.scoring.normalize else "features as given; ")
                + f"one squared-hinge L2 SVM per class on its sample, class weight {{1: {weight:g}, -1: 1}}; "
                f"{metric.metric_title} on the full test set; C chosen per k by mean test {bench.headline} over "
                "the samples"
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in percent; title and headline from the benchmark registry, metric from the scoring's
        registry entry (as probes.report does)."""
        bench = get_benchmark(self.benchmark)
        table = self.map_table
        at_chosen, best = self._at_chosen(), table.mean(axis=1).argmax(axis=1)
        rows = []
        for i, k in enumerate(self.ks):
            with warnings.catch_warnings():  # a class without test positives is NaN in every sample: stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                per_class = np.nanmean(self.ap[i, :, best[i]], axis=0)  # (K,) mean over samples
            rows.append(
                {
                    "k": int(k),
                    "negatives": self.negatives_per_positive * int(k),
                    "mAP": round(100 * float(self.mean[i]), 2),
                    "std": round(100 * float(self.std[i]), 2),
                    "chosen_C": float(self.chosen_C[i]),
                    "per_sample": [round(100 * float(v), 2) for v in at_chosen[i]],
                    "mAP_per_C": {str(c): round(100 * float(table[i, :, j].mean()), 2) for j, c in enumerate(self.Cs)},
                    "per_class": {
                        name: None if np.isnan(v) else round(100 * float(v), 2)
                        for name, v in zip(self.classes, per_class, strict=False)
                    },
                    # positives and negatives each sample trained on, fewest over samples (always k and m k)
                    "drawn": [int(v) for v in self.drawn[i].min(axis=(0, 1))],
                    "seconds": round(self.seconds[i], 3) if i < len(self.seconds) else None,
                }
            )
        return {
            "benchmark": f"{bench.name}-lowshot",
            "title": bench.title,
            "headline_name": bench.headline,
            **self.describe(),
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
    Cs: Sequence[float] | None = None,
    scoring: str | LowShotScoring = SUITES,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    tol: float = 1e-6,
    device: torch.device | str | None = None,
    features: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LowShotResult:
    """The low-shot protocol on descriptors: x (N, D), VOC labels y (N, K) in {1, -1, 0}; `scoring` is 'suites'
    (the default: as VISSL scores it) or '11point-unweighted' (vggfeat's first scoring); Cs None is its grid.

    For each k, every (sample, class, C) problem is one column of a single batched solve over the union of
    the rows any sample drew; a row outside a problem's sample has weight 0 there (see `fit_linear_svms`).
    """
    scoring = get_scoring(scoring)
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
    Cs = tuple(float(c) for c in (scoring.Cs if Cs is None else Cs))
    if not ks or min(ks) < 1 or samples < 1 or not Cs or min(Cs) <= 0:
        raise InputError(
            f"low-shot needs k >= 1, samples >= 1 and positive C values; got ks={ks}, samples={samples}, Cs={Cs}"
        )
    n_classes = y_train.shape[1]
    m = scoring.negatives_for(n_classes)
    classes = tuple(classes) if classes is not None else tuple(map(str, range(n_classes)))
    check_low_shot_ks(y_train, ks, m, classes)  # every k before any solve
    if scoring.normalize:
        x_train, x_test = normalize_rows(x_train), normalize_rows(x_test)
    score = get_benchmark(scoring.metric_from).score  # (scores (N, K), labels) -> (per-class AP, mAP)
    ap = np.full((len(ks), samples, len(Cs), n_classes), np.nan)
    drawn = np.zeros((len(ks), samples, n_classes, 2), dtype=np.int64)
    seconds = []
    for i, k in enumerate(ks):
        start = time.perf_counter()
        draws = [draw_low_shot(y_train, k, seed=seed, sample=s, negatives_per_positive=m) for s in range(samples)]
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
                # the class weight as per-row weights: LinearSVC's C * class_weight[y_i] is C * S_i here
                S[where[pos], col : col + len(Cs)] = scoring.positive_weight
                S[where[neg], col : col + len(Cs)] = 1.0
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
    return LowShotResult(ks, Cs, classes, seed, ap, drawn, dict(features or {}), seconds, scoring=scoring)


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
    ax.set_xlabel(f"k positives per class (+ {result.negatives_per_positive}k negatives)")
    ax.set_ylabel(f"test {bench.headline} % ({result.describe()['metric_title']})")
    ax.set_title(f"low-shot {bench.title}: mean +- std over {result.ap.shape[1]} samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_figure(fig, path)
    return path


def scoring_line(report: dict[str, Any]) -> str:
    """The metric, class weight and feature scaling of a low-shot report, in one line."""
    weight = report["class_weight"]
    scaled = "features scaled by 1/(|x| + 1e-5)" if report["normalize"] else "features as given"
    if report["scoring"] != SUITES.name:
        comparable = "not the suites' scoring: their tables use all-point AP and class weight 2:1"
    elif report["Cs"] != list(SUITES.Cs):  # C is chosen on test, so another grid gives another number
        comparable = f"a grid other than the suites' ({', '.join(f'{c:g}' for c in report['Cs'])})"
    else:
        comparable = "comparable with the self-supervised suites' low-shot VOC07 tables"
    return (
        f"{report['scoring']} scoring: {report['metric_title']}, class weight {{1: {weight['1']:g}, -1: "
        f"{weight['-1']:g}}}, {scaled}, {report['negatives_per_positive']}k negatives ({comparable})"
    )


def low_shot_lines(report: dict[str, Any]) -> list[str]:
    """The terminal table of `LowShotResult.to_dict()`: the headline's mean +- std per k, and the C chosen at each k."""
    lines = [f"{'k':>4}  {'negatives':>9}  {report['headline_name'] + ' %':>14}  {'C':>6}"]
    for row in report["rows"]:
        lines.append(
            f"{row['k']:>4}  {row['negatives']:>9}  {row['mAP']:>7.2f} +- {row['std']:<4.2f}  {row['chosen_C']:>6g}"
        )
    lines.append(scoring_line(report))
    lines.append(
        f"low-shot {report['title']} (ours; beyond the paper, which has no low-shot table): {report['protocol']}"
    )
    return lines


def write_low_shot(
    result: LowShotResult, out: str | Path, stem: str = "low-shot", *, identity: dict[str, Any] | None = None
) -> dict[str, Path]:
    """OUT/STEM.json (every k, sample, C), OUT/STEM.md (mean +- std of the headline per k) and OUT/STEM.png,
    atomically; `identity` (what the probe was computed from) is recorded in the JSON."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = result.to_dict()
    if identity is not None:
        report["identity"] = identity
    files = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    atomic_write_json(files["json"], report)
    md = [
        f"# Low-shot {report['title']}: linear SVMs on k positives per class",
        "",
        f"Protocol: {report['protocol']}. Beyond the paper (which has no low-shot table).",
        "",
        f"{scoring_line(report)}.",
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
