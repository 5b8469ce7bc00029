"""Shared fixtures: tiny nets (a width multiplier and a small fc) so the default run needs no GPU."""

from __future__ import annotations

import os

from vggfeat.utils.cpus import quiet_env

# before torch loads, as the vggfeat command does: OpenMP threads that spin at barriers collapse on a shared
# machine (a tiny-net extraction took 18.7 s instead of 0.27 s with 18 busy processes on 2 cores)
quiet_env()

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY  # noqa: E402 (shared with test modules through tests/helpers.py)

import vggfeat  # noqa: E402


@pytest.fixture
def tiny_model():
    def make(name: str = "vgg_d", seed: int = 0, **overrides):
        return vggfeat.create_model(name, seed=seed, **{**TINY, **overrides})

    return make


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Weights by name without the network: torch.hub and the Hugging Face hub read a file that is in
# their cache as is - torch.hub checks the sha256 prefix of torchvision's file name only when it downloads, so
# random weights under the right name stand in for torchvision's ImageNet file.
TINY_TV_CFG = {  # torchvision's make_layers cfgs at TINY's widths (1/16): conv channels, "M" for a max-pool
    "vgg11": [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"],
    "vgg16": [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"],
}


def tiny_torchvision_vgg(name: str = "vgg16", seed: int = 0):
    """torchvision's own VGG class at TINY's sizes: fc6 over a 2x2 pool5 map, so its forward on 64 px images is
    the dense net's (its adaptive pool is the identity there)."""
    from torch import nn
    from torchvision.models.vgg import VGG, make_layers

    with torch.device("meta"):  # its 25088 x 4096 fc6 is replaced below: do not spend seconds initialising it
        tv = VGG(make_layers(TINY_TV_CFG[name]), num_classes=TINY["num_classes"], init_weights=False)
    torch.manual_seed(seed)
    tv.features = make_layers(TINY_TV_CFG[name])
    tv.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    fc = TINY["fc_dim"]
    tv.classifier = nn.Sequential(  # torchvision's indices: classifier.0, .3, .6 hold fc6, fc7, fc8
        nn.Linear(32 * 2 * 2, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(),
        nn.Linear(fc, TINY["num_classes"]),
    )  # fmt: skip
    for m in tv.modules():  # as torchvision inits (VGG.__init__), with He-scaled fcs
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, (2 / m.in_features) ** 0.5)  # not 0.01: keeps tiny logits away from 0
            nn.init.zeros_(m.bias)
    return tv.eval()


def torchvision_cache_file(name: str):
    """Where torch.hub keeps torchvision's ImageNet weights of `name`: $TORCH_HOME/hub/checkpoints/<url's file>."""
    import os
    from pathlib import Path

    from torchvision.models import get_model_weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(get_model_weights(name).DEFAULT.url)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """On a machine with a GPU the default suite still runs on the CPU: its tests compare against float32 CPU
    arithmetic (exact protocols, manual references), which bf16 autocast on CUDA only approximates. Tests
    marked `gpu` see the GPU; VGGFEAT_TEST_CUDA=1 shows it to every test (and their subprocesses)."""
    if request.node.get_closest_marker("gpu") or os.environ.get("VGGFEAT_TEST_CUDA") == "1":
        return
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # subprocesses (the CLI, torchrun ranks) see none either


@pytest.fixture(autouse=True)
def _never_download(monkeypatch, tmp_path_factory):
    """Every test runs offline against empty caches: a name that a test did not prime is an error, never a
    download, and a developer's own caches cannot make a test pass."""
    empty = tmp_path_factory.getbasetemp() / "empty-caches"
    monkeypatch.setenv("VGGFEAT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(empty / "torch"))
    monkeypatch.setenv("HF_HOME", str(empty / "huggingface"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches in tmp_path, downloads off, and any download attempt a failure."""
    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args[:1]}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("VGGFEAT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import otherwise
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


@pytest.fixture
def primed_torch_home(offline_caches):
    """torch.hub's cache (offline, in a temp TORCH_HOME) holding torchvision's vgg16 file, so
    `--weights torchvision:vgg16` and the default weights resolve without a network. The file holds the state
    dict of a tiny random VGG-16 in torchvision's layout (tiny_torchvision_vgg), so extraction is fast; the
    net built from it is TINY-sized. Returns the file's path."""
    path = torchvision_cache_file("vgg16")
    path.parent.mkdir(parents=True)
    torch.save(tiny_torchvision_vgg("vgg16").state_dict(), path)
    return path
