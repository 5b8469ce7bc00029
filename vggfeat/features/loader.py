"""Decoding and rescaling images in loader workers: each image arrives as one uint8 tensor per scale.

Rescaling uses PIL's bilinear filter, which antialiases when it shrinks, on the fully decoded 8-bit image,
whether the input is a path, a PIL image or an array (one definition of the rescale: the same image gives the
same descriptor). Only `Protocol.fast_decode` lets a JPEG be decoded at reduced size first.
A bad file arrives as its reason instead, so one corrupt JPEG never stops a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggfeat.data.images import ImageError, check_scaled_pixels, load_rgb, to_rgb

from .protocol import Protocol, scaled_size

# what the extraction API accepts as one image: a file, a PIL image or an (H, W, 3) uint8 array
ImageInput = str | Path | Image.Image | np.ndarray


class ScaledImages(torch.utils.data.Dataset):
    """Item i: (i, [(3, H_q, W_q) uint8 per scale], None) or (i, None, reason)."""

    def __init__(self, images: Sequence[ImageInput], protocol: Protocol, indices: Sequence[int] | None = None) -> None:
        self.images, self.protocol = images, protocol
        self.indices = list(range(len(images))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _decode(self, item: ImageInput) -> Image.Image:
        if isinstance(item, Image.Image):
            return to_rgb(item)
        if isinstance(item, np.ndarray):
            return to_rgb(Image.fromarray(item))
        # with fast_decode: JPEG draft decoding at 1/2..1/8 size, only while the smallest side stays >= the largest Q
        return load_rgb(item, min_side=max(self.protocol.scales) if self.protocol.fast_decode else None)

    def __getitem__(self, k: int) -> tuple[int, list[torch.Tensor] | None, str | None]:
        i = self.indices[k]
        try:
            img = self._decode(self.images[i])
            check_scaled_pixels(img.height, img.width, max(self.protocol.scales), self.images[i])
        except ImageError as e:
            return i, None, e.reason
        views = []
        for q in self.protocol.scales:
            h, w = scaled_size(img.height, img.width, q, self.protocol.snap)
            resized = img if (w, h) == img.size else img.resize((w, h), Image.BILINEAR)
            views.append(torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1))  # (3, H, W)
        return i, views, None


def _as_list(batch: list) -> list:
    return batch


LOADER_BATCH = 4


def usable_workers(workers: int, n_items: int) -> int:
    """`workers` capped at the CPUs this process may use (more only contend, and torch warns about them) and
    at the loader batches there are (3 images need no 4 processes)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(workers, cpus, -(-n_items // LOADER_BATCH)))


def make_loader(dataset: ScaledImages, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """An ordered loader yielding lists of items; workers (at most `usable_workers`) decode ahead of the net."""
    workers = usable_workers(workers, len(dataset))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=LOADER_BATCH,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
