"""Nets as descriptor functions: uint8 RGB batch in, one pooled vector per image out (Appendix B).

A VGG net yields the global average of a named layer's dense map (fc7 after its ReLU by default); a timm
backbone yields its pooled pre-logits features (or an intermediate map, pooled), so other nets can be compared
under the same protocol.
Each applies the input convention of the weights it loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vggfeat.errors import InputError, LayerError
from vggfeat.models import Preprocessing, create_model, load_model
from vggfeat.models.fastconv import fuse_conv_relu
from vggfeat.models.inference import inference_copy
from vggfeat.models.resolve import check_timm_model, check_vggfeat_net, resolve_weights
from vggfeat.models.vgg import VGG
from vggfeat.models.weights import WeightsError, read_weights
from vggfeat.utils.text import decimal_int
from vggfeat.weight_sources import RANDOM

log = logging.getLogger(__name__)
TIMM_PREFIX = "timm:"
# a timm net: an nn.Module whose forward_features / forward_head / forward_intermediates / num_features are timm's
# API, which nn.Module does not declare (and timm nets share no base class that does)
TimmNet = Any


@dataclass(frozen=True)
class NetSpec:
    model: str  # a vggfeat name or alias, "timm:NAME", or "auto" (architecture read from the weights)
    weights: str | None = None  # weight file or name (torchvision:vgg16, ...); None or "random": random init

    @property
    def is_random(self) -> bool:
        return self.weights is None or self.weights == RANDOM

    def describe(self) -> dict:
        if self.weights is None:
            return {"model": self.model, "weights": None, "weights_sha256": None}
        if not self.model.startswith(TIMM_PREFIX):
            check_vggfeat_net(self.weights)  # timm:resnet50 for a VGG: refused before any download
        # a name as given (portable), a file by absolute path (found later from another directory too)
        return {"model": self.model, **resolve_weights(self.weights).describe()}


class FeatureNet(nn.Module):
    """Pooled descriptors of one net: (B, 3, H, W) uint8 RGB -> (B, dim) float32.

    Wrapping a net changes nothing in it; the engine runs `prepared` copies (eval mode, its device and layout)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, dim: int, layer: str | None) -> None:
        super().__init__()
        self.model, self.preprocessing, self.dim, self.layer = model, preprocessing, dim, layer
        self.channels_last = False
        self.autocast_dtype: torch.dtype | None = None

    def prepared(
        self, device: torch.device, *, channels_last: bool, autocast_dtype: torch.dtype | None, winograd: bool = True
    ) -> FeatureNet:
        """This net as the engine runs it: its own inference copy (models.inference) on `device`, in the memory
        layout and precision asked, with the runtime's CPU kernels in fp32 on the CPU. `self` and the net it wraps
        are left as they are (they may be in use elsewhere, on another device, in training)."""
        net = inference_copy(self).to(device)
        if channels_last:
            net.model.to(memory_format=torch.channels_last)
        if device.type == "cpu" and autocast_dtype is None:
            net.use_cpu_kernels(winograd)
        net.channels_last, net.autocast_dtype = channels_last, autocast_dtype
        return net

    def use_cpu_kernels(self, winograd: bool) -> None:
        """Switch this (engine-owned) copy to faster fp32 CPU kernels where the net has them; most nets have none."""

    # whether `forward` can take images padded bottom/right with their true sizes and stay exact
    supports_padding = False

    def pooled_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def padded_pooled_map(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot run padded batches")

    def layer_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        raise NotImplementedError(f"{type(self).__name__} cannot run padded batches")

    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim) descriptors of a uint8 batch. With `sizes` ((L + 1, B, 2) int64, see `true_sizes`), image
        b fills only the top-left sizes[0, b] of the batch and its pooled vector is the unpadded image's."""
        x = self.preprocessing.apply(images.float().div_(255.0))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self._pooled(x, sizes).float()
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self._pooled(x, sizes).float()

    def _pooled(self, x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        return self.pooled_map(x) if sizes is None else self.padded_pooled_map(x, sizes)

    def true_sizes(self, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """(L + 1, B, 2) int64: each image's (h, w) at the input and after each of the L layers run."""
        per_image = [[(h, w), *self.layer_sizes(h, w)] for h, w in shapes]
        return torch.tensor(per_image, dtype=torch.int64).permute(1, 0, 2).contiguous()


def mask_to(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Zero x (B, C, H, W) outside each image's top-left sizes[b] = (h, w) region, in place."""
    rows = torch.arange(x.shape[2], device=x.device)
    cols = torch.arange(x.shape[3], device=x.device)
    keep = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    return x.mul_(keep[:, None].to(x.dtype))  # (B, 1, H, W) broadcast over channels


def _out_size(module: nn.Module, h: int, w: int) -> tuple[int, int]:
    """A conv's or max-pool's output size for an (h, w) input: torch's floor rounding (ceil_mode off)."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        return h, w  # ReLU, LRN, dropout: pointwise over positions
    k, s, p = (_pair(v) for v in (module.kernel_size, module.stride, module.padding))
    return (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    assert not isinstance(v, str)  # padding="same" never occurs in a VGG
    return (v, v) if isinstance(v, int) else (v[0], v[1])


class VGGFeatureNet(FeatureNet):
    model: VGG
    layer: str  # a VGG layer name (conv5_3, fc7, ...)

    def __init__(self, model: VGG, layer: str = "fc7") -> None:
        super().__init__(model, model.preprocessing, model.layer_channels(layer), layer)

    supports_padding = True

    def use_cpu_kernels(self, winograd: bool) -> None:
        fuse_conv_relu(self.model, winograd)  # Winograd or oneDNN for each conv + ReLU (models.fastconv)

    def pooled_map(self, x: torch.Tensor) -> torch.Tensor:
        # Appendix B: the layer's dense map over the whole image, globally average-pooled
        return self.model.forward_features(x, self.layer).float().mean(dim=(2, 3))

    def layer_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of the image's map after each layer up to the pooled one, as the unpadded image has it."""
        out, h, w = [], height, width
        for layer, modules in self.model.blocks:
            for name in modules:
                h, w = _out_size(getattr(self.model, name), h, w)
            if h < 1 or w < 1:  # what the unpadded forward would refuse; a padded one must not average nothing
                raise InputError(
                    f"input too small for the dense head: a {height}x{width} view has no {layer} positions; "
                    f"images need at least {self.model.min_input_size()} px per side (give scales Q >= "
                    f"{self.model.min_input_size()})"
                )
            out.append((h, w))
            if layer == self.layer:
                return out
        raise LayerError(f"unknown layer {self.layer!r}")

    def padded_pooled_map(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """The pooled map of images padded bottom/right (Sect. 3.2's dense evaluation, made exact): the padding
        is zeroed at the input and after every layer, so each conv sees the zeros its own padding would give
        and each max-pool keeps the floor-rounded size; the final map is averaged over the true positions."""
        mask_to(x, sizes[0])
        out = x
        for k, (_, out) in enumerate(self.model.iter_layers(x, until=self.layer), start=1):
            mask_to(out, sizes[k])  # in place: iter_layers feeds this same tensor to the next layer
        area = (sizes[-1, :, 0] * sizes[-1, :, 1]).to(torch.float32)
        return out.float().sum(dim=(2, 3)) / area[:, None]


PRE_LOGITS = "pre_logits"
# --layer's default is the VGG name fc7; for a timm net it means the pre-logits features (a timm VGG's fc7)
TIMM_DEFAULT_ALIASES = ("fc7", PRE_LOGITS)


def _timm_taps(model: nn.Module) -> list[tuple[str, int]]:
    """(feature_info module name, channels) of each forward_intermediates index; none without that API."""
    if not hasattr(model, "forward_intermediates"):
        return []
    return [
        (str(f.get("module", i)), int(f["num_chs"])) for i, f in enumerate(getattr(model, "feature_info", []) or [])
    ]


def timm_layers(model: nn.Module) -> list[str]:
    """Every --layer a timm net accepts."""
    taps = _timm_taps(model)
    return [*TIMM_DEFAULT_ALIASES, *map(str, range(len(taps))), *(name for name, _ in taps)]


def _timm_tap(model: TimmNet, layer: str) -> tuple[int | None, int]:
    """(forward_intermediates index or None for pre-logits, descriptor width) of a --layer."""
    if layer in TIMM_DEFAULT_ALIASES:
        # a timm VGG's pre-logits are its 4096-wide fc7 (head_hidden_size); num_features is pool5's 512
        return None, int(getattr(model, "head_hidden_size", None) or model.num_features)
    taps = _timm_taps(model)
    names = [name for name, _ in taps]
    number = decimal_int(layer)
    if number is not None and number < len(taps):
        index = number
    elif layer in names:
        index = names.index(layer)
    else:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise LayerError(f"unknown layer {layer!r} for timm model {arch}; valid: {', '.join(timm_layers(model))}")
    return index, taps[index][1]


class TimmFeatureNet(FeatureNet):
    """A timm backbone: its pooled pre-logits features, or the global average of one intermediate map."""

    model: TimmNet

    def __init__(self, model: TimmNet, layer: str = "fc7") -> None:
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)  # the net's normalisation as timm's own transforms read it
        pre = Preprocessing("RGB", 1.0, tuple(cfg["mean"]), tuple(cfg["std"]))
        self.index, dim = _timm_tap(model, layer)
        super().__init__(model, pre, dim, layer)

    def pooled_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        else:
            (fmap,) = self.model.forward_intermediates(
                x, indices=[self.index], stop_early=True, intermediates_only=True
            )  # [(B, C, h, w)]
            out = fmap.mean(dim=(2, 3))
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise ValueError(
                f"timm model gave features of shape {tuple(out.shape)} at layer {self.layer!r}, "
                f"expected (B, {self.dim})"
            )
        return out


def random_init_note(model: str, seed: int) -> str:
    """How a net without weights is initialised, for the 'no weights' warnings."""
    if model.startswith(TIMM_PREFIX):
        return f"timm's own init, seed {seed}"
    return f"Glorot, seed {seed}"


def _load_timm(name: str, weights: str | None, seed: int) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    try:  # ViTs need dynamic_img_size to run on whole images of any size
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights is not None and weights != RANDOM:
        path = resolve_weights(weights).path
        assert path is not None  # only random weights have no file
        tensors, _ = read_weights(path)
        expected = model.state_dict()
        shapes = [
            f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
            for k, v in tensors.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if shapes:  # load_state_dict would raise a RuntimeError, strict or not
            raise WeightsError(
                f"{weights} does not fit timm model {name!r}: shape conflicts (file vs model) {'; '.join(shapes[:8])}"
            )
        result = model.load_state_dict(tensors, strict=False)
        head = ("head.", "fc.", "classifier.", "head_dist.")
        unexpected = [k for k in result.unexpected_keys if not k.startswith(head)]
        if result.missing_keys or unexpected:
            raise WeightsError(
                f"{weights} does not fit timm model {name!r}: missing keys "
                f"{result.missing_keys[:8]}, unexpected keys {unexpected[:8]}"
            )
    return model


def recorded_net(record: dict, recorded_in: str | os.PathLike) -> NetSpec:
    """The net a store manifest or index.json recorded ({"model", "weights", "weights_sha256"}), once the weights
    found today at the recorded path (or name) are checked to be the ones recorded: a file replaced there (another
    net, the same net retrained) would describe new images with another net than the stored rows, silently.
    Every reader that reopens recorded weights goes through here."""
    spec = NetSpec(record["model"], record.get("weights"))
    if spec.is_random:
        return spec
    expected = record.get("weights_sha256")
    assert spec.weights is not None  # not random
    actual = resolve_weights(spec.weights).sha256()
    if expected is None:  # written before hashes were recorded: nothing to check against
        log.warning("%s records no sha256 for %s; using the file as it is now", recorded_in, spec.weights)
    elif actual != expected:
        raise WeightsError(
            f"{spec.weights} has sha256 {actual}, but {recorded_in} was made with weights of sha256 {expected}: "
            "the file at the recorded path has changed; put the original weights back there, or extract and "
            "index again with these"
        )
    return spec


def build_feature_net(spec: NetSpec, layer: str = "fc7", seed: int = 0) -> FeatureNet:
    """The FeatureNet of a (model, weights) pair; without weights (or "random") the net is randomly initialised."""
    if spec.model.startswith(TIMM_PREFIX):
        check_timm_model(spec.model[len(TIMM_PREFIX) :])  # a net timm does not know: one line, not its RuntimeError
    resolved = None if spec.weights is None else resolve_weights(spec.weights)  # a missing file or name: here
    if spec.model.startswith(TIMM_PREFIX):
        return TimmFeatureNet(_load_timm(spec.model[len(TIMM_PREFIX) :], spec.weights, seed), layer)
    if resolved is not None and not resolved.is_random:
        model = load_model(resolved, None if spec.model == "auto" else spec.model)
    else:
        # Glorot keeps activations alive through a random deep net; normal(0, 0.01) makes them vanish
        model = create_model("vgg_d" if spec.model == "auto" else spec.model, init="glorot", seed=seed)
    return VGGFeatureNet(model.eval(), layer)


def as_feature_net(model: nn.Module | FeatureNet, layer: str = "fc7") -> FeatureNet:
    """Wrap a model object for extraction: a vggfeat VGG, or any timm model."""
    if isinstance(model, FeatureNet):
        return model
    if isinstance(model, VGG):
        return VGGFeatureNet(model, layer)
    if hasattr(model, "forward_head") and hasattr(model, "num_features"):
        return TimmFeatureNet(model, layer)
    raise TypeError(f"cannot extract features from a {type(model).__name__}: pass a vggfeat VGG or a timm model")
