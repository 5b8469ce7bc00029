"""Weight-file problems give one clear WeightsError naming the file, never a traceback or a hang."""

from __future__ import annotations

import json
import os

import pytest
import torch

import vggfeat
from vggfeat.features.nets import NetSpec
from vggfeat.models import WeightsError, load_model


def _save(tmp_path, model, **meta):
    path = tmp_path / "w.safetensors"
    vggfeat.models.weights.save_weights(model, path, metadata=meta)
    return path


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"num_classes": 10_000_000_000}, "num_classes"),
        ({"num_classes": 10, "frobnicate": 3}, "frobnicate"),
        ({"width_mult": -1}, "width_mult"),
    ],
)
def test_absurd_or_unknown_options_are_refused(tiny_model, tmp_path, options, needle):
    path = _save(tmp_path, tiny_model("vgg_a"), options=json.dumps(options))
    with pytest.raises(WeightsError, match=needle) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_options_that_do_not_parse(tiny_model, tmp_path):
    path = _save(tmp_path, tiny_model("vgg_a"), options="{not json")
    with pytest.raises(WeightsError, match="options") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_state_dict_without_fc6(tiny_model, tmp_path):
    state = {k: v for k, v in tiny_model("vgg_a").state_dict().items() if not k.startswith("fc6")}
    path = tmp_path / "nofc6.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="fc6") as err:
        load_model(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_bytes_and_truncated_files(tiny_model, tmp_path, suffix):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(os.urandom(4096))
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        torch.save(tiny_model("vgg_a").state_dict(), good)
    else:
        vggfeat.models.weights.save_weights(tiny_model("vgg_a"), good)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (junk, cut):
        with pytest.raises(WeightsError) as err:
            load_model(path)
        assert str(path) in str(err.value)


def test_batch_norm_vgg_and_non_vgg_are_told_apart(tmp_path):
    bn_vgg = {
        "features.0.weight": torch.zeros(8, 3, 3, 3),
        "features.1.running_mean": torch.zeros(8),
        "classifier.0.weight": torch.zeros(4, 8),
    }
    resnet = {
        "conv1.weight": torch.zeros(8, 3, 7, 7),
        "bn1.running_mean": torch.zeros(8),
        "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3),
        "fc.weight": torch.zeros(10, 8),
    }
    torch.save(bn_vgg, tmp_path / "bn.pth")
    torch.save(resnet, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="batch-norm VGG"):
        load_model(tmp_path / "bn.pth")
    with pytest.raises(WeightsError, match="not a VGG") as err:
        load_model(tmp_path / "resnet.pth")
    assert "batch-norm VGG" not in str(err.value) and "resnet.pth" in str(err.value)


def test_manifest_records_weights_by_absolute_path(tiny_model, tmp_path, monkeypatch):
    path = _save(tmp_path, tiny_model("vgg_a"))
    monkeypatch.chdir(tmp_path)
    described = NetSpec("auto", "w.safetensors").describe()
    assert described["weights"] == str(path.resolve())


def test_load_model_reads_the_file_once(tiny_model, tmp_path, monkeypatch):
    import vggfeat.models.registry as registry_module
    import vggfeat.models.weights as weights_module

    path = _save(tmp_path, tiny_model("vgg_a"))
    calls = []
    real = weights_module.read_weights
    for module in (weights_module, registry_module):  # every name the file can be read through
        monkeypatch.setattr(module, "read_weights", lambda p: calls.append(p) or real(p))
    model = load_model(path)
    assert calls == [path]
    torch.testing.assert_close(model.fc8.weight, tiny_model("vgg_a").fc8.weight)


@pytest.mark.parametrize(
    "seed", [2, 20]
)  # random bytes that make torch's unpickler raise IndexError (2), KeyError (20)
def test_any_random_bytes_are_one_weights_error(tmp_path, seed):
    import random

    junk = tmp_path / "junk.pth"
    junk.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(WeightsError) as err:
        load_model(junk)
    assert str(junk) in str(err.value)


@pytest.mark.parametrize("count", ["\u00b2", "1" * 5000])
def test_a_class_count_in_metadata_that_is_no_number_is_one_error(tiny_model, tmp_path, count):
    """'²' and 5000 digits pass str.isdigit(), but int() refuses both: the count is read as absent, as in a file
    without one, and the net of the default 1000 classes does not fit the file's fc8."""
    model = tiny_model("vgg_a")
    options = {k: v for k, v in model.options.items() if k != "num_classes"}
    path = _save(tmp_path, model, options=json.dumps(options), num_classes=count)
    with pytest.raises(WeightsError, match=rf"^{path}: weights .* do not fit VGG config A with 1000 classes"):
        load_model(path)
