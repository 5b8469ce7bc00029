"""fp32 inference kernels for the CPU: the cost of dense evaluation (Sect. 3.2) is almost all 3x3 convs and fc6.

Three kernels compute what the modules compute:
- oneDNN's direct convolution with the ReLU as a post-op (one pass less over each activation map);
- Winograd F(4x4, 3x3) (Lavin & Gray, CVPR 2016) for the wide 3x3 layers: a 4x4 output tile costs 36
  multiply-adds per channel pair instead of 144. On 2 AVX-512 cores it runs conv2_2..conv5_3 of VGG-16
  1.1-2.2x faster than oneDNN; its fp32 rounding is 3-5e-6 of a layer's largest output, against 1-2e-6
  for the direct convolution;
- Winograd F(2x2, 7x7) for fc6 applied densely (a 7x7 conv over pool5): 64 multiply-adds per 2x2 output tile
  and channel pair instead of 196; 1.5-1.8x faster than fc6's GEMM on VOC-sized maps, rounding about 8e-6 of
  its largest output, and 512 MB for VGG-16's transformed fc6 weight.
`Runtime(winograd=False)` keeps every layer direct.
The choice is the runtime's, not the model's: `fuse_conv_relu` turns an inference copy of a VGG (models.inference)
into one whose conv + ReLU pairs and fc6 run these kernels; a VGG itself only ever runs its modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from vggfeat.models.vgg import DenseFC

if TYPE_CHECKING:
    from vggfeat.models.vgg import VGG

M, R = 4, 3  # output tile side, kernel side
A = M + R - 1  # input tile side: 6
# Interpolation points of the Cook-Toom construction (plus the point at infinity). With 1/2 and -2 in place
# of Lavin & Gray's 2 and -2 the transforms are better conditioned: fp32 error 3.7e-6 instead of 9.6e-6
# relative, measured on a 256-channel layer against float64.
POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)
# Winograd pays off where channel products outweigh its tile transforms. Measured on VGG-16's layers at Q=512
# (2 cores, freed memory kept (utils.heap), against the fused oneDNN conv + ReLU on channels_last maps; a map
# from a copy / from the previous Winograd layer's buffer): 64 -> 128 0.93x / 1.06x, 128 -> 128 1.14x / 1.50x,
# 128 -> 256 1.66x / 1.44x, 256 -> 256 1.56x / 1.71x. Without the kept memory 128 -> 128 lost (0.73-0.76x).
WINOGRAD_MIN_CHANNEL_PRODUCT = 128 * 128
# A band of output tiles is transformed at a time, its buffers (36 x tiles x channels floats) sized to stay
# in the caches: 2x faster than whole maps at 256 channels.
BAND_BYTES = 4 << 20


def winograd_matrices(
    points: tuple[float, ...] = POINTS, m: int = M, r: int = R
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T (m, a), G (a, r), B^T (a, a)) in float64 for F(m, r), a = m + r - 1 input positions, with
    Y = A^T [(G g G^T) * (B^T d B)] A for an a x a input tile d and an r x r kernel g giving the m x m tile of
    their cross-correlation (what conv2d computes). `points`: a - 1 distinct finite interpolation points."""
    a = m + r - 1
    if len(points) != a - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({m},{r}) needs {a - 1} distinct finite points, got {points}")
    at = torch.zeros(m, a, dtype=torch.float64)
    g = torch.zeros(a, r, dtype=torch.float64)
    for j, p in enumerate(points):
        f = 1.0
        for q in points:
            f *= (p - q) if q != p else 1.0
        at[:, j] = torch.tensor([p**i for i in range(m)], dtype=torch.float64)
        g[j] = torch.tensor([p**k / f for k in range(r)], dtype=torch.float64)
    at[m - 1, a - 1] = g[a - 1, r - 1] = 1.0  # the point at infinity
    # B^T is what makes sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k]: a linear system, solved exactly
    products = torch.einsum("ij,jk->ikj", at, g).reshape(m * r, a)  # row (i, k), column j
    target = torch.zeros(m * r, a, dtype=torch.float64)
    for i in range(m):
        for k in range(r):
            target[i * r + k, i + k] = 1.0
    bt = torch.linalg.solve(products.T @ products, products.T @ target)  # (a, a): row j, input position l
    if not torch.allclose(products @ bt, target, atol=1e-9):
        raise ValueError(f"points {points} give no exact F({m},{r}) algorithm")
    return at, g, bt


class Transforms:
    """F(m x m, r x r) as the kernels use it: vec(B^T d B) = (B^T kron B^T) vec(d) for the input tiles, the
    (m^2, a^2) A^T kron A^T for the outputs, G kron G for the kernels, and the transformed tile's slot where a bias
    goes: both coordinates at the point 1, whose column of A^T is all ones, so A^T (.) A spreads it to every
    output unchanged (1/a^2 of a pass over the tiles instead of a whole one)."""

    def __init__(self, points: tuple[float, ...], m: int, r: int) -> None:
        at, g, bt = winograd_matrices(points, m, r)
        self.m, self.r, self.a = m, r, m + r - 1
        self.input = torch.kron(bt, bt).float()  # (a^2, a^2)
        self.weight = torch.kron(g, g)  # (a^2, r^2), float64: kernels are transformed once, exactly
        self.output = torch.kron(at, at).float()  # (m^2, a^2)
        self.bias_slot = points.index(1.0) * self.a + points.index(1.0)


_F43 = Transforms(POINTS, M, R)
# transformed weights per weight tensor: (weight version, data pointer, id of its Transforms, (a^2, C, K) tensor);
# the Transforms are module-level objects (_F43, _DENSE), alive as long as the process
_WEIGHTS = WeakIdKeyDictionary()
# float64 scratch per chunk of output channels while transforming a weight (fc6's whole would be 1 GB)
TRANSFORM_CHUNK_BYTES = 64 << 20


def winograd_weight(weight: torch.Tensor, t: Transforms = _F43) -> torch.Tensor:
    """(K, C, r, r) kernel -> (a^2, C, K) transformed kernel G g G^T, computed in float64, kept per weight
    tensor until the weight changes (an optimizer step or load_state_dict bumps its version) or is freed.
    (a/r)^2 times the weight's memory: about 250 MB for VGG-16's conv2_2..conv5_3 (F(4x4, 3x3)), 512 MB for its
    fc6 (F(2x2, 7x7))."""
    # an inference tensor has no version counter: its transform is recomputed (~0.05 s for 512 x 512)
    key = None if weight.is_inference() else (weight._version, weight.data_ptr(), id(t))
    cached = _WEIGHTS.get(weight) if key else None
    if cached is not None and cached[:3] == key:
        return cached[3]
    k, c = weight.shape[:2]
    u = weight.new_empty(t.a * t.a, c, k)
    step = max(1, TRANSFORM_CHUNK_BYTES // (t.a * t.a * c * 8))
    for o in range(0, k, step):
        g = weight[o : o + step].detach().reshape(-1, t.r * t.r).double()  # (k' * C, r^2)
        # vec(G g G^T) = (G kron G) vec(g) for every (output, input) channel pair at once
        u[:, :, o : o + step] = torch.mm(t.weight, g.T).view(t.a * t.a, -1, c).transpose(1, 2)
    if key:
        _WEIGHTS[weight] = (*key, u)
    return u


# maps this kernel returned -> the zero-bordered buffer they are the interior of: the next Winograd layer tiles
# that buffer as it is, so a chain of them (conv3_2 -> conv3_3, conv4_1 -> conv4_2 -> conv4_3, ...) copies no map
# into a new border and crops none out of whole tiles
_BORDERED = WeakIdKeyDictionary()


def _bordered(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """x (B, C, H, W) as a (B, th*4+2, tw*4+2, C) NHWC map with x at [1:H+1, 1:W+1] and zeros elsewhere: the
    buffer x was written into when it is one of ours of this geometry, else a new one holding a copy of x."""
    b, c, h, w = x.shape
    buf = _BORDERED.get(x)
    if (
        buf is not None
        and buf.shape == (b, th * M + 2, tw * M + 2, c)
        and x.data_ptr() == buf[:, 1:, 1:].data_ptr()
        and x.stride() == buf.permute(0, 3, 1, 2).stride()
    ):
        return buf
    xp = x.new_zeros(b, th * M + 2, tw * M + 2, c)
    xp[:, 1 : h + 1, 1 : w + 1].copy_(x.permute(0, 2, 3, 1))
    return xp


def _band_tiles(
    t: Transforms, xp: torch.Tensor, r0: int, nr: int, u: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Output tiles of tile rows r0 .. r0+nr-1 of the zero-extended NHWC map xp: its (a x a, stride m) tiles
    gathered, transformed (B^T d B), multiplied with the transformed kernel u (a^2 GEMMs of tiles x C by C x K),
    the bias added and transformed back (A^T p A). Returns them as a (B, nr, m, tw, m, K) view."""
    b, _, _, c = xp.shape
    tiles = xp[:, r0 * t.m : (r0 + nr) * t.m + t.r - 1].unfold(1, t.a, t.m).unfold(2, t.a, t.m)  # (B, nr, tw, C, a, a)
    tw = tiles.shape[2]
    tiles = tiles.permute(4, 5, 0, 1, 2, 3).reshape(t.a * t.a, -1)  # (a^2, B*nr*tw*C)
    v = torch.mm(t.input, tiles).view(t.a * t.a, b * nr * tw, c)
    p = torch.bmm(v, u)  # (a^2, T, K)
    if bias is not None:
        p[t.bias_slot].add_(bias)  # A^T e e^T A is all ones there: the bias reaches every output of the tile
    o = torch.mm(t.output, p.view(t.a * t.a, -1)).view(t.m, t.m, b, nr, tw, u.shape[2])
    return o.permute(2, 3, 0, 4, 1, 5)


def winograd_conv3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """ReLU(conv2d(x, weight, bias, padding=1)) for (B, C, H, W) float32 x, by Winograd F(4x4, 3x3).

    The map sits in a zero border (padding=1 plus whole tiles): the buffer an earlier call wrote it into, or a copy.
    It is cut into bands of tile rows; each band is gathered into 6x6 tiles, transformed, multiplied with the
    transformed kernel (36 GEMMs of tiles x C by C x K), transformed back with the bias, and written through the
    ReLU straight into the output's own zero-bordered buffer. Returns the (B, K, H, W) interior of that buffer,
    channels last (a view: the next such call reads the buffer itself).
    """
    b, c, h, w = x.shape
    u = winograd_weight(weight)  # (36, C, K)
    k = u.shape[2]
    th, tw = -(-h // M), -(-w // M)  # tiles down and across
    xp = _bordered(x, th, tw)  # bands are views of it (padding each band was 2-3x slower)
    out = torch.empty(b, th * M + 2, tw * M + 2, k, dtype=x.dtype, device=x.device)
    y_tiles = out[:, 1 : th * M + 1, 1 : tw * M + 1].unflatten(1, (th, M)).unflatten(3, (tw, M))  # (B, th, 4, tw, 4, K)
    rows = max(1, BAND_BYTES // (A * A * max(c, k) * x.element_size() * b * tw))  # tile rows per band
    for r0 in range(0, th, rows):
        nr = min(rows, th - r0)
        torch.clamp_min(_band_tiles(_F43, xp, r0, nr, u, bias), 0.0, out=y_tiles[:, r0 : r0 + nr])  # with the ReLU
    # the border: the conv's zero padding and, past the map's last row and column, what whole tiles overhang
    out[:, 0].zero_()
    out[:, h + 1 :].zero_()
    out[:, :, 0].zero_()
    out[:, :, w + 1 :].zero_()
    y = out[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2)
    _BORDERED[y] = out
    return y


# fc6 applied densely (Sect. 3.2) is a k x k convolution without padding over pool5 (7 x 7, 512 -> 4096 for
# the VGGs): F(2x2, kxk) computes each 2x2 output tile from a (k+1) x (k+1) input tile, (k+1)^2 multiply-adds per
# channel pair instead of 4 k^2 (64 instead of 196). The points are the conditioned ones of F(4x4, 3x3) and their
# halves' negatives: fp32 error about 8e-6 of the largest output of fc6, against 3e-7 for the direct GEMM.
DENSE_M = 2
DENSE_POINTS = (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0)  # the first k for a k x k kernel (k <= 7)
# transformed tiles per pass: the (a^2, tiles, K) products of a pass stay under this (fc6: 256 tiles)
DENSE_BAND_BYTES = 256 << 20
_DENSE: dict[int, Transforms] = {}


def dense_transforms(k: int) -> Transforms:
    if k not in _DENSE:
        _DENSE[k] = Transforms(DENSE_POINTS[:k], DENSE_M, k)
    return _DENSE[k]


def winograd_dense_applies(conv: nn.Conv2d) -> bool:
    """Whether a DenseFC (a k x k conv, stride 1, no padding) can run as F(2x2, kxk)."""
    k = conv.kernel_size
    return (
        k[0] == k[1]
        and 2 <= k[0] <= len(DENSE_POINTS)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.in_channels * conv.out_channels >= WINOGRAD_MIN_CHANNEL_PRODUCT
    )


def winograd_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(x, weight, bias) without padding for a (K, C, k, k) kernel and (B, C, H, W) float32 x (H, W >= k),
    by Winograd F(2x2, kxk): the map is copied once into a zero-extended (whole tiles) NHWC buffer, its
    (k+1) x (k+1) tiles (stride 2) transformed, multiplied with the transformed kernel (a^2 GEMMs of tiles x C by
    C x K), transformed back with the bias, and cropped. Returns a (B, K, H - k + 1, W - k + 1) channels_last
    tensor."""
    t = dense_transforms(weight.shape[-1])
    b, c, h, w = x.shape
    u = winograd_weight(weight, t)  # (a^2, C, K)
    k = u.shape[2]
    ho, wo = h - t.r + 1, w - t.r + 1
    th, tw = -(-ho // t.m), -(-wo // t.m)
    xp = x.new_zeros(b, th * t.m + t.r - 1, tw * t.m + t.r - 1, c)
    xp[:, :h, :w].copy_(x.permute(0, 2, 3, 1))
    y = torch.empty(b, th * t.m, tw * t.m, k, dtype=x.dtype, device=x.device)
    y_tiles = y.view(b, th, t.m, tw, t.m, k)
    rows = max(1, DENSE_BAND_BYTES // (t.a * t.a * k * x.element_size() * b * tw))  # tile rows per pass
    for r0 in range(0, th, rows):
        nr = min(rows, th - r0)
        y_tiles[:, r0 : r0 + nr].copy_(_band_tiles(t, xp, r0, nr, u, bias))
    if th * t.m != ho or tw * t.m != wo:
        y = y[:, :ho, :wo].contiguous()
    return y.permute(0, 3, 1, 2)


def dense_inference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """A DenseFC's output by Winograd where it applies (fp32 CPU inference, a kernel of 2-7, a map large enough
    for Winograd's tiles to cost less than the direct outputs); None elsewhere: the caller then runs the layer's
    own GEMM."""
    if not (_fp32_cpu_inference(conv, x) and winograd_dense_applies(conv)):
        return None
    k = conv.kernel_size[0]
    ho, wo = x.shape[2] - k + 1, x.shape[3] - k + 1
    # (k+1)^2 multiply-adds per 2x2 tile against k^2 per output: a lone output (a 224 px crop) is cheaper direct
    if ho < 1 or wo < 1 or (k + 1) ** 2 * -(-ho // DENSE_M) * -(-wo // DENSE_M) >= k * k * ho * wo:
        return None
    return winograd_dense(x, conv.weight, conv.bias)


def _fp32_cpu_inference(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """fp32 on the CPU, outside autocast and autograd: where these kernels compute what the modules would."""
    if not (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    ):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))


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
    if not _fp32_cpu_inference(conv, x):
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


class WinogradDenseFC(DenseFC):
    """A DenseFC (fc6) computed by `dense_inference` where it applies and by the layer's own GEMM elsewhere; the
    layer's own parameters (the same objects), as ConvReLU has."""

    def __init__(self, layer: DenseFC) -> None:
        k = cast("tuple[int, int]", layer.kernel_size)
        nn.Conv2d.__init__(self, layer.in_channels, layer.out_channels, k, device="meta")  # parameters replaced below
        self.weight, self.bias = layer.weight, layer.bias
        self.train(layer.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = dense_inference(self, x)
        return super().forward(x) if y is None else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, winograd=F(2x2)"


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2) (floor rounding) as the maximum of the four strided quarter views: exact, any strides
    (a bordered map's interior needs no copy first), and no argmax indices written, which torch's CPU kernel
    computes even in inference. Returns a channels_last tensor for a channels-last x."""
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    y = torch.maximum(x[:, :, 0:h:2, 0:w:2], x[:, :, 0:h:2, 1:w:2])
    torch.maximum(y, x[:, :, 1:h:2, 0:w:2], out=y)
    return torch.maximum(y, x[:, :, 1:h:2, 1:w:2], out=y)


class MaxPool2x2(nn.MaxPool2d):
    """A 2x2, stride-2 max-pool (VGG's) by `max_pool_2x2` for fp32 CPU inference; the module's own elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and not (torch.is_grad_enabled() and x.requires_grad)
            and min(x.shape[2], x.shape[3]) >= 2
        ):
            return max_pool_2x2(x)
        return super().forward(x)


def _is_vgg_pool(m: nn.Module) -> bool:
    return (
        type(m) is nn.MaxPool2d
        and m.kernel_size in (2, (2, 2))
        and m.stride in (2, (2, 2))
        and m.padding in (0, (0, 0))
        and m.dilation in (1, (1, 1))
        and not m.ceil_mode
        and not m.return_indices
    )


def fuse_conv_relu(model: VGG, winograd: bool = True) -> VGG:
    """`model` (a VGG's inference copy: this changes it in place) with each plain conv followed by its ReLU as
    one ConvReLU and an Identity, (with `winograd`) fc6 as a WinogradDenseFC and each 2x2 max-pool as a MaxPool2x2,
    so its layers run the kernels above on the CPU; returns `model`."""
    for _, names in model.blocks:  # (layer, the submodules that produce it), input to output
        if len(names) != 2:
            continue
        conv, relu = getattr(model, names[0]), getattr(model, names[1])
        if type(conv) is nn.Conv2d and isinstance(relu, nn.ReLU):
            setattr(model, names[0], ConvReLU(conv, winograd))
            setattr(model, names[1], nn.Identity())
        elif type(conv) is DenseFC and winograd and winograd_dense_applies(conv):
            setattr(model, names[0], WinogradDenseFC(conv))
    for name, module in list(model.named_children()):
        if _is_vgg_pool(module):
            setattr(model, name, MaxPool2x2(2, 2))
    return model
