"""Weights by name: a `--weights` value (file, torchvision:vgg16, timm:vgg16.tv_in1k, hf-hub:timm/..., random)
turned into a local file, through torchvision's weights API and torch.hub's cache or timm and the Hugging Face
cache (the released ImageNet weights of nets A, B, D, E).

Downloads happen once, when online; offline (VGGFEAT_OFFLINE=1, or HF_HUB_OFFLINE=1 for the hub) a name is read
from its cache or refused with one line naming the missing file, where it goes and the command that fetches it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggfeat.errors import WeightsError
from vggfeat.utils.files import check_regular
from vggfeat.weight_sources import (
    DEFAULT_WEIGHTS,
    HF_HUB_PREFIX,
    RANDOM,
    TIMM_PREFIX,
    TORCHVISION_NAMES,
    TORCHVISION_PREFIX,
    WEIGHTS_HELP,
    offline,
)

from .mapped import weights_sha256

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WEIGHTS", "WEIGHTS_HELP", "ResolvedWeights", "resolve_weights", "torch_hub_checkpoints"]

# torchvision's depth names are the paper's nets A, B, D, E (vgg_c has no torchvision weights)
_ARCH = {"vgg11": "vgg_a", "vgg13": "vgg_b", "vgg16": "vgg_d", "vgg19": "vgg_e"}
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's hub files, the safe one first (as timm does)


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a --weights value's tensors are, and what its name says about them."""

    source: str  # the value as given: a path, "torchvision:vgg16", "timm:vgg16.tv_in1k", "hf-hub:...", "random"
    kind: str  # "file", "torchvision", "timm", "hf-hub" or "random"
    path: Path | None = None  # the local file holding the tensors; None for random
    arch: str | None = None  # the vggfeat net the name implies (vgg_d for vgg16); None: read from the tensors
    layout: str | None = None  # the library's key layout ("torchvision", "timm"); None: detected on load
    hash_prefix: str | None = None  # torch.hub's sha256 prefix from the file name, checked when downloading

    @property
    def is_random(self) -> bool:
        return self.kind == RANDOM

    @property
    def is_name(self) -> bool:
        return self.kind != "file"

    def sha256(self) -> str | None:
        return None if self.path is None else weights_sha256(self.path)

    def describe(self) -> dict[str, Any]:
        """What a manifest records: a name as given (portable across machines), a file by absolute path."""
        if self.is_random:
            return {"weights": RANDOM, "weights_sha256": None}
        weights = self.source if self.is_name else str(Path(self.source).resolve())
        return {"weights": weights, "weights_sha256": self.sha256()}


def resolve_weights(value: str | os.PathLike | ResolvedWeights, *, download: bool = True) -> ResolvedWeights:
    """The local file behind a --weights value (see WEIGHTS_HELP), fetched into its library's cache when a
    name is not cached yet and we are online. `download=False` only looks in the caches."""
    if isinstance(value, ResolvedWeights):
        return value
    text = os.fspath(value)
    if not isinstance(text, str):
        raise WeightsError(f"weights must be a path or a name, got {value!r}")
    if not text.strip():
        raise WeightsError(f"empty weights value {text!r}: give a weight file, a name or random. {WEIGHTS_HELP}")
    if text == RANDOM:
        return ResolvedWeights(RANDOM, RANDOM)
    if text.startswith(TORCHVISION_PREFIX):
        return _torchvision(text, download)
    if text.startswith(TIMM_PREFIX):
        return _timm(text, download)
    if text.startswith(HF_HUB_PREFIX):
        return _hf_hub(text, text[len(HF_HUB_PREFIX) :], None, download)
    path = Path(text)
    if not path.is_file():
        scheme = re.match(r"([A-Za-z][\w.+-]*):[^/\\]*$", text)  # "tv:vgg16": a name, not a path
        if scheme:
            raise WeightsError(f"unknown weights source {scheme.group(1) + ':'!r} in {text!r}. {WEIGHTS_HELP}")
        if path.is_dir():
            raise WeightsError(f"{text} is a folder, not a weight file. {WEIGHTS_HELP}")
        check_weight_file(path)
    return ResolvedWeights(text, "file", path)


def check_weight_file(path: Path) -> None:
    """Refuse a path that is not a regular file: missing, or a FIFO (a read would block forever), device, socket
    or folder, named by `check_regular`."""
    if not os.path.lexists(path):
        raise WeightsError(f"weight file not found: {path}")
    check_regular(path, "weight file", error=WeightsError)


def torch_hub_checkpoints() -> Path:
    """torch.hub's cache of weight files: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _fetch_hint(name: str, folder: Path | None = None) -> str:
    """What fetches a name on a machine with network: `weights convert` for a VGG; for another timm net
    (which convert refuses), timm itself, whose cache folder is then copied here."""
    tag = name.split(":", 1)[1]
    if name.startswith(TIMM_PREFIX) and split_timm_tag(tag)[0] not in _ARCH:
        where = f" and copy its {folder.name} folder into {folder.parent}" if folder is not None else ""
        return (
            f"`python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"` on a machine with network{where}"
        )
    stem = tag.replace("/", "_").split(".")[0]
    return (
        f"`vggfeat weights convert {name} {stem}.safetensors` on a machine with network and pass that file to --weights"
    )


def _torchvision(name: str, download: bool) -> ResolvedWeights:
    arch = name[len(TORCHVISION_PREFIX) :]
    if arch not in TORCHVISION_NAMES:
        why = " (batch-norm nets are not among the paper's)" if arch.removesuffix("_bn") in TORCHVISION_NAMES else ""
        raise WeightsError(f"no torchvision weights {name!r}{why}; valid: torchvision:{'|'.join(TORCHVISION_NAMES)}")
    from torch.hub import HASH_REGEX, download_url_to_file
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).DEFAULT.url  # torchvision's weights API: IMAGENET1K_V1 for the VGGs
    filename = os.path.basename(url)
    match = HASH_REGEX.search(filename)
    # torch.hub checks the sha256 prefix in the file name when it downloads, and reads a cached file as is
    # (load_state_dict_from_url skips the check when the file exists): so do we.
    path = torch_hub_checkpoints() / filename
    resolved = ResolvedWeights(name, "torchvision", path, _ARCH[arch], "torchvision", match and match.group(1))
    if path.is_file():
        return resolved
    where = f"put {filename} (from {url}) at {path}"
    if offline() or not download:
        raise WeightsError(
            f"{name}: {filename} is not in torch.hub's cache and downloads are off (VGGFEAT_OFFLINE): {where}, or "
            f"run {_fetch_hint(name)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("downloading %s to %s (once; later runs read the cache)", url, path)
    try:  # writes a temporary file and renames it: an interrupted download leaves no half file
        download_url_to_file(url, str(path), resolved.hash_prefix, progress=True)
    except Exception as e:  # URLError, timeouts, torch.hub's hash mismatch (RuntimeError)
        raise WeightsError(
            f"{name}: could not download {url} ({' '.join(str(e).split())}): {where}, or run {_fetch_hint(name)}"
        ) from None
    return resolved


def _timm(name: str, download: bool) -> ResolvedWeights:
    """Any timm tag's hub file (a `--model timm:NAME` backbone loads it); vggfeat's own nets take timm's VGGs."""
    from timm.models import get_pretrained_cfg

    tag = name[len(TIMM_PREFIX) :]
    arch, _ = split_timm_tag(tag)
    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError:  # timm knows the net but not the tag
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"{name}: timm has no pretrained weights on the hub by that tag; {timm_tags_hint(arch)}")
    filename = getattr(cfg, "hf_hub_filename", None)
    resolved = _hf_hub(name, cfg.hf_hub_id, filename, download)
    return ResolvedWeights(name, "timm", resolved.path, _ARCH.get(arch))  # layout: detected on load


def split_timm_tag(tag: str) -> tuple[str, str]:
    """(net, pretrained tag) of a timm name, as timm splits "vgg16.tv_in1k"."""
    from timm.models import split_model_name_tag

    return split_model_name_tag(tag)


def timm_tags_hint(arch: str) -> str:
    """The pretrained tags timm has for a net, or how to list its nets when it has none by that name."""
    import timm

    tags = timm.list_pretrained(f"{arch}.*") if timm.is_model(arch) else []
    if tags:
        return f"valid: {', '.join(f'timm:{t}' for t in tags[:12])}{' ...' if len(tags) > 12 else ''}"
    return f"timm has no net {arch!r}; see timm.list_models(pretrained=True)"


def check_timm_model(name: str) -> None:
    """Refuse a `--model timm:NAME` that timm cannot build, before any file is read."""
    import timm

    if not timm.is_model(name):
        raise WeightsError(f"--model timm:{name}: {timm_tags_hint(split_timm_tag(name)[0])}")


def check_vggfeat_net(value: object) -> None:
    """Refuse, before any download, timm weights of another architecture for a vggfeat net (pointing at
    --model timm:NAME, which takes any timm net)."""
    source = value.source if isinstance(value, ResolvedWeights) else value
    if not (isinstance(source, str) and source.startswith(TIMM_PREFIX)):
        return
    arch = split_timm_tag(source[len(TIMM_PREFIX) :])[0]
    if arch not in _ARCH:
        why = " (batch-norm VGGs are not among the paper's nets)" if arch.removesuffix("_bn") in _ARCH else ""
        raise WeightsError(
            f"{source}: vggfeat's nets load timm's VGG weights only "
            f"({', '.join(f'timm:{a}.tv_in1k' for a in _ARCH)}){why}; for any other timm net use --model {source}"
        )


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def _hf_hub(name: str, repo: str, filename: str | None, download: bool) -> ResolvedWeights:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1:
        raise WeightsError(f"{name}: expected hf-hub:OWNER/REPO[@REVISION], e.g. hf-hub:timm/vgg16.tv_in1k")
    cache = hf_hub_cache()
    local_only = offline(hf=True) or not download
    problems = []
    for file in (filename,) if filename else _HF_FILES:
        try:
            path = hf_hub_download(
                repo_id, file, revision=revision or None, cache_dir=cache, local_files_only=local_only
            )
            return ResolvedWeights(name, "hf-hub", Path(path))
        except LocalEntryNotFoundError:  # first: it derives from EntryNotFoundError
            problems.append(f"{file} not cached")
        except EntryNotFoundError:  # the repo exists but has no such file: try the next
            problems.append(f"{file} not in the repo")
        except Exception as e:  # network, missing repo, gated repo
            problems.append(f"{file}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    file = filename or _HF_FILES[0]
    belongs = f"it belongs at {folder}/snapshots/<revision>/{file} (copy that folder from a machine's cache)"
    if local_only:
        raise WeightsError(
            f"{name}: {file} of {repo_id} is not in the Hugging Face cache and downloads are off "
            f"(VGGFEAT_OFFLINE/HF_HUB_OFFLINE): {belongs}, or run {_fetch_hint(name, folder)}"
        )
    if all(p.endswith("not cached") for p in problems):  # what huggingface_hub raises when offline
        raise WeightsError(
            f"{name}: could not reach the Hugging Face hub (no network?) and {file} of {repo_id} is not in its "
            f"cache: {belongs}, or run {_fetch_hint(name, folder)}"
        )
    raise WeightsError(
        f"{name}: could not fetch {repo_id} from the Hugging Face hub ({'; '.join(problems)}); run "
        f"{_fetch_hint(name, folder)}"
    )
