"""The forms `--weights` accepts, the default weights and their help text (the released weights).

Kept free of torch so the CLI's `--help` stays instant; vggfeat.models.resolve turns a value into a file.
"""

from __future__ import annotations

import os

from vggfeat.errors import InputError

# Net D (VGG-16) with torchvision's ImageNet weights: the net most transfer results use
DEFAULT_WEIGHTS = "torchvision:vgg16"
RANDOM = "random"
TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
HF_HUB_PREFIX = "hf-hub:"
NAME_PREFIXES = (TORCHVISION_PREFIX, TIMM_PREFIX, HF_HUB_PREFIX)
TORCHVISION_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19")  # nets A, B, D, E; the _bn variants are not the paper's

# the pretrained weights each net gets without --weights: torchvision's ImageNet nets A, B, D, E
_DEFAULTS = {
    **dict.fromkeys(("auto", "vgg_d", "vgg16"), "torchvision:vgg16"),
    **dict.fromkeys(("vgg_a", "vgg11"), "torchvision:vgg11"),
    **dict.fromkeys(("vgg_b", "vgg13"), "torchvision:vgg13"),
    **dict.fromkeys(("vgg_e", "vgg19"), "torchvision:vgg19"),
}

WEIGHTS_HELP = (
    "Weights: a file (vggfeat .safetensors, a PyTorch .pth read with weights_only=True, a Caffe .caffemodel), "
    "torchvision:vgg11|vgg13|vgg16|vgg19 (torchvision's ImageNet weights, cached in $TORCH_HOME/hub/checkpoints), "
    "timm:TAG (a timm VGG, e.g. timm:vgg16.tv_in1k) or hf-hub:timm/REPO (Hugging Face cache), or random "
    f"(a randomly initialised net). Default: {DEFAULT_WEIGHTS} (net D; vgg11/13/19 for --model A, B, E; timm's own "
    "pretrained weights for --model timm:NAME). Offline (VGGFEAT_OFFLINE=1, HF_HUB_OFFLINE=1) "
    "names are read from the caches only."
)


def offline(hf: bool = False) -> bool:
    """VGGFEAT_OFFLINE=1 forbids every download; HF_HUB_OFFLINE=1 those from the Hugging Face hub too."""
    names = ("VGGFEAT_OFFLINE", "HF_HUB_OFFLINE") if hf else ("VGGFEAT_OFFLINE",)
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


def default_weights(model: str = "auto") -> str:
    """The pretrained weights a net gets when no --weights is given (never a silent random net)."""
    if model.startswith(TIMM_PREFIX):
        return model  # timm's own pretrained weights of that tag, from the Hugging Face cache
    key = model.lower().replace("-", "_")
    if key in _DEFAULTS:
        return _DEFAULTS[key]
    raise InputError(
        f"no pretrained weights for {model} (torchvision has nets A, B, D, E: vgg11, vgg13, vgg16, vgg19): "
        "pass --weights FILE (e.g. a run's model.safetensors) or --weights random"
    )
