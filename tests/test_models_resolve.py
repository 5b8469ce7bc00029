"""Weights by name: torchvision:, timm:, hf-hub:, random and files, through the libraries' own caches;
never the network (the offline_caches fixture turns every download into a failure)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from conftest import TINY, tiny_torchvision_vgg, torchvision_cache_file
from helpers import prime_hf

import vggfeat
from vggfeat.models import TORCHVISION, WeightsError, load_model, resolve_weights
from vggfeat.weight_sources import WEIGHTS_HELP

torchvision = pytest.importorskip("torchvision")
X64 = torch.rand(2, 3, 64, 64)


def test_torchvision_name_resolves_to_torch_hubs_cached_file(primed_torch_home):
    resolved = resolve_weights("torchvision:vgg16")
    assert resolved.path == primed_torch_home
    assert str(resolved.path).startswith(os.environ["TORCH_HOME"])
    assert resolved.path.name == "vgg16-397923af.pth" and resolved.hash_prefix == "397923af"
    assert (resolved.kind, resolved.arch, resolved.layout) == ("torchvision", "vgg_d", "torchvision")
    assert resolved.describe()["weights"] == "torchvision:vgg16"  # manifests keep the portable name


def test_torchvision_name_gives_torchvisions_own_logits(primed_torch_home):
    """The name loads into vggfeat's dense net and agrees with torchvision's forward of the same cached file."""
    ours = load_model("torchvision:vgg16")
    assert ours.arch == "vgg_d" and ours.num_classes == TINY["num_classes"] and ours.preprocessing == TORCHVISION
    tv = tiny_torchvision_vgg("vgg16", seed=1)
    tv.load_state_dict(torch.load(primed_torch_home, weights_only=True))
    with torch.inference_mode():
        expected, got = tv(X64), ours(X64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, torch.zeros_like(got))
    # load_weights and create_model take the name too
    again = vggfeat.create_model("vgg_d", **TINY, weights="torchvision:vgg16").eval()
    with torch.inference_mode():
        torch.testing.assert_close(again(X64), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_full_vgg16_by_name_matches_torchvision_reading_the_same_cache(offline_caches):
    """torchvision's own weights API (vgg16(weights=IMAGENET1K_V1)) and vggfeat read the same cached file."""
    torch.manual_seed(0)
    path = torchvision_cache_file("vgg16")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    ref = torchvision.models.vgg16(weights="IMAGENET1K_V1").eval()  # from the cache: downloads would fail
    ours = load_model("torchvision:vgg16")
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_offline_without_cache_is_one_line_naming_file_place_and_command(offline_caches):
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_model("torchvision:vgg19")
    message = str(info.value)
    assert "\n" not in message
    assert "vgg19-dcbb9e9d.pth" in message
    assert str(torchvision_cache_file("vgg19")) in message  # the full cache path
    assert "vggfeat weights convert torchvision:vgg19 vgg19.safetensors" in message
    assert time.perf_counter() - start < 5


def test_bn_and_unknown_names_are_clear_errors(offline_caches):
    with pytest.raises(WeightsError, match="batch-norm.*valid: torchvision:vgg11\\|vgg13\\|vgg16\\|vgg19"):
        resolve_weights("torchvision:vgg16_bn")
    with pytest.raises(WeightsError, match="timm:resnet50: vggfeat's nets load timm's VGG.*--model timm:resnet50"):
        load_model("timm:resnet50")  # resolves (a --model timm:resnet50 backbone takes it), but not for a VGG
    with pytest.raises(WeightsError, match="unknown weights source 'tv:'.*torchvision:vgg11"):
        resolve_weights("tv:vgg16")
    with pytest.raises(WeightsError, match="weight file not found: nowhere.safetensors"):
        resolve_weights("nowhere.safetensors")


def test_download_when_online_goes_to_torch_hub_cache_with_hash_prefix(offline_caches, monkeypatch):
    """Online, the file is fetched once by torch.hub's downloader into its cache, with the name's hash prefix."""
    monkeypatch.delenv("VGGFEAT_OFFLINE")
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(tiny_torchvision_vgg("vgg16").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    first = resolve_weights("torchvision:vgg16")
    second = resolve_weights("torchvision:vgg16")
    assert calls == [("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af")]
    assert first.path == second.path == torchvision_cache_file("vgg16") and first.path.is_file()

    def failing(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "deadbeef")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing)
    with pytest.raises(WeightsError, match="could not download.*invalid hash value.*vggfeat weights convert"):
        resolve_weights("torchvision:vgg11")


def test_timm_and_hf_hub_names_read_the_hugging_face_cache(offline_caches, tiny_model):
    src = tiny_torchvision_vgg("vgg16", seed=3)
    cache = offline_caches / "hf-home" / "hub"
    path = prime_hf(cache, "timm/vgg16.tv_in1k", src.state_dict())
    for name in ("timm:vgg16.tv_in1k", "timm:vgg16", "hf-hub:timm/vgg16.tv_in1k"):
        resolved = resolve_weights(name)
        assert resolved.path == path, name
        model = load_model(name)
        with torch.inference_mode():
            torch.testing.assert_close(model(X64), src(X64), rtol=1e-4, atol=1e-5)
    assert resolve_weights("timm:vgg16").arch == "vgg_d"


@pytest.mark.slow
def test_timm_name_gives_timms_own_logits(offline_caches):
    """timm's own pretrained loader (create_model(pretrained=True)) and vggfeat read the same cached file."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    cache = offline_caches / "hf-home" / "hub"
    prime_hf(cache, "timm/vgg11.tv_in1k", timm.create_model("vgg11", pretrained=False).state_dict())
    ref = timm.create_model("vgg11.tv_in1k", pretrained=True, cache_dir=cache).eval()
    ours = load_model("timm:vgg11.tv_in1k")
    assert ours.arch == "vgg_a"
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_hf_offline_without_cache_is_one_line(offline_caches):
    with pytest.raises(WeightsError) as info:
        resolve_weights("timm:vgg19.tv_in1k")
    message = str(info.value)
    assert "\n" not in message
    expected_folder = offline_caches / "hf-home" / "hub" / "models--timm--vgg19.tv_in1k"
    assert f"{expected_folder}/snapshots/<revision>/model.safetensors" in message
    assert "vggfeat weights convert timm:vgg19.tv_in1k vgg19.safetensors" in message


def test_random_and_files(offline_caches, tiny_model, tmp_path):
    random = resolve_weights("random")
    assert (
        random.is_random and random.path is None and random.describe() == {"weights": "random", "weights_sha256": None}
    )
    model = load_model("random", "vgg_a", **TINY)
    assert model.arch == "vgg_a" and not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vggfeat.load_weights(model, "random")  # keeps the model's own init
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    path = vggfeat.save_weights(tiny_model("vgg_d"), tmp_path / "d.safetensors")
    resolved = resolve_weights(str(path))
    assert resolved.kind == "file" and resolved.path == path
    assert resolved.describe()["weights"] == str(path.resolve()) and len(resolved.describe()["weights_sha256"]) == 64


def test_help_lists_every_form():
    for form in ("torchvision:vgg11|vgg13|vgg16|vgg19", "timm:", "hf-hub:", "random", ".safetensors", ".caffemodel"):
        assert form in WEIGHTS_HELP
