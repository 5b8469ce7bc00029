"""The forms `--weights` accepts, the default weights and their help text (PAPER.md section 6: released weights).

Kept free of torch so the CLI's `--help` stays instant; vggfeat.models.resolve turns a value into a file.
"""

from __future__ import annotations

import os

# Net D (VGG-16) with torchvision's ImageNet weights: the net most transfer results use (issue 13.4)
DEFAULT_WEIGHTS = "torchvision:vgg16"
RANDOM = "random"
TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
HF_HUB_PREFIX = "hf-hub:"
NAME_PREFIXES = (TORCHVISION_PREFIX, TIMM_PREFIX, HF_HUB_PREFIX)
TORCHVISION_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19")  # nets A, B, D, E; the _bn variants are not the paper's

WEIGHTS_HELP = (
    "Weights: a file (vggfeat .safetensors, a PyTorch .pth read with weights_only=True, a Caffe .caffemodel), "
    "torchvision:vgg11|vgg13|vgg16|vgg19 (torchvision's ImageNet weights, cached in $TORCH_HOME/hub/checkpoints), "
    "timm:TAG (a timm VGG, e.g. timm:vgg16.tv_in1k) or hf-hub:timm/REPO (Hugging Face cache), or random "
    f"(a randomly initialised net). Default: {DEFAULT_WEIGHTS} (net D). Offline (VGGFEAT_OFFLINE=1, HF_HUB_OFFLINE=1) "
    "names are read from the caches only."
)


def is_weights_name(value: object) -> bool:
    """True for a named source (torchvision:, timm:, hf-hub:, random) rather than a file path."""
    return isinstance(value, str) and (value == RANDOM or value.startswith(NAME_PREFIXES))


def offline(hf: bool = False) -> bool:
    """VGGFEAT_OFFLINE=1 forbids every download; HF_HUB_OFFLINE=1 those from the Hugging Face hub too."""
    names = ("VGGFEAT_OFFLINE", "HF_HUB_OFFLINE") if hf else ("VGGFEAT_OFFLINE",)
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)
