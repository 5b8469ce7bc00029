"""Benchmark readers on small trees written here: VOC label arrays, Caltech/folder splits, split files, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggfeat.benchmarks import caltech101, caltech256
from vggfeat.benchmarks.base import DatasetError, resolve_root
from vggfeat.benchmarks.registry import BENCHMARKS, load_benchmark
from vggfeat.benchmarks.voc import VOC_CLASSES
from vggfeat.data.synthetic_voc import make_voc2007


def tiny_jpg(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, value, value)).save(path)
    return path


def write_voc(root: Path, year: str, splits: dict[str, dict[str, dict[str, int]]]) -> Path:
    """VOCdevkit/VOC<year> with {split: {image id: {class: label}}}; unlisted classes are -1."""
    voc = root / "VOCdevkit" / f"VOC{year}"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, images in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
        for cls in VOC_CLASSES:
            (main / f"{cls}_{split}.txt").write_text(
                "".join(f"{i} {lab.get(cls, -1):2d}\n" for i, lab in images.items())
            )
        for i in images:
            tiny_jpg(voc / "JPEGImages" / f"{i}.jpg")
    return voc


HAND = {
    "trainval": {"000001": {"dog": 1, "person": 0}, "000002": {"cat": 1, "dog": 0}, "000005": {"person": 1}},
    "test": {"000003": {"dog": 1, "cat": 1}, "000004": {}},
}


def read_labels(voc, cls, split):
    return dict(line.split() for line in (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").read_text().splitlines())


def test_voc2007_hand_tree_labels_exact(tmp_path):
    voc = write_voc(tmp_path, "2007", HAND)
    (split,) = load_benchmark("voc2007", tmp_path)
    assert (split.benchmark, split.split, split.metric, split.multilabel) == ("voc2007", 0, "voc07_ap", True)
    assert (split.train_name, split.test_name, split.classes) == ("trainval", "test", VOC_CLASSES)
    assert split.train_paths == tuple(str((voc / "JPEGImages" / f"{i}.jpg").resolve()) for i in HAND["trainval"])
    expected = -np.ones((3, 20), dtype=np.int8)
    d, c, p = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")
    expected[0, d], expected[0, p], expected[1, c], expected[1, d], expected[2, p] = 1, 0, 1, 0, 1
    assert split.train_labels.dtype == np.int8 and np.array_equal(split.train_labels, expected)
    assert not split.train_labels.flags.writeable and split.num_classes == 20
    expected_test = -np.ones((2, 20), dtype=np.int8)
    expected_test[0, d] = expected_test[0, c] = 1
    assert np.array_equal(split.test_labels, expected_test)


def test_voc2007_synthetic_tree_and_lenient_roots(tmp_path):
    voc = make_voc2007(tmp_path / "data" / "pascal", n_trainval=12, n_test=8, size=(32, 24))
    splits = [
        load_benchmark("voc2007", r)[0] for r in (tmp_path / "data", tmp_path / "data" / "pascal", voc.parent, voc)
    ]
    assert all(s.train_paths == splits[0].train_paths for s in splits)
    split = splits[0]
    assert len(split.train_paths) == 12 and len(split.test_paths) == 8
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in split.train_paths + split.test_paths)
    for col, cls in enumerate(VOC_CLASSES):
        labels = read_labels(voc, cls, "test")
        assert [int(labels[Path(p).stem]) for p in split.test_paths] == split.test_labels[:, col].tolist()


def test_voc2012_train_val_beside_2007(tmp_path):
    write_voc(tmp_path, "2007", HAND)
    write_voc(
        tmp_path, "2012", {"train": {"2008_000001": {"cat": 1, "dog": 1}}, "val": {"2008_000002": {"cat": 0, "dog": 1}}}
    )
    (split,) = load_benchmark("voc2012", tmp_path)
    assert (split.metric, split.train_name, split.test_name) == ("voc12_ap", "train", "val")
    assert [Path(p).name for p in split.train_paths + split.test_paths] == ["2008_000001.jpg", "2008_000002.jpg"]
    assert split.test_labels[0, VOC_CLASSES.index("cat")] == 0 and "VOC2012" in split.test_paths[0]
    with pytest.raises(DatasetError, match="no VOC2012 folder"):
        load_benchmark("voc2012", tmp_path / "VOCdevkit" / "VOC2007")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m, v: (m / "dog_test.txt").unlink(), r"missing list file .*dog_test\.txt"),
        (
            lambda m, v: (m / "cat_trainval.txt").write_text("000001 -1\n000002  1 extra\n000005 -1\n"),
            r"cat_trainval\.txt, line 2: expected '<image id> <label>', got '000002  1 extra'",
        ),
        (lambda m, v: (m / "cat_test.txt").write_text("000003 2\n000004 -1\n"), r"cat_test\.txt, line 1: label '2'"),
        (
            lambda m, v: (v / "JPEGImages" / "000004.jpg").unlink(),
            r"test\.txt, line 2: image '000004' not found: no file .*000004\.jpg",
        ),
        (
            lambda m, v: (m / "bird_test.txt").write_text("000003 -1\n000009 -1\n"),
            r"bird_test\.txt, line 2: image id '000009' is not in .*test\.txt",
        ),
        (
            lambda m, v: (m / "test.txt").write_text("000003\n../../secret\n"),
            r"test\.txt, line 2: image id '../../secret' must be a plain file name",
        ),
    ],
)
def test_voc_errors_name_file_and_line(tmp_path, edit, match):
    voc = write_voc(tmp_path, "2007", HAND)
    edit(voc / "ImageSets" / "Main", voc)
    with pytest.raises(DatasetError, match=match):
        load_benchmark("voc2007", tmp_path)


def test_voc_symlink_out_of_the_tree_is_an_error(tmp_path):
    voc = write_voc(tmp_path / "data", "2007", HAND)
    outside = tiny_jpg(tmp_path / "elsewhere" / "x.jpg")
    (voc / "JPEGImages" / "000004.jpg").unlink()
    (voc / "JPEGImages" / "000004.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match=r"test\.txt, line 2: .*outside the dataset folder"):
        load_benchmark("voc2007", tmp_path / "data")


def test_root_from_environment_and_missing_root(tmp_path, monkeypatch):
    write_voc(tmp_path, "2007", HAND)
    monkeypatch.setenv("VGGFEAT_DATA", str(tmp_path))
    assert resolve_root(None) == tmp_path.resolve()
    assert len(load_benchmark("voc2007")[0].train_paths) == 3
    monkeypatch.delenv("VGGFEAT_DATA")
    with pytest.raises(DatasetError, match=r"--root.*VGGFEAT_DATA"):
        load_benchmark("voc2007")
    with pytest.raises(DatasetError, match="no such dataset folder"):
        resolve_root(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown benchmark"):
        load_benchmark("imagenet", tmp_path)
    assert set(BENCHMARKS) == {"voc2007", "voc2012", "voc2012-action", "caltech101", "caltech256", "folder"}


def write_classes(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        for k in range(n):
            tiny_jpg(root / cls / f"image_{k:04d}.jpg", value=k)
    return root


CALTECH101 = {"BACKGROUND_Google": 12, "Faces": 9, "ant": 6, "zebra": 3}


def sets(split):
    return set(split.train_paths), set(split.test_paths)


def test_caltech101_splits_sizes_determinism(tmp_path, caplog):
    data = write_classes(tmp_path / "caltech101" / "101_ObjectCategories", CALTECH101)
    (data / ".DS_Store").write_text("x")
    (data / "ant" / "notes.txt").write_text("not an image")
    tiny_jpg(data / "ant" / ".hidden.jpg")
    with caplog.at_level(logging.WARNING):
        s0, s1 = load_benchmark("caltech101", tmp_path, splits=2, train_per_class=4, test_per_class=3)
    assert "zebra (3)" in caplog.text  # 3 images <= 4: trains on 2, tests on 1
    assert s0.classes == ("BACKGROUND_Google", "Faces", "ant", "zebra")
    assert (s0.multilabel, s0.metric, s0.train_name, s0.test_name) == (False, "mean_class_recall", "train", "test")
    assert np.bincount(s0.train_labels).tolist() == [4, 4, 4, 2] and np.bincount(s0.test_labels).tolist() == [
        3,
        3,
        2,
        1,
    ]
    assert s0.train_labels.dtype == np.int64
    for s in (s0, s1):
        train, test = sets(s)
        assert not train & test and len(train) == len(s.train_paths)
        assert all(
            Path(p).parent.name == s.classes[c]
            for p, c in zip(s.train_paths + s.test_paths, np.r_[s.train_labels, s.test_labels], strict=False)
        )
    again = load_benchmark("caltech101", data, splits=2, train_per_class=4, test_per_class=3)
    assert sets(again[0]) == sets(s0) and sets(again[1]) == sets(s1) and sets(s0) != sets(s1)
    other = load_benchmark("caltech101", data, seed=1, splits=1, train_per_class=4, test_per_class=3)[0]
    assert sets(other) != sets(s0)
    assert (caltech101.TRAIN_PER_CLASS, caltech101.TEST_PER_CLASS, caltech256.TRAIN_PER_CLASS) == (30, 50, 60)
    small = load_benchmark("caltech101", data, splits=1)[0]  # defaults 30/50: every class here is short
    assert np.bincount(small.test_labels).tolist() == [1, 1, 1, 1]


def test_caltech256_numbered_folders_rest_is_test(tmp_path):
    data = write_classes(tmp_path / "256_ObjectCategories", {"001.ak47": 7, "002.bat": 5, "257.clutter": 9})
    tiny_jpg(data / "001.ak47" / "greg" / "dup.jpg")  # a nested folder is not part of the class (as torchvision)
    (split,) = load_benchmark("caltech256", tmp_path, splits=1, train_per_class=3)
    assert split.classes == ("001.ak47", "002.bat", "257.clutter")
    assert np.bincount(split.train_labels).tolist() == [3, 3, 3] and np.bincount(split.test_labels).tolist() == [
        4,
        2,
        6,
    ]
    assert not any("greg" in p for p in split.train_paths + split.test_paths)


def test_split_files_written_then_read(tmp_path):
    data = write_classes(tmp_path / "101_ObjectCategories", CALTECH101)
    sdir = tmp_path / "splits"
    first = load_benchmark("caltech101", data, splits=2, splits_dir=sdir, train_per_class=4, test_per_class=3)
    assert sorted(p.name for p in sdir.iterdir()) == [
        f"caltech101_split{i}_{part}.txt" for i in (0, 1) for part in ("test", "train")
    ]
    rows = [
        line.split()
        for line in (sdir / "caltech101_split0_train.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert [(str((data / rel).resolve()), int(c)) for rel, c in rows] == list(
        zip(first[0].train_paths, first[0].train_labels.tolist(), strict=False)
    )
    again = load_benchmark("caltech101", data, splits=2, splits_dir=sdir, train_per_class=4, test_per_class=3)
    assert [s.files for s in again] == [s.files for s in first]
    assert first[1].files == tuple(str(sdir / f"caltech101_split1_{part}.txt") for part in ("train", "test"))
    # files vggfeat drew are reused only with the seed and rule that drew them
    with pytest.raises(
        DatasetError, match=r"split0_train\.txt was drawn with seed 0, rule '4 train per class.*not seed 7"
    ):
        load_benchmark("caltech101", data, seed=7, splits=2, splits_dir=sdir)
    for f in sdir.iterdir():  # as official files would be: no record, so they win over seed and quota
        f.write_text("".join(line for line in f.read_text().splitlines(True) if not line.startswith("#")))
    reread = load_benchmark("caltech101", data, seed=7, splits=2, splits_dir=sdir)
    for a, b in zip(first, reread, strict=False):
        assert a.train_paths == b.train_paths and a.test_paths == b.test_paths
        assert np.array_equal(a.train_labels, b.train_labels) and np.array_equal(a.test_labels, b.test_labels)


@pytest.mark.parametrize(
    "line, match",
    [
        ("../101_ObjectCategories/ant/image_0000.jpg 2", r"split0_test\.txt, line 3: path .* escapes the dataset"),
        ("ant/image_9999.jpg 2", r"split0_test\.txt, line 3: image not found"),
        (
            "ant/image_0000.jpg 3",
            r"split0_test\.txt, line 3: 'ant/image_0000.jpg' is in folder 'ant' but labelled 'zebra'",
        ),
        ("ant/image_0000.jpg 9", r"split0_test\.txt, line 3: unknown class '9'"),
        ("ant/image_0000.jpg", r"split0_test\.txt, line 3: expected"),
    ],
)
def test_bad_split_files(tmp_path, line, match):
    data = write_classes(tmp_path / "101_ObjectCategories", CALTECH101)
    sdir = tmp_path / "splits"
    sdir.mkdir()
    (sdir / "caltech101_split0_train.txt").write_text("Faces/image_0000.jpg 1\n")
    (sdir / "caltech101_split0_test.txt").write_text(f"# official\nFaces/image_0001.jpg Faces\n{line}\n")
    with pytest.raises(DatasetError, match=match):
        load_benchmark("caltech101", data, splits=1, splits_dir=sdir)


def test_split_file_pairs_and_overlap(tmp_path):
    data = write_classes(tmp_path / "101_ObjectCategories", CALTECH101)
    sdir = tmp_path / "splits"
    sdir.mkdir()
    (sdir / "caltech101_split0_train.txt").write_text("Faces/image_0000.jpg 1\n")
    with pytest.raises(DatasetError, match="exists but .*split0_test.txt does not"):
        load_benchmark("caltech101", data, splits=1, splits_dir=sdir)
    (sdir / "caltech101_split0_test.txt").write_text("ant/image_0001.jpg 2\nFaces/image_0000.jpg 1\n")
    with pytest.raises(DatasetError, match=r"split0_test\.txt, line 2: .*image_0000\.jpg is also in"):
        load_benchmark("caltech101", data, splits=1, splits_dir=sdir)


def test_folder_benchmark_fraction_and_quota(tmp_path):
    data = write_classes(tmp_path / "flowers", {"daisy": 10, "rose": 2})
    tiny_jpg(data / "rose" / "more" / "nested.jpg")  # folders are searched recursively, as folder.py does
    (split,) = load_benchmark("folder", data, splits=1)  # default test fraction 0.3
    assert np.bincount(split.train_labels).tolist() == [7, 2] and np.bincount(split.test_labels).tolist() == [3, 1]
    two = load_benchmark("folder", data, splits=2, train_per_class=5, splits_dir=tmp_path / "s")
    assert np.bincount(two[0].train_labels).tolist() == [5, 2] and np.bincount(two[0].test_labels).tolist() == [5, 1]
    assert (tmp_path / "s" / "folder_split1_test.txt").is_file()
    write_classes(data, {"tulip": 1})
    with pytest.raises(DatasetError, match=r"tulip: 1 images; a class needs at least 2"):
        load_benchmark("folder", data, splits=1)


def test_class_folder_symlink_escape(tmp_path):
    data = write_classes(tmp_path / "data", {"a": 3, "b": 3})
    (data / "a" / "link.jpg").symlink_to(tiny_jpg(tmp_path / "outside.jpg"))
    with pytest.raises(DatasetError, match=r"link\.jpg: .*outside the dataset folder"):
        load_benchmark("folder", data)
