"""Sect. 3.1 initialisation: normal(0, 0.01) with zero biases, Glorot, and deeper nets from net A."""

from __future__ import annotations

import pytest
import torch

import vggfeat
from vggfeat.models import INIT_FROM_A_LAYERS, init_from_net_a, init_weights


def test_normal_init_std_and_zero_bias():
    model = vggfeat.create_model("vgg_a", width_mult=1 / 4, fc_dim=512, num_classes=100, seed=0)
    w = torch.cat([model.fc6.weight.flatten(), model.conv4_1.weight.flatten()])
    assert abs(w.std().item() - 0.01) < 2e-4 and abs(w.mean().item()) < 2e-4
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith(".bias"))
    custom = vggfeat.create_model("vgg_a", width_mult=1 / 4, fc_dim=512, init_std=0.05, seed=0)
    assert abs(custom.fc6.weight.std().item() - 0.05) < 1e-3


def test_glorot_init():
    model = vggfeat.create_model("vgg_a", width_mult=1 / 4, fc_dim=512, init="glorot", seed=0)
    w = model.fc7.weight  # fan_in = fan_out = 512 -> uniform(+-sqrt(6 / 1024))
    bound = (6 / 1024) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    with pytest.raises(ValueError, match="valid: normal, glorot"):
        init_weights(model, "he")


def test_seed_reproducible(tiny_model):
    a, b, c = tiny_model("vgg_b", seed=3), tiny_model("vgg_b", seed=3), tiny_model("vgg_b", seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.conv1_1.weight, c.conv1_1.weight)


@pytest.mark.parametrize("deeper", ["vgg_b", "vgg_c", "vgg_d", "vgg_e"])
def test_init_from_net_a_copies_exactly_seven_layers(tiny_model, deeper):
    net_a = tiny_model("vgg_a", seed=1)
    with torch.no_grad():  # make A's weights distinct from any fresh init
        for p in net_a.parameters():
            p.add_(torch.rand_like(p) + 1.0)
    net = tiny_model(deeper, seed=2)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    copied = init_from_net_a(net, net_a)
    assert copied == [f"{layer}.{p}" for layer in INIT_FROM_A_LAYERS for p in ("weight", "bias")]
    assert INIT_FROM_A_LAYERS == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
    a_state = net_a.state_dict()
    for key, value in net.state_dict().items():
        if key in copied:
            assert torch.equal(value, a_state[key]), key
        else:
            assert torch.equal(value, fresh[key]), f"{key} should keep its fresh init"


def test_init_from_net_a_shape_mismatch_is_an_error(tiny_model):
    net_a = tiny_model("vgg_a", fc_dim=16)
    with pytest.raises(ValueError, match="fc6.weight: net A has"):
        init_from_net_a(tiny_model("vgg_d"), net_a)
