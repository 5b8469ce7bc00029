"""Training and validation inputs (Sect. 3.1): per-sample augmentation keyed by (epoch, index), and a
batch sampler that deals each process its share of a global batch, reseeded per epoch and resumable
mid-epoch. JPEGs decode in DataLoader workers, at reduced size when S is small enough (draft mode), and
only the crop's window is resampled. An unreadable image is skipped: the next readable one takes its place in
the batch (so the global batch keeps its size and a resumed run stays the same run) and its path is passed on
for the loop to warn about and count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vggfeat.config import ConfigError
from vggfeat.data.folder import Samples
from vggfeat.data.images import ImageError, load_rgb_tensor
from vggfeat.data.transforms import center_crop, sample_rng, train_crop
from vggfeat.errors import VggfeatError


class NoReadableImages(VggfeatError, RuntimeError):
    """Every image of a training set failed to decode."""


def _decode(samples: Samples, i: int, min_side: int, decoded: dict[int, torch.Tensor] | None) -> torch.Tensor:
    """Image i as a (3, H, W) uint8 tensor, from `decoded` (data.cache_decoded) when it was read before."""
    if decoded is None:
        return load_rgb_tensor(samples.paths[i], min_side=min_side)
    if i not in decoded:
        decoded[i] = load_rgb_tensor(samples.paths[i], min_side=min_side)
    return decoded[i]


def _load_or_next(
    samples: Samples, index: int, min_side: int, decoded: dict[int, torch.Tensor] | None = None
) -> tuple[torch.Tensor, int, tuple[str, ...]]:
    """Image `index`, or the first readable one after it (wrapping); also the "path: reason" of those skipped."""
    skipped: list[str] = []
    n = len(samples)
    for k in range(n):
        i = (index + k) % n
        try:
            return _decode(samples, i, min_side, decoded), i, tuple(skipped)
        except ImageError as e:
            skipped.append(str(e))
    raise NoReadableImages(f"none of the {n} images can be read (first: {skipped[0]})")


class TrainSet(torch.utils.data.Dataset):
    """Item (epoch, index) -> (uint8 crop (H, W, 3), colour-shift alpha (3,), label, skipped "path: reason").

    `cache`: keep each decoded image in memory after its first read (data.cache_decoded), for small datasets
    read with workers: 0 - a loader's workers start afresh each epoch and would each decode their own copies."""

    def __init__(
        self,
        samples: Samples,
        *,
        seed: int,
        scale: tuple[int, int],
        crop: int,
        flip: bool,
        color_sigma: float,
        cache: bool = False,
    ) -> None:
        self.samples, self.seed, self.scale, self.crop = samples, seed, scale, crop
        self.flip, self.color_sigma = flip, color_sigma
        self.decoded: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, tuple[str, ...]]:
        epoch, index = key
        rng = sample_rng(self.seed, epoch, index)
        img, used, skipped = _load_or_next(self.samples, index, self.scale[1], self.decoded)  # decode-time downscaling
        crop, alpha = augment(img, rng, scale=self.scale, crop=self.crop, flip=self.flip, color_sigma=self.color_sigma)
        return crop, alpha, self.samples.labels[used], skipped

    def epoch_loader(
        self,
        *,
        epoch: int,
        start_step: int,
        split: BatchSplit,
        rank: int,
        workers: int,
        pin_memory: bool,
        collate_fn: Callable[[list], tuple],
    ) -> torch.utils.data.DataLoader:
        """This process's micro-batches of `epoch` from step `start_step`, in the order the loop takes them."""
        sampler = GlobalBatchSampler(
            len(self), seed=self.seed, epoch=epoch, split=split, rank=rank, start_step=start_step
        )
        return torch.utils.data.DataLoader(
            self, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn
        )


def augment(
    img: torch.Tensor, rng: np.random.Generator, *, scale: tuple[int, int], crop: int, flip: bool, color_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sect. 3.1's augmentation of one decoded (3, H, W) uint8 image: the (crop, crop, 3) uint8 crop at a random
    scale and place, flipped at random, and the colour shift's alpha (3,) - applied on the batch later."""
    out = train_crop(img, rng, scale=scale, crop=crop, flip=flip)
    alpha = rng.normal(0.0, color_sigma, 3) if color_sigma > 0 else np.zeros(3)
    return out, torch.from_numpy(alpha.astype(np.float32))


class ValSet(torch.utils.data.Dataset):
    """Item index -> (uint8 central crop at smallest side `size`, label, skipped "path: reason").

    An unreadable image comes back as a blank crop with label -1, which `validate` leaves out of the counts."""

    def __init__(self, samples: Samples, *, size: int, crop: int, cache: bool = False) -> None:
        self.samples, self.size, self.crop = samples, size, crop
        self.decoded: dict[int, torch.Tensor] | None = {} if cache else None  # as TrainSet's

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, tuple[str, ...]]:
        try:
            img = _decode(self.samples, index, self.size, self.decoded)
        except ImageError as e:
            return torch.zeros(self.crop, self.crop, 3, dtype=torch.uint8), -1, (str(e),)
        return center_crop(img, size=self.size, crop=self.crop), self.samples.labels[index], ()

    def rank_share(self, rank: int, world: int, max_val: int) -> torch.utils.data.Dataset:
        """Every world-th image from `rank` on, of the first `max_val` (all when max_val <= 0)."""
        n = len(self) if max_val <= 0 else min(max_val, len(self))
        return torch.utils.data.Subset(self, list(range(rank, n, world)))


def collate_skips(items: list[tuple]) -> tuple:
    """default_collate for everything but the last field, the skipped-image messages, which are joined in a list."""
    batch = torch.utils.data.default_collate([item[:-1] for item in items])
    return (*batch, [msg for item in items for msg in item[-1]])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of sample indices: the same on every process (the distributed sampler)."""
    return np.random.default_rng([seed, 0x5EED, epoch]).permutation(n)


@dataclass(frozen=True)
class BatchSplit:
    """How every global batch is dealt (Sect. 3.1: the same batch whatever the number of GPUs): each of `world`
    processes takes `accum` micro-batches of `per_device` samples per step. Made once per run by batch_split."""

    batch_size: int  # global: per_device x world x accum
    per_device: int
    world: int
    accum: int  # gradient-accumulation steps

    def steps_per_epoch(self, n: int) -> int:
        """Full global batches in an epoch of `n` samples (the remainder is dropped, as iterations of fixed size)."""
        return n // self.batch_size


def batch_split(batch_size: int, per_device: int, world: int) -> BatchSplit:
    """The split of optim.batch_size into `world` processes of optim.per_device_batch; a ConfigError when the
    global batch is not a multiple of per_device x world."""
    per_step = per_device * world
    if batch_size % per_step:
        raise ConfigError(
            f"global batch optim.batch_size={batch_size} is not a multiple of "
            f"optim.per_device_batch={per_device} x {world} processes; change one of them"
        )
    return BatchSplit(batch_size, per_device, world, batch_size // per_step)


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this process's micro-batches of (epoch, index) keys from step `start_step` of `epoch`.

    Global batch g of the epoch is order[g*B:(g+1)*B]; it is cut into world x accum chunks of
    per_device_batch, and chunk rank * accum + micro is `rank`'s micro-batch `micro` -
    so the union over processes and micro-steps is the same global batch whatever the process count.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, split: BatchSplit, rank: int, start_step: int = 0) -> None:
        self.n, self.seed, self.epoch, self.split, self.rank, self.start_step = n, seed, epoch, split, rank, start_step

    def __len__(self) -> int:
        return (self.split.steps_per_epoch(self.n) - self.start_step) * self.split.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        b, accum, per_device = self.split.batch_size, self.split.accum, self.split.per_device
        for step in range(self.start_step, self.split.steps_per_epoch(self.n)):
            batch = order[step * b : (step + 1) * b]
            for micro in range(accum):
                chunk = (self.rank * accum + micro) * per_device
                yield [(self.epoch, int(i)) for i in batch[chunk : chunk + per_device]]
