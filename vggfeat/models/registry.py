"""Model names: the paper's letters are canonical (`vgg_d`), depths are aliases (`vgg16`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vggfeat.errors import InputError
from vggfeat.utils.text import decimal_int

from .init import init_weights
from .preprocessing import Preprocessing
from .resolve import ResolvedWeights, check_vggfeat_net, resolve_weights
from .vgg import VGG
from .weights import check_options, infer_architecture, load_tensors, load_weights, naming_file, read_weights


@dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name
    config: str  # Table 1 column
    lrn: bool  # A-LRN: LRN after conv1_1
    aliases: tuple[str, ...] = ()


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("vgg_a", "A", False, ("vgg11",)),
        ModelSpec("vgg_a_lrn", "A", True),
        ModelSpec("vgg_b", "B", False, ("vgg13",)),
        ModelSpec("vgg_c", "C", False),  # C and D are both 16 layers: no depth alias for C
        ModelSpec("vgg_d", "D", False, ("vgg16",)),
        ModelSpec("vgg_e", "E", False, ("vgg19",)),
    )
}
ALIASES: dict[str, str] = {alias: spec.name for spec in SPECS.values() for alias in spec.aliases}


def list_models(aliases: bool = False) -> list[str]:
    """Canonical model names, A to E; with `aliases`, the depth aliases too."""
    return list(SPECS) + (list(ALIASES) if aliases else [])


def resolve_name(name: str) -> ModelSpec:
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SPECS:
        raise InputError(f"unknown model {name!r}; valid: {', '.join(list_models(aliases=True))}")
    return SPECS[key]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    weights: str | Path | None = None,
    init: str = "normal",
    init_std: float = 0.01,
    seed: int | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> VGG:
    """Build a named net (options: width_mult, fc_dim, fc6_kernel, dropout, in_chans), initialised as in
    Sect. 3.1 (`init` "normal" with `init_std`, or "glorot"; `seed` makes it reproducible), then loaded
    from `weights` if given. `device="meta"` builds it without allocating memory. Like torchvision's models
    it is returned in training mode (dropout on): call `.eval()` before `forward_features` for descriptors
    (`extract_features` runs its own eval-mode copy and leaves the net as it is).
    """
    spec = resolve_name(name)
    if str(device) != "meta":
        check_model_size(spec.name, num_classes=num_classes, **options)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = VGG(spec.config, lrn=spec.lrn, num_classes=num_classes, **options)
    model.arch = spec.name
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if str(device) != "meta":
        if generator is not None and model.fc6.weight.device.type != "cpu":
            raise ValueError("a seeded init is drawn on the CPU: build with device=None, then move the model")
        init_weights(model, init, init_std, generator=generator)
    if weights is not None:
        load_weights(model, weights)
    return model


# Nets built from options alone (no weight file to match) stay within this many parameters: ~14x net E
# (143.7 M), 8 GB of float32. A file holding more builds through load_model, whose size the file vouches for.
MAX_PARAMETERS = 2_000_000_000


def check_model_size(name: str, *, num_classes: int = 1000, **options: Any) -> int:
    """The parameter count of a named net with these options, counted on the meta device (nothing allocated);
    an InputError when it is beyond MAX_PARAMETERS (width_mult 200 would ask for terabytes)."""
    spec = resolve_name(name)
    with torch.device("meta"):
        n = count_parameters(VGG(spec.config, lrn=spec.lrn, num_classes=num_classes, **options))
    if n > MAX_PARAMETERS:
        given = ", ".join(f"{k}={v:g}" for k, v in {"num_classes": num_classes, **options}.items())
        raise InputError(
            f"{spec.name} with {given} has {n:,} parameters ({4 * n / 1e9:,.0f} GB of float32), beyond the "
            f"{MAX_PARAMETERS:,} a net built from options may have (net E has 143,667,240): lower width_mult, "
            "fc_dim or fc6_kernel"
        )
    return n


def load_model(
    weights: str | Path | ResolvedWeights,
    name: str | None = None,
    *,
    preprocessing: Preprocessing | str | None = None,
    **options: Any,
) -> VGG:
    """Build the net a weight file describes and load it. The architecture comes from the file's metadata
    (vggfeat files), else from its tensors' shapes; `name` and `options` override. `weights` may also be a
    name (torchvision:vgg16, timm:..., hf-hub:..., see `vggfeat.models.resolve`) or "random" (net `name`,
    default vgg_d, Glorot-initialised), or what `resolve_weights` already made of one. Returns it in eval mode.
    """

    check_vggfeat_net(weights)
    resolved = resolve_weights(weights)
    if resolved.is_random:
        # Glorot keeps activations alive through a random deep net; normal(0, 0.01) makes them vanish
        return create_model(name or "vgg_d", **{"init": "glorot", **options}).eval()
    source = resolved.source  # errors name the value as given
    assert resolved.path is not None  # only random weights have no file
    tensors, meta = read_weights(resolved.path)
    with naming_file(source):
        if meta.get("arch") in SPECS and "options" in meta:
            arch, inferred = meta["arch"], check_options(meta["options"], source)
            count = meta.get("num_classes")  # the text of a number in safetensors metadata; None when it is not
            count = decimal_int(count) if isinstance(count, str) else None
            if count is not None and "num_classes" not in inferred:
                inferred["num_classes"] = check_options({"num_classes": count}, source)["num_classes"]
        else:
            arch, inferred = infer_architecture(tensors)
    if name is not None:
        arch = name
    model = create_model(arch, device="meta", **{**inferred, **options})
    # the tensors read above: the file is read once, not again by load_weights. The Caffe reader's
    # arrays are this process's own memory: they become the parameters (one copy of a 528 MB net, not two).
    # safetensors' tensors map the file (an in-place rewrite would change them), so they are copied in, into
    # memory that load_tensors allocates only once the net's shapes are found to be the file's.
    own = meta.get("format") == "caffe"
    load_tensors(model, tensors, meta, preprocessing=preprocessing, origin=source, assign=own)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_table() -> list[dict[str, Any]]:
    """One row a net: name, aliases, config, weight layers and parameters at 1000 classes."""
    rows = []
    for spec in SPECS.values():
        model = create_model(spec.name, device="meta")
        rows.append(
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "config": spec.config + ("-LRN" if spec.lrn else ""),
                "weight_layers": len(model.weight_layers()),
                "parameters": count_parameters(model),
            }
        )
    return rows
