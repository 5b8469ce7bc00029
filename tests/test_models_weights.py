"""Weight files: layouts (vggfeat, torchvision, timm, Caffe 2-D fc), preprocessing metadata, safety."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from helpers import TINY

import vggfeat
from vggfeat.models import CAFFE, PAPER, TORCHVISION, Preprocessing, WeightsError, detect_layout, read_weights

X224 = torch.rand(2, 3, 224, 224)


@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_torchvision_conversion_gives_torchvision_logits(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    ours = vggfeat.load_weights(vggfeat.create_model(name, seed=0), tv.state_dict()).eval()
    assert tuple(ours.fc6.weight.shape) == (4096, 512, 7, 7)
    assert ours.preprocessing == TORCHVISION  # a bare torchvision state dict gets torchvision's convention
    with torch.inference_mode():
        expected, got = tv(X224), ours(X224)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, torch.zeros_like(got))


def test_timm_conversion_gives_timm_logits_densely():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("vgg11", pretrained=False).eval()
    ours = vggfeat.load_weights(vggfeat.create_model("vgg11"), ref.state_dict()).eval()
    assert detect_layout(ref.state_dict()) == "timm"
    x = torch.rand(1, 3, 256, 320)  # timm pools after its conv head, so dense logits agree off 224 too
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_caffe_style_2d_fc_weights_and_wrapper_prefixes(tiny_model):
    src = tiny_model("vgg_d", seed=1)
    state = {
        f"module.{k}": (v.flatten(1) if k.startswith("fc") and k.endswith("weight") else v)
        for k, v in src.state_dict().items()
    }
    assert state["module.fc6.weight"].ndim == 2
    dst = vggfeat.load_weights(tiny_model("vgg_d", seed=2), state, preprocessing="caffe")
    assert dst.preprocessing == CAFFE
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_safetensors_round_trip_keeps_preprocessing(tiny_model, tmp_path):
    src = tiny_model("vgg_e", seed=1)
    src.preprocessing = CAFFE
    path = vggfeat.save_weights(src, tmp_path / "e.safetensors")
    tensors, meta = read_weights(path)
    assert meta["format"] == "vggfeat" and meta["config"] == "E"
    assert Preprocessing.from_dict(meta["preprocessing"]) == CAFFE
    dst = vggfeat.load_weights(tiny_model("vgg_e", seed=2), path)
    assert dst.preprocessing == CAFFE
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    assert not list(tmp_path.glob("*.tmp"))


def test_the_same_weights_saved_twice_are_the_same_bytes(tiny_model, tmp_path):
    # stores, probe caches and the demo key weights by their file's sha256: a re-save of the same net must keep it
    # (safetensors writes its metadata in a hash map's order, which changes from one process to the next)
    import hashlib
    import os
    import subprocess
    import sys

    from vggfeat.models.mapped import map_weights, read_safetensors

    model = tiny_model("vgg_a")
    path = vggfeat.save_weights(model, tmp_path / "a.safetensors", metadata={"note": "é", "z": "1", "a": "2"})
    code = (
        "import sys, torch, vggfeat\n"
        "from helpers import TINY\n"
        "model = vggfeat.create_model('vgg_a', seed=1, **TINY)\n"
        "model.load_state_dict(torch.load(sys.argv[2], weights_only=True))\n"
        "vggfeat.save_weights(model, sys.argv[1], metadata={'note': 'é', 'z': '1', 'a': '2'})\n"
    )
    torch.save(model.state_dict(), tmp_path / "state.pt")
    digests = {hashlib.sha256(path.read_bytes()).hexdigest()}
    for i in range(4):  # other processes, other hash seeds
        other = tmp_path / f"b{i}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": str(i), "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run([sys.executable, "-c", code, str(other), str(tmp_path / "state.pt")], check=True, env=env)
        digests.add(hashlib.sha256(other.read_bytes()).hexdigest())
    assert len(digests) == 1
    tensors, meta = read_safetensors(map_weights(path))
    assert meta["note"] == "é" and meta["z"] == "1" and meta["format"] == "vggfeat"
    state = model.state_dict()
    assert all(torch.equal(tensors[k], state[k]) for k in state)


def test_pytorch_checkpoint_with_preprocessing_entry(tiny_model, tmp_path):
    src = tiny_model("vgg_b", seed=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "preprocessing": TORCHVISION.to_dict(), "epoch": 3}, path)
    dst = vggfeat.load_weights(tiny_model("vgg_b", seed=2), path)
    assert dst.preprocessing == TORCHVISION
    assert torch.equal(dst.fc8.weight, src.fc8.weight)


def test_bare_vggfeat_state_dict_keeps_models_preprocessing(tiny_model):
    dst = vggfeat.load_weights(tiny_model("vgg_a"), tiny_model("vgg_a", seed=5).state_dict())
    assert dst.preprocessing == PAPER


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if unpickled


def test_malicious_pickle_is_refused_without_running_payload(tiny_model, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1_1.weight": _Payload(marker)}, f)
    torch.save({"state_dict": {"x": _Payload(marker)}}, tmp_path / "evil2.pt")
    marker.unlink(missing_ok=True)  # torch.save pickles via __reduce__ only, but be certain
    for bad in (path, tmp_path / "evil2.pt"):
        with pytest.raises(WeightsError, match="refused to load"):
            vggfeat.load_weights(tiny_model("vgg_a"), bad)
    assert not marker.exists()


def test_mismatch_names_missing_unexpected_and_shapes(tiny_model):
    state = tiny_model("vgg_d").state_dict()
    del state["conv5_3.bias"]
    state["conv9_9.weight"] = torch.zeros(1)
    state["fc8.weight"] = torch.zeros(3, 32, 1, 1)
    with pytest.raises(WeightsError) as err:
        vggfeat.load_weights(tiny_model("vgg_d"), state)
    msg = str(err.value)
    assert "missing keys: conv5_3.bias" in msg
    assert "unexpected keys: conv9_9.weight" in msg
    assert "fc8.weight: file (3, 32, 1, 1) vs model (10, 32, 1, 1)" in msg


def test_wrong_depth_torchvision_weights_are_a_clear_error(tiny_model):
    torchvision = pytest.importorskip("torchvision")
    tv11 = torchvision.models.vgg11(weights=None)
    with pytest.raises(WeightsError, match="hold 8 conv layers but config D has 13"):
        vggfeat.load_weights(vggfeat.create_model("vgg16", device="meta"), tv11.state_dict())


def test_unknown_layout_and_bad_files(tmp_path, tiny_model):
    with pytest.raises(WeightsError, match="known layouts: vggfeat, torchvision, timm"):
        vggfeat.load_weights(tiny_model(), {"encoder.w": torch.zeros(1)})
    with pytest.raises(WeightsError, match="not found"):
        vggfeat.load_weights(tiny_model(), tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        vggfeat.load_weights(tiny_model(), tmp_path / "junk.safetensors")


def test_preprocessing_apply_matches_each_convention():
    x = torch.rand(2, 3, 5, 7)
    caffe = CAFFE.apply(x)
    assert torch.allclose(caffe[:, 0], x[:, 2] * 255 - 103.939, atol=1e-4)  # B first
    tv = TORCHVISION.apply(x)
    assert torch.allclose(tv[:, 1], (x[:, 1] - 0.456) / 0.224, atol=1e-5)
    assert json.loads(CAFFE.to_json())["channel_order"] == "BGR"
    with pytest.raises(ValueError, match="channel_order"):
        Preprocessing("GBR")


@pytest.mark.parametrize("name", ["vgg_a_lrn", "vgg_c", "vgg_e"])
def test_load_model_rebuilds_the_net_from_a_vggfeat_file(tiny_model, tmp_path, name):
    src = tiny_model(name, seed=1, num_classes=6).eval()
    path = vggfeat.save_weights(src, tmp_path / "net.safetensors")
    loaded = vggfeat.load_model(path)
    assert loaded.arch == name and loaded.options == src.options and not loaded.training
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x), src(x))


@pytest.mark.parametrize("name", ["vgg_b", "vgg_c", "vgg_d"])
def test_infer_architecture_from_bare_tensors(tiny_model, name):
    state = {k: (v.flatten(1) if k == "fc6.weight" else v) for k, v in tiny_model(name).state_dict().items()}
    arch, options = vggfeat.models.infer_architecture(state)  # C and D differ only in kernel sizes
    assert arch == name
    assert options == dict(TINY, in_chans=3)


def test_load_model_infers_a_torchvision_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.vgg11(weights=None, num_classes=5).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = vggfeat.load_model(tmp_path / "tv.pth")
    assert model.arch == "vgg_a" and model.num_classes == 5 and model.preprocessing == TORCHVISION
    with torch.inference_mode():
        torch.testing.assert_close(model(X224[:1]), tv(X224[:1]), rtol=1e-4, atol=1e-5)
