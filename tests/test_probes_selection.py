"""Choosing C on held-out training data: the split, the choice, and agreement with the LinearSVC path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from vggfeat import metrics
from vggfeat.data.synthetic_features import make_voc_like_features
from vggfeat.probes.selection import choose, fit_probe, holdout_split
from vggfeat.probes.sklearn_ref import fit_sklearn_probe


def test_holdout_is_seeded_disjoint_and_stratified():
    y = np.repeat(np.arange(5), [10, 20, 30, 2, 1])
    fit, held = holdout_split(y, 0.2, seed=3)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(y)
    assert [int(np.sum(y[held] == c)) for c in range(5)] == [2, 4, 6, 1, 0]  # a lone image stays for fitting
    again, _ = holdout_split(y, 0.2, seed=3)
    other, _ = holdout_split(y, 0.2, seed=4)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)
    fit, held = holdout_split(np.ones((50, 3)), 0.2, seed=0)
    assert len(held) == 10
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(y, 1.5, seed=0)


def test_choice_per_class_smallest_on_ties_and_fallback_without_positives():
    table = np.array([[0.5, 0.9, np.nan], [0.7, 0.9, np.nan], [0.6, 0.8, np.nan]])
    # class 0: best at C=1; class 1: tie at 0.1 and 1 -> 0.1; class 2: no held-out positives -> best mean (C=1)
    assert choose([0.1, 1.0, 10.0], table, 3).tolist() == [1.0, 0.1, 1.0]
    assert choose([0.1, 1.0], np.array([[0.2], [0.4]]), 4).tolist() == [1.0] * 4


def test_batched_protocol_matches_the_linearsvc_protocol_on_voc_like_features():
    x, y, x_test, y_test = make_voc_like_features(500, 500, 256, seed=1)
    Cs = [0.01, 0.1, 1.0, 10.0]
    ours, sel = fit_probe(x, y, Cs, metric="voc07_ap", seed=0)
    ref, ref_sel = fit_sklearn_probe(x, y, Cs, metric="voc07_ap", seed=0)
    assert sel.heldout.shape == (4, 20)
    np.testing.assert_allclose(sel.heldout, ref_sel.heldout, atol=2e-3)
    assert np.mean(sel.chosen == ref_sel.chosen) >= 0.9  # held-out APs can tie within round-off
    ap = metrics.voc07_ap(ours.decision_function(x_test), y_test)
    ref_ap = metrics.voc07_ap(ref.decision_function(x_test), y_test)
    assert abs(100 * (np.nanmean(ap) - np.nanmean(ref_ap))) <= 0.1
    # the chosen C per class is what the refit used
    assert list(ours.get_params()["C"]) == list(sel.chosen)


def test_single_label_selection_uses_mean_class_recall_on_real_digits():
    digits = load_digits()
    x, y = digits.data[:1000] / 16.0, digits.target[:1000]
    probe, sel = fit_probe(x, y, [1e-4, 1e-2, 1.0], metric="mean_class_recall", seed=0)
    assert sel.heldout.shape == (3, 1) and len(set(sel.chosen)) == 1 and sel.chosen[0] != 1e-4
    recall = metrics.mean_class_recall(digits.target[1000:], probe.predict(digits.data[1000:] / 16.0))
    assert recall > 0.9


def test_one_c_skips_the_holdout_and_bad_grids_fail():
    x, y, _, _ = make_voc_like_features(100, 10, 32, seed=2)
    probe, sel = fit_probe(x, y, [3.0], metric="voc07_ap")
    assert sel.chosen.tolist() == [3.0] * 20 and np.isnan(sel.heldout).all()
    with pytest.raises(ValueError, match="positive"):
        fit_probe(x, y, [1.0, 0.0], metric="voc07_ap")
    with pytest.raises(ValueError, match="unknown metric"):
        fit_probe(x, y, [1.0, 2.0], metric="top1")
