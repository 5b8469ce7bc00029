"""The plateau schedule of Sect. 3.1: lr / 10 when validation top-1 stops improving, at most 3 times."""

from __future__ import annotations

import pytest

from vggfeat.train.schedule import PlateauState, plateau_step


def run(metrics, **kw):
    s, lrs = PlateauState(lr=1e-2), []
    for m in metrics:
        s = plateau_step(s, m, **kw)
        lrs.append(s.lr)
    return s, lrs


def test_drops_after_patience_and_at_most_three_times():
    s, lrs = run([0.1, 0.2, 0.2, 0.3, 0.25, 0.3, 0.3, 0.29, 0.31, 0.31, 0.31], patience=1)
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5])
    assert s.drops == 3 and s.best == 0.31


def test_patience_counts_epochs_without_improvement():
    _, lrs = run([0.5, 0.4, 0.45, 0.5, 0.6, 0.6, 0.6, 0.6], patience=3)
    # 3 non-improving epochs (0.4, 0.45, 0.5 ties the best) -> drop; counter restarts after 0.6
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4])


def test_threshold_and_factor():
    _, lrs = run([0.5, 0.50005, 0.6], patience=1, threshold=1e-3, factor=2.0)
    assert lrs == pytest.approx([1e-2, 5e-3, 5e-3])
