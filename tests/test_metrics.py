"""VOC AP and class recall against hand-worked rankings and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from vggfeat import metrics

# ranked: TP, FP, TP, difficult, FP -> precision 1, 1/2, 2/3, 2/3, 1/2 at recall 1/2, 1/2, 1, 1, 1
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
LABELS = np.array([1, -1, 1, 0, -1])


def test_voc07_ap_is_the_11_point_interpolation_of_a_hand_worked_ranking():
    # recall thresholds 0..0.5 (6 of them) reach precision 1; 0.6..1 (5) reach 2/3
    assert metrics.voc07_ap(SCORES, LABELS) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_voc12_ap_is_the_area_under_the_precision_envelope():
    assert metrics.voc12_ap(SCORES, LABELS) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_difficult_images_count_neither_way():
    # moving the difficult image to the top changes nothing; calling it negative would
    top = np.array([0.95, 0.9, 0.8, 0.7, 0.5])
    moved = np.array([0, 1, -1, 1, -1])
    assert metrics.voc07_ap(top, moved) == pytest.approx(metrics.voc07_ap(SCORES, LABELS))
    assert metrics.voc07_ap(top, np.where(moved == 0, -1, moved)) < metrics.voc07_ap(SCORES, LABELS)


def test_ties_keep_the_input_order_as_the_devkit_does():
    assert metrics.voc07_ap([0.5, 0.5], [-1, 1]) == pytest.approx(0.5)
    assert metrics.voc07_ap([0.5, 0.5], [1, -1]) == pytest.approx(1.0)


def test_matrix_input_gives_one_ap_per_class_and_nan_without_positives():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((40, 3))
    labels = np.where(rng.random((40, 3)) < 0.3, 1, -1)
    labels[:, 2] = -1
    ap = metrics.voc07_ap(scores, labels)
    assert ap.shape == (3,) and np.isnan(ap[2])
    assert ap[0] == pytest.approx(metrics.voc07_ap(scores[:, 0], labels[:, 0]))
    all_point = metrics.voc12_ap(scores, labels)
    assert all_point[1] == pytest.approx(metrics.voc12_ap(scores[:, 1], labels[:, 1]))


def test_perfect_and_reversed_rankings():
    labels = np.array([1, 1, -1, -1, -1])
    scores = np.array([5.0, 4, 3, 2, 1])
    assert metrics.voc07_ap(scores, labels) == 1.0 and metrics.voc12_ap(scores, labels) == 1.0
    # reversed: positives at ranks 4 and 5 -> precision 1/4 at recall 1/2, 2/5 at recall 1
    assert metrics.voc12_ap(-scores, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_bad_labels_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="1, -1 or 0"):
        metrics.voc07_ap([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="same shape"):
        metrics.voc12_ap([0.1, 0.2], [1, -1, 1])


def test_mean_class_recall_matches_balanced_accuracy():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 7, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, 300))
    assert metrics.mean_class_recall(y_true, y_pred) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    recall = metrics.per_class_recall(y_true, y_pred, num_classes=9)
    assert recall.shape == (9,) and np.isnan(recall[7:]).all()
    assert recall[3] == pytest.approx(np.mean(y_pred[y_true == 3] == 3))


# what MATLAB prints for num2str(0:0.1:1, 17), written out rather than computed
MATLAB_0_TO_1_BY_TENTHS = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def devkit_ap(scores, labels, eleven_point):
    """A line-by-line transcription of the VOC devkit (VOCevalcls.m, then VOCap.m or the 2007 11-point loop),
    with the thresholds MATLAB's `t=0:0.1:1` really takes: k/10 except the 4th, 0.1*3 = 0.30000000000000004."""
    si = sorted(range(len(scores)), key=lambda i: -scores[i])  # MATLAB's sort is stable
    tp, fp, prec, rec = 0, 0, [], []
    npos = sum(1 for g in labels if g > 0)
    for i in si:
        tp += labels[i] > 0
        fp += labels[i] < 0
        rec.append(tp / npos)
        prec.append(tp / (tp + fp) if tp + fp else 0.0)
    if eleven_point:
        ap = 0.0
        for t in MATLAB_0_TO_1_BY_TENTHS:
            p = max([pr for pr, r in zip(prec, rec, strict=False) if r >= t], default=0.0)
            ap += p / 11
        return ap
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize("seed", range(5))
def test_ap_equals_a_transcription_of_the_devkit(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.standard_normal(60), 1)  # coarse rounding: many ties
    labels = rng.choice([1, -1, -1, -1, 0], size=60)
    labels[0] = 1
    assert metrics.voc07_ap(scores, labels) == pytest.approx(devkit_ap(list(scores), list(labels), True))
    assert metrics.voc12_ap(scores, labels) == pytest.approx(devkit_ap(list(scores), list(labels), False))


def test_devkit_thresholds_are_matlab_colon_values():
    assert metrics.VOC07_THRESHOLDS.tolist() == MATLAB_0_TO_1_BY_TENTHS
    assert metrics.VOC07_THRESHOLDS[3] == 0.1 * 3 != 0.3


def test_recall_of_exactly_three_tenths_misses_the_fourth_threshold_as_in_the_devkit():
    # 3 TP, 7 FP, 7 TP, 3 FP: recall 3/10 at precision 1, then precision 10/17 up to recall 1.
    # Devkit: (3 * 1 + 8 * 10/17) / 11 = 0.7005; exact k/10 thresholds would give (4 + 7 * 10/17) / 11 = 0.7380.
    scores = np.arange(20, 0, -1)
    labels = np.array([1, 1, 1] + [-1] * 7 + [1] * 7 + [-1] * 3)
    assert metrics.voc07_ap(scores, labels) == pytest.approx((3 + 8 * 10 / 17) / 11)
    assert round(metrics.voc07_ap(scores, labels), 4) == 0.7005
    assert metrics.voc07_ap(scores, labels) == pytest.approx(devkit_ap(list(scores), list(labels), True))


@pytest.mark.parametrize("seed", range(20))
def test_11_point_ap_equals_the_devkit_with_ten_positives(seed):
    # ten positives put recalls on exact tenths, where the threshold construction matters
    rng = np.random.default_rng(100 + seed)
    labels = rng.permutation(np.array([1] * 10 + [-1] * 25 + [0] * 3))
    scores = rng.standard_normal(len(labels))
    assert metrics.voc07_ap(scores, labels) == pytest.approx(devkit_ap(list(scores), list(labels), True), abs=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_never_reach_a_metric(bad):
    scores = SCORES.copy()
    scores[2] = bad
    for ap in (metrics.voc07_ap, metrics.voc12_ap):
        with pytest.raises(
            metrics.NonFiniteScoresError, match=r"1 of 5 scores are NaN or infinite \(the first at \(2,\)\)"
        ):
            ap(scores, LABELS)
