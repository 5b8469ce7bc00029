"""Reuse keyed by everything it depends on: a result reused must equal a result recomputed. Weights reopened
from a recorded path, finished reproduce rows, --features stores matched to a benchmark's files, and split
files drawn with another seed are each checked against what they were made from (CLI end to end)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import draw_scene, make_voc2007
from vggfeat.features.store import load_store
from vggfeat.utils.files import sha256_file

FAST = ["--scales", "64", "--workers", "0", "--quiet"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def invoke(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def error_line(result) -> str:
    """The one line a refused command prints (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def save_net(path, seed: int) -> str:
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=seed, init="glorot", **TINY), path))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc2007(root, n_trainval=16, n_test=12, seed=2, size=(72, 64))
    return root


def jpegs(root):
    return root / "VOCdevkit" / "VOC2007" / "JPEGImages"


def test_index_search_refuses_weights_replaced_at_the_recorded_path(tmp_path, voc):
    weights = save_net(tmp_path / "net.safetensors", seed=0)
    invoke("extract", jpegs(voc), "-o", tmp_path / "store", "--weights", weights, *FAST)
    invoke("index", "build", tmp_path / "store", "-o", tmp_path / "idx")
    query = sorted(jpegs(voc).glob("*.jpg"))[3]
    assert str(query.name) in invoke("index", "search", tmp_path / "idx", query, "-k", "2")
    recorded = load_store(tmp_path / "store").manifest["models"][0]["weights_sha256"]

    save_net(weights, seed=1)  # another net (or the same one retrained) now sits at the recorded path
    now = sha256_file(weights)
    assert now != recorded
    line = error_line(run("index", "search", tmp_path / "idx", query, "-k", "2"))
    # before: exit 0 with the new net's neighbours in the old net's index
    assert line.startswith("Error: ") and weights in line and recorded in line and now in line


def _flip_labels(voc, cls: str) -> None:
    """Swap positives and negatives of one class in both VOC-2007 lists (same files, other labels)."""
    main = voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    for split in ("trainval", "test"):
        f = main / f"{cls}_{split}.txt"
        rows = [line.split() for line in f.read_text().splitlines()]
        f.write_text("".join(f"{i} {-int(v) if v != '0' else 0:2d}\n" for i, v in rows))


def _cells(out):
    table = json.loads((out / "table11.json").read_text())
    return {r["row"]: r["cells"]["voc2007"]["ours"] for r in table["rows"]}


def test_reproduce_rows_are_keyed_by_labels_and_image_content(tmp_path):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=12, n_test=8, seed=2, size=(64, 64))
    d, e = save_net(tmp_path / "d.safetensors", 0), save_net(tmp_path / "e.safetensors", 1)
    fast = [*FAST, "--Cs", "1", "--device", "cpu"]

    def reproduce(out):
        return invoke("reproduce", "table11", "--root", root, "--net-d", d, "--net-e", e, "-o", out, *fast)

    reproduce(tmp_path / "t")
    _flip_labels(root, "person")  # labels of the same images change
    text = reproduce(tmp_path / "t")
    assert "probing" in text and "reused" not in text  # before: "reused" with the old numbers

    images = sorted(jpegs(root).glob("*.jpg"))
    images[0].write_bytes(images[-1].read_bytes())  # an image replaced at the same path (another scene)
    text = reproduce(tmp_path / "t")
    assert "probing" in text and "reused" not in text
    # what the rerun reports is what a fresh run computes
    reproduce(tmp_path / "fresh")
    assert _cells(tmp_path / "t") == _cells(tmp_path / "fresh")


def test_features_store_of_another_dataset_is_refused(tmp_path, voc):
    weights = save_net(tmp_path / "net.safetensors", seed=0)
    other = tmp_path / "other"
    make_voc2007(other, n_trainval=16, n_test=12, seed=5, size=(72, 64))  # same file names, other images
    store = tmp_path / "store"
    invoke("extract", jpegs(other), "-o", store, "--weights", weights, *FAST)
    probe = ("linear-probe", "voc2007", "--Cs", "1", "--features", store, "-o")

    # before: exit 0, the probe computed on the other dataset's descriptors (rows matched by file name only)
    line = error_line(run(*probe, tmp_path / "p1", "--root", voc))
    assert line.startswith("Error: ") and "JPEGImages/000000.jpg" in line
    size_here = (jpegs(voc) / "000000.jpg").stat().st_size
    size_there = (jpegs(other) / "000000.jpg").stat().st_size
    assert str(size_here) in line and str(size_there) in line and "extract" in line

    # a copy that keeps sizes and modification times is the same dataset: matched by file name, accepted
    shutil.copytree(other, tmp_path / "copy")
    invoke(*probe, tmp_path / "p2", "--root", tmp_path / "copy")

    # an image replaced at the very path the store recorded is refused too
    (jpegs(other) / "000003.jpg").write_bytes((jpegs(other) / "000004.jpg").read_bytes())
    line = error_line(run(*probe, tmp_path / "p3", "--root", other))
    assert "000003.jpg" in line


def make_caltech101(root, per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    for cls in ("BACKGROUND_Google", "Faces", "ant"):
        (root / "101_ObjectCategories" / cls).mkdir(parents=True)
        for k in range(per_class):
            img, _ = draw_scene(rng, (72, 64))
            img.save(root / "101_ObjectCategories" / cls / f"image_{k:04d}.jpg")


def test_split_files_drawn_with_another_seed_are_not_reused(tmp_path):
    make_caltech101(tmp_path / "data")
    weights = save_net(tmp_path / "net.safetensors", seed=0)
    out = tmp_path / "out"
    args = ("linear-probe", "caltech101", "--root", tmp_path / "data", "--weights", weights, "--splits", "1")
    args = (*args, "--Cs", "1", "-o", out, *FAST)
    invoke(*args, "--seed", "0")
    files = [str(out / "splits" / f"caltech101_split0_{part}.txt") for part in ("train", "test")]
    report = json.loads((out / "linear-probe.json").read_text())
    assert report["params"]["split_files"] == [files]  # the report names the split files it used
    drawn = (out / "splits" / "caltech101_split0_train.txt").read_text()

    # before: exit 0, the seed-0 splits reused while the report said seed 1
    line = error_line(run(*args, "--seed", "1"))
    assert line.startswith("Error: ") and files[0] in line and "seed 0" in line and "seed 1" in line
    assert (out / "splits" / "caltech101_split0_train.txt").read_text() == drawn
    assert json.loads((out / "linear-probe.json").read_text())["params"]["seed"] == 0

    invoke(*args, "--seed", "0")  # the seed that drew them reads them again


def test_action_probe_after_an_image_is_replaced_equals_a_fresh_run(tmp_path):
    """The person-box crops are cut from the images: an image replaced at the same path must not leave its old
    crops to be described again (the image store noticed the change, the box store did not)."""
    from PIL import Image, ImageOps

    from vggfeat.benchmarks.voc_action import load_voc_action
    from vggfeat.data.synthetic_voc_action import make_voc2012_action

    root = tmp_path / "data"
    make_voc2012_action(root, n_train=20, n_val=14, seed=6, size=(96, 72))
    weights = save_net(tmp_path / "net.safetensors", seed=0)
    probe = ("linear-probe", "voc2012-action", "--root", root, "--weights", weights, "--Cs", "1", *FAST, "-o")
    invoke(*probe, tmp_path / "out")
    train, _ = load_voc_action(root)
    image = train.image_paths[0]
    ImageOps.invert(Image.open(image).convert("RGB")).save(image, quality=92)  # same size, other pixels
    invoke(*probe, tmp_path / "out")
    invoke(*probe, tmp_path / "fresh")
    again, fresh = (json.loads((tmp_path / o / "linear-probe.json").read_text()) for o in ("out", "fresh"))
    assert again["per_class"] == fresh["per_class"] and again["headline"] == fresh["headline"]
