"""What a weight file or name holds, and its conversion to vggfeat's safetensors (the released
weights of nets A-E, in Caffe, torchvision or timm layouts, each with its own preprocessing).

`convert_weights` turns any source once into one shareable file that carries its architecture and its
preprocessing, so the net's input convention travels with the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .preprocessing import PAPER, resolve_preprocessing
from .registry import SPECS, count_parameters, create_model, load_model
from .resolve import ResolvedWeights, check_vggfeat_net, resolve_weights
from .weights import (
    _LAYOUT_PREPROCESSING,
    WeightsError,
    _strip_wrappers,
    check_compatible,
    check_options,
    detect_layout,
    infer_architecture,
    naming_file,
    read_weights,
    save_weights,
    to_vggfeat_layout,
)


def weights_info(value: str | Path | ResolvedWeights) -> dict[str, Any]:
    """Source, file, sha256, layout, net (name, Table 1 config, options), preprocessing and parameter count of
    a weight file or name; the tensors are checked against the net they describe (a WeightsError if not)."""

    check_vggfeat_net(value)
    resolved = resolve_weights(value)
    if resolved.is_random:
        model = create_model("vgg_d", device="meta")
        return {
            "source": resolved.source,
            "kind": resolved.kind,
            "file": None,
            "sha256": None,
            "layout": None,
            "arch": model.arch,
            "config": model.config,
            "options": {},
            "num_classes": model.num_classes,
            "parameters": count_parameters(model),
            "preprocessing": model.preprocessing.to_dict(),
            "preprocessing_from": "vggfeat's default (the paper's mean RGB)",
            "metadata": {},
        }
    assert resolved.path is not None  # only random weights have no file
    tensors, meta = read_weights(resolved.path)
    source = resolved.source
    with naming_file(source):
        tensors = _strip_wrappers(tensors)
        layout = detect_layout(tensors)
        if meta.get("arch") in SPECS and "options" in meta:
            arch, options = meta["arch"], check_options(meta["options"], source)
        else:
            arch, options = infer_architecture(tensors)
        model = create_model(arch, device="meta", **options)
        check_compatible(to_vggfeat_layout(tensors, model, layout), model, layout)
    if "preprocessing" in meta:
        pre, origin = resolve_preprocessing(meta["preprocessing"]), "the file's metadata"
    elif layout in _LAYOUT_PREPROCESSING:
        pre, origin = _LAYOUT_PREPROCESSING[layout], f"{layout}'s convention"
    else:
        pre, origin = PAPER, "none recorded: vggfeat's default (the paper's mean RGB)"
    extra = {k: str(v) for k, v in meta.items() if k not in ("preprocessing", "options") and isinstance(v, str)}
    return {
        "source": source,
        "kind": resolved.kind,
        "file": str(resolved.path),
        "sha256": resolved.sha256(),
        "layout": layout,
        "arch": model.arch,
        "config": model.config + ("-LRN" if getattr(model, "lrn", False) else ""),
        "options": options,
        "num_classes": model.num_classes,
        "parameters": count_parameters(model),
        "preprocessing": pre.to_dict(),
        "preprocessing_from": origin,
        "metadata": extra,
    }


def convert_weights(value: str | Path | ResolvedWeights, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the weights of a file or name as vggfeat safetensors (vggfeat layout, fc6 as its 7x7 conv, with
    architecture, preprocessing and source as metadata). Atomic: OUT appears whole or not at all."""

    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the converted file is safetensors; name it {out.with_suffix('.safetensors')}")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} already exists; pass --overwrite to replace it")
    if out.parent and not out.parent.is_dir():
        raise WeightsError(f"{out}: folder {out.parent} does not exist")
    resolved = resolve_weights(value)
    model = load_model(resolved)
    meta = {"source": resolved.source, "source_sha256": resolved.sha256() or ""}
    return save_weights(model, out, metadata=meta)
