"""`vggfeat linear-probe voc2012-action` end to end on a generated VOC2012 action layout with a tiny net:
image + person box stacked (Table 12's best setting) or image only (--no-box), the paper's numbers beside ours."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from helpers import TINY_GLOROT

import vggfeat
import vggfeat.features.engine as engine_module
import vggfeat.features.extract as extract_module
from vggfeat.benchmarks.voc_action import VOC_ACTIONS, load_voc_action
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.features.store import load_store


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_voc2012_action_image_and_box_then_image_only(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_voc2012_action(root, n_train=20, n_val=14, seed=6, size=(96, 72))
    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    common = ["--root", root, "-o", out, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    calls = []
    real = extract_module.extract_to_store
    monkeypatch.setattr(
        extract_module, "extract_to_store", lambda im, o, *a, **k: calls.append(list(im)) or real(im, o, *a, **k)
    )
    text = invoke("linear-probe", "voc2012-action", *common, "--Cs", "0.1,1,10")
    report = json.loads((out / "linear-probe.json").read_text())
    train, val = load_voc_action(root)
    assert report["benchmark"] == "voc2012-action" and report["metric"] == "voc12_ap"
    assert [r["class"] for r in report["per_class"]] == list(VOC_ACTIONS)  # 'other' is not scored
    assert report["features"]["dim"] == 64  # image 32 + person box 32
    paper = report["paper_table11"]
    assert paper["table"] == "Table 12" and "Table 12" in paper["label"]
    assert paper["rows"]["VGG Net-D & Net-E, image + person box"]["mean"] == 84.0
    assert paper["rows"]["VGG Net-D & Net-E, image only"]["mean"] == 79.2
    assert "84.0" in text and f"{report['headline']:.1f}" in text
    # the images once (each image once, however many people), the boxes once (one crop per person)
    assert sorted(len(c) for c in calls) == sorted(
        [len(set(train.image_paths) | set(val.image_paths)), len(train) + len(val)]
    )
    # the val rows are image and box descriptors stacked, L2-normalised
    image_store = load_store(next((out / "features").iterdir()))
    box_store = load_store(next((out / "boxes" / "features").iterdir()))
    crops = sorted((out / "boxes" / "crops").glob("*/*.png"))
    assert len(crops) == len(train) + len(val)

    # knn-probe on the same output folder: the same image and box stores, nothing described again
    described = []
    real_describe = engine_module.DescriptorEngine.feed
    monkeypatch.setattr(
        engine_module.DescriptorEngine,
        "feed",
        lambda self, items, *a, **k: described.append(items) or real_describe(self, items, *a, **k),
    )
    invoke("knn-probe", "voc2012-action", *common, "-k", "3")
    knn = json.loads((out / "knn-probe.json").read_text())
    assert described == [] and knn["method"] == "knn" and knn["features"]["dim"] == 64

    calls.clear()
    invoke("linear-probe", "voc2012-action", *common, "--Cs", "0.1,1,10", "--no-box", "-o", tmp_path / "nobox")
    assert len(calls) == 1  # another output folder: its own image cache, and no boxes
    alone = json.loads((tmp_path / "nobox" / "linear-probe.json").read_text())
    assert alone["features"]["dim"] == 32 and alone["headline"] != report["headline"]
    assert image_store.dim == box_store.dim == 32
    assert np.isfinite(alone["headline"])


def test_voc2012_action_refuses_a_feature_store(tmp_path):
    make_voc2012_action(tmp_path, n_train=2, n_val=2, seed=0)
    text = invoke("linear-probe", "voc2012-action", "--root", tmp_path, "--features", tmp_path, code=2)
    assert "describes the images and the person boxes itself" in text
