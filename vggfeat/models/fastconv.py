"""Conv + ReLU for fp32 inference on the CPU: the cost of dense evaluation (Sect. 3.2) is almost all 3x3 convs.

Two kernels compute what nn.Conv2d followed by nn.ReLU computes:
- oneDNN's direct convolution with the ReLU as a post-op (one pass less over each activation map);
- Winograd F(4x4, 3x3) (Lavin & Gray, CVPR 2016) for the wide 3x3 layers: a 4x4 output tile costs 36
  multiply-adds per channel pair instead of 144. On 2 AVX-512 cores it runs conv3_2..conv5_3 of VGG-16
  1.2-2.2x faster than oneDNN; its fp32 rounding is 3-5e-6 of a layer's largest output, against 1-2e-6
  for the direct convolution. `Runtime(winograd=False)` keeps every conv direct.
The choice is the runtime's, not the model's: `fuse_conv_relu` turns an inference copy of a VGG (models.inference)
into one whose conv + ReLU pairs run these kernels; a VGG itself only ever runs its modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

if TYPE_CHECKING:
    from vggfeat.models.vgg import VGG

M, R = 4, 3  # output tile side, kernel side
A = M + R - 1  # input tile side: 6
# Interpolation points of the Cook-Toom construction (plus the point at infinity). With 1/2 and -2 in place
# of Lavin & Gray's 2 and -2 the transforms are better conditioned: fp32 error 3.7e-6 instead of 9.6e-6
# relative, measured on a 256-channel layer against float64.
POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)
# Winograd pays off where channel products outweigh its tile transforms. Measured on VGG-16's layers (2 cores,
# fused oneDNN conv + ReLU on channels_last maps as the reference): 128 -> 128 0.73-0.76x, 128 -> 256 0.8-1.2x,
# 256 -> 256 1.2x, 512 -> 512 2.2x (an earlier oneDNN path lost at 128 -> 128 too, 1.1-1.4x in its favour).
WINOGRAD_MIN_CHANNEL_PRODUCT = 256 * 256
# A band of output tiles is transformed at a time, its buffers (36 x tiles x channels floats) sized to stay
# in the caches: 2x faster than whole maps at 256 channels.
BAND_BYTES = 4 << 20


def winograd_matrices(points: tuple[float, ...] = POINTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T (M, A), G (A, R), B^T (A, A)) in float64, with Y = A^T [(G g G^T) * (B^T d B)] A for a 6x6
    input tile d and a 3x3 kernel g giving the 4x4 tile of their cross-correlation (what conv2d computes)."""
    if len(points) != A - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({M},{R}) needs {A - 1} distinct finite points, got {points}")
    at = torch.zeros(M, A, dtype=torch.float64)
    g = torch.zeros(A, R, dtype=torch.float64)
    for j, p in enumerate(points):
        f = 1.0
        for q in points:
            f *= (p - q) if q != p else 1.0
        at[:, j] = torch.tensor([p**i for i in range(M)], dtype=torch.float64)
        g[j] = torch.tensor([p**k / f for k in range(R)], dtype=torch.float64)
    at[M - 1, A - 1] = g[A - 1, R - 1] = 1.0  # the point at infinity
    # B^T is what makes sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k]: a linear system, solved exactly
    products = torch.einsum("ij,jk->ikj", at, g).reshape(M * R, A)  # row (i, k), column j
    target = torch.zeros(M * R, A, dtype=torch.float64)
    for i in range(M):
        for k in range(R):
            target[i * R + k, i + k] = 1.0
    bt = torch.linalg.solve(products.T @ products, products.T @ target)  # (A, A): row j, input position l
    if not torch.allclose(products @ bt, target, atol=1e-9):
        raise ValueError(f"points {points} give no exact F({M},{R}) algorithm")
    return at, g, bt


_AT, _G, _BT = winograd_matrices()
_INPUT_TRANSFORM = torch.kron(_BT, _BT).float()  # (36, 36): vec(B^T d B) = (B^T kron B^T) vec(d)
_OUTPUT_TRANSFORM = torch.kron(_AT, _AT).float()  # (16, 36)
# the transformed tile's entry that A^T (.) A spreads to every output unchanged: both of its coordinates at the
# point 1, whose column of A^T is all ones (a bias added there costs 1/36 of a pass over the tiles, not a whole one)
_BIAS_SLOT = (POINTS.index(1.0) * A) + POINTS.index(1.0)
# transformed weights per conv weight tensor, (weight version, data pointer, (36, C, K) tensor)
_WEIGHTS = WeakIdKeyDictionary()


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) kernel -> (36, C, K) transformed kernel G g G^T, computed in float64, kept per weight
    tensor until the weight changes (an optimizer step or load_state_dict bumps its version) or is freed.
    4x the weight's memory: about 240 MB for VGG-16's conv2_2..conv5_3."""
    # an inference tensor has no version counter: its transform is recomputed (~0.05 s for 512 x 512)
    key = None if weight.is_inference() else (weight._version, weight.data_ptr())
    cached = _WEIGHTS.get(weight) if key else None
    if cached is not None and cached[:2] == key:
        return cached[2]
    k, c = weight.shape[:2]
    u = torch.einsum("ik,ockl,jl->ijco", _G, weight.detach().double(), _G)  # (6, 6, C, K)
    u = u.reshape(A * A, c, k).to(weight.dtype).contiguous()
    if key:
        _WEIGHTS[weight] = (*key, u)
    return u


def winograd_conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """ReLU(conv2d(x, weight, bias, padding=1)) for (B, C, H, W) float32 x, by Winograd F(4x4, 3x3).

    The map is copied once into a zero border (padding=1 plus whole tiles), then cut into bands of tile rows;
    each band is gathered into 6x6 tiles, transformed, multiplied with the transformed kernel (36 GEMMs of
    tiles x C by C x K), transformed back with the bias, and written through the ReLU straight into the
    output. Returns a (B, K, H, W) channels_last tensor.
    """
    b, c, h, w = x.shape
    u = winograd_weight(weight)  # (36, C, K)
    k = u.shape[2]
    th, tw = -(-h // M), -(-w // M)  # tiles down and across
    # one copy into a zeroed (B, th*4+2, tw*4+2, C) map: bands are then views (padding each band was 2-3x slower)
    xp = x.new_zeros(b, th * M + 2, tw * M + 2, c)
    xp[:, 1 : h + 1, 1 : w + 1].copy_(x.permute(0, 2, 3, 1))
    y = torch.empty(b, th * M, tw * M, k, dtype=x.dtype, device=x.device)  # whole tiles; cropped at the end
    y_tiles = y.view(b, th, M, tw, M, k)
    rows = max(1, BAND_BYTES // (A * A * max(c, k) * x.element_size() * b * tw))  # tile rows per band
    for r0 in range(0, th, rows):
        nr = min(rows, th - r0)
        tiles = xp[:, r0 * M : r0 * M + nr * M + 2].unfold(1, A, M).unfold(2, A, M)  # (B, nr, tw, C, 6, 6) view
        tiles = tiles.permute(4, 5, 0, 1, 2, 3).reshape(A * A, -1)  # (36, B*nr*tw*C)
        v = torch.mm(_INPUT_TRANSFORM, tiles).view(A * A, b * nr * tw, c)  # B^T d B of every tile
        p = torch.bmm(v, u)  # (36, T, K)
        if bias is not None:
            p[_BIAS_SLOT].add_(bias)  # A^T e e^T A is all ones there: the bias reaches all 16 outputs
        o = torch.mm(_OUTPUT_TRANSFORM, p.view(A * A, -1)).view(M, M, b, nr, tw, k)  # A^T p A: 4x4 output tiles
        torch.clamp_min(o.permute(2, 3, 0, 4, 1, 5), 0.0, out=y_tiles[:, r0 : r0 + nr])  # ReLU, (B, nr, 4, tw, 4, K)
    if th * M != h or tw * M != w:
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)


def onednn_conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """ReLU(conv(x)) as one oneDNN call with the ReLU as the convolution's post-op."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "relu", [], ""
    )


_ONEDNN = {"ok": True}  # cleared if oneDNN's fused call ever fails; the separate modules are then used


def winograd_applies(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (R, R)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.in_channels * conv.out_channels >= WINOGRAD_MIN_CHANNEL_PRODUCT
    )


def conv_relu_inference(conv: nn.Conv2d, x: torch.Tensor, winograd: bool = True) -> torch.Tensor | None:
    """ReLU(conv(x)) by the fastest CPU kernel that applies, for fp32 inference; None where none does
    (autograd, CUDA, autocast, another dtype): the caller then runs the modules."""
    if not (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    ):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return None
    if winograd and winograd_applies(conv):
        return winograd_conv3x3_relu(x, conv.weight, conv.bias)
    if not (_ONEDNN["ok"] and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    try:
        return onednn_conv_relu(conv, x)
    except (AttributeError, RuntimeError, TypeError):  # the op is internal to torch: fall back for good
        _ONEDNN["ok"] = False
        return None


class ConvReLU(nn.Conv2d):
    """ReLU(conv(x)) in one module, by `conv_relu_inference` where it applies and by the convolution then torch's
    ReLU elsewhere. The conv's own parameters (the same objects, so the same state-dict keys and shapes), and a
    Conv2d, so output sizes are computed as for the conv it replaces."""

    def __init__(self, conv: nn.Conv2d, winograd: bool = True) -> None:
        pair = tuple[int, int]  # a 2-d conv's sizes, typed by torch as tuple[int, ...]
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            cast(pair, conv.kernel_size),
            cast(pair, conv.stride),
            cast("str | tuple[int, int]", conv.padding),
            cast(pair, conv.dilation),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",  # no memory: the conv's parameters replace these
        )
        self.weight, self.bias = conv.weight, conv.bias
        self.winograd = winograd
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_relu_inference(self, x, winograd=self.winograd)
        return F.relu(super().forward(x), inplace=True) if y is None else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, relu=True, winograd={self.winograd}"


def fuse_conv_relu(model: VGG, winograd: bool = True) -> VGG:
    """`model` (a VGG's inference copy: this changes it in place) with each plain conv followed by its ReLU as
    one ConvReLU and an Identity, so its layers run the kernels above on the CPU; returns `model`."""
    for _, names in model.blocks:  # (layer, the submodules that produce it), input to output
        if len(names) != 2:
            continue
        conv, relu = getattr(model, names[0]), getattr(model, names[1])
        if type(conv) is nn.Conv2d and isinstance(relu, nn.ReLU):  # not DenseFC: its GEMM is faster than these
            setattr(model, names[0], ConvReLU(conv, winograd))
            setattr(model, names[1], nn.Identity())
    return model
