"""Choosing the SVM cost C (Appendix B gives none) on held-out training data, then refitting on all of it.

A seeded 20% of the training images is held out (stratified per class for single-label benchmarks); every C of
the grid is fitted on the rest and scored with the benchmark's metric. VOC picks C per class by held-out AP;
single-label benchmarks pick one C for all classes by held-out mean class recall (their metric couples the
classes through the argmax). The chosen C is refitted on every training image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from vggfeat import metrics
from vggfeat.probes.svm import LinearSVMProbe, fit_linear_svms, svm_targets

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

log = logging.getLogger(__name__)


class _Estimator(Protocol):  # LinearSVMProbe, SklearnSVMProbe: anything fitted by fit(X, y)
    def fit(self, X: np.ndarray, y: np.ndarray) -> Any: ...


P = TypeVar("P", bound=_Estimator)  # the probe type a solver's make_probe builds

AP_METRICS = {"voc07_ap": metrics.voc07_ap, "voc12_ap": metrics.voc12_ap}
METRICS = (*AP_METRICS, "mean_class_recall")


@dataclass
class Selection:
    Cs: list[float]
    heldout: np.ndarray  # (len(Cs), K) held-out AP per C and class, or (len(Cs), 1) mean class recall
    chosen: np.ndarray  # (K,) the C refitted for each class


def holdout_split(y: ArrayLike, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out). Class ids are held out per class (at least one image of each class with two
    or more); VOC label rows are held out at random."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if y.ndim == 1:
        picked: list[int] = []
        for c in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == c))
            if len(rows) >= 2:
                picked.extend(rows[: max(1, int(round(fraction * len(rows))))])
        held = np.sort(np.array(picked, dtype=np.int64))
    else:
        held = np.sort(rng.permutation(len(y))[: max(1, int(round(fraction * len(y))))])
    fit = np.setdiff1d(np.arange(len(y)), held)
    return fit, held


def heldout_table(scores: np.ndarray, y_val: np.ndarray, classes: np.ndarray, metric: str) -> np.ndarray:
    """Held-out metric per C: scores (N_val, len(Cs), K) -> (len(Cs), K) APs or (len(Cs), 1) recalls."""
    if metric in AP_METRICS:
        return np.stack([AP_METRICS[metric](scores[:, j], y_val) for j in range(scores.shape[1])])
    if metric == "mean_class_recall":
        pred = classes[scores.argmax(axis=2)]  # (N_val, len(Cs))
        return np.array([[metrics.mean_class_recall(y_val, pred[:, j])] for j in range(scores.shape[1])])
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")


def choose(Cs: Sequence[float], table: np.ndarray, num_classes: int) -> np.ndarray:
    """Best C per column of the table (the smallest C on ties); a column with no held-out value at all (a
    class without held-out positives) takes the C that is best on average."""
    costs = np.asarray(Cs, dtype=float)
    mean = np.nanmean(table, axis=1) if np.isfinite(table).any() else np.zeros(len(costs))
    fallback = costs[int(np.nanargmax(np.where(np.isnan(mean), -np.inf, mean)))]
    chosen = np.array([costs[int(np.nanargmax(col))] if np.isfinite(col).any() else fallback for col in table.T])
    return np.broadcast_to(chosen, (num_classes,)).copy() if len(chosen) == 1 else chosen


def select_and_refit(
    X: ArrayLike,
    y: ArrayLike,
    Cs: Sequence[float],
    *,
    metric: str,
    holdout: float,
    seed: int,
    heldout_scores: Callable[[np.ndarray, np.ndarray, list[float], np.ndarray], np.ndarray],
    make_probe: Callable[[np.ndarray], P],
) -> tuple[P, Selection]:
    """The protocol, whatever the solver: `heldout_scores(X_fit, y_fit, Cs, X_val)` returns (N_val, len(Cs), K)
    decision values, `make_probe(C_per_class)` an unfitted estimator."""
    Cs = [float(c) for c in Cs]
    if not Cs or min(Cs) <= 0:
        raise ValueError(f"the C grid must hold positive values, got {Cs}")
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
    _, _, classes, _ = svm_targets(y)
    if len(Cs) == 1:
        chosen = np.full(len(classes), Cs[0])
        table = np.full((1, len(classes)), np.nan)
    else:
        fit, val = holdout_split(y, holdout, seed)
        scores = heldout_scores(X[fit], y[fit], Cs, X[val])
        table = heldout_table(scores, y[val], classes, metric)
        chosen = choose(Cs, table, len(classes))
        log.info("held-out %s per C: %s", metric, np.round(np.nanmean(table, axis=1), 4).tolist())
    probe = make_probe(chosen)
    probe.fit(X, y)
    return probe, Selection(Cs, table, chosen)


def fit_probe(
    X: ArrayLike,
    y: ArrayLike,
    Cs: Sequence[float],
    *,
    metric: str,
    holdout: float = 0.2,
    seed: int = 0,
    device: torch.device | str | None = None,
    tol: float = 1e-6,
) -> tuple[LinearSVMProbe, Selection]:
    """The batched solver: every class and every C of the grid in one batch, then one batch for the refit."""

    def heldout_scores(x_fit: np.ndarray, y_fit: np.ndarray, Cs: Sequence[float], x_val: np.ndarray) -> np.ndarray:
        Y, S, _, _ = svm_targets(y_fit)
        k = Y.shape[1]
        # columns ordered (C, class): (N, len(Cs) * K)
        coef, intercept, _ = fit_linear_svms(
            x_fit, np.tile(Y, len(Cs)), np.tile(S, len(Cs)), np.repeat(Cs, k), tol=tol, device=device
        )
        return (x_val @ coef.T + intercept).reshape(len(x_val), len(Cs), k)

    return select_and_refit(
        X,
        y,
        Cs,
        metric=metric,
        holdout=holdout,
        seed=seed,
        heldout_scores=heldout_scores,
        make_probe=lambda C: LinearSVMProbe(C=C, tol=tol, device=device),
    )
