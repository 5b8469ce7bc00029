"""Sect. 3.2 testing: dense evaluation (the whole image at smallest side Q through the fully-convolutional
net, class scores averaged over positions, softmax, averaged with the flipped image), multi-crop (a 5x5
grid of crops x 2 flips per scale: 150 crops over 3 scales), both combined, and fusion of several nets
(averaged soft-max posteriors, Sect. 4.4). Posteriors are averaged over scales Q."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image

from vggfeat import defaults
from vggfeat.data.images import ImageError, check_scaled_pixels, load_rgb
from vggfeat.data.transforms import isotropic_size
from vggfeat.models.fastconv import fuse_conv_relu
from vggfeat.models.inference import inference_copy
from vggfeat.utils.cpus import share_cpus, worker_init
from vggfeat.utils.heap import keep_freed_memory

from .labels import EvaluateError

if TYPE_CHECKING:
    from vggfeat.data.folder import Samples
    from vggfeat.models.preprocessing import Preprocessing
    from vggfeat.models.vgg import VGG

Device = torch.device | str

PROTOCOLS = ("dense", "multicrop", "both")


def _rescaled(img: Image.Image, q: int, preprocessing: Preprocessing) -> torch.Tensor:
    """(1, 3, H, W) net input of `img` rescaled to smallest side Q, in the weights' convention."""
    h, w = isotropic_size(img.height, img.width, q)
    arr = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)
    return preprocessing.apply(x)


def _flip_averaged(model: VGG, x: torch.Tensor, device: Device) -> torch.Tensor:
    """(N, K) softmax of N inputs, each averaged with its mirror image's (which rides in the same batch)."""
    x = x.to(device)
    p = model(torch.cat([x, x.flip(-1)])).float().softmax(dim=1)  # (2N, K)
    return ((p[: len(x)] + p[len(x) :]) / 2).cpu()


@torch.no_grad()
def _dense(model: VGG, inputs: Sequence[Sequence[torch.Tensor]], device: Device) -> torch.Tensor:
    """(N, K) dense posteriors of N images given as their (1, 3, H, W) inputs at each scale: images of the same
    rescaled size share a forward pass; the fc8 map is averaged over positions, softmax, flip, then scales."""
    out = torch.zeros(len(inputs), model.num_classes)
    for s in range(len(inputs[0])):
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, per_scale in enumerate(inputs):
            shapes.setdefault(tuple(per_scale[s].shape), []).append(i)
        for rows in shapes.values():
            out[rows] += _flip_averaged(model, torch.cat([inputs[i][s] for i in rows]), device)
    return out / len(inputs[0])


@torch.no_grad()
def _multicrop(
    model: VGG,
    inputs: Sequence[Sequence[torch.Tensor]],
    device: Device,
    batch_size: int,
    grid: int = 5,
    crop: int | None = None,
) -> torch.Tensor:
    """(N, K) multi-crop posteriors: per scale the mean softmax over grid x grid crops and their flips,
    `batch_size` crops (and their flips) per forward pass, then the mean over scales."""
    crop = crop or model.min_input_size()
    out = torch.zeros(len(inputs), model.num_classes)
    for s in range(len(inputs[0])):
        crops = []
        for per_scale in inputs:
            x = per_scale[s]
            _, _, h, w = x.shape
            crops += [
                x[..., t : t + crop, c : c + crop]
                for t in grid_offsets(h, crop, grid)
                for c in grid_offsets(w, crop, grid)
            ]
        batch = torch.cat(crops)  # (N grid^2, 3, crop, crop)
        p = torch.cat(
            [_flip_averaged(model, batch[i : i + batch_size], device) for i in range(0, len(batch), batch_size)]
        )
        out += p.view(len(inputs), grid * grid, -1).mean(1)
    return out / len(inputs[0])


@torch.no_grad()
def dense_posterior(model: VGG, img: Image.Image, scales: Sequence[int], device: Device = "cpu") -> torch.Tensor:
    """(K,) posterior: per Q, softmax of the spatially averaged score map, averaged with the flip."""
    return _dense(model, [[_rescaled(img, q, model.preprocessing) for q in scales]], device)[0]


def grid_offsets(size: int, crop: int, n: int = 5) -> list[int]:
    """n evenly spaced crop offsets from one border to the other."""
    return [int(round(v)) for v in np.linspace(0, size - crop, n)]


def multicrop_posterior(
    model: VGG, img: Image.Image, scales: Sequence[int], device: Device = "cpu", grid: int = 5, crop: int | None = None
) -> torch.Tensor:
    """(K,) posterior: per Q, the mean softmax over grid x grid crops and their flips."""
    inputs = [[_rescaled(img, q, model.preprocessing) for q in scales]]
    return _multicrop(model, inputs, device, batch_size=grid * grid, grid=grid, crop=crop)[0]


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
    batch_size: int = defaults.BATCH_SIZE,
) -> torch.Tensor:
    """(N, K) posteriors of `images` (an iterable of PIL images) under `protocol`."""
    if protocol not in PROTOCOLS:
        raise EvaluateError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    inputs = ([_rescaled(img, q, model.preprocessing) for q in scales] for img in images)
    base = _base_posteriors(model, inputs, _bases([protocol]), device, progress, batch_size)
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
    inputs: Iterable[Sequence[torch.Tensor]],
    bases: Sequence[str],
    device: Device,
    progress: Callable[[int], object] | None,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """{protocol: (N, K)} for each of `bases`, each computed once per image, `batch_size` images at a time."""
    rows: dict[str, list[torch.Tensor]] = {b: [] for b in bases}
    it = iter(inputs)
    while chunk := list(itertools.islice(it, batch_size)):
        if "dense" in rows:
            rows["dense"].append(_dense(model, chunk, device))
        if "multicrop" in rows:
            rows["multicrop"].append(_multicrop(model, chunk, device, batch_size))
        if progress is not None:
            progress(len(chunk))
    return {b: torch.cat(r) if r else torch.zeros(0, model.num_classes) for b, r in rows.items()}


class _Unreadable(NamedTuple):
    """An ImageError as a loader worker sends it back (the exception itself does not survive pickling)."""

    path: str
    reason: str


class _Inputs(torch.utils.data.Dataset):
    """Each image's (1, 3, H, W) net inputs at every scale Q: decoded and rescaled by loader workers."""

    def __init__(self, paths: Sequence[Path], scales: Sequence[int], prep: Preprocessing, fast_decode: bool) -> None:
        self.paths, self.scales, self.prep, self.fast_decode = paths, scales, prep, fast_decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> list[torch.Tensor] | _Unreadable:
        path, q_max = self.paths[i], max(self.scales)
        try:
            img = load_rgb(path, min_side=q_max if self.fast_decode else None)
            check_scaled_pixels(img.height, img.width, q_max, path)  # before any resize
        except ImageError as e:
            return _Unreadable(e.path, e.reason)
        return [_rescaled(img, q, self.prep) for q in self.scales]


def _load(dataset: _Inputs, workers: int, device: Device) -> Iterator[list[torch.Tensor]]:
    """The dataset's items in order, from `workers` loader processes (as many as the CPUs allow)."""
    workers = min(share_cpus(workers, torch.device(device).type).workers, len(dataset))
    items = (
        torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, prefetch_factor=4, worker_init_fn=worker_init
        )
        if workers
        else (dataset[i] for i in range(len(dataset)))
    )
    for item in items:
        if isinstance(item, _Unreadable):
            raise ImageError(item.path, item.reason)
        yield item


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
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = 0,
) -> list[dict]:
    """One row per (net, protocol) with top-1/top-5 error, plus a 'fusion' row per protocol when there
    are several nets (their posteriors averaged). Each net's dense and multi-crop posteriors are computed
    once and shared by every protocol asked for.

    Images are fully decoded and rescaled (the paper's rescale), by `workers` loader processes; `fast_decode`
    lets JPEGs be decoded at 1/2..1/8 size first (PIL draft mode), faster on large photos but not the same
    pixels. `batch_size` images (dense: those of one rescaled size) or crops (multi-crop) share a forward
    pass, their flipped copies riding along; it changes nothing beyond float rounding."""
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
            keep_freed_memory()  # each batch's maps on the last one's pages (utils.heap)
        inputs = _load(_Inputs(samples.paths, scales, model.preprocessing, fast_decode), workers, device)
        per_net.append(_base_posteriors(net, inputs, bases, device, progress, batch_size))
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
