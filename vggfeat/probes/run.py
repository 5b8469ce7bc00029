"""Run a transfer benchmark on stored descriptors: a linear SVM per class with C chosen on held-out training
data (or a faiss kNN classifier), scored with the benchmark's own metric on each split (Appendix B, Table 11).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vggfeat import defaults
from vggfeat.benchmarks.base import ProbeSplit
from vggfeat.benchmarks.registry import get_benchmark
from vggfeat.features.store import FeatureStore
from vggfeat.metrics import check_finite_scores
from vggfeat.probes.features import split_features, store_fusion

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_CS = defaults.COSTS
CLASSIFIERS = ("svm", "sklearn")


@dataclass
class SplitResult:
    split: int
    per_class: np.ndarray  # (K,) test AP or recall per class
    headline: float  # mAP or mean class recall on the test set
    chosen_C: np.ndarray | None  # (K,) the C selected per class (None for kNN)
    scores: np.ndarray  # (N_test, K) decision values, for PR curves
    labels: np.ndarray  # test labels: (N_test, K) in {1,-1,0}, or (N_test,) class ids
    seconds: float
    excluded: dict[int, str] = field(default_factory=dict)  # class index -> why it has no value (not in headline)


@dataclass
class ProbeResult:
    benchmark: str
    method: str  # 'linear-svm', 'linear-svm (sklearn)', 'knn'
    metric: str
    classes: tuple[str, ...]
    splits: list[SplitResult]
    features: dict[str, Any]  # the store's settings: models and weight hashes, layer, scales, ...
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> float:
        return float(np.mean([s.headline for s in self.splits]))

    @property
    def headline_std(self) -> float:
        return float(np.std([s.headline for s in self.splits])) if len(self.splits) > 1 else 0.0

    @property
    def per_class(self) -> np.ndarray:
        return np.mean([s.per_class for s in self.splits], axis=0)

    @property
    def excluded(self) -> dict[str, str]:
        """{class name: why} for the classes left out of the headline in some split."""
        out: dict[str, str] = {}
        for s in self.splits:
            for k, why in s.excluded.items():
                out.setdefault(self.classes[k], why if len(self.splits) == 1 else f"split {s.split}: {why}")
        return out


def score_split(split: ProbeSplit, scores: np.ndarray) -> tuple[np.ndarray, float, dict[int, str]]:
    """(per-class values, headline, {class index: why excluded}) of test `scores` (N_test, K) under the split's
    benchmark's metric. A class without a positive in train or test has no value and is left out of the
    headline, with a warning: a probe that never saw a positive still ranks the test images, and its AP would
    count in the mean silently (ProbeSplit.unscored_classes)."""
    scores = np.asarray(scores)
    check_finite_scores(scores, f"{split.benchmark} {split.test_name} scores")
    per_class, _ = get_benchmark(split.benchmark).score(scores, split.test_labels)
    excluded = split.unscored_classes()
    per_class = np.array(per_class, dtype=np.float64)
    per_class[list(excluded)] = np.nan
    headline = get_benchmark(split.benchmark).headline
    for k, why in excluded.items():
        log.warning("%s: %s, excluded from the %s (split %d)", split.classes[k], why, headline, split.split)
    # every headline is the mean over the classes that have a value (mAP, mean class recall)
    return per_class, float(np.mean(per_class[np.isfinite(per_class)])), excluded


def store_summary(store: FeatureStore) -> dict[str, Any]:
    m = store.manifest
    keys = ("models", "layer", "scales", "flip", "aggregate", "l2", "l2_parts", "dim", "dtype", "vggfeat_version")
    summary = {"store": str(store.root), **{k: m.get(k) for k in keys}, "fusion_l2": store_fusion(m)}
    if len(m.get("stacked_from") or []) > 1:  # fused in memory: STORE alone holds only the first part
        summary["stacked_from"] = list(m["stacked_from"])
    return summary


def split_sources(splits: Sequence[ProbeSplit]) -> dict[str, Any]:
    """The split files a result was computed on (random splits), for its report; nothing for fixed splits."""
    files = [list(s.files) for s in splits]
    return {"split_files": files} if any(files) else {}


def run_linear_probe(
    splits: Sequence[ProbeSplit],
    store: FeatureStore,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    classifier: str = "svm",
    holdout: float = defaults.HOLDOUT,
    seed: int = defaults.SEED,
    device: torch.device | str | None = None,
    progress: Callable[[ProbeSplit, SplitResult], None] | None = None,
) -> ProbeResult:
    """One-vs-rest linear SVMs (L2-regularised squared hinge, with a bias) on each split: C chosen per class on
    a seeded 20% of the training images, then refit on all of them (Appendix B gives no C), scored on test."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}")
    fit: Callable[..., tuple[Any, Any]]  # (probe, Selection): the two fitters differ only in their extra kwargs
    if classifier == "svm":
        from vggfeat.probes.selection import fit_probe as fit
    else:
        from vggfeat.probes.sklearn_ref import fit_sklearn_probe as fit
    results = []
    for split in splits:
        start = time.perf_counter()
        x_train, x_test = split_features(store, split.train_paths, split.test_paths)
        kwargs: dict[str, Any] = {"device": device} if classifier == "svm" else {}
        probe, selection = fit(
            x_train,
            np.array(split.train_labels),
            list(Cs),
            metric=split.metric,
            holdout=holdout,
            seed=seed + split.split,
            **kwargs,
        )
        scores = np.asarray(probe.class_scores(x_test), dtype=np.float64)  # (N, K) even for 2 classes
        per_class, headline, excluded = score_split(split, scores)
        results.append(
            SplitResult(
                split.split,
                per_class,
                headline,
                np.asarray(selection.chosen, dtype=float),
                scores,
                split.test_labels,
                time.perf_counter() - start,
                excluded,
            )
        )
        log.info("%s split %d: %.4f", split.benchmark, split.split, headline)
        if progress is not None:
            progress(split, results[-1])
    first = splits[0]
    method = "linear-svm" if classifier == "svm" else "linear-svm (sklearn LinearSVC)"
    return ProbeResult(
        first.benchmark,
        method,
        first.metric,
        first.classes,
        results,
        store_summary(store),
        {
            "Cs": list(map(float, Cs)),
            "holdout": holdout,
            "seed": seed,
            "classifier": classifier,
            **split_sources(splits),
        },
    )


def run_knn_probe(
    splits: Sequence[ProbeSplit],
    store: FeatureStore,
    *,
    k: int = defaults.KNN_K,
    kind: str = defaults.KNN_INDEX,
    temperature: float = defaults.KNN_TEMPERATURE,
    progress: Callable[[ProbeSplit, SplitResult], None] | None = None,
) -> ProbeResult:
    """kNN classification with a faiss index over each split's training descriptors, same splits and metric."""
    from vggfeat.probes.knn import knn_scores

    results = []
    for split in splits:
        start = time.perf_counter()
        x_train, x_test = split_features(store, split.train_paths, split.test_paths)
        scores = np.asarray(
            knn_scores(
                x_train,
                np.array(split.train_labels),
                x_test,
                k=k,
                temperature=temperature,
                kind=kind,
                multilabel=split.multilabel,
            ),
            dtype=np.float64,
        )
        per_class, headline, excluded = score_split(split, scores)
        seconds = time.perf_counter() - start
        results.append(
            SplitResult(split.split, per_class, headline, None, scores, split.test_labels, seconds, excluded)
        )
        if progress is not None:
            progress(split, results[-1])
    first = splits[0]
    return ProbeResult(
        first.benchmark,
        "knn",
        first.metric,
        first.classes,
        results,
        store_summary(store),
        {"k": k, "index": kind, "temperature": temperature, **split_sources(splits)},
    )
