"""The nets of Table 1: parameter counts, named layers, dense head, dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vggfeat
from vggfeat.models import CONFIGS, count_parameters, resolve_name

# the paper's Table 1 / Table 2 (exact counts at 1000 classes)
PAPER_PARAMS = {
    "vgg_a": 132_863_336,
    "vgg_a_lrn": 132_863_336,
    "vgg_b": 133_047_848,
    "vgg_c": 133_638_952,
    "vgg_d": 138_357_544,
    "vgg_e": 143_667_240,
}
WEIGHT_LAYERS = {"vgg_a": 11, "vgg_a_lrn": 11, "vgg_b": 13, "vgg_c": 16, "vgg_d": 16, "vgg_e": 19}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_full_size_parameter_counts_on_meta(name):
    model = vggfeat.create_model(name, device="meta")
    assert model.fc6.weight.is_meta
    assert count_parameters(model) == PAPER_PARAMS[name]
    assert len(model.weight_layers()) == WEIGHT_LAYERS[name]
    assert tuple(model.fc6.weight.shape) == (4096, 512, 7, 7)  # Sect. 3.2: fc6 is a 7x7 conv


def test_list_models_and_aliases():
    assert vggfeat.list_models() == ["vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e"]
    for alias, canonical in {"vgg11": "vgg_a", "vgg13": "vgg_b", "vgg16": "vgg_d", "vgg19": "vgg_e"}.items():
        assert resolve_name(alias).name == canonical
    with pytest.raises(ValueError, match="valid: vgg_a, vgg_a_lrn"):
        vggfeat.create_model("vgg17")


def test_caffe_layer_names_and_config_c_1x1_convs(tiny_model):
    c = tiny_model("vgg_c")
    assert c.conv3_3.kernel_size == (1, 1) and c.conv3_3.padding == (0, 0)
    assert c.conv4_3.kernel_size == (1, 1) and c.conv5_3.kernel_size == (1, 1)
    assert c.conv3_2.kernel_size == (3, 3) and c.conv3_2.padding == (1, 1)
    e = tiny_model("vgg_e")
    assert "conv5_4" in e.layer_names and "conv5_4.weight" in e.state_dict()
    d = tiny_model("vgg_d")
    assert "conv5_4" not in d.layer_names


def test_lrn_only_in_a_lrn(tiny_model):
    a_lrn, a = tiny_model("vgg_a_lrn"), tiny_model("vgg_a")
    assert isinstance(a_lrn.norm1, nn.LocalResponseNorm)
    assert a_lrn.layer_names[:3] == ["conv1_1", "norm1", "pool1"]
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in a.modules())
    # AlexNet's formula: b = a / (k + alpha * sum a^2)^beta over 5 neighbouring channels
    x = torch.rand(1, 4, 3, 3)
    sq = torch.nn.functional.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, i : i + 4] for i in range(5))
    assert torch.allclose(a_lrn.norm1(x), x / (2.0 + 1e-4 * window).pow(0.75), atol=1e-6)


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_tiny_nets_forward_and_backward(tiny_model, name):
    model = tiny_model(name)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad.abs().sum() > 0


def test_forward_features_every_layer(tiny_model):
    model = tiny_model("vgg_e").eval()
    x = torch.randn(1, 3, 96, 128)
    for layer in model.layer_names:
        out = model.forward_features(x, layer)
        assert out.shape[1] == model.layer_channels(layer), layer
        if layer.startswith(("conv", "fc6", "fc7")):
            assert out.min() >= 0, f"{layer} is after its ReLU"
    assert model.forward_features(x, "pool5").shape == (1, 32, 3, 4)
    assert model.forward_features(x, "fc8").shape == (1, 10, 2, 3)  # dense map: (h - k + 1, w - k + 1)
    assert model.forward_features(x, "fc8").min() < 0  # fc8 has no ReLU
    with pytest.raises(ValueError, match="valid: conv1_1, conv1_2, pool1"):
        model.forward_features(x, "fc9")


def test_logits_average_the_dense_score_map(tiny_model):
    model = tiny_model("vgg_b").eval()
    x = torch.randn(2, 3, 96, 160)
    assert torch.allclose(model(x), model.forward_features(x, "fc8").mean(dim=(2, 3)), atol=1e-6)


def test_input_too_small_is_a_clear_error(tiny_model):
    model = tiny_model("vgg_a").eval()  # fc6 spans 2x2 of pool5 -> needs 64 px
    with pytest.raises(ValueError, match="at least 64 px"):
        model(torch.randn(1, 3, 32, 96))


def test_dense_head_equals_linear_head_at_224(tiny_model):
    torch.manual_seed(0)
    model = tiny_model("vgg_d", seed=1, fc6_kernel=7, fc_dim=64, num_classes=7).eval()  # the paper's 7x7 fc6
    x = torch.randn(2, 3, 224, 224)
    pool5 = model.forward_features(x, "pool5")  # (2, 32, 7, 7)
    # the classic head: flatten pool5, three Linear layers with the conv kernels as matrices
    fc6 = nn.Linear(32 * 7 * 7, 64)
    fc6.weight.data = model.fc6.weight.flatten(1).clone()
    fc6.bias.data = model.fc6.bias.clone()
    fc7 = nn.Linear(64, 64)
    fc7.weight.data, fc7.bias.data = model.fc7.weight.flatten(1).clone(), model.fc7.bias.clone()
    fc8 = nn.Linear(64, 7)
    fc8.weight.data, fc8.bias.data = model.fc8.weight.flatten(1).clone(), model.fc8.bias.clone()
    classic = fc8(torch.relu(fc7(torch.relu(fc6(pool5.flatten(1))))))
    assert model.forward_features(x, "fc8").shape == (2, 7, 1, 1)
    torch.testing.assert_close(model(x), classic, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [7, 3, 1])
@pytest.mark.parametrize("weight_cl,input_cl", [(False, False), (True, False), (False, True), (True, True)])
def test_dense_fc_is_the_convolution(kernel, weight_cl, input_cl):
    """The fc layers' single-GEMM form gives the convolution's outputs and gradients, whatever the memory
    formats of weight and input (channels_last models hold (out, k, k, in) weights)."""
    from vggfeat.models.vgg import DenseFC

    torch.manual_seed(kernel)
    layer = DenseFC(24, 40, kernel)
    if weight_cl:
        layer = layer.to(memory_format=torch.channels_last)
        assert not layer.weight.is_contiguous() or kernel == 1
    x = torch.randn(3, 24, 11, 9)
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    ref = torch.nn.functional.conv2d(x, layer.weight, layer.bias)
    assert y.shape == ref.shape == (3, 40, 12 - kernel, 10 - kernel)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((y * ref.detach()).sum(), (x, layer.weight, layer.bias))
    want = torch.autograd.grad((ref * ref.detach()).sum(), (x, layer.weight, layer.bias))
    for g, w in zip(grads, want, strict=False):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    if kernel > 1:
        with pytest.raises(RuntimeError):  # smaller than the kernel: the convolution's own error
            layer(torch.randn(1, 24, kernel - 1, 20))


def test_dropout_only_in_training(tiny_model):
    model = tiny_model("vgg_d", fc_dim=256)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model.forward_features(x, "fc7")
    torch.manual_seed(1)
    b = model.forward_features(x, "fc7")
    assert not torch.equal(a, b)
    assert model.drop6.p == 0.5 and model.drop7.p == 0.5


def test_configs_match_table_1():
    convs = {k: [c for stage in v for c in stage] for k, v in CONFIGS.items()}
    assert [len(v) + 3 for v in convs.values()] == [11, 13, 16, 16, 19]
    assert [c for c, k in convs["C"] if k == 1] == [256, 512, 512]
    assert [len(stage) for stage in CONFIGS["E"]] == [2, 2, 4, 4, 4]


def test_the_model_runs_its_own_modules_only(monkeypatch, tiny_model):
    """The model stays a model: no CPU kernel choice inside VGG (that is the extraction engine's transform on its
    own copy, models.fastconv), so an inference-mode forward on the CPU runs exactly the modules a grad-mode one
    runs, and no kernel of models.fastconv is reached."""
    import inspect

    from vggfeat.models import fastconv
    from vggfeat.models import vgg as vgg_module

    source = inspect.getsource(vgg_module)
    assert "fastconv" not in source and "winograd" not in source.lower()

    def refuse(*args, **kwargs):
        raise AssertionError("a VGG forward reached a kernel of models.fastconv")

    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    for name in ("conv_relu_inference", "winograd_conv3x3_relu", "onednn_conv_relu"):
        monkeypatch.setattr(fastconv, name, refuse)
    model = tiny_model("vgg_d", seed=1, num_classes=5).eval()
    x = torch.randn(2, 3, 70, 90)
    want = {name: a.detach().clone() for name, a in model.iter_layers(x, until="fc8")}  # autograd: the modules
    with torch.inference_mode():
        got = dict(model.iter_layers(x, until="fc8"))
        scores = model(x)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    torch.testing.assert_close(scores, want["fc8"].mean(dim=(2, 3)), rtol=0, atol=0)
