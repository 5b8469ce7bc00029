"""VOC-2012 action probe (Table 12): image and person-box descriptors stacked per sample, each extracted once."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_GLOROT
from PIL import Image

import vggfeat
from vggfeat import metrics
from vggfeat.benchmarks.voc_action import VOC_ACTIONS, action_probe_split, load_voc_action
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.probes import LinearSVMProbe
from vggfeat.probes.action import action_store, extract_action_stores
from vggfeat.probes.features import ExtractionSettings
from vggfeat.probes.run import run_linear_probe

RUNTIME = Runtime(device="cpu", batch_size=8, workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    make_voc2012_action(root, n_train=24, n_val=16, seed=4)
    weights = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), weights)
    return root, str(weights)


def test_image_and_box_stacked_per_person(data, tmp_path):
    root, weights = data
    train, val = load_voc_action(root)
    settings = ExtractionSettings((("auto", weights),), Protocol(scales=(64, 96), aggregate="mean"))
    image_store, box_store, crops = extract_action_stores(train, val, tmp_path, settings, RUNTIME, progress=False)
    assert len(image_store) == len(set(train.image_paths) | set(val.image_paths)) < len(train) + len(val)
    assert len(box_store) == len(train) + len(val) and image_store.dim == box_store.dim == 32

    # a box row is the descriptor of the box cut from the decoded image in memory
    model = vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT)
    x0, y0, x1, y1 = val.boxes[3]
    crop = np.asarray(Image.open(val.image_paths[3]).convert("RGB"))[y0 - 1 : y1, x0 - 1 : x1]
    ref = vggfeat.extract_features(model, [crop], scales=(64, 96), device="cpu")[0]
    row = box_store.features[box_store.rows_for([crops[1][3]])[0]]
    np.testing.assert_allclose(row, ref, atol=1e-5)

    store = action_store(train, val, [image_store], [box_store], crops)
    split = action_probe_split(train, val)
    x = np.asarray(store.features[store.rows_for(list(split.test_paths))])
    assert x.shape == (len(val), 64)
    img = image_store.features[image_store.rows_for(list(val.image_paths))]
    box = box_store.features[box_store.rows_for(crops[1])]
    both = np.concatenate([img, box], axis=1)
    np.testing.assert_allclose(x, both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-6)

    # the probe: 10 actions ('other' is not scored), all-point AP on val, same as a probe fitted by hand
    result = run_linear_probe([split], store, Cs=(0.1, 1.0, 10.0), device="cpu")
    assert result.benchmark == "voc2012-action" and result.metric == "voc12_ap" and result.classes == VOC_ACTIONS
    chosen = result.splits[0].chosen_C
    x_train = np.asarray(store.features[store.rows_for(list(split.train_paths))])
    probe = LinearSVMProbe(C=chosen).fit(x_train, np.array(train.labels))
    ap = metrics.voc12_ap(probe.decision_function(x), np.array(val.labels))
    np.testing.assert_allclose(result.splits[0].per_class, ap, atol=2e-3)

    # image only (--no-box): the image descriptor alone; nothing is extracted again
    image_only, no_box, _ = extract_action_stores(train, val, tmp_path, settings, RUNTIME, box=False, progress=False)
    assert no_box is None and image_only.root == image_store.root
    alone = action_store(train, val, [image_only])
    assert alone.dim == 32


def test_box_crops_of_another_dataset_in_the_same_output_are_its_own(tmp_path):
    import shutil

    from PIL import ImageOps

    from vggfeat.probes.action import box_crops

    first, second = tmp_path / "one", tmp_path / "two"
    make_voc2012_action(first, n_train=3, n_val=2, seed=0)
    shutil.copytree(first, second)  # the same ids and boxes, other pictures
    for jpg in (second / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"):
        ImageOps.invert(Image.open(jpg).convert("RGB")).save(jpg)
    a = box_crops(*load_voc_action(first), tmp_path / "out")
    b = box_crops(*load_voc_action(second), tmp_path / "out")
    assert set(a[0]).isdisjoint(b[0])
    assert not np.array_equal(np.asarray(Image.open(a[0][0])), np.asarray(Image.open(b[0][0])))
