"""`--gpu-decode`: JPEGs decoded on the GPU in batches (torchvision.io.decode_jpeg on a CUDA device, the
card's JPEG engine) and rescaled there, so the CPU only reads bytes.

The rescale is torch's antialiased bilinear, not PIL's: the pixels differ slightly from the exact CPU path
(the default), so a store records the option in its settings. Files the GPU path does not take (not JPEG,
CMYK, corrupt) arrive already decoded by the loader, or with their reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vggfeat.errors import InputError

from .loader import RawJpeg
from .protocol import Protocol, scaled_size

Loaded = tuple[int, list[torch.Tensor] | RawJpeg | None, str | None]


def check_gpu_decode(device: torch.device) -> None:
    if device.type != "cuda":
        raise InputError(
            f"--gpu-decode decodes JPEGs on a CUDA GPU, but extraction runs on {device}; "
            "drop --gpu-decode or use --device cuda on a machine with a GPU"
        )


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as EXIF orientation 1-8 says to show it (PIL's ImageOps.exif_transpose)."""
    if orientation in (2, 5, 7):  # mirrored first
        x = x.flip(-1)
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # counter-clockwise quarter turns
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if orientation == 4 else x


def rescale(x: torch.Tensor, protocol: Protocol) -> list[torch.Tensor]:
    """One (3, H_q, W_q) uint8 view per scale of a decoded (3, H, W) uint8 image, on its device."""
    h, w = x.shape[-2:]
    views = []
    xf = x[None].float()
    for q in protocol.scales:
        size = scaled_size(h, w, q, protocol.snap)
        if size == (h, w):
            views.append(x)
            continue
        y = F.interpolate(xf, size=size, mode="bilinear", antialias=True, align_corners=False)
        views.append(y[0].round_().clamp_(0, 255).to(torch.uint8))
    return views


def decode_views(loaded: Sequence[Loaded], protocol: Protocol, device: torch.device) -> list[Loaded]:
    """The loader's items with every RawJpeg decoded on `device` (one batched call) and rescaled: (i, views,
    None), or (i, None, reason) for a JPEG the decoder refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    check_gpu_decode(device)
    raws = [(k, item[1]) for k, item in enumerate(loaded) if isinstance(item[1], RawJpeg)]
    out = list(loaded)
    if not raws:
        return out
    datas = [r.data for _, r in raws]
    with warnings.catch_warnings():  # torchvision's notice that its decoders move to torchcodec one day
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            images = []
            for data in datas:
                try:
                    images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as e:
                    images.append(str(e))
    for (k, raw), img in zip(raws, images, strict=True):
        i = loaded[k][0]
        if isinstance(img, str):
            out[k] = (i, None, f"truncated or corrupt image (GPU decoder: {img})")
        else:
            out[k] = (i, rescale(orient(img, raw.orientation), protocol), None)
    return out
