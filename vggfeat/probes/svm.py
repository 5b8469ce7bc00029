"""One-vs-rest linear SVMs trained together as batched tensor work (Sect. 4: the paper's transfer classifier).

Every (class, C) pair is one column of a batch and solves the problem scikit-learn's LinearSVC solves:
min_w 0.5 |w|^2 + C sum_i s_i max(0, 1 - y_i w.[x_i, b_s])^2, the L2-regularised squared hinge, where the bias
is the weight of a constant feature b_s (`intercept_scaling`, 1 as in LinearSVC). The solver is a primal Newton
method (Keerthi & DeCoste's finite Newton for the L2-SVM): each step solves the Newton system on the current
margin violators by preconditioned conjugate gradients, then an exact line search on the piecewise-quadratic
objective. All the work is (N, D) x (D, M) matrix products shared by the M problems, on the GPU when there is
one. The preconditioner is the Hessian's diagonal around the violators' mean plus that mean as a rank-one term
(post-ReLU descriptors share one dominant direction, which plain Jacobi would leave ill-conditioned).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from vggfeat.errors import InputError

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

    _Op = Callable[[torch.Tensor], torch.Tensor]

log = logging.getLogger(__name__)


def _pcg(hvp: _Op, rhs: torch.Tensor, precondition: _Op, *, rtol: float, max_iter: int) -> torch.Tensor:
    """Batched preconditioned conjugate gradients for H x = rhs, one system per column of rhs (D, M)."""
    import torch

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    r0 = torch.linalg.vector_norm(r, dim=0)
    live = r0 > 0
    for _ in range(max_iter):
        hp = hvp(p)
        php = (p * hp).sum(0)
        alpha = torch.where(live & (php > 0), rz / php.clamp_min(1e-30), torch.zeros_like(rz))
        x += alpha * p
        r -= alpha * hp
        live = live & (torch.linalg.vector_norm(r, dim=0) > rtol * r0)
        if not bool(live.any()):
            break
        z = precondition(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(live, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        rz = rz_new
        p = z + beta * p
    return x


def _line_search(
    w: torch.Tensor, dw: torch.Tensor, z: torch.Tensor, q: torch.Tensor, c2s: torch.Tensor, *, iters: int = 40
) -> torch.Tensor:
    """Exact minimiser t >= 0 of f(w + t dw) along the Newton direction, per column.

    f'(t) = w.dw + t |dw|^2 - sum_i c2s_i q_i max(0, z_i - t q_i) with c2s = 2 C s, z the margin shortfall and
    q its change per unit step. f' increases with t (f is convex), so a safeguarded Newton iteration inside a
    bracket [lo, hi] with f'(lo) <= 0 <= f'(hi) finds its root.
    """
    import torch

    wd, dd = (w * dw).sum(0), (dw * dw).sum(0)

    def slope(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = z - t * q
        act = (m > 0).to(q.dtype)
        return wd + t * dd - (c2s * q * m * act).sum(0), dd + (c2s * q * q * act).sum(0)

    lo, hi = torch.zeros_like(wd), torch.ones_like(wd)
    for _ in range(60):  # grow hi until the slope there is non-negative
        g, _ = slope(hi)
        grow = g < 0
        if not bool(grow.any()):
            break
        lo = torch.where(grow, hi, lo)
        hi = torch.where(grow, 2 * hi, hi)
    t = hi.clone()
    for _ in range(iters):
        g, h = slope(t)
        lo = torch.where(g <= 0, t, lo)
        hi = torch.where(g >= 0, t, hi)
        newton = t - g / h.clamp_min(1e-30)
        t_new = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        settled = bool(((t_new - t).abs() <= 1e-6 * t.abs().clamp_min(1e-12)).all())
        t = t_new
        if settled:
            break
    return t


def fit_linear_svms(
    X: ArrayLike,
    Y: ArrayLike,
    S: ArrayLike,
    C: ArrayLike,
    *,
    intercept_scaling: float = 1.0,
    tol: float = 1e-6,
    max_iter: int = 100,
    cg_iter: int = 300,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train M linear SVMs sharing the features X (N, D): targets Y (N, M) in {1, -1}, per-sample weights
    S (N, M) (0 drops a sample from a problem, e.g. VOC 'difficult'), costs C (M,).

    Returns coef (M, D), intercept (M,) and the Newton steps each problem took (M,). A problem stops when
    its gradient norm falls below `tol` times its value at zero.
    """
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    f32 = torch.float32
    X = np.asarray(X, dtype=np.float32)
    n, d = X.shape
    Y, S = np.asarray(Y, dtype=np.float32), np.asarray(S, dtype=np.float32)
    C = np.asarray(C, dtype=np.float32).reshape(-1)
    m = Y.shape[1] if Y.ndim == 2 else -1
    if Y.shape != (n, m) or S.shape != (n, m) or C.shape != (m,):
        raise ValueError(f"shapes disagree: X {X.shape}, Y {Y.shape}, S {S.shape}, C {C.shape}")
    if not (C > 0).all():
        raise ValueError("every C must be positive")
    xa = np.empty((n, d + 1), dtype=np.float32)  # (N, D+1): the features and the constant bias feature
    xa[:, :d] = X
    xa[:, d] = intercept_scaling
    Xa = torch.from_numpy(xa).to(device)
    Yd, Sd, Cd = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (Y, S, C))  # on the device
    Xa2 = Xa * Xa
    W = torch.zeros(d + 1, m, dtype=f32, device=device)
    iters = torch.zeros(m, dtype=torch.long, device=device)
    g0 = None
    f_prev = torch.full((m,), float("inf"), device=device)
    todo = torch.arange(m, device=device)
    for _ in range(max_iter):
        Wt, Yt, St, Ct = W[:, todo], Yd[:, todo], Sd[:, todo], Cd[todo]
        z = 1 - Yt * (Xa @ Wt)  # (N, M'): margin shortfall
        c2s = 2 * Ct * St  # (N, M'): loss weights
        act = c2s * (z > 0).to(f32)  # Hessian weights of the violators
        grad = Wt - Xa.T @ (act * Yt * z)  # (D+1, M')
        gnorm = torch.linalg.vector_norm(grad, dim=0)
        f = 0.5 * (Wt * Wt).sum(0) + 0.5 * (act * z * z).sum(0)
        if g0 is None:
            g0 = gnorm.clone()
        # converged, or stalled at float32 round-off (the objective no longer moves)
        done = (gnorm <= tol * g0[todo]) | (f_prev[todo] - f <= 1e-7 * f.abs())
        f_prev[todo] = f
        if bool(done.all()):
            break
        keep = ~done
        todo, Wt, Yt, z, c2s, act, grad = (
            todo[keep],
            Wt[:, keep],
            Yt[:, keep],
            z[:, keep],
            c2s[:, keep],
            act[:, keep],
            grad[:, keep],
        )
        iters[todo] += 1

        # preconditioner: H ~ diag(1 + sum_i a_i (x_i - mu)^2) + n_a mu mu^T, inverted by Sherman-Morrison
        n_a = act.sum(0).clamp_min(1e-12)  # (M',)
        mu = (Xa.T @ act) / n_a  # (D+1, M'): the violators' weighted mean
        diag = 1 + (Xa2.T @ act - n_a * mu * mu).clamp_min(0)
        u = torch.sqrt(n_a) * mu
        du = u / diag
        denom = 1 + (u * du).sum(0)

        def precondition(
            r: torch.Tensor,
            diag: torch.Tensor = diag,
            u: torch.Tensor = u,
            du: torch.Tensor = du,
            denom: torch.Tensor = denom,
        ) -> torch.Tensor:
            return r / diag - du * ((du * r).sum(0) / denom)

        def hvp(v: torch.Tensor, act: torch.Tensor = act) -> torch.Tensor:
            return v + Xa.T @ (act * (Xa @ v))

        rel = torch.clamp(torch.sqrt(gnorm[keep] / g0[todo]), max=0.1)  # inexact Newton: looser far away
        step = _pcg(hvp, -grad, precondition, rtol=float(rel.min()), max_iter=cg_iter)
        q = Yt * (Xa @ step)  # (N, M'): margin change per unit step
        t = _line_search(Wt, step, z, q, c2s)
        W[:, todo] = Wt + t * step
    else:
        log.warning("linear SVM: %d of %d problems stopped at max_iter=%d", len(todo), m, max_iter)
    return W[:d].T.cpu().numpy(), (intercept_scaling * W[d]).cpu().numpy(), iters.cpu().numpy()


def svm_targets(y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One-vs-rest targets from class ids (N,) or VOC labels (N, K) in {1, -1, 0}.

    Returns Y (N, K) in {1, -1}, weights S (N, K) (0 for a VOC 'difficult' label: neither positive nor
    negative), the class ids (K,) and whether the labels were multi-label.
    """
    y = np.asarray(y)
    if y.ndim == 1:
        classes = np.unique(y)
        if len(classes) < 2:
            # "1 class" is one of the phrases scikit-learn's estimator checks look for
            raise InputError(
                f"need at least 2 classes to train one-vs-rest SVMs, got {len(classes)} class "
                f"({', '.join(map(str, classes[:1]))})"
            )
        Y = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
        return Y.astype(np.float32), np.ones_like(Y, dtype=np.float32), classes, False
    if y.ndim == 2:
        bad = ~np.isin(y, (1, -1, 0))
        if bad.any():
            raise ValueError(f"multi-label targets must be 1, -1 or 0 (difficult); found {y[bad].flat[0]!r}")
        Y = np.where(y > 0, 1.0, -1.0).astype(np.float32)
        return Y, (y != 0).astype(np.float32), np.arange(y.shape[1]), True
    raise ValueError(f"y must be class ids (N,) or labels (N, K), got shape {y.shape}")


def per_class_costs(C: ArrayLike, num_classes: int) -> np.ndarray:
    """C as one value per class: a number is repeated; an array must have one entry per class."""
    C = np.asarray(C, dtype=np.float64)
    C = np.full(num_classes, float(C)) if C.ndim == 0 else C
    if C.shape != (num_classes,):
        raise ValueError(f"C must be a number or one value per class ({num_classes}), got shape {C.shape}")
    return C


class OneVsRestLinear(ClassifierMixin, BaseEstimator):
    """Scores and predictions of fitted one-vs-rest linear classifiers (coef_ (K, D), intercept_ (K,)).

    Inputs are checked as scikit-learn checks them (`validate_data`: 2-D, finite, dense, consistent lengths,
    the fitted width). Two classes given as ids (N,) make one problem, classes_[1] against classes_[0], as
    LinearSVC does: coef_ is (1, D) and `decision_function` is (N,), positive for classes_[1].
    """

    def _fit_inputs(
        self, X: ArrayLike, y: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """Checked (X (N, D) float32, Y, S, C per problem, classes, multilabel) for `fit`; see `svm_targets`."""
        Xc, y = validate_data(self, X, y, dtype=np.float32, multi_output=True)
        check_classification_targets(y)  # refuses a continuous target with sklearn's "Unknown label type"
        Y, S, classes, multilabel = svm_targets(y)
        C = per_class_costs(self.C, Y.shape[1])
        if not multilabel and len(classes) == 2:
            if C[0] != C[1]:
                raise ValueError(f"two classes are one SVM (classes_[1] vs classes_[0]): give one C, not {C}")
            Y, S, C = Y[:, 1:], S[:, 1:], C[1:]
        return Xc, Y, S, C, classes, multilabel

    def _set_fitted(
        self, coef: ArrayLike, intercept: ArrayLike, classes: np.ndarray, multilabel: bool
    ) -> OneVsRestLinear:
        self.coef_, self.intercept_ = np.asarray(coef, np.float32), np.asarray(intercept, np.float32)
        self.classes_, self.multilabel_ = classes, multilabel
        return self

    def _binary(self) -> bool:
        return not self.multilabel_ and len(self.classes_) == 2

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Scores (N, K); (N,) for two classes given as ids (positive: classes_[1])."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if self._binary() else scores

    def class_scores(self, X: ArrayLike) -> np.ndarray:
        """One score column per class, always (N, K): for two classes ids the binary score and its negation."""
        scores = self.decision_function(X)
        return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores

    def predict(self, X: ArrayLike) -> np.ndarray:
        scores = self.decision_function(X)
        if self.multilabel_:
            return np.where(scores > 0, 1, -1)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[scores.argmax(axis=1)]


class LinearSVMProbe(OneVsRestLinear):
    """A scikit-learn estimator: one-vs-rest linear SVMs (squared hinge, L2, LinearSVC's bias) fitted together.

    C is one cost for every class or one per class (K,). `fit(X, y)` takes class ids (N,) or VOC labels
    (N, K) in {1, -1, 0}; `decision_function(X)` is (N, K), or (N,) for two classes given as ids (one SVM,
    as LinearSVC); `predict` gives class ids, or {1, -1} per class for VOC labels. `device` is where the
    solver runs (a torch device; None is the CPU). A 2-D y is always VOC labels, so unlike most scikit-learn
    classifiers a column vector y (N, 1) is one VOC class, not class ids to ravel.
    """

    def __init__(
        self,
        C: ArrayLike = 1.0,
        *,
        intercept_scaling: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 100,
        device: torch.device | str | None = None,
    ) -> None:
        self.C = C
        self.intercept_scaling = intercept_scaling
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X: ArrayLike, y: ArrayLike) -> LinearSVMProbe:
        X, Y, S, C, classes, multilabel = self._fit_inputs(X, y)
        coef, intercept, self.n_iter_ = fit_linear_svms(
            X,
            Y,
            S,
            C,
            intercept_scaling=self.intercept_scaling,
            tol=self.tol,
            max_iter=self.max_iter,
            device=self.device,
        )
        return self._set_fitted(coef, intercept, classes, multilabel)
