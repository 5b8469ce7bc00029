"""The generated VOC2007-layout dataset: layout, label semantics, determinism."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vggfeat.data.synthetic_voc import VOC_CLASSES, draw_scene, make_voc2007


def read_labels(voc, cls, split):
    rows = [line.split() for line in (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").read_text().splitlines()]
    return {name: int(label) for name, label in rows}


def test_layout_and_labels(tmp_path):
    voc = make_voc2007(tmp_path, n_trainval=60, n_test=30, seed=1)
    assert voc == tmp_path / "VOCdevkit" / "VOC2007"
    trainval = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    test = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(trainval) == 60 and len(test) == 30 and not set(trainval) & set(test)
    assert all((voc / "JPEGImages" / f"{name}.jpg").is_file() for name in trainval + test)
    counts = {v: 0 for v in (-1, 0, 1)}
    for cls in VOC_CLASSES:
        labels = read_labels(voc, cls, "trainval")
        assert list(labels) == trainval
        for v in labels.values():
            counts[v] += 1
    assert counts[1] > 30 and counts[0] > 0 and counts[-1] > 900  # positives, 'difficult only', negatives
    per_image = [sum(read_labels(voc, c, "test")[n] == 1 for c in VOC_CLASSES) for n in test]
    assert max(per_image) >= 2  # multi-label scenes


def test_deterministic_in_seed(tmp_path):
    a = make_voc2007(tmp_path / "a", 3, 2, seed=5)
    b = make_voc2007(tmp_path / "b", 3, 2, seed=5)
    c = make_voc2007(tmp_path / "c", 3, 2, seed=6)

    def pixels(voc):
        return np.asarray(Image.open(voc / "JPEGImages" / "000004.jpg"))

    assert np.array_equal(pixels(a), pixels(b)) and not np.array_equal(pixels(a), pixels(c))
    assert (a / "ImageSets" / "Main" / "dog_test.txt").read_text() == (
        b / "ImageSets" / "Main" / "dog_test.txt"
    ).read_text()
    # a scene and its labels are a function of the generator's state: same seed, same scene; another, another
    img_1, labels_1 = draw_scene(np.random.default_rng(1))
    img_1b, labels_1b = draw_scene(np.random.default_rng(1))
    img_2, labels_2 = draw_scene(np.random.default_rng(2))
    assert np.array_equal(np.asarray(img_1), np.asarray(img_1b)) and labels_1 == labels_1b
    assert not np.array_equal(np.asarray(img_1), np.asarray(img_2))
    for labels in (labels_1, labels_2):  # one to three classes, each clear (1) or only difficult (0)
        assert 1 <= len(labels) <= 3 and set(labels) <= set(VOC_CLASSES) and set(labels.values()) <= {0, 1}


def test_voc2012_classification_layout_loads_as_the_benchmark(tmp_path):
    from vggfeat.benchmarks.registry import load_benchmark
    from vggfeat.data.synthetic_voc import make_voc2012

    voc = make_voc2012(tmp_path, n_train=8, n_val=6, seed=1)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    (split,) = load_benchmark("voc2012", tmp_path)
    assert (split.train_name, split.test_name, split.metric) == ("train", "val", "voc12_ap")
    assert split.train_labels.shape == (8, 20) and split.test_labels.shape == (6, 20)
