"""CPU inference kernels for conv + ReLU: Winograd F(4x4, 3x3) and oneDNN's fused call against conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.models import fastconv


def reference(x, weight, bias):
    """ReLU(conv2d) in float64: the exact answer both fp32 kernels round."""
    return F.relu(F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1))


def relative_error(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize(
    "points, m, r",
    [
        (fastconv.POINTS, 4, 3),
        ((0.0, 1.0, -1.0, 2.0, -2.0), 4, 3),
        (fastconv.DENSE_POINTS, 2, 7),  # fc6's F(2, 7)
        (fastconv.DENSE_POINTS[:2], 2, 2),
    ],
)
def test_winograd_matrices_compute_a_1d_correlation_exactly(points, m, r):
    at, g, bt = fastconv.winograd_matrices(points, m, r)
    gen = torch.Generator().manual_seed(0)
    a = m + r - 1
    d, k = torch.randn(a, dtype=torch.float64, generator=gen), torch.randn(r, dtype=torch.float64, generator=gen)
    y = at @ ((g @ k) * (bt @ d))  # F(m, r): m outputs of an r-tap correlation over m + r - 1 inputs
    expected = torch.stack([d[i : i + r] @ k for i in range(m)])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)


def test_winograd_matrices_refuse_repeated_points():
    with pytest.raises(ValueError, match="5 distinct finite points"):
        fastconv.winograd_matrices((0.0, 1.0, 1.0, 0.5, -2.0))
    with pytest.raises(ValueError, match="5 distinct finite points"):
        fastconv.winograd_matrices((0.0, 1.0, -1.0))


@pytest.mark.parametrize("b, c, k, h, w", [(1, 8, 16, 1, 1), (2, 16, 8, 5, 7), (3, 8, 8, 12, 16), (1, 32, 24, 23, 9)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_winograd_equals_conv2d_relu(b, c, k, h, w, channels_last):
    """Any map size (tiles cropped at the right and bottom edges), either memory format, fp32 rounding only."""
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randn(b, c, h, w, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(k, c, 3, 3, generator=gen) / (3 * c**0.5), torch.randn(k, generator=gen)
    y = fastconv.winograd_conv3x3_relu(x, weight, bias)
    assert y.shape == (b, k, h, w) and y.stride(1) == 1  # channels last (the interior of a bordered buffer)
    ref = reference(x, weight, bias)
    assert relative_error(y, ref) < 2e-5
    assert torch.equal(fastconv.winograd_conv3x3_relu(x, weight, bias), y)  # deterministic: resumed runs match
    assert (y[ref == 0] == 0).float().mean() > 0.99  # the ReLU is applied (up to rounding at the kink)
    assert relative_error(fastconv.winograd_conv3x3_relu(x, weight, None), reference(x, weight, None)) < 2e-5


@pytest.mark.parametrize("h, w", [(16, 20), (13, 18), (5, 7)])
def test_a_chain_of_winograd_layers_reads_its_predecessors_buffer(h, w, monkeypatch):
    """The second layer tiles the first one's zero-bordered buffer instead of copying the map (whole-tile
    overhang zeroed, so the conv's padding holds), the same numbers as from a fresh copy; a map changed in
    place between the layers (the padded-batch masks) is read as changed."""
    gen = torch.Generator().manual_seed(h + w)
    x = torch.randn(2, 8, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    w1, w2 = (torch.randn(8, 8, 3, 3, generator=gen) / 8 for _ in range(2))
    b1, b2 = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    copies = []
    real_zeros = torch.Tensor.new_zeros
    monkeypatch.setattr(torch.Tensor, "new_zeros", lambda self, *a, **k: copies.append(1) or real_zeros(self, *a, **k))
    y1 = fastconv.winograd_conv3x3_relu(x, w1, b1)
    y2 = fastconv.winograd_conv3x3_relu(y1, w2, b2)
    assert len(copies) == 1  # only the net's input was copied into a border
    fresh = fastconv.winograd_conv3x3_relu(y1.contiguous(memory_format=torch.channels_last), w2, b2)
    assert len(copies) == 2
    torch.testing.assert_close(y2, fresh, rtol=0, atol=0)
    assert relative_error(y2, reference(reference(x, w1, b1).float(), w2, b2)) < 4e-5
    y1[:, :, h // 2 :] = 0.0  # in place, as a mask between layers does
    masked = fastconv.winograd_conv3x3_relu(y1, w2, b2)
    torch.testing.assert_close(masked, reference(y1, w2, b2).float(), rtol=1e-4, atol=1e-5)


def test_winograd_bands_give_the_same_map(monkeypatch):
    """The map is processed in bands of tile rows: one-row bands and a single band agree to rounding."""
    gen = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 16, 37, 30, generator=gen), torch.randn(24, 16, 3, 3, generator=gen) / 12
    bias = torch.randn(24, generator=gen)
    monkeypatch.setattr(fastconv, "BAND_BYTES", 1 << 40)
    whole = fastconv.winograd_conv3x3_relu(x, weight, bias)
    monkeypatch.setattr(fastconv, "BAND_BYTES", 1)
    banded = fastconv.winograd_conv3x3_relu(x, weight, bias)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)
    assert relative_error(banded, reference(x, weight, bias)) < 2e-5


def test_winograd_rounding_is_fp32_sized_on_a_wide_layer():
    """A 256-channel layer at fp32: a few 1e-6 of the largest output, not a wrong algorithm's 1e-2."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 256, 20, 24, generator=gen).relu()
    weight, bias = torch.randn(256, 256, 3, 3, generator=gen) * (2 / (9 * 256)) ** 0.5, torch.zeros(256)
    ref = reference(x, weight, bias)
    err = relative_error(fastconv.winograd_conv3x3_relu(x, weight, bias), ref)
    direct = relative_error(F.relu(F.conv2d(x, weight, bias, padding=1)), ref)
    assert 0 < err < 1.5e-5 and direct < err


def test_transformed_weights_are_cached_until_the_weight_changes():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    u = fastconv.winograd_weight(conv.weight)
    assert fastconv.winograd_weight(conv.weight) is u
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an in-place update, as an optimizer step or load_state_dict makes
        y = fastconv.winograd_conv3x3_relu(x, conv.weight, conv.bias)
    assert fastconv.winograd_weight(conv.weight) is not u
    assert relative_error(y, reference(x, conv.weight, conv.bias)) < 2e-5


def test_conv_relu_inference_picks_a_kernel_or_declines(monkeypatch):
    calls = []
    real_winograd = fastconv.winograd_conv3x3_relu
    monkeypatch.setattr(fastconv, "winograd_conv3x3_relu", lambda *a: calls.append("winograd") or real_winograd(*a))
    wide, narrow = nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 32, 3, padding=1)
    x = torch.randn(1, 256, 10, 11)
    with torch.inference_mode():
        expected = F.relu(wide(x))
        torch.testing.assert_close(fastconv.conv_relu_inference(wide, x), expected, rtol=1e-4, atol=1e-5)
        assert calls == ["winograd"]
        torch.testing.assert_close(fastconv.conv_relu_inference(narrow, x), F.relu(narrow(x)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            fastconv.conv_relu_inference(wide, x, winograd=False), expected, rtol=1e-5, atol=1e-6
        )
        assert calls == ["winograd"]  # 256 -> 32 is below the threshold; winograd=False means direct
        assert fastconv.conv_relu_inference(wide, x.double()) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fastconv.conv_relu_inference(wide, x) is None
    assert fastconv.conv_relu_inference(wide, x) is None  # autograd needs the modules
    strided = nn.Conv2d(256, 256, 3, padding=1, stride=2)
    assert not fastconv.winograd_applies(strided) and fastconv.winograd_applies(wide)


def test_vgg_layers_with_winograd_equal_the_modules(monkeypatch, tiny_model):
    """Every 3x3 conv of a net's fused inference copy through Winograd (threshold lowered for the tiny test net),
    against the plain modules of the net itself and against the direct kernels: the same activations to fp32
    rounding, and the net itself keeps its plain modules."""
    from vggfeat.models.inference import inference_copy

    model = tiny_model("vgg_d", seed=3).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 230, 260).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    calls = []
    real = fastconv.winograd_conv3x3_relu
    monkeypatch.setattr(fastconv, "winograd_conv3x3_relu", lambda *a: calls.append(1) or real(*a))
    fast = fastconv.fuse_conv_relu(inference_copy(model))
    slow = fastconv.fuse_conv_relu(inference_copy(model), winograd=False)
    fused = [name for name, m in fast.named_modules() if isinstance(m, fastconv.ConvReLU)]
    assert len(fused) == 13 and not any(isinstance(m, fastconv.ConvReLU) for m in model.modules())
    assert fast.state_dict().keys() == model.state_dict().keys()
    with torch.inference_mode():
        winograd = {name: a.clone() for name, a in fast.iter_layers(x, until="fc7")}
        assert len(calls) == 13  # every 3x3 conv of config D
        direct = {name: a.clone() for name, a in slow.iter_layers(x, until="fc7")}
        assert len(calls) == 13
        plain = dict(model.iter_layers(x, until="fc7"))
    assert len(calls) == 13  # the net itself runs its modules
    for name in plain:
        scale = plain[name].abs().max()
        torch.testing.assert_close(direct[name], plain[name], rtol=1e-5, atol=1e-6 * scale)
        torch.testing.assert_close(winograd[name], plain[name], rtol=1e-4, atol=2e-5 * scale)


def test_conv_relu_module_falls_back_to_the_modules_where_no_kernel_applies():
    """With autograd (or any case conv_relu_inference declines) a ConvReLU is its conv then ReLU, gradients too."""
    conv = nn.Conv2d(8, 16, 3, padding=1)
    fused = fastconv.ConvReLU(conv)
    assert fused.weight is conv.weight and fused.bias is conv.bias
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    torch.testing.assert_close(fused(x), F.relu(conv(x)), rtol=0, atol=0)
    fused(x).sum().backward()
    assert conv.weight.grad is not None and x.grad is not None
    with torch.inference_mode():
        torch.testing.assert_close(fused(x.detach()), F.relu(conv(x.detach())), rtol=1e-5, atol=1e-6)


def test_fused_onednn_conv_relu_equals_the_modules():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    conv = nn.Conv2d(16, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 19, 21).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fastconv.onednn_conv_relu(conv, x), F.relu(conv(x)), rtol=1e-5, atol=1e-6)


def dense_reference(x, weight, bias):
    """A DenseFC's conv (no padding) in float64."""
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double())


@pytest.mark.parametrize(
    "b, c, k_out, kernel, h, w",
    [(1, 16, 24, 7, 7, 7), (2, 16, 24, 7, 12, 16), (3, 8, 16, 7, 16, 21), (2, 8, 8, 2, 5, 9), (1, 8, 8, 3, 10, 3)],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_winograd_dense_equals_the_dense_conv(b, c, k_out, kernel, h, w, channels_last):
    """F(2x2, kxk) for fc6-like layers: one output position (an image at the net's input size) or many, odd
    output sizes (tiles cropped), either layout; fp32 rounding only, deterministic."""
    gen = torch.Generator().manual_seed(h * w + kernel)
    x = torch.randn(b, c, h, w, generator=gen).relu()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k_out, c, kernel, kernel, generator=gen) / (kernel * c**0.5)
    bias = torch.randn(k_out, generator=gen)
    y = fastconv.winograd_dense(x, weight, bias)
    assert y.shape == (b, k_out, h - kernel + 1, w - kernel + 1)
    assert y.is_contiguous(memory_format=torch.channels_last) or y.shape[2] * y.shape[3] == 1
    assert relative_error(y, dense_reference(x, weight, bias)) < 3e-5
    assert torch.equal(fastconv.winograd_dense(x, weight, bias), y)
    assert relative_error(fastconv.winograd_dense(x, weight, None), dense_reference(x, weight, None)) < 3e-5


def test_winograd_dense_passes_give_the_same_map(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x, weight = torch.randn(2, 8, 19, 23, generator=gen).relu(), torch.randn(16, 8, 7, 7, generator=gen) / 20
    bias = torch.randn(16, generator=gen)
    monkeypatch.setattr(fastconv, "DENSE_BAND_BYTES", 1 << 40)
    whole = fastconv.winograd_dense(x, weight, bias)
    monkeypatch.setattr(fastconv, "DENSE_BAND_BYTES", 1)  # one tile row per pass
    torch.testing.assert_close(fastconv.winograd_dense(x, weight, bias), whole, rtol=0, atol=1e-6)


def test_winograd_dense_rounding_is_fp32_sized_on_fc6():
    """VGG-16's fc6 shape (512 -> 4096 channels in the test: 256 -> 512, a 7 x 7 kernel) at a Q=384 pool5 map:
    about 1e-5 of the largest output, not a wrong algorithm's 1e-2; the GEMM's own error is below it."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 256, 12, 16, generator=gen).relu()
    weight, bias = torch.randn(512, 256, 7, 7, generator=gen) * (2 / (49 * 256)) ** 0.5, torch.zeros(512)
    ref = dense_reference(x, weight, bias)
    err = relative_error(fastconv.winograd_dense(x, weight, bias), ref)
    direct = relative_error(F.conv2d(x, weight, bias), ref)
    assert 0 < err < 3e-5 and direct < err


def test_fused_net_runs_fc6_by_winograd_with_the_layers_parameters(monkeypatch, tiny_model):
    """fuse_conv_relu turns fc6 (a DenseFC of kernel >= 2) into a WinogradDenseFC sharing its parameters; fc7
    (1 x 1) stays; winograd=False keeps fc6's GEMM; under autograd the layer is its own GEMM, gradients too."""
    from vggfeat.models.inference import inference_copy
    from vggfeat.models.vgg import DenseFC

    model = tiny_model("vgg_a", seed=1).eval()
    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    fast = fastconv.fuse_conv_relu(inference_copy(model))
    assert type(fast.fc6) is fastconv.WinogradDenseFC and type(fast.fc7) is DenseFC
    assert fast.fc6.weight is not model.fc6.weight and fast.fc6.weight.data_ptr() == model.fc6.weight.data_ptr()
    assert type(fastconv.fuse_conv_relu(inference_copy(model), winograd=False).fc6) is DenseFC
    calls = []
    real = fastconv.winograd_dense
    monkeypatch.setattr(fastconv, "winograd_dense", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, model.fc6.in_channels, 5, 6).relu()
    with torch.inference_mode():
        y = fast.fc6(x)
    assert calls == [1]
    torch.testing.assert_close(y, model.fc6(x).detach(), rtol=1e-4, atol=1e-5)
    layer = fastconv.WinogradDenseFC(DenseFC(8, 4, 2))
    xg = torch.randn(1, 8, 3, 3, requires_grad=True)
    layer(xg).sum().backward()
    assert calls == [1] and xg.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("h, w", [(8, 8), (9, 13), (2, 3), (33, 2)])
def test_max_pool_2x2_equals_torchs_on_any_layout(h, w):
    """Exact (a max is), floor-rounded, for a contiguous map, a channels_last one and a bordered buffer's view."""
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 5, h, w, generator=gen)
    x[0, 1, 0, 0] = float("nan")  # propagated as torch's pool propagates it
    buffer = torch.zeros(2, h + 3, w + 3, 5)
    buffer[:, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
    view = buffer[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2)
    for x_ in (x, x.contiguous(memory_format=torch.channels_last), view):
        torch.testing.assert_close(fastconv.max_pool_2x2(x_), F.max_pool2d(x, 2, 2), rtol=0, atol=0, equal_nan=True)


def test_fused_net_pools_by_the_strided_kernel(tiny_model):
    from vggfeat.models.inference import inference_copy

    model = tiny_model("vgg_a", seed=2).eval()
    fast = fastconv.fuse_conv_relu(inference_copy(model))
    pools = [name for name, m in fast.named_children() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(type(getattr(fast, n)) is fastconv.MaxPool2x2 for n in pools)
    assert all(type(getattr(model, n)) is nn.MaxPool2d for n in pools)  # the net itself keeps its modules
    x = torch.randn(1, 3, 70, 90)
    with torch.inference_mode():
        torch.testing.assert_close(fast.forward_features(x, "pool5"), model.forward_features(x, "pool5"))
    xg = torch.randn(1, 4, 6, 6, requires_grad=True)
    getattr(fast, pools[0])(xg).sum().backward()  # autograd: torch's own pool
    assert xg.grad is not None and xg.grad.sum() == 4 * 9  # one argmax per output


def test_fc6_on_a_lone_position_stays_direct(monkeypatch):
    """A 224 px crop gives fc6 one output: Winograd would pay 64 multiply-adds per channel pair for 49."""
    from vggfeat.models.vgg import DenseFC

    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    layer = fastconv.WinogradDenseFC(DenseFC(8, 16, 7))
    calls = []
    real = fastconv.winograd_dense
    monkeypatch.setattr(fastconv, "winograd_dense", lambda *a: calls.append(a[0].shape[-2:]) or real(*a))
    with torch.inference_mode():
        for size in (7, 8, 9):
            x = torch.randn(1, 8, size, size)
            torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias), rtol=1e-4, atol=1e-5)
    assert calls == [(8, 8), (9, 9)]  # 2x2 and 3x3 outputs: one tile (64 < 4 * 49), four tiles (256 < 9 * 49)


def test_a_weights_cached_transform_is_keyed_by_the_algorithm_too():
    """One (K, C, 3, 3) kernel transformed for F(4x4, 3x3) and for F(2x2, 3x3) (a dense head of kernel 3): each
    call gets its own algorithm's transform, never the other one's from the cache."""
    weight = nn.Conv2d(4, 6, 3).weight
    f43 = fastconv.winograd_weight(weight)
    f23 = fastconv.winograd_weight(weight, fastconv.dense_transforms(3))
    assert f43.shape == (36, 4, 6) and f23.shape == (16, 4, 6)
    assert fastconv.winograd_weight(weight) is f43 or torch.equal(fastconv.winograd_weight(weight), f43)
