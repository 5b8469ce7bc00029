"""Inference copies (models.inference): their own parameter objects over the caller's memory, eval mode, no
gradients; converting or moving a copy, or fusing its kernels, leaves the net it was copied from as it was."""

from __future__ import annotations

import torch
from helpers import TINY, assert_same_state, module_state
from torch import nn

import vggfeat
from vggfeat.models import fastconv
from vggfeat.models.inference import inference_copy


def test_a_copy_shares_memory_but_no_tensor_object():
    model = vggfeat.create_model("vgg_a", seed=0, **TINY)  # training mode, parameters requiring grad
    before = module_state(model)
    twin = inference_copy(model)
    assert not twin.training and not any(m.training for m in twin.modules())
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert q is not p and isinstance(q, nn.Parameter) and not q.requires_grad, name
        assert q.data_ptr() == p.data_ptr()  # no memory until converted
    assert twin.preprocessing == model.preprocessing and twin.layer_names == model.layer_names
    twin.to(memory_format=torch.channels_last)
    twin.to(torch.float64)
    fastconv.fuse_conv_relu(twin)
    assert twin.conv1_1.weight.dtype == torch.float64 and isinstance(twin.conv1_1, fastconv.ConvReLU)
    assert_same_state(before, module_state(model))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x.double()).float(), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_tied_weights_stay_tied_and_buffers_are_copied():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.register_buffer("count", torch.zeros(2))

    model = Tied()
    twin = inference_copy(model)
    assert twin.b.weight is twin.a.weight and twin.a.weight is not model.a.weight
    assert twin.count is not model.count and twin.count.data_ptr() == model.count.data_ptr()
    twin.to(torch.float64)
    assert model.a.weight.dtype == torch.float32 and model.count.dtype == torch.float32
