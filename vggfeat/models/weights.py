"""Weight files: reading them safely, recognising their layout, converting to vggfeat's, and saving.

Layouts: vggfeat's own (Caffe names, `conv3_2.weight`; fc weights as convs or as Caffe's 2-D matrices),
torchvision's (`features.N`, `classifier.0` a Linear over a 7x7 pool5 map, reshaped into the 7x7 fc6
conv of Sect. 3.2) and timm's (`features.N`, `pre_logits.fc1/fc2`, `head.fc`). Files are safetensors,
PyTorch files read with `weights_only=True` (an arbitrary pickle is refused, never run) or Caffe's
.caffemodel (caffe.py: read into vggfeat's layout with Caffe's preprocessing).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggfeat.errors import WeightsError
from vggfeat.utils.files import give_plain_permissions, parse_json

from .caffe import is_caffemodel, read_caffemodel
from .mapped import map_weights, read_safetensors
from .preprocessing import PRESETS, TIMM, TORCHVISION, Preprocessing, resolve_preprocessing
from .resolve import check_vggfeat_net, check_weight_file, resolve_weights
from .vgg import CONFIGS, VGG

log = logging.getLogger(__name__)

LAYOUTS = ("vggfeat", "torchvision", "timm")
_LAYOUT_PREPROCESSING = {"torchvision": TORCHVISION, "timm": TIMM}
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "weights")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
FORMAT_VERSION = "1"


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weight file, without unpickling arbitrary objects; every floating-point value
    is finite (a NaN or inf would give descriptors of NaN or zeros, never an error)."""

    path = Path(path)
    check_weight_file(path)
    tensors, meta = _read_file(path)
    check_finite(tensors, str(path))
    return tensors, meta


_FINITE_STEP = 1 << 24  # values checked at a time: a bounded temporary, not one bool per weight of fc6


def check_finite(tensors: Mapping[str, torch.Tensor], origin: str) -> None:
    """Refuse a tensor holding NaN or inf, naming it and how many of its values are not numbers."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.reshape(-1)
        # one pass without a temporary: a sum is finite unless a value is not (or the sum overflows, which real
        # weights never do: the exact scan below then finds nothing)
        if bool(torch.isfinite(flat.sum(dtype=torch.float64 if flat.dtype == torch.float64 else torch.float32))):
            continue
        for at in range(0, flat.numel(), _FINITE_STEP):
            if not bool(torch.isfinite(flat[at : at + _FINITE_STEP]).all()):
                bad = int((~torch.isfinite(flat)).sum())
                raise WeightsError(
                    f"{origin}: tensor {name} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) "
                    f"among its {flat.numel():,}: the file is damaged or its training diverged; use another file"
                )


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    data = map_weights(path)  # one open per run: weights_sha256 hashes the same map (mapped.py)
    if path.suffix == ".caffemodel" or (path.suffix != ".safetensors" and is_caffemodel(path, data)):
        return read_caffemodel(path, data)  # the authors' Caffe release, with Caffe's preprocessing (caffe.py)
    if path.suffix == ".safetensors":
        try:
            tensors, raw_meta = read_safetensors(data)
        except (ValueError, KeyError, TypeError) as e:  # a corrupt header or byte ranges
            raise WeightsError(f"{path}: not a valid safetensors file ({e})") from e
        meta: dict[str, Any] = dict(raw_meta)
        for key in ("preprocessing", "options"):
            if key in meta:
                try:
                    meta[key] = parse_json(meta[key])
                except ValueError as e:
                    raise WeightsError(f"{path}: metadata {key!r} is not valid JSON ({e}): {meta[key][:80]!r}") from e
        if "preprocessing" in meta:  # checked here, so every reader (load, weights info) refuses it alike
            try:
                resolve_preprocessing(meta["preprocessing"])
            except (ValueError, TypeError, KeyError) as e:
                raise WeightsError(
                    f"{path}: metadata 'preprocessing' is not usable ({e}); it holds a preset name "
                    f"({', '.join(PRESETS)}) or the fields channel_order, value_range, mean and std"
                ) from e
        return tensors, meta
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can make the unpickler raise anything (IndexError, KeyError, ...)
        raise WeightsError(
            f"{path}: refused to load - it is not a plain tensor file that torch.load(weights_only=True) can "
            f"read (a pickle with arbitrary objects is never unpickled). Convert it to safetensors. "
            f"({_unpickler_reason(e)})"
        ) from e
    return split_container(obj, origin=str(path))


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's refusal that names what was refused (e.g. 'unsupported GLOBAL posix.system'):
    torch's message spans many lines of advice to reload with weights_only=False, which we never do, and
    the CLI shows an error as one line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln or "global" in ln]
    reason = (named or lines or [type(error).__name__])[0]
    return reason.removeprefix("WeightsUnpickler error: ")[:300]


def split_container(obj: Any, origin: str = "state dict") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A bare state dict, or a checkpoint dict holding one, as (tensors, metadata)."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{origin}: expected a dict of tensors, got {type(obj).__name__}")
    meta: dict[str, Any] = {}
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, torch.Tensor)}
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{origin}: holds no tensors")
    return tensors, meta


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    keys = set(state)
    if any("running_mean" in k for k in keys):
        if any(k.startswith("features.") and "running_mean" in k for k in keys):
            raise WeightsError("batch-norm VGG weights (e.g. vgg16_bn) are not one of the paper's nets")
        sample = ", ".join(sorted(keys)[:5])
        raise WeightsError(f"not a VGG: batch-norm weights of another architecture (keys like {sample})")
    if any(k.startswith(("pre_logits.", "head.fc.")) for k in keys):
        return "timm"
    if any(k.startswith("classifier.") for k in keys):
        return "torchvision"
    if any(re.match(r"(conv\d_\d|fc[678])\.", k) for k in keys):
        return "vggfeat"
    sample = ", ".join(sorted(keys)[:5])
    raise WeightsError(f"unrecognised weight layout (keys like {sample}); known layouts: {', '.join(LAYOUTS)}")


def to_vggfeat_layout(state: Mapping[str, torch.Tensor], model: VGG, layout: str) -> dict[str, torch.Tensor]:
    """Rename keys into vggfeat's layout and reshape FC matrices into the dense head's conv kernels."""
    if layout == "vggfeat":
        renamed = dict(state)
    elif layout in ("torchvision", "timm"):
        head = {
            "torchvision": {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"},
            "timm": {"pre_logits.fc1": "fc6", "pre_logits.fc2": "fc7", "head.fc": "fc8"},
        }[layout]
        conv_names = [n for n in model.weight_layers() if n.startswith("conv")]
        # features.N: the convs in order of their index in the Sequential (ReLUs and pools sit between)
        indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.weight$", k))})
        if len(indices) != len(conv_names):
            raise WeightsError(
                f"{layout} weights hold {len(indices)} conv layers but config {getattr(model, 'config', '?')} has "
                f"{len(conv_names)}: they belong to another depth (vgg11 = A, vgg13 = B, vgg16 = D, vgg19 = E)"
            )
        feature_map = {f"features.{i}": name for i, name in zip(indices, conv_names, strict=False)}
        renamed = {}
        for key, value in state.items():
            prefix, _, param = key.rpartition(".")
            target = head.get(prefix) or feature_map.get(prefix)
            renamed[f"{target}.{param}" if target else key] = value
    else:
        raise WeightsError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    expected = model.state_dict()
    for key, value in renamed.items():
        if key in expected and value.shape != expected[key].shape and value.numel() == expected[key].numel():
            if key.endswith(".weight") and value.ndim == 2 and expected[key].ndim == 4:
                # (out, C*k*k) Linear / Caffe InnerProduct -> (out, C, k, k) conv; C-major order matches
                renamed[key] = value.reshape(expected[key].shape)
    return renamed


def check_compatible(state: Mapping[str, torch.Tensor], model: nn.Module, layout: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        lines = [
            f"weights ({layout} layout) do not fit {type(model).__name__} config "
            f"{getattr(model, 'config', '?')} with {getattr(model, 'num_classes', '?')} classes"
        ]
        if missing:
            lines.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            lines.append(f"unexpected keys: {', '.join(unexpected)}")
        if shapes:
            lines.append("shape conflicts: " + "; ".join(shapes))
        raise WeightsError(" - ".join(lines))  # one line: the CLI shows an error as one line


@contextlib.contextmanager
def naming_file(source: Any) -> Iterator[None]:
    """Prefix a WeightsError raised inside with the weight file's path, unless it already names it."""
    try:
        yield
    except WeightsError as e:
        if isinstance(source, (str, Path)) and str(source) not in str(e):
            raise WeightsError(f"{source}: {e}") from e
        raise


# Options a weight file may carry, with the range a real VGG fits in (guards against absurd metadata)
OPTION_RANGES = {
    "num_classes": (1, 1_000_000),
    "width_mult": (1 / 64, 16),
    "fc_dim": (1, 65536),
    "fc6_kernel": (1, 32),
    "in_chans": (1, 64),
    "dropout": (0.0, 1.0),
}


def check_options(options: Any, origin: str) -> dict[str, Any]:
    """The architecture options of a weight file, refused with a clear error when unknown or absurd."""
    if not isinstance(options, Mapping):
        raise WeightsError(f"{origin}: metadata 'options' must be a JSON object, got {type(options).__name__}")
    for key, value in options.items():
        if key not in OPTION_RANGES:
            raise WeightsError(f"{origin}: unknown option {key!r} in metadata; valid: {', '.join(OPTION_RANGES)}")
        lo, hi = OPTION_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise WeightsError(f"{origin}: option {key}={value!r} in metadata is out of range [{lo:g}, {hi:g}]")
    return dict(options)


def load_weights(
    model: VGG, source: str | Path | Mapping[str, Any], *, preprocessing: Preprocessing | str | None = None
) -> VGG:
    """Load a state dict or weight file into `model` (in place) and set `model.preprocessing`.

    The preprocessing comes from, in order: the `preprocessing` argument, the file's own metadata, the
    convention of the layout's library (torchvision, timm); a bare vggfeat state dict keeps the model's.
    A string may also name weights (torchvision:vgg16, timm:vgg16.tv_in1k, hf-hub:..., see
    `vggfeat.models.resolve`); "random" leaves the model's own initialisation.
    """
    if isinstance(source, (str, Path)):
        check_vggfeat_net(source)
        resolved = resolve_weights(source)
        if resolved.is_random:
            log.info("weights 'random': keeping the model's random initialisation")
            return model
        assert resolved.path is not None  # only random weights have no file
        tensors, meta = read_weights(resolved.path)
    else:
        tensors, meta = split_container(source)
    return load_tensors(model, tensors, meta, preprocessing=preprocessing, origin=source)


def load_tensors(
    model: VGG,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    preprocessing: Preprocessing | str | None = None,
    origin: Any = None,
    assign: bool = False,
) -> VGG:
    """`load_weights` for tensors and metadata already read (`read_weights`), so a file is read once.

    `assign=True` makes the tensors the model's parameters instead of copying them in (a model built on the
    meta device and tensors nobody else holds: a 528 MB net then takes one copy of memory, not two); else a
    model on the meta device is allocated on the CPU after its shapes are checked against the tensors."""
    with naming_file(origin):
        tensors = _strip_wrappers(tensors)
        layout = detect_layout(tensors)
        state = to_vggfeat_layout(tensors, model, layout)
        check_compatible(state, model, layout)
    if not assign and any(p.is_meta for p in model.parameters()):
        # a net built on the meta device is allocated only now, once its shapes are the file's: metadata that
        # asks for a huge net around a small file is refused above, never given terabytes
        model.to_empty(device="cpu")
    if assign:  # the model's dtype, dense memory: what copying in would have given
        expected = model.state_dict()
        state = {k: v.to(dtype=expected[k].dtype, memory_format=torch.contiguous_format) for k, v in state.items()}
    model.load_state_dict(state, assign=assign)
    if preprocessing is not None:
        model.preprocessing = resolve_preprocessing(preprocessing)
    elif "preprocessing" in meta:
        model.preprocessing = resolve_preprocessing(meta["preprocessing"])
    elif layout in _LAYOUT_PREPROCESSING:
        model.preprocessing = _LAYOUT_PREPROCESSING[layout]
    else:
        log.warning("weights carry no preprocessing metadata; keeping %s", model.preprocessing)
    return model


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model's weights as safetensors with its preprocessing and architecture as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": "vggfeat",
        "format_version": FORMAT_VERSION,
        "preprocessing": getattr(model, "preprocessing", TORCHVISION).to_json(),
        "arch": str(getattr(model, "arch", "")),
        "config": str(getattr(model, "config", "")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "options": json.dumps(getattr(model, "options", {})),
        **(metadata or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    _sort_metadata(tmp)
    give_plain_permissions(tmp)  # save_file creates 0600; a plain write would give 0666 & ~umask
    tmp.replace(path)  # atomic: a crash never leaves a half-written weight file
    return path


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header of `path` in place with its metadata's keys sorted. safetensors writes them
    in a hash map's order, which differs from one process to the next, so the same weights saved twice would be
    files of different sha256 - and stores, probe caches and the demo key weights by that sha256. The sorted
    header is the same JSON reordered, so it fits the header's length (padded with spaces, as safetensors pads)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n), object_pairs_hook=dict)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:  # not the compact JSON safetensors writes: leave the file as it is
            return
        f.seek(8)
        f.write(text.ljust(n, b" "))


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(model name, options) that fit a state dict in any layout, from its conv kernels and shapes.

    A and A-LRN have the same weights: without metadata, A is assumed.
    """

    state = _strip_wrappers(state)
    layout = detect_layout(state)
    need = {
        "vggfeat": ("fc6.weight", "fc8.weight"),
        "torchvision": ("classifier.0.weight", "classifier.6.weight"),
        "timm": ("pre_logits.fc1.weight", "head.fc.weight"),
    }[layout]
    absent = [k for k in need if k not in state]
    if absent:
        raise WeightsError(f"{layout} weights lack {', '.join(absent)} (fc6/fc8): not a complete VGG")
    if layout == "vggfeat":
        convs = sorted(
            (k for k in state if re.match(r"conv\d_\d\.weight$", k)),
            key=lambda k: tuple(int(n) for n in re.findall(r"\d", k)),
        )
        fc6, fc8 = state["fc6.weight"], state["fc8.weight"]
    else:
        convs = sorted((k for k in state if re.match(r"features\.\d+\.weight$", k)), key=lambda k: int(k.split(".")[1]))
        fc6 = state["classifier.0.weight" if layout == "torchvision" else "pre_logits.fc1.weight"]
        fc8 = state["classifier.6.weight" if layout == "torchvision" else "head.fc.weight"]
    empty = [f"{k} {tuple(state[k].shape)}" for k in (*convs, *need) if state[k].numel() == 0]
    if empty:
        raise WeightsError(f"tensor {empty[0]} is empty: a layer without inputs or outputs; the file is damaged")
    kernels = [state[k].shape[-1] for k in convs]
    for name, config in (("vgg_a", "A"), ("vgg_b", "B"), ("vgg_c", "C"), ("vgg_d", "D"), ("vgg_e", "E")):  # noqa: B007 (name is used after the loop)
        if [k for stage in CONFIGS[config] for _, k in stage] == kernels:
            break
    else:
        raise WeightsError(f"no Table 1 config has {len(kernels)} convs with kernels {kernels}")
    first = state[convs[0]]
    fc_dim = int(fc6.shape[0])
    last_conv = int(state[convs[-1]].shape[0])
    fc6_kernel = int(fc6.shape[-1]) if fc6.ndim == 4 else int(round((fc6.shape[1] / last_conv) ** 0.5))
    options = dict(
        num_classes=int(fc8.shape[0]),
        width_mult=int(first.shape[0]) / 64,
        fc_dim=fc_dim,
        fc6_kernel=fc6_kernel,
        in_chans=int(first.shape[1]),
    )
    return name, options
