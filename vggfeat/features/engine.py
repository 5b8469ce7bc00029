"""Running nets over decoded images in batches: images of the same size at a scale share a batch, and
flipped copies ride in the same batch as their originals (Appendix B; Sect. 3.2 for dense application).

channels_last everywhere; on CUDA also bf16 autocast and non-blocking copies from pinned memory (cuDNN autotuning
only when Runtime.cudnn_benchmark asks: the dense protocol's shapes rarely recur).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .loader import ImageInput, ScaledImages, make_loader
from .nets import FeatureNet
from .protocol import Protocol, combine
from .runtime import Runtime

# On CPU a forward over more than about a megapixel (originals and flips together) spills the caches:
# full-size VGG-16 at Q=512 ran at 1.06 s per image in batches of 16 views, 0.92 s in batches of 2-4.
CPU_BATCH_PIXELS = 1 << 20
Item = tuple[int, list[torch.Tensor]]  # (image index, one (3, H, W) uint8 tensor per scale)


class DescriptorEngine:
    def __init__(self, nets: Sequence[FeatureNet], protocol: Protocol, runtime: Runtime | None = None) -> None:
        """At most `runtime.batch_size` images (with their flips) per forward; on CPU also at most
        `runtime.max_batch_pixels` input pixels (default CPU_BATCH_PIXELS; no limit on CUDA)."""
        runtime = runtime or Runtime()
        device = runtime.torch_device()
        self.nets, self.protocol, self.runtime, self.device = list(nets), protocol, runtime, device
        self.batch_size = runtime.batch_size
        cuda = device.type == "cuda"
        self.max_batch_pixels = (
            runtime.max_batch_pixels if runtime.max_batch_pixels is not None else (None if cuda else CPU_BATCH_PIXELS)
        )
        bf16 = runtime.precision == "bfloat16" or (runtime.precision == "auto" and cuda)
        for net in self.nets:
            net.configure(
                device,
                channels_last=runtime.channels_last,
                autocast_dtype=torch.bfloat16 if bf16 else None,
                winograd=runtime.winograd,
            )
        self.cudnn_benchmark = cuda and runtime.cudnn_benchmark

    @property
    def dim(self) -> int:
        return sum(self.protocol.net_dim(net.dim) for net in self.nets)

    def _images_per_batch(self, shape: tuple[int, ...]) -> int:
        if self.max_batch_pixels is None:
            return self.batch_size
        views = 2 if self.protocol.flip else 1
        return max(1, min(self.batch_size, self.max_batch_pixels // (views * shape[-2] * shape[-1])))

    def describe(self, items: Sequence[Item], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Final descriptors (len(items), dim) for decoded items, in their order. `on_batch(n)` is called after
        each forward of n images at one scale (through every net), for progress bars."""
        if self.device.type != "cuda":
            return self._describe(items, on_batch)
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            return self._describe(items, on_batch)
        finally:  # the process-wide switch is the caller's again: a user's own CUDA code is not autotuned by us
            torch.backends.cudnn.benchmark = previous

    @torch.inference_mode()
    def _describe(self, items: Sequence[Item], on_batch: Callable[[int], None] | None) -> np.ndarray:
        n, n_scales = len(items), len(self.protocol.scales)
        report = BatchReporter(on_batch, self.device)
        pending: list[tuple[int, list[int], int, torch.Tensor]] = []  # (net, positions, scale, (B, D))
        for s in range(n_scales):
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for pos, (_, views) in enumerate(items):
                groups[tuple(views[s].shape)].append(pos)
            for shape in sorted(groups):
                positions = groups[shape]
                bs = self._images_per_batch(shape)
                for start in range(0, len(positions), bs):
                    batch = positions[start : start + bs]
                    # copy each pinned view on its own (a stacked tensor would be pageable), stack on the device
                    x = torch.stack([items[p][1][s].to(self.device, non_blocking=True) for p in batch])
                    if self.protocol.flip:
                        x = torch.cat([x, x.flip(-1)])  # (2B, 3, H, W): originals, then their mirror images
                    for k, net in enumerate(self.nets):
                        f = net(x)  # (B or 2B, D)
                        if self.protocol.flip:
                            f = (f[: len(batch)] + f[len(batch) :]) / 2
                        pending.append((k, batch, s, f))
                    report.queued(len(batch))
        parts = [np.empty((n, n_scales, net.dim), dtype=np.float32) for net in self.nets]  # (N, S, D)
        for k, batch, s, f in pending:  # one device sync per chunk, not per batch
            parts[k][batch, s] = f.cpu().numpy()
        report.flush()
        return combine(parts, self.protocol)


class BatchReporter:
    """Calls `on_batch(n)` when a batch of n images has been computed. On the CPU that is when its forward
    returns; on CUDA a forward only queues kernels (a whole chunk fits in the launch queue), so each batch
    records an event and is reported once the event completes, waiting only while more than `window` batches
    are in flight: the GPU always has work queued, and the bar follows the GPU, not the launches."""

    def __init__(self, on_batch: Callable[[int], None] | None, device: torch.device, window: int = 2) -> None:
        self.on_batch, self.window = on_batch, window
        self.events = device.type == "cuda" and on_batch is not None
        self.in_flight: deque[tuple[torch.cuda.Event, int]] = deque()

    def queued(self, n: int) -> None:
        if self.on_batch is None:
            return
        if not self.events:
            self.on_batch(n)
            return
        event = torch.cuda.Event()
        event.record()
        self.in_flight.append((event, n))
        while len(self.in_flight) > self.window:
            self._report_oldest()

    def _report_oldest(self) -> None:
        event, n = self.in_flight.popleft()
        event.synchronize()
        self.on_batch(n)

    def flush(self) -> None:
        while self.in_flight:
            self._report_oldest()


def describe_chunks(
    engine: DescriptorEngine,
    images: Sequence[ImageInput],
    chunks: Sequence[range],
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[range, np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Yield (chunk, ok indices, their descriptors, [(index, reason) skipped]) chunk by chunk, in order.

    Only one chunk of decoded images is held at a time, so memory stays flat however many images.
    `on_batch` is passed to `DescriptorEngine.describe`.
    """
    indices = [i for c in chunks for i in c]
    if not indices:
        return
    dataset = ScaledImages(images, engine.protocol, indices)
    loader = make_loader(dataset, engine.runtime.workers, pin_memory=engine.device.type == "cuda")
    chunk_iter = iter(chunks)
    chunk = next(chunk_iter)
    ok: list[Item] = []
    skipped: list[tuple[int, str]] = []
    for loaded in loader:
        for i, views, reason in loaded:
            if views is None:
                skipped.append((i, reason))
            else:
                ok.append((i, views))
            if len(ok) + len(skipped) == len(chunk):
                feats = engine.describe(ok, on_batch) if ok else np.zeros((0, engine.dim), np.float32)
                yield chunk, np.array([i for i, _ in ok], dtype=np.int64), feats, skipped
                ok, skipped = [], []
                chunk = next(chunk_iter, None)
