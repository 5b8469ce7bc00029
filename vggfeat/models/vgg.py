"""The six ConvNet configurations of Table 1 (Sect. 2) with Caffe layer names and a dense head.

Sect. 3.2: at test time the fully-connected layers become convolutions (fc6 a 7x7 conv over pool5, fc7
and fc8 1x1 convs), so the net applies densely to a whole image of any size. vggfeat builds the head that
way from the start; at exactly 224 x 224 it is the classic Linear head, computed the same.

Naming: a conv or fc layer's name (`conv3_2`, `fc7`) denotes its activation *after its ReLU*; `fc8` is
the raw class-score map; `pool*` the max-pool output; `norm1` the LRN output of A-LRN.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vggfeat.errors import InputError, LayerError

from .preprocessing import PAPER, Preprocessing

Conv = tuple[int, int]  # (output channels, kernel size)


def _stage(*convs: int | Conv) -> tuple[Conv, ...]:
    return tuple((c, 3) if isinstance(c, int) else c for c in convs)


# Table 1: one tuple of convs per stage; every stage ends with a 2x2 max-pool.
CONFIGS: dict[str, tuple[tuple[Conv, ...], ...]] = {
    "A": (_stage(64), _stage(128), _stage(256, 256), _stage(512, 512), _stage(512, 512)),
    "B": (_stage(64, 64), _stage(128, 128), _stage(256, 256), _stage(512, 512), _stage(512, 512)),
    "C": (
        _stage(64, 64),
        _stage(128, 128),
        _stage(256, 256, (256, 1)),  # config C: a 1x1 conv closes stages 3-5
        _stage(512, 512, (512, 1)),
        _stage(512, 512, (512, 1)),
    ),
    "D": (_stage(64, 64), _stage(128, 128), _stage(256, 256, 256), _stage(512, 512, 512), _stage(512, 512, 512)),
    "E": (
        _stage(64, 64),
        _stage(128, 128),
        _stage(256, 256, 256, 256),
        _stage(512, 512, 512, 512),
        _stage(512, 512, 512, 512),
    ),
}

# Sect. 2.3 / Krizhevsky et al.: b = a / (k + alpha * sum_{n neighbours} a^2)^beta. torch divides alpha
# by the window size, so it is given alpha * size to compute AlexNet's formula.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


class DenseFC(nn.Conv2d):
    """A fully-connected layer applied densely (Sect. 3.2): a k x k convolution without padding, computed
    as one matrix product of every k x k window of the input with the (out, in * k * k) weight matrix.

    The same numbers as the convolution it is (parameters, state-dict keys and shapes included), but a
    single GEMM over all positions of all images: on CPU, oneDNN's direct convolution re-packs fc6's
    411 MB weight on every call and runs 3-10x slower on the few positions a dense pool5 map has.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        b, c, h, w = x.shape
        if h < k or w < k:
            return super().forward(x)  # the convolution's own error message
        windows = x.permute(0, 2, 3, 1).unfold(1, k, 1).unfold(2, k, 1)  # (B, H', W', C, k, k) view
        ho, wo = windows.shape[1], windows.shape[2]
        weight = self.weight
        if k > 1 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
            # a channels_last weight is (out, k, k, in) in memory: order the windows to match, no weight copy
            windows, weight = windows.permute(0, 1, 2, 4, 5, 3), weight.permute(0, 2, 3, 1)
        y = F.linear(windows.reshape(b * ho * wo, c * k * k), weight.reshape(self.out_channels, -1), self.bias)
        return y.view(b, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # (B, out, H', W'), channels_last


class VGG(nn.Module):
    """A Table 1 net. Submodules are named as in Caffe, so state-dict keys read `conv3_2.weight`."""

    # for the type checker, which cannot see through add_module and nn.Module's __getattr__
    arch: str  # the registry name (vgg_d, ...), set by models.registry.create_model
    source: str  # the weights as given to `vggfeat evaluate`, which names its rows by it (evaluate.protocols)
    fc6: DenseFC

    def __init__(
        self,
        config: str = "D",
        *,
        lrn: bool = False,
        num_classes: int = 1000,
        width_mult: float = 1.0,  # scales every conv's channels (tests build tiny nets with 1/16)
        fc_dim: int = 4096,  # width of fc6 and fc7
        fc6_kernel: int = 7,  # fc6 spans a fc6_kernel^2 window of pool5: 7 <=> 224 px inputs
        dropout: float = 0.5,  # after fc6 and fc7, in training mode only (Sect. 3.1)
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise InputError(f"unknown config {config!r}; valid: {', '.join(CONFIGS)}")
        if width_mult <= 0 or fc_dim < 1 or fc6_kernel < 1 or num_classes < 1:
            raise ValueError("width_mult, fc_dim, fc6_kernel and num_classes must be positive")
        self.config, self.lrn, self.num_classes = config, lrn, num_classes
        # what rebuilds this net (saved with its weights, so a weight file alone builds the right net)
        self.options: dict[str, Any] = dict(
            num_classes=num_classes,
            width_mult=width_mult,
            fc_dim=fc_dim,
            fc6_kernel=fc6_kernel,
            dropout=dropout,
            in_chans=in_chans,
        )
        self.fc_dim, self.fc6_kernel = fc_dim, fc6_kernel
        self.num_features = fc_dim  # timm's contract: the width of the pre-logits features (fc7)
        self.preprocessing: Preprocessing = PAPER
        # Each named layer is the run of submodules that produces it.
        self._blocks: list[tuple[str, tuple[str, ...]]] = []
        self._channels: dict[str, int] = {}

        c_in = in_chans
        for s, stage in enumerate(CONFIGS[config], start=1):
            for i, (c, k) in enumerate(stage, start=1):
                c_out = max(1, round(c * width_mult))
                self._add(
                    f"conv{s}_{i}",
                    (f"conv{s}_{i}", nn.Conv2d(c_in, c_out, k, padding=k // 2)),
                    (f"relu{s}_{i}", nn.ReLU(inplace=True)),
                )
                if lrn and (s, i) == (1, 1):
                    self._add("norm1", ("norm1", nn.LocalResponseNorm(LRN_SIZE, LRN_ALPHA * LRN_SIZE, LRN_BETA, LRN_K)))
                c_in = c_out
            self._add(f"pool{s}", (f"pool{s}", nn.MaxPool2d(2, 2)))
        # Sect. 3.2: the FC layers as convolutions.
        self._add("fc6", ("fc6", DenseFC(c_in, fc_dim, fc6_kernel)), ("relu6", nn.ReLU(inplace=True)))
        self._add(
            "fc7", ("drop6", nn.Dropout(dropout)), ("fc7", DenseFC(fc_dim, fc_dim, 1)), ("relu7", nn.ReLU(inplace=True))
        )
        self._add("fc8", ("drop7", nn.Dropout(dropout)), ("fc8", DenseFC(fc_dim, num_classes, 1)))

    def _add(self, layer: str, *modules: tuple[str, nn.Module]) -> None:
        for name, module in modules:
            self.add_module(name, module)
            if isinstance(module, nn.Conv2d):
                self._channels[layer] = module.out_channels
        if layer not in self._channels:  # LRN and pooling keep their input's width
            self._channels[layer] = self._channels[self._blocks[-1][0]]
        self._blocks.append((layer, tuple(name for name, _ in modules)))

    @property
    def layer_names(self) -> list[str]:
        """Every layer `forward_features` accepts, input to output."""
        return [name for name, _ in self._blocks]

    @property
    def blocks(self) -> list[tuple[str, tuple[str, ...]]]:
        """(layer name, the submodules that produce it, in order) for every layer, input to output."""
        return list(self._blocks)

    def weight_layers(self) -> list[str]:
        """The conv and fc layers, Table 1's 'weight layers'."""
        return [name for name in self.layer_names if isinstance(getattr(self, name), nn.Conv2d)]

    def layer_channels(self, layer: str) -> int:
        self._check_layer(layer)
        return self._channels[layer]

    def _check_layer(self, layer: str) -> None:
        if layer not in self._channels:
            raise LayerError(
                f"unknown layer {layer!r} for vgg config {self.config}; valid: {', '.join(self.layer_names)}"
            )

    def min_input_size(self) -> int:
        """Smallest image side the dense head accepts: fc6 needs fc6_kernel pool5 cells (32 px each)."""
        return 32 * self.fc6_kernel

    def iter_layers(self, x: torch.Tensor, until: str) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (layer name, activation) input to output, stopping after `until`."""
        self._check_layer(until)
        for layer, modules in self._blocks:
            if layer == "fc6" and min(x.shape[-2:]) < self.fc6_kernel:
                raise InputError(  # the user's scale (--scales Q) is below what the net can see
                    f"input too small for the dense head: pool5 is {tuple(x.shape[-2:])} but fc6 spans "
                    f"{self.fc6_kernel}x{self.fc6_kernel}; images need at least {self.min_input_size()} px per side "
                    f"(give scales Q >= {self.min_input_size()})"
                )
            for name in modules:
                x = getattr(self, name)(x)
            yield layer, x
            if layer == until:
                return

    def forward_features(self, x: torch.Tensor, layer: str = "fc7") -> torch.Tensor:
        """The named layer's activation map (B, C, h, w); conv and fc layers after their ReLU."""
        out = x
        for _, out in self.iter_layers(x, until=layer):  # noqa: B007 (keeps the last layer's output)
            pass
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, K): the dense fc8 score map averaged over positions (Sect. 3.2)."""
        return self.forward_features(x, "fc8").mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"config={self.config}, lrn={self.lrn}, num_classes={self.num_classes}, fc_dim={self.fc_dim}"
