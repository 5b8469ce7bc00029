"""Decoding and rescaling images in loader workers: each image arrives as one uint8 tensor per scale.

Rescaling uses PIL's bilinear filter, which antialiases when it shrinks, on the fully decoded 8-bit image,
whether the input is a path, a PIL image or an array (one definition of the rescale: the same image gives the
same descriptor). Only `Protocol.fast_decode` lets a JPEG be decoded at reduced size first.
A bad file arrives as its reason instead, so one corrupt JPEG never stops a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggfeat.data.images import MAX_PIXELS, EncodedImage, ImageError, check_scaled_pixels, decode_rgb, load_rgb, to_rgb
from vggfeat.utils.cpus import share_cpus, worker_init

from .plan import EXIF_ORIENTATION
from .protocol import Protocol, scaled_size

# what the extraction API accepts as one image: a file, a PIL image or an (H, W, 3) uint8 array; the shard
# writer also passes a tar member's bytes (EncodedImage)
ImageInput = str | Path | Image.Image | np.ndarray | EncodedImage


class ScaledImages(torch.utils.data.Dataset):
    """Item i: (i, [(3, H_q, W_q) uint8 per scale], None) or (i, None, reason); with `raw_jpeg`, a JPEG file
    arrives still compressed, as (i, RawJpeg, None), for the GPU to decode (features.gpudecode)."""

    def __init__(
        self,
        images: Sequence[ImageInput],
        protocol: Protocol,
        indices: Sequence[int] | None = None,
        raw_jpeg: bool = False,
    ) -> None:
        self.images, self.protocol, self.raw_jpeg = images, protocol, raw_jpeg
        self.indices = list(range(len(images))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def _decode(self, item: ImageInput) -> Image.Image:
        if isinstance(item, Image.Image):
            return to_rgb(item)
        if isinstance(item, np.ndarray):
            return to_rgb(Image.fromarray(item))
        if isinstance(item, EncodedImage):  # a tar member's bytes: decoded here, in the loader worker
            min_side = max(self.protocol.scales) if self.protocol.fast_decode else None
            return decode_rgb(item.data, item.name, min_side=min_side)
        # with fast_decode: JPEG draft decoding at 1/2..1/8 size, only while the smallest side stays >= the largest Q
        return load_rgb(item, min_side=max(self.protocol.scales) if self.protocol.fast_decode else None)

    def __getitem__(self, k: int) -> tuple[int, list[torch.Tensor] | RawJpeg | None, str | None]:
        i = self.indices[k]
        item = self.images[i]
        if self.raw_jpeg and isinstance(item, (str, Path)):
            raw = read_raw_jpeg(item, max(self.protocol.scales))
            if raw is not None:
                return i, raw, None
        try:
            img = self._decode(self.images[i])
            check_scaled_pixels(img.height, img.width, max(self.protocol.scales), self.images[i])
        except ImageError as e:
            return i, None, e.reason
        views = []
        for q in self.protocol.scales:
            h, w = scaled_size(img.height, img.width, q, self.protocol.snap)
            resized = img if (w, h) == img.size else img.resize((w, h), Image.Resampling.BILINEAR)
            views.append(torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1))  # (3, H, W)
        return i, views, None


@dataclass(frozen=True)
class RawJpeg:
    """A JPEG file's bytes, undecoded: what a worker hands over for GPU decoding (never float pixels)."""

    data: torch.Tensor  # (n_bytes,) uint8
    orientation: int  # EXIF orientation (1: as stored)
    height: int  # as stored, before orientation
    width: int


def read_raw_jpeg(path: str | Path, q_max: int) -> RawJpeg | None:
    """The bytes of a baseline 8-bit RGB or grayscale JPEG that passes the loader's size checks; None for
    anything else (it is decoded on the CPU as usual, which also names what is wrong with a bad file)."""
    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > MAX_PIXELS:
                return None
            orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
            h, w = img.height, img.width
        check_scaled_pixels(h, w, q_max, path)
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except Exception:  # unreadable, corrupt or too large: the CPU path reports it
        return None
    return RawJpeg(data, orientation, h, w)


def _as_list(batch: list) -> list:
    return batch


LOADER_BATCH = 4


def usable_workers(workers: int, n_items: int, device_type: str = "cpu") -> int:
    """`workers` as the CPUs this process may use allow beside its compute threads (utils.cpus: more only
    contend, and torch warns about them), and at most the loader batches there are (3 images need no 4)."""
    return max(0, min(share_cpus(workers, device_type).workers, -(-n_items // LOADER_BATCH)))


def make_loader(
    dataset: ScaledImages, workers: int, pin_memory: bool, device: str = "cpu"
) -> torch.utils.data.DataLoader:
    """An ordered loader yielding lists of items; workers (at most `usable_workers`, niced below the compute
    threads) decode ahead of the net."""
    workers = usable_workers(workers, len(dataset), device)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=LOADER_BATCH,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init if workers > 0 else None,
    )
