"""The training set's mean RGB (Sect. 2.1, the only preprocessing) and the eigen-decomposition of its
RGB pixel covariance (the PCA colour shift of Sect. 3.1), computed once and cached beside the data.
Unreadable images are skipped with a warning naming them, and counted in the statistics."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vggfeat import defaults
from vggfeat.errors import VggfeatError
from vggfeat.utils.cpus import share_cpus, worker_init
from vggfeat.utils.device import resolve_device
from vggfeat.utils.files import atomic_write_json, read_json
from vggfeat.utils.inputs import listing_digest

from .folder import scan_folder
from .images import ImageError, decode_rgb, load_rgb
from .tar_shards import TarSample, iter_tar_samples

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)
CACHE_NAME = "mean_rgb.json"


class StatsError(VggfeatError, ValueError):
    """Pixel statistics that cannot be had: no training folder, no readable image, a broken cache file."""


def pixel_stats(
    paths: Sequence[Path],
    *,
    max_images: int = 0,
    min_side: int = 256,
    device: str | torch.device = "cpu",
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = 0,
) -> dict[str, Any]:
    """mean (3,), eigval (3,) descending and eigvec (3x3, columns) of RGB pixels in 0-255 units; `images`
    counts the images used, `skipped` lists the unreadable ones ("path: reason").

    Images are decoded with their smallest side reduced to about `min_side` (JPEG draft) - the statistics
    of a rescaled image are those of the original to well within the colour shift's noise - by `workers`
    loader processes; the pixels of `batch_size` images at a time are summed on `device` (in float64).
    """
    paths = list(paths)[:max_images] if max_images > 0 else list(paths)
    loads = [functools.partial(load_rgb, p, min_side=min_side) for p in paths]
    return _stats(loads, device=device, batch_size=batch_size, workers=workers)


class _Pixels:
    """Each image's (P, 3) uint8 pixels, or the reason it cannot be read (ImageErrors do not survive pickling)."""

    def __init__(self, loads: Sequence[Callable[[], Image.Image]]) -> None:
        self.loads = loads

    def __len__(self) -> int:
        return len(self.loads)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        return _pixels(self.loads[i])


def _pixels(load: Callable[[], Image.Image]) -> torch.Tensor | str:
    import torch

    try:
        return torch.from_numpy(np.array(load(), dtype=np.uint8).reshape(-1, 3))  # a copy: PIL's buffer is read-only
    except ImageError as e:
        return str(e)


def _decoded(images: Iterable[Callable[[], Image.Image]], workers: int, device_type: str) -> Iterator:
    """The pixels of each image in order: decoded by loader workers when `images` is a list and the CPUs allow."""
    import torch

    if isinstance(images, Sequence):  # a stream (tar shards) is decoded here, in order
        workers = min(share_cpus(workers, device_type).workers, len(images))
        if workers:
            loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
                # a map-style dataset by duck typing: torch is imported lazily here, not to subclass its Dataset
                cast("torch.utils.data.Dataset", _Pixels(images)),
                batch_size=None,
                num_workers=workers,
                worker_init_fn=worker_init,
            )
            return iter(loader)
    return map(_pixels, images)


def _stats(
    images: Iterable[Callable[[], Image.Image]],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = 0,
) -> dict[str, Any]:
    """pixel_stats of images given as decoders (each raises ImageError for a bad image)."""
    import torch

    dev = resolve_device(device) if isinstance(device, str) else device
    n, s1, s2 = 0, torch.zeros(3, dtype=torch.float64, device=dev), torch.zeros(3, 3, dtype=torch.float64, device=dev)
    skipped: list[str] = []
    seen = 0
    items = _decoded(images, workers, dev.type)
    while chunk := list(itertools.islice(items, batch_size)):
        seen += len(chunk)
        for reason in (item for item in chunk if isinstance(item, str)):
            log.warning("skipping an unreadable image: %s", reason)
            skipped.append(reason)
        pixels = [item for item in chunk if not isinstance(item, str)]
        if pixels:
            px = torch.cat(pixels).to(dev).double()  # (P, 3): the batch's pixels, sent as uint8
            n += len(px)
            s1 += px.sum(0)
            s2 += px.T @ px
    if n == 0:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise StatsError(f"no pixels: none of the {seen} images can be read{first}")
    mean = s1.cpu().numpy() / n
    cov = s2.cpu().numpy() / n - np.outer(mean, mean)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = np.clip(val[order], 0, None), vec[:, order]
    # eigval in the convention of Krizhevsky et al.'s published values (55.46, 4.794, 1.148): the
    # eigenvalues of the covariance of pixels in [0, 1], times 255 (= variance in 0-255 units / 255).
    return {
        "mean": mean.tolist(),
        "eigval": (val / 255.0).tolist(),
        "eigvec": vec.tolist(),
        "images": seen - len(skipped),
        "pixels": int(n),
        "skipped": skipped,
    }


def cached_stats(
    root: str | Path,
    paths: Sequence[Path] | None = None,
    *,
    refresh: bool = False,
    max_images: int = 0,
    min_side: int = 256,
    device: str | torch.device = "cpu",
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = 0,
) -> dict[str, Any]:
    """pixel_stats of `paths` (default: the images of `root`/train), cached as `root`/mean_rgb.json under a key
    of all they depend on: max_images, min_side, and a digest of the images used with their sizes and mtimes.
    A cache of other images or settings, a broken one, or one without a key is recomputed and replaced;
    `reused` in the result says whether it was read from the cache."""
    root = Path(root)
    paths = list(_train_paths(root) if paths is None else paths)
    paths = paths[:max_images] if max_images > 0 else paths
    key = {
        "max_images": max_images,
        "min_side": min_side,
        "n_images": len(paths),
        "images_sha256": listing_digest([os.path.abspath(p) for p in paths]),  # however `root` is spelled
    }
    compute = functools.partial(
        pixel_stats, paths, min_side=min_side, device=device, batch_size=batch_size, workers=workers
    )
    return _reuse_or_compute(root / CACHE_NAME, key, compute, refresh)


def _train_paths(root: Path) -> Sequence[Path]:
    train = root / "train"
    if not train.is_dir():
        cache = f" to check {root / CACHE_NAME} against" if (root / CACHE_NAME).exists() else ""
        raise StatsError(
            f"{root} has no train/ folder{cache} (expected {train}/<class>/<image>); give the dataset root"
        )
    try:
        return scan_folder(train).paths
    except ValueError as e:  # no class folders or no images
        raise StatsError(str(e)) from None


def cached_tar_stats(folder: str | Path, shards: Sequence[str], *, min_side: int = 256) -> dict[str, Any]:
    """pixel_stats of every image in tar `shards` (streamed), cached as `folder`/mean_rgb.json - the run folder,
    as shards are often shared and read-only - under a key of min_side and the shards' names, sizes and mtimes,
    so other shards (a run folder reused with --overwrite) are computed afresh rather than given another
    dataset's mean."""
    key = {
        "min_side": min_side,
        "shards": [[os.path.basename(u), (st := os.stat(u)).st_size, st.st_mtime_ns] for u in shards],
    }

    def images() -> Iterator[Callable[[], Image.Image]]:
        for url in shards:
            for item in iter_tar_samples(url):
                if isinstance(item, TarSample):
                    name = f"{item.url}:{item.image_member}"
                    yield functools.partial(decode_rgb, item.data, name, min_side=min_side)

    return _reuse_or_compute(Path(folder) / CACHE_NAME, key, lambda: _stats(images()))


def _reuse_or_compute(
    cache: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]], refresh: bool = False
) -> dict[str, Any]:
    """The statistics in `cache` if they were computed under `key`; else `compute()`'s, written there with it."""
    if cache.exists() and not refresh:
        try:
            stats = _read_cache(cache)
        except StatsError as e:
            log.warning("%s; recomputing it", e)
        else:
            if stats.get("key") == key:
                return {**stats, "reused": True}
            log.info("%s was computed from other images or settings; recomputing it", cache)
    stats = {**compute(), "key": key}
    atomic_write_json(cache, stats)
    return {**stats, "reused": False}


def _read_cache(cache: Path) -> dict[str, Any]:
    stats = read_json(cache, StatsError, f"delete it or run `vggfeat mean-rgb {cache.parent} --refresh`")
    shapes = {"mean": (3,), "eigval": (3,), "eigvec": (3, 3)}
    if not isinstance(stats, dict) or any(not _real_array(stats.get(k), shape) for k, shape in shapes.items()):
        raise StatsError(f"{cache}: not a mean_rgb.json (needs mean, eigval and eigvec of RGB, as finite numbers)")
    images = stats.get("images")
    if min(stats["eigval"]) < 0 or not (isinstance(images, int) and not isinstance(images, bool) and images > 0):
        # what no computation gives (_stats clips the eigenvalues at 0 and counts the images it read)
        raise StatsError(f"{cache}: its eigval or images are not pixel statistics (eigval >= 0, images >= 1)")
    return stats


def _real_array(value: Any, shape: tuple[int, ...]) -> bool:
    """Whether `value` (parsed JSON) is an array of `shape` of finite real numbers (json reads NaN and Infinity)."""
    try:
        if np.shape(value) != shape:
            return False
    except ValueError:  # ragged lists
        return False
    flat = np.ravel(np.array(value, dtype=object))
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in flat)
