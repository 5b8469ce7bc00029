"""Low-shot VOC-2007 against a literal port of the self-supervised suites' code (VISSL's SVMLowShotTrainer,
evaluate.get_precision_recall / calculate_ap, create_low_shot_samples and its voc07 low-shot costs; the same
code as fair_self_supervision_benchmark's tools/svm), on a training set that IS the sample: each class has
exactly k positives and (K - 1) k negatives, so any seed draws the same rows and the comparison is exact."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from vggfeat.probes.lowshot import run_low_shot

# VISSL configs/config/benchmark/low_shot_transfer/voc07/eval_resnet_8gpu_transfer_voc07_low_shot_svm.yaml
SUITES_COSTS = [0.01, 0.1, 1.0, 2, 5, 10, 15, 20, 50, 100, 1000]
K, k = 5, 4


def whole_set_is_the_sample(seed: int = 0, n_test: int = 300, dim: int = 32):
    """VOC labels {1, -1, 0} where each class has exactly k positives and (K - 1) k negatives in trainval (the
    rest 'difficult'); rows of unequal norms, so the suites' feature scaling matters."""
    rng = np.random.default_rng(seed)
    main = np.repeat(np.arange(K), 2 * k)  # (N,) each row's object class; half of them 'difficult'
    y = np.zeros((len(main), K), np.int8)
    for c in range(K):
        y[np.flatnonzero(main == c)[:k], c] = 1
        y[rng.choice(np.flatnonzero(main != c), (K - 1) * k, replace=False), c] = -1
    protos = rng.standard_normal((K, dim))

    def features(cls: np.ndarray) -> np.ndarray:
        x = np.abs(2.0 * rng.standard_normal((len(cls), dim)) + protos[cls] + 0.5)
        return x * rng.uniform(0.5, 3.0, (len(cls), 1))

    test_main = rng.integers(0, K, n_test)
    y_test = np.where(test_main[:, None] == np.arange(K), 1, -1).astype(np.int8)
    y_test[(rng.random((n_test, K)) < 0.1) & (y_test > 0)] = 0
    return features(main), y, features(test_main), y_test


# ---- the port: the suites' functions, with their label convention (1 present, 0 absent, -1 ignore) ----


def sample_symbol(input_targets, output_target, symbol, num):
    num_classes = input_targets.shape[1]
    for idx in range(num_classes):
        symbol_data = np.where(input_targets[:, idx] == symbol)[0]
        sampled = random.sample(list(symbol_data), num)
        for index in sampled:
            output_target[index, idx] = symbol
    return output_target


def normalize_features(features):
    feats_norm = np.linalg.norm(features, axis=1)
    return features / (feats_norm + 1e-5)[:, np.newaxis]


def get_cls_feats_labels(cls, features, targets):
    cls_labels = targets[:, cls].astype(dtype=np.int32, copy=True)
    out_data_inds = targets[:, cls] != -1
    out_feats = features[out_data_inds]
    out_cls_labels = cls_labels[out_data_inds]
    out_cls_labels[np.where(out_cls_labels == 0)] = -1
    return out_feats, out_cls_labels


def calculate_ap(rec, prec):
    rec, prec = rec.reshape(rec.size, 1), prec.reshape(prec.size, 1)
    z, o = np.zeros((1, 1)), np.ones((1, 1))
    mrec, mpre = np.vstack((z, rec, o)), np.vstack((z, prec, z))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    indices = np.where(mrec[1:] != mrec[0:-1])[0] + 1
    ap = 0
    for i in indices:
        ap = ap + (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def get_precision_recall(targets, scores):
    targets = np.array(targets > 0, dtype=np.float32)
    tog = np.hstack((targets[:, np.newaxis].astype(np.float64), scores[:, np.newaxis].astype(np.float64)))
    ind = np.argsort(scores)[::-1]
    sortcounts = np.array([tog[i, 0] for i in ind])
    tp = sortcounts
    fp = sortcounts.copy()
    for i in range(sortcounts.shape[0]):
        fp[i] = 0.0 if sortcounts[i] >= 1 else 1.0
    P = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    R = np.cumsum(tp) / np.sum(targets)
    return float(calculate_ap(R, P)[0])


def suites_low_shot(train_features, train_targets, test_features, test_targets, k_value, sample_inds):
    """(samples, costs) test mAP, as SVMLowShotTrainer.train / test do for one k."""
    num_classes = train_targets.shape[1]
    train_features = normalize_features(train_features.astype(np.float64))
    test_features = normalize_features(test_features.astype(np.float64))
    out = np.zeros((len(sample_inds), len(SUITES_COSTS)))
    for s, sample_idx in enumerate(sample_inds):
        random.seed(sample_idx)
        sample = np.ones(train_targets.shape, dtype=np.int32) * -1
        sample = sample_symbol(train_targets, sample, 1, k_value)
        sample = sample_symbol(train_targets, sample, 0, (num_classes - 1) * k_value)
        for j, cost in enumerate(SUITES_COSTS):
            aps = []
            for cls in range(num_classes):
                clf = LinearSVC(
                    C=cost,
                    class_weight={1: 2, -1: 1},
                    intercept_scaling=1.0,
                    penalty="l2",
                    loss="squared_hinge",
                    tol=0.0001,
                    dual=True,
                    max_iter=2000,
                )
                feats, labels = get_cls_feats_labels(cls, train_features, sample)
                with warnings.catch_warnings():  # the suites ignore ConvergenceWarning at C = 1000 too
                    warnings.simplefilter("ignore")
                    clf.fit(feats, labels)
                preds, labels = get_cls_feats_labels(cls, clf.decision_function(test_features), test_targets)
                aps.append(get_precision_recall(labels, preds))
            out[s, j] = np.mean(aps)
    return out


def to_suites_labels(y: np.ndarray) -> np.ndarray:
    # VISSL extra_scripts/datasets/create_voc_data_files.py: VOC's -1 (absent) becomes 0, 0 (difficult) -1
    return np.where(y > 0, 1, np.where(y < 0, 0, -1)).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1])
def test_our_low_shot_map_equals_the_suites_code_on_a_sample_that_is_the_whole_set(seed):
    x, y, x_test, y_test = whole_set_is_the_sample(seed)
    assert ((y > 0).sum(0) == k).all() and ((y < 0).sum(0) == (K - 1) * k).all()
    suites = suites_low_shot(x, to_suites_labels(y), x_test, to_suites_labels(y_test), k, [1, 2])
    ours = run_low_shot(x, y, x_test, y_test, ks=(k,), samples=2, seed=seed).to_dict()
    (row,) = ours["rows"]
    assert ours["Cs"] == SUITES_COSTS and row["negatives"] == (K - 1) * k and row["drawn"] == [k, (K - 1) * k]
    # their report: per k, the cost with the best mean over samples, then mean and std over samples there
    best = suites.mean(axis=0).argmax()
    assert row["mAP"] == pytest.approx(100 * suites[:, best].mean(), abs=0.05)
    assert row["std"] == pytest.approx(100 * suites[:, best].std(), abs=0.05) and row["std"] == 0
    assert row["chosen_C"] == SUITES_COSTS[best]
    for j, cost in enumerate(SUITES_COSTS):  # and at every cost of their grid
        assert row["mAP_per_C"][str(float(cost))] == pytest.approx(100 * suites[:, j].mean(), abs=0.05), cost
