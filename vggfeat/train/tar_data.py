"""Training and validation inputs from webdataset tar shards, with the augmentation of class folders (Sect. 3.1).

An epoch is one stream: the shards in a seeded per-epoch order, samples in tar order, cut into one contiguous
share per process (the counts of the shard index make the shares equal, so nothing is padded or repeated and
only the tail that cannot fill a global batch is left out, as with folders), each share shuffled through a
bounded buffer. The shuffle is computed on sample positions before any reading, so every DataLoader worker
knows which positions its micro-batches hold: each streams its process's share and decodes only its own. The
data of a step depends on (seed, epoch, step, process count) only - not on the worker count - and resuming at
step s skips the positions of steps < s without decoding them. The price: each of W workers reads every
sample of its process's share - headers and member bytes, copied into memory (from the page cache after the
first) - W-fold work that is small next to decoding the JPEGs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vggfeat.config import ConfigError
from vggfeat.data.images import ImageError, decode_rgb_tensor
from vggfeat.data.tar_shards import TarProblem, TarSample, expand_shard_patterns
from vggfeat.data.transforms import center_crop, sample_rng
from vggfeat.errors import DatasetError
from vggfeat.utils.distributed import DistInfo, barrier

from .data import BatchSplit, augment
from .shard_index import ShardCount, index_shards, labelled_samples


@dataclass(frozen=True)
class TarSplit:
    """A training or validation set as tar shards: the shards (in the given order) and their counts."""

    counts: tuple[ShardCount, ...]
    classes: tuple[str, ...]  # "0" ... "K-1": .cls labels are class indices

    def __len__(self) -> int:
        return sum(c.samples for c in self.counts)


def epoch_shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x7A25, epoch]).permutation(n_shards)


def buffer_shuffle(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of `buffer` samples emits a stream of n (webdataset's shuffle, on
    positions): once the buffer is full each new sample pushes out a uniform draw from it, then it drains."""
    out, buf, j = np.empty(n, dtype=np.int64), [], 0
    draws = rng.random(n)
    for q in range(n + buffer - 1):
        if q < n:
            buf.append(q)
        if len(buf) == buffer or (q >= n and buf):
            k = int(draws[j] * len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            out[j], j = buf.pop(), j + 1
    return out


def _decode(sample: TarSample, min_side: int) -> torch.Tensor:
    """The sample's image as a (3, H, W) uint8 tensor; ImageError names the tar and member."""
    return decode_rgb_tensor(sample.data, f"{sample.url}:{sample.image_member}", min_side=min_side)


def _stream(split: TarSplit, order: np.ndarray, start: int, stop: int) -> Iterator[tuple[int, TarSample, int]]:
    """(position - start, sample, label) for stream positions [start, stop) of the shards taken in `order`."""
    pos = 0
    for k in order:
        count = split.counts[k]
        if pos + count.samples <= start:
            pos += count.samples  # a shard wholly before the share: not opened
            continue
        if pos >= stop:
            return
        seen = 0
        with contextlib.closing(labelled_samples(count.url)) as items:
            for item in items:
                if isinstance(item, TarProblem):
                    continue  # left out by the index too (and warned about there)
                if seen == count.samples:
                    raise _changed(count, f"more than {seen}")
                if pos >= start:
                    yield pos - start, item[0], item[1]
                seen, pos = seen + 1, pos + 1
                if pos >= stop:
                    return
        if seen != count.samples:
            raise _changed(count, str(seen))


def _changed(count: ShardCount, now: str) -> DatasetError:
    return DatasetError(
        f"tar shard {count.url} now holds {now} labelled samples where the run's shard index counted "
        f"{count.samples}: it changed during the run; restore it (or start over with --overwrite)"
    )


class TarTrainSet:
    """The training shards with the run's augmentation settings; `epoch_loader` gives a process its micro-batches."""

    def __init__(
        self,
        split: TarSplit,
        *,
        seed: int,
        scale: tuple[int, int],
        crop: int,
        flip: bool,
        color_sigma: float,
        shuffle_buffer: int,
    ) -> None:
        self.split, self.seed, self.scale, self.crop = split, seed, scale, crop
        self.flip, self.color_sigma, self.shuffle_buffer = flip, color_sigma, shuffle_buffer

    def __len__(self) -> int:
        return len(self.split)

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
        stream = TarTrainStream(self, epoch=epoch, start_step=start_step, split=split, rank=rank)
        return torch.utils.data.DataLoader(
            stream, batch_size=split.per_device, num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn
        )


class TarTrainStream(torch.utils.data.IterableDataset):
    """One process's micro-batches of one epoch from step `start_step`, as samples (per_device at a time):
    (uint8 crop (H, W, 3), colour-shift alpha (3,), label, skipped "tar:member: reason").

    Worker w of W yields micro-batches start + w, start + w + W, ... - the order in which the DataLoader takes
    them. An image that does not decode comes back blank with label -1, which the loss leaves out: its slot
    stays, so the positions (and a resumed run) do not shift."""

    def __init__(self, data: TarTrainSet, *, epoch: int, start_step: int, split: BatchSplit, rank: int) -> None:
        self.data, self.epoch, self.start_step = data, epoch, start_step
        self.per_device, self.accum, self.rank = split.per_device, split.accum, rank
        self.steps = split.steps_per_epoch(len(data))
        self.share = self.steps * split.batch_size // split.world  # samples per process per epoch

    def slots(self, worker: int, workers: int) -> np.ndarray:
        """The share's output positions that `worker` yields, in order."""
        micro = np.arange(self.start_step * self.accum + worker, self.steps * self.accum, workers)
        return (micro[:, None] * self.per_device + np.arange(self.per_device)).reshape(-1)

    def positions(self, worker: int, workers: int) -> Iterator[tuple[int, TarSample, int]]:
        """(slot, sample, label) of this worker, in slot order, streaming the share once; memory holds the
        samples read ahead of their turn (within the shuffle buffer's reach)."""
        d = self.data
        rng = np.random.default_rng([d.seed, 0xB0F, self.epoch, self.rank])
        order = buffer_shuffle(self.share, d.shuffle_buffer, rng)  # slot -> position in the share
        slots = self.slots(worker, workers)
        wanted = dict(zip(order[slots].tolist(), slots.tolist(), strict=True))  # position -> slot
        mine, ready, nxt = slots.tolist(), {}, 0
        if not mine:
            return
        start = self.rank * self.share
        shard_order = epoch_shard_order(len(d.split.counts), d.seed, self.epoch)
        for q, sample, label in _stream(d.split, shard_order, start, start + self.share):
            slot = wanted.pop(q, None)
            if slot is None:
                continue  # another worker's (or, after a resume, already trained on)
            ready[slot] = (sample, label)
            while nxt < len(mine) and mine[nxt] in ready:
                yield mine[nxt], *ready.pop(mine[nxt])
                nxt += 1
            if nxt == len(mine):
                return
        raise DatasetError(f"the tar shards ran out {len(mine) - nxt} samples short of the epoch's share")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, tuple[str, ...]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        d = self.data
        for slot, sample, label in self.positions(worker, workers):
            # the epoch's position of the sample: unique over processes, the same after a resume
            rng = sample_rng(d.seed, self.epoch, self.rank * self.share + slot)
            try:
                img = _decode(sample, d.scale[1])  # decode-time downscaling, as for folders
            except ImageError as e:
                blank = torch.zeros(d.crop, d.crop, 3, dtype=torch.uint8)
                yield blank, torch.zeros(3), -1, (str(e),)
                continue
            crop, alpha = augment(img, rng, scale=d.scale, crop=d.crop, flip=d.flip, color_sigma=d.color_sigma)
            yield crop, alpha, label, ()


class TarValSet:
    """The validation shards: central crops at `size`; `rank_share` deals the shards over processes."""

    def __init__(self, split: TarSplit, *, size: int, crop: int) -> None:
        self.split, self.size, self.crop = split, size, crop

    def __len__(self) -> int:
        return len(self.split)

    def rank_share(self, rank: int, world: int, max_val: int) -> TarValStream:
        return TarValStream(self, rank=rank, world=world, max_val=max_val)


class TarValStream(torch.utils.data.IterableDataset):
    """Shards k with k % world == rank, dealt over the DataLoader's workers; every sample once overall, the
    first `max_val` of the shards' stream only when max_val > 0. Items as ValSet's."""

    def __init__(self, data: TarValSet, *, rank: int, world: int, max_val: int) -> None:
        self.data, self.rank, self.world, self.max_val = data, rank, world, max_val

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, tuple[str, ...]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        d = self.data
        offsets = np.cumsum([0] + [c.samples for c in d.split.counts])
        mine = list(range(self.rank, len(d.split.counts), self.world))[worker::workers]
        for k in mine:
            limit = d.split.counts[k].samples
            if self.max_val > 0:
                limit = min(limit, max(0, self.max_val - int(offsets[k])))
            for _, sample, label in _stream(d.split, np.array([k]), 0, limit):
                try:
                    img = _decode(sample, d.size)
                except ImageError as e:
                    yield torch.zeros(d.crop, d.crop, 3, dtype=torch.uint8), -1, (str(e),)
                    continue
                yield center_crop(img, size=d.size, crop=d.crop), label, ()


def load_tar_splits(
    train_patterns: tuple[str, ...], val_patterns: tuple[str, ...], num_classes: int, run: Path, info: DistInfo
) -> tuple[TarSplit, TarSplit]:
    """The training and validation shards, counted once (the shards dealt over the processes, the counts cached
    in the run folder) and checked against the recipe's number of classes."""
    splits = []
    for what, patterns in (("train", train_patterns), ("val", val_patterns)):
        urls = [os.path.abspath(u) for u in expand_shard_patterns(patterns)]
        cache = run / f"shards-{what}.json"
        counts = index_shards(urls, cache, rank=info.rank, world=info.world, sync=lambda: barrier(info))
        top = max(c.max_label for c in counts)
        if top >= num_classes:
            where = next(c.url for c in counts if c.max_label == top)
            raise ConfigError(
                f"model.num_classes is {num_classes} but {where} has label {top}; "
                f"set model.num_classes: {top + 1} (or --set model.num_classes={top + 1})"
            )
        splits.append(TarSplit(tuple(counts), tuple(str(i) for i in range(num_classes))))
    return splits[0], splits[1]
