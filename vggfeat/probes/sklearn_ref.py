"""The reference path (`--classifier sklearn`): the same protocol with scikit-learn's LinearSVC, one fit per
class and per C, as self-supervised benchmark suites do. Slow, but the yardstick the batched solver is held to.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from vggfeat.probes.selection import Selection, select_and_refit
from vggfeat.probes.svm import OneVsRestLinear

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from sklearn.svm import LinearSVC


def fit_linear_svc(x: ArrayLike, y_pm: ArrayLike, C: float, *, tol: float = 1e-4, max_iter: int = 10000) -> LinearSVC:
    """One LinearSVC (squared hinge, L2, intercept_scaling 1) on +-1 targets."""
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LinearSVC(C=C, loss="squared_hinge", penalty="l2", dual=True, tol=tol, max_iter=max_iter).fit(x, y_pm)


class SklearnSVMProbe(OneVsRestLinear):
    """One-vs-rest LinearSVC per class, with the targets and outputs of `LinearSVMProbe`."""

    def __init__(self, C: ArrayLike = 1.0, *, tol: float = 1e-4, max_iter: int = 10000) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: ArrayLike, y: ArrayLike) -> SklearnSVMProbe:
        X, Y, S, C, classes, multilabel = self._fit_inputs(X, y)
        coef, intercept = [], []
        for k in range(Y.shape[1]):
            rows = S[:, k] > 0  # VOC 'difficult' images are left out
            values = np.unique(Y[rows, k])
            if len(values) < 2:
                # LinearSVC refuses one-sided data (a class without positives in a small held-out fit set):
                # fall back to a constant score, the best bias alone (w = 0) for that side
                n = int(rows.sum())
                coef.append(np.zeros(X.shape[1], np.float32))
                intercept.append(float(values[0] if n else -1) * 2 * C[k] * n / (1 + 2 * C[k] * n))
                continue
            svc = fit_linear_svc(X[rows], Y[rows, k], float(C[k]), tol=self.tol, max_iter=self.max_iter)
            coef.append(svc.coef_[0])
            intercept.append(svc.intercept_[0])
        return self._set_fitted(np.array(coef), np.array(intercept), classes, multilabel)


def fit_sklearn_probe(
    X: ArrayLike, y: ArrayLike, Cs: Sequence[float], *, metric: str, holdout: float = 0.2, seed: int = 0
) -> tuple[SklearnSVMProbe, Selection]:
    """`selection.fit_probe` with LinearSVC: the same held-out split, metric and choice of C."""

    def heldout_scores(x_fit: np.ndarray, y_fit: np.ndarray, Cs: Sequence[float], x_val: np.ndarray) -> np.ndarray:
        return np.stack([SklearnSVMProbe(C=c).fit(x_fit, y_fit).class_scores(x_val) for c in Cs], axis=1)

    return select_and_refit(
        X,
        y,
        Cs,
        metric=metric,
        holdout=holdout,
        seed=seed,
        heldout_scores=heldout_scores,
        make_probe=lambda C: SklearnSVMProbe(C=C),
    )
