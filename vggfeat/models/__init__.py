"""The paper's nets (Table 1), their initialisation (Sect. 3.1) and weight files."""

from .init import INIT_FROM_A_LAYERS, init_from_net_a, init_weights
from .preprocessing import CAFFE, PAPER, PRESETS, TIMM, TORCHVISION, Preprocessing
from .registry import SPECS, count_parameters, create_model, list_models, load_model, model_table, resolve_name
from .resolve import DEFAULT_WEIGHTS, WEIGHTS_HELP, ResolvedWeights, resolve_weights
from .vgg import CONFIGS, VGG
from .weights import WeightsError, detect_layout, infer_architecture, load_weights, read_weights, save_weights

__all__ = [
    "CAFFE",
    "DEFAULT_WEIGHTS",
    "CONFIGS",
    "INIT_FROM_A_LAYERS",
    "PAPER",
    "PRESETS",
    "SPECS",
    "TIMM",
    "TORCHVISION",
    "VGG",
    "WEIGHTS_HELP",
    "Preprocessing",
    "ResolvedWeights",
    "WeightsError",
    "count_parameters",
    "create_model",
    "detect_layout",
    "infer_architecture",
    "init_from_net_a",
    "init_weights",
    "list_models",
    "load_model",
    "load_weights",
    "model_table",
    "read_weights",
    "resolve_name",
    "resolve_weights",
    "save_weights",
]
