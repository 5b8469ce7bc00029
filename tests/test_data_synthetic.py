"""The generated class-per-folder datasets (synthetic.py): both kinds deterministic in their seed, and a
folder generated for other settings is regenerated, never silently reused (a stale source dataset)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggfeat.data.stats import cached_stats
from vggfeat.data.synthetic import KINDS, ensure_synthetic, generate_synthetic
from vggfeat.data.synthetic_voc import VOC_CLASSES


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_pictograms_are_the_voc_classes_and_deterministic(tmp_path):
    a = generate_synthetic(tmp_path / "a", kind="pictograms", classes=4, per_class=4, seed=3)
    b = generate_synthetic(tmp_path / "b", kind="pictograms", classes=4, per_class=4, seed=3)
    c = generate_synthetic(tmp_path / "c", kind="pictograms", classes=4, per_class=4, seed=4)
    assert sorted(p.name for p in (a / "train").iterdir()) == [f"{k:02d}_{VOC_CLASSES[k]}" for k in range(4)]
    assert len(list((a / "val").rglob("*.jpg"))) == 4  # a quarter of per_class each
    assert _files(a) == _files(b) and [(a / f).read_bytes() for f in _files(a)] == [
        (b / f).read_bytes() for f in _files(b)
    ]
    assert [(a / f).read_bytes() for f in _files(a)] != [(c / f).read_bytes() for f in _files(c)]
    img = np.asarray(Image.open(a / "train" / "00_aeroplane" / "train_00_0000.jpg"))
    assert 72 <= img.shape[0] <= 96 and 72 <= img.shape[1] <= 96 and img.std() > 10  # a drawing, not a flat image
    assert "kind=pictograms" in (a / "SYNTHETIC_DONE").read_text()


def test_class_limits_per_kind(tmp_path):
    assert KINDS["pictograms"].max_classes == len(VOC_CLASSES) == 20 and KINDS["shapes"].max_classes == 30
    with pytest.raises(ValueError, match="1..20"):
        generate_synthetic(tmp_path, kind="pictograms", classes=21)
    with pytest.raises(ValueError, match="shapes, pictograms"):
        generate_synthetic(tmp_path, kind="faces")


def test_a_dataset_generated_for_other_settings_is_regenerated(tmp_path):
    root = tmp_path / "source"
    ensure_synthetic(root, kind="shapes", classes=3, per_class=4, seed=0)
    first = (root / "train" / "00_disc" / "train_00_0000.jpg").read_bytes()
    ensure_synthetic(root, kind="shapes", classes=3, per_class=4, seed=0)  # same settings: reused as is
    assert (root / "train" / "00_disc" / "train_00_0000.jpg").read_bytes() == first
    shapes_stats = cached_stats(root)  # mean_rgb.json, as training caches it beside train/
    # the quick demo's pictograms into the folder of an earlier shapes run: nothing of the shapes may remain
    ensure_synthetic(root, kind="pictograms", classes=2, per_class=4, seed=0)
    assert cached_stats(root)["mean"] != shapes_stats["mean"]  # the pixel statistics are the new images'
    assert sorted(p.name for p in (root / "train").iterdir()) == ["00_aeroplane", "01_bicycle"]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["00_aeroplane", "01_bicycle"]
    ensure_synthetic(root, kind="pictograms", classes=2, per_class=4, seed=1)  # another seed: other images
    assert len(list(root.rglob("*.jpg"))) == 10 and "seed=1" in (root / "SYNTHETIC_DONE").read_text()


def test_an_interrupted_generation_is_redone(tmp_path):
    root = generate_synthetic(tmp_path / "d", classes=3, per_class=4, seed=0)
    (root / "SYNTHETIC_DONE").unlink()  # as if killed before the end; the partial marker stays
    (root / "SYNTHETIC_PARTIAL").write_text("kind=shapes seed=0 classes=3 per_class=4 size=72x96\n")
    ensure_synthetic(root, classes=2, per_class=4, seed=0)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["00_disc", "01_square"]
    assert not (root / "SYNTHETIC_PARTIAL").exists()


@pytest.mark.parametrize("marker", ["SYNTHETIC_DONE", "SYNTHETIC_PARTIAL"])
def test_a_marker_that_is_not_text_is_a_stale_dataset(tmp_path, caplog, marker):
    """A marker holding bytes that are not UTF-8, or a long one: the dataset is regenerated, and the warning
    shows a bounded line of it rather than failing to decode it or quoting it whole."""
    root = generate_synthetic(tmp_path / "d", classes=2, per_class=4, seed=0)
    (root / "SYNTHETIC_DONE").unlink()
    (root / marker).write_bytes(b"kind=shapes \xff\n" + b"x" * 100_000)
    caplog.set_level("WARNING")
    ensure_synthetic(root, classes=2, per_class=4, seed=0)
    assert (root / "SYNTHETIC_DONE").read_text() == "kind=shapes seed=0 classes=2 per_class=4 size=72x96\n"
    assert not (root / "SYNTHETIC_PARTIAL").exists() and len(_files(root)) == 10
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"generated with other settings ({marker}: kind=shapes \ufffd)" in warning and len(warning) < 300


def test_a_folder_that_was_not_generated_is_never_overwritten(tmp_path):
    root = tmp_path / "mine"
    (root / "train" / "cats").mkdir(parents=True)
    (root / "train" / "cats" / "1.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="mine.*not generated by vggfeat"):
        ensure_synthetic(root, classes=2, per_class=4, seed=0)
    assert (root / "train" / "cats" / "1.jpg").read_bytes() == b"not ours"
