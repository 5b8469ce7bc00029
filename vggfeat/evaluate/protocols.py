"""Sect. 3.2 testing: dense evaluation (the whole image at smallest side Q through the fully-convolutional
net, class scores averaged over positions, softmax, averaged with the flipped image), multi-crop (a 5x5
grid of crops x 2 flips per scale: 150 crops over 3 scales), both combined, and fusion of several nets
(averaged soft-max posteriors, Sect. 4.4). Posteriors are averaged over scales Q."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vggfeat.data.images import check_scaled_pixels, load_rgb
from vggfeat.data.transforms import isotropic_size
from vggfeat.models.fastconv import fuse_conv_relu
from vggfeat.models.inference import inference_copy

from .labels import EvaluateError

if TYPE_CHECKING:
    from vggfeat.data.folder import Samples
    from vggfeat.models.vgg import VGG

Device = torch.device | str

PROTOCOLS = ("dense", "multicrop", "both")


def _rescaled(img: Image.Image, q: int, model: VGG) -> torch.Tensor:
    """(1, 3, H, W) net input of `img` rescaled to smallest side Q, in the weights' convention."""
    h, w = isotropic_size(img.height, img.width, q)
    arr = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
    return model.preprocessing.apply(x)


@torch.no_grad()
def dense_posterior(model: VGG, img: Image.Image, scales: Sequence[int], device: Device = "cpu") -> torch.Tensor:
    """(K,) posterior: per Q, softmax of the spatially averaged score map, averaged with the flip."""
    out = []
    for q in scales:
        x = _rescaled(img, q, model).to(device)
        logits = model(torch.cat([x, x.flip(-1)]))  # (2, K): fc8 map averaged over positions
        out.append(logits.float().softmax(dim=1).mean(0))
    return torch.stack(out).mean(0).cpu()


def grid_offsets(size: int, crop: int, n: int = 5) -> list[int]:
    """n evenly spaced crop offsets from one border to the other."""
    return [int(round(v)) for v in np.linspace(0, size - crop, n)]


@torch.no_grad()
def multicrop_posterior(
    model: VGG, img: Image.Image, scales: Sequence[int], device: Device = "cpu", grid: int = 5, crop: int | None = None
) -> torch.Tensor:
    """(K,) posterior: per Q, the mean softmax over grid x grid crops and their flips."""
    crop = crop or model.min_input_size()
    out = []
    for q in scales:
        x = _rescaled(img, q, model)
        _, _, h, w = x.shape
        crops = [
            x[..., t : t + crop, s : s + crop] for t in grid_offsets(h, crop, grid) for s in grid_offsets(w, crop, grid)
        ]
        batch = torch.cat(crops).to(device)  # (grid^2, 3, crop, crop)
        logits = model(torch.cat([batch, batch.flip(-1)]))  # (2 grid^2, K)
        out.append(logits.float().softmax(dim=1).mean(0))
    return torch.stack(out).mean(0).cpu()


def topk_errors(posteriors: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) error of (N, K) posteriors: misses / N as exact float64 ratios of counts."""
    top = posteriors.topk(min(5, posteriors.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    n = int(labels.shape[0])
    return int((~hit[:, 0]).sum()) / n, int((~hit.any(1)).sum()) / n


def posteriors(
    model: VGG,
    images: Iterable[Image.Image],
    scales: Sequence[int],
    protocol: str,
    device: Device = "cpu",
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """(N, K) posteriors of `images` (an iterable of PIL images) under `protocol`."""
    if protocol not in PROTOCOLS:
        raise EvaluateError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    base = _base_posteriors(model, images, scales, _bases([protocol]), device, progress)
    return _combine(base, protocol)


def _bases(protocols: Sequence[str]) -> list[str]:
    """The protocols whose posteriors must be computed: 'both' is the mean of dense and multicrop."""
    need = set()
    for p in protocols:
        need |= {"dense", "multicrop"} if p == "both" else {p}
    return [p for p in ("dense", "multicrop") if p in need]


def _combine(base: dict[str, torch.Tensor], protocol: str) -> torch.Tensor:
    if protocol == "both":
        return torch.stack([base["dense"], base["multicrop"]]).mean(0)  # Sect. 4.3: multi-crop and dense averaged
    return base[protocol]


def _base_posteriors(
    model: VGG,
    images: Iterable[Image.Image],
    scales: Sequence[int],
    bases: Sequence[str],
    device: Device,
    progress: Callable[[int], object] | None,
) -> dict[str, torch.Tensor]:
    """{protocol: (N, K)} for each of `bases`, each computed once per image."""
    rows: dict[str, list] = {b: [] for b in bases}
    for img in images:
        if "dense" in rows:
            rows["dense"].append(dense_posterior(model, img, scales, device))
        if "multicrop" in rows:
            rows["multicrop"].append(multicrop_posterior(model, img, scales, device))
        if progress is not None:
            progress(1)
    return {b: torch.stack(r) for b, r in rows.items()}


def check_scales(models: Sequence[VGG], scales: Sequence[int]) -> None:
    """Refuse up front a test scale Q smaller than a net's crop: neither protocol can evaluate it."""
    if not scales:
        raise EvaluateError("no test scales Q given")
    for i, model in enumerate(models):
        crop = model.min_input_size()
        small = [q for q in scales if q < crop]
        if small:
            name = getattr(model, "source", f"net{i}")
            raise EvaluateError(
                f"test scale Q = {', '.join(map(str, small))} is smaller than the {crop} px crop "
                f"of {name}; use Q >= {crop}"
            )


def evaluate_nets(
    models: Sequence[VGG],
    samples: Samples,
    *,
    protocols: Sequence[str],
    scales: Sequence[int],
    device: Device = "cpu",
    progress: Callable[[int], object] | None = None,
    fast_decode: bool = False,
) -> list[dict]:
    """One row per (net, protocol) with top-1/top-5 error, plus a 'fusion' row per protocol when there
    are several nets (their posteriors averaged). Each net's dense and multi-crop posteriors are computed
    once and shared by every protocol asked for.

    Images are fully decoded and rescaled (the paper's rescale); `fast_decode` lets JPEGs be decoded at
    1/2..1/8 size first (PIL draft mode), faster on large photos but not the same pixels."""

    def load(path: Path) -> Image.Image:
        img = load_rgb(path, min_side=max(scales) if fast_decode else None)
        check_scaled_pixels(img.height, img.width, max(scales), path)  # before any resize
        return img

    for p in protocols:
        if p not in PROTOCOLS:
            raise EvaluateError(f"unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}")
    check_scales(models, scales)
    labels = torch.tensor(samples.labels)
    bases = _bases(protocols)
    per_net = []
    for model in models:
        # the caller's net is left as it is (mode, device, parameters): evaluation runs its own copy, in eval
        # mode, with the fused CPU kernels on the CPU (models.fastconv)
        net = inference_copy(model).to(device)
        if torch.device(device).type == "cpu":
            fuse_conv_relu(net)
        images = (load(p) for p in samples.paths)
        per_net.append(_base_posteriors(net, images, scales, bases, device, progress))
        del net
    rows = []
    for protocol in protocols:
        posts = [_combine(b, protocol) for b in per_net]
        for i, (model, post) in enumerate(zip(models, posts, strict=False)):
            t1, t5 = topk_errors(post, labels)
            rows.append(
                {"net": getattr(model, "source", f"net{i}"), "protocol": protocol, "top1_err": t1, "top5_err": t5}
            )
        if len(models) > 1:
            t1, t5 = topk_errors(torch.stack(posts).mean(0), labels)
            rows.append({"net": "fusion", "protocol": protocol, "top1_err": t1, "top5_err": t5})
    return rows
