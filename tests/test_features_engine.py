"""The engine runs its own copies of the nets: the caller's net is never changed, not even while extraction runs,
and the CPU kernel choice (models.fastconv) is applied to the engine's copy only, with the plain modules'
descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, assert_same_state, module_state

import vggfeat
from vggfeat.features import engine as engine_module
from vggfeat.features.engine import DescriptorEngine
from vggfeat.features.extract import describe_images, extract_features
from vggfeat.features.nets import VGGFeatureNet
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.models import fastconv


def tiny(seed=0):
    return vggfeat.create_model("vgg_d", seed=seed, init="glorot", **TINY)


def random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture
def winograd_calls(monkeypatch):
    """Winograd for every 3x3 conv of the tiny nets (the channel threshold lowered), its calls counted."""
    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    calls = []
    real = fastconv.winograd_conv3x3_relu
    monkeypatch.setattr(fastconv, "winograd_conv3x3_relu", lambda *a: calls.append(1) or real(*a))
    return calls


def spy_on_batches(monkeypatch, model) -> list[dict]:
    """The caller's net's state at every batch the engine runs (while the engine holds the nets)."""
    seen = []
    real = engine_module.Stream._run

    def run(self, batch):
        seen.append(module_state(model))
        return real(self, batch)

    monkeypatch.setattr(engine_module.Stream, "_run", run)
    return seen


@pytest.mark.parametrize("winograd", [True, False])
def test_extraction_never_changes_the_callers_net(monkeypatch, winograd_calls, winograd):
    """Not its parameters (objects, memory, layout, version, values), nor a module's mode or attributes: neither
    after the extraction nor during it (another thread may be using the net)."""
    model = tiny()  # in training mode, as create_model returns it; fc7 in eval: a mixed state
    model.fc7.eval()
    images = random_images([(70, 90), (64, 80)], seed=1)
    before = module_state(model)
    during = spy_on_batches(monkeypatch, model)
    extract_features(model, images, scales=(64,), winograd=winograd, device="cpu")
    assert len(during) >= 1 and (len(winograd_calls) > 0) == winograd  # the CPU fast path ran when asked
    for state in [*during, module_state(model)]:
        assert_same_state(before, state)


def test_the_engine_runs_its_own_copy_of_a_callers_feature_net(monkeypatch, winograd_calls):
    model = tiny().eval()
    net = VGGFeatureNet(model, "fc7")
    before = module_state(net)
    during = spy_on_batches(monkeypatch, net)
    protocol, runtime = Protocol(scales=(64,)), Runtime(device="cpu")
    engine = DescriptorEngine([net], protocol, runtime)
    assert engine.nets[0] is not net and engine.nets[0].model is not model
    assert_same_state(before, module_state(net))
    images = random_images([(70, 90), (64, 80)], seed=2)
    _, feats, _ = describe_images([net], images, protocol, runtime)
    assert winograd_calls and during
    for state in [*during, module_state(net)]:
        assert_same_state(before, state)
    np.testing.assert_allclose(feats, extract_features(model, images, scales=(64,), device="cpu"), rtol=1e-6)


def test_cpu_kernels_are_the_engines_transform_with_the_modules_descriptors(monkeypatch, winograd_calls):
    """On the CPU in fp32 the engine's VGG copy fuses each conv + ReLU (Winograd or oneDNN); its descriptors are
    the plain modules' to fp32 rounding, and the caller's net keeps its plain modules."""
    model = tiny(seed=3).eval()
    images = random_images([(70, 100), (90, 64)], seed=5)
    protocol = Protocol(scales=(64, 80))
    fused = DescriptorEngine([VGGFeatureNet(model)], protocol, Runtime(device="cpu")).nets[0].model
    assert isinstance(fused.conv3_1, fastconv.ConvReLU) and isinstance(fused.relu3_1, torch.nn.Identity)
    assert type(model.conv3_1) is torch.nn.Conv2d and isinstance(model.relu3_1, torch.nn.ReLU)
    bf16 = DescriptorEngine([VGGFeatureNet(model)], protocol, Runtime(device="cpu", precision="bfloat16"))
    assert type(bf16.nets[0].model.conv3_1) is torch.nn.Conv2d  # autocast: the fused kernels do not apply
    fast = extract_features(model, images, protocol, Runtime(device="cpu"))
    assert len(winograd_calls) > 0
    direct = extract_features(model, images, protocol, Runtime(device="cpu", winograd=False))
    monkeypatch.setattr(fastconv, "conv_relu_inference", lambda *a, **k: None)  # every conv by its module
    calls = len(winograd_calls)
    plain = extract_features(model, images, protocol, Runtime(device="cpu"))
    assert len(winograd_calls) == calls
    np.testing.assert_allclose(direct, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-6)
