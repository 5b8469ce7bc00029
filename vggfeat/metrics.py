"""The benchmarks' own metrics as plain numpy functions: the VOC devkits' AP, Caltech's mean class recall.

VOC labels are in {1, -1, 0}: 0 marks an image whose only objects of the class are 'difficult'; it counts as
neither a true nor a false positive and is not among the positives. The ranking follows the devkit's
VOCevalcls: a stable sort by descending score, so tied scores keep the input order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from vggfeat.errors import VggfeatError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


class NonFiniteScoresError(VggfeatError, ValueError):
    """Scores holding NaN or infinity: a ranking of them, hence an AP or a recall, would be a silent wrong number."""


def check_finite_scores(scores: np.ndarray, what: str = "scores") -> None:
    """A NonFiniteScoresError naming how many of `scores` are NaN or infinite (and where the first is)."""
    bad = ~np.isfinite(scores)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise NonFiniteScoresError(
            f"{int(bad.sum())} of {scores.size} {what} are NaN or infinite (the first at {first}): the descriptors "
            "or the probe produced non-numbers, so no metric is computed; check the feature store for NaN or inf"
        )


def _columns(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must have the same shape")
    if scores.ndim not in (1, 2):
        raise ValueError(f"expected (N,) or (N, K) arrays, got shape {scores.shape}")
    bad = ~np.isin(labels, (1, -1, 0))
    if bad.any():
        raise ValueError(f"VOC labels must be 1, -1 or 0; found {labels[bad].flat[0]!r}")
    check_finite_scores(scores)
    single = scores.ndim == 1
    return (scores[:, None], labels[:, None], single) if single else (scores, labels, single)


def _ranked_pr(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    ranked = labels[order]
    tp = np.cumsum(ranked > 0)
    fp = np.cumsum(ranked < 0)
    npos = int((labels > 0).sum())
    recall = tp / npos if npos else np.zeros(len(tp))
    return tp / np.maximum(tp + fp, 1), recall


def precision_recall(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked image of one class (difficult images skipped), as VOCevalcls."""
    scores, labels, _ = _columns(scores, labels)
    if scores.shape[1] != 1:
        raise ValueError("precision_recall takes one class: (N,) scores and labels")
    return _ranked_pr(scores[:, 0], labels[:, 0])


def _ap(scores: ArrayLike, labels: ArrayLike, one: Callable[[np.ndarray, np.ndarray], float]) -> float | np.ndarray:
    scores, labels, single = _columns(scores, labels)
    out = np.array(
        [
            one(*_ranked_pr(scores[:, k], labels[:, k])) if (labels[:, k] > 0).any() else np.nan
            for k in range(scores.shape[1])
        ]
    )
    return float(out[0]) if single else out


def _matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """The values of MATLAB's `a:d:b` bit for bit: the first half is a + k*d, the second half b - (n-k)*d and the
    middle of an even count (a+b)/2, so the range ends exactly on b (MathWorks' published colon algorithm)."""
    n = int(round((b - a) / d))
    k = np.arange(n // 2 + 1)
    out = np.empty(n + 1)
    out[k] = a + k * d
    out[n - k] = b - k * d
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


# The VOC2007 devkit's VOCevalcls.m (not in this repo) loops `for t=0:0.1:1`. MATLAB builds that range as above,
# so its thresholds are k/10 except the fourth, 3*0.1 = 0.30000000000000004: a recall of exactly 3/10 does NOT
# reach it. numpy's arange(0, 1.1, 0.1) (many Python ports) errs at the 4th, 7th and 8th instead, and exact k/10
# at none; only this matches the devkit.
VOC07_THRESHOLDS = _matlab_colon(0.0, 0.1, 1.0)


def _ap11(precision: np.ndarray, recall: np.ndarray) -> float:
    # VOC2007: mean over the 11 devkit thresholds t of the best precision at recall >= t (0 when never reached)
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in VOC07_THRESHOLDS]))


def _ap_all(precision: np.ndarray, recall: np.ndarray) -> float:
    # VOC2010+: area under the monotone (non-increasing) precision envelope
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def voc07_ap(scores: ArrayLike, labels: ArrayLike) -> float | np.ndarray:
    """VOC2007 11-point interpolated AP: a float for (N,) inputs, a (K,) array for (N, K); NaN for a class
    without positives."""
    return _ap(scores, labels, _ap11)


def voc12_ap(scores: ArrayLike, labels: ArrayLike) -> float | np.ndarray:
    """VOC2010+ all-point AP, same conventions as `voc07_ap`."""
    return _ap(scores, labels, _ap_all)


def per_class_recall(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Recall of each class id 0..K-1 (NaN for a class absent from y_true)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same length")
    k = int(num_classes if num_classes is not None else max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    total = np.bincount(y_true, minlength=k)[:k].astype(float)
    hits = np.bincount(y_true[y_true == y_pred], minlength=k)[:k]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hits / np.maximum(total, 1), np.nan)


def mean_class_recall(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Mean per-class accuracy over the classes present in y_true (the Caltech metric)."""
    return float(np.nanmean(per_class_recall(y_true, y_pred, num_classes)))
