"""Running nets over decoded images in planned batches (Appendix B; Sect. 3.2 for dense application).

Images stream in from the loader; each view (image at one scale) joins the batch of its plan bucket
(features.plan), and a batch runs as soon as it is full, so shapes recur and batches are full wherever the
images sit in the input. A view smaller than its bucket is padded bottom/right and the net masks the padding
(exact). Flipped copies ride in the same batch as their originals. Descriptors come back in input order.

The nets run as the engine's own copies (the caller's are never changed): channels_last, on the CPU in fp32
the fused conv + ReLU kernels of models.fastconv, on CUDA bf16 autocast, non-blocking copies both ways and no
device sync per batch (results are read back once their chunk is complete); cuDNN autotuning and torch.compile
only for the plan's recurring bucket shapes, and only when the runtime asks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from vggfeat.utils.heap import keep_freed_memory

from .gpudecode import check_gpu_decode, decode_views
from .loader import ImageInput, RawJpeg, ScaledImages, make_loader
from .nets import FeatureNet
from .plan import Batch, Batcher, Plan, Shape, count_shapes, header_size, make_plan
from .protocol import Protocol, combine
from .runtime import Runtime

log = logging.getLogger(__name__)

# On CPU a forward over more than about a megapixel (originals and flips together) spills the caches:
# full-size VGG-16 at Q=512 ran at 1.06 s per image in batches of 16 views, 0.92 s in batches of 2-4.
CPU_BATCH_PIXELS = 1 << 20
Item = tuple[int, list[torch.Tensor]]  # (image index, one (3, H, W) uint8 tensor per scale)


class DescriptorEngine:
    def __init__(self, nets: Sequence[FeatureNet], protocol: Protocol, runtime: Runtime | None = None) -> None:
        """At most `runtime.batch_size` images (with their flips) per forward; on CPU also at most
        `runtime.max_batch_pixels` input pixels (default CPU_BATCH_PIXELS; no limit on CUDA). The nets run as
        `FeatureNet.prepared` copies, which share the given nets' weight memory where no conversion is needed."""
        runtime = runtime or Runtime()
        device = runtime.torch_device()
        self.protocol, self.runtime, self.device = protocol, runtime, device
        self.batch_size = runtime.batch_size
        self.cuda = device.type == "cuda"
        self.max_batch_pixels = (
            runtime.max_batch_pixels
            if runtime.max_batch_pixels is not None
            else (None if self.cuda else CPU_BATCH_PIXELS)
        )
        bf16 = runtime.effective_precision() == "bfloat16"
        # the engine's own copies: the caller's nets are never moved, converted or switched to eval mode
        self.nets = [
            net.prepared(
                device,
                channels_last=runtime.channels_last,
                autocast_dtype=torch.bfloat16 if bf16 else None,
                winograd=runtime.winograd,
            )
            for net in nets
        ]
        if runtime.gpu_decode:
            check_gpu_decode(device)
        if not self.cuda and runtime.keep_freed_memory:
            keep_freed_memory()
        self.cudnn_benchmark = self.cuda and runtime.cudnn_benchmark
        # padding is exact only for nets that mask it (the VGGs); others batch only equal sizes
        self.pad = runtime.pad and all(net.supports_padding for net in self.nets)
        self.forwards = _Forwards(self.nets, runtime.compile)
        self.shapes_run: list[Batch] = []  # every batch run, for reports (distinct shapes per scale)
        self.loader_wait_s = 0.0  # time describe_chunks spent waiting for decoded images (the loader's share)

    @property
    def dim(self) -> int:
        return sum(self.protocol.net_dim(net.dim) for net in self.nets)

    def images_per_batch(self, shape: Shape) -> int:
        if self.max_batch_pixels is None:
            return self.batch_size
        views = 2 if self.protocol.flip else 1
        return max(1, min(self.batch_size, self.max_batch_pixels // (views * shape[0] * shape[1])))

    def plan(self, sizes: Sequence[Shape | None] = (), views: Sequence[Sequence[Shape]] | None = None) -> Plan:
        """The buckets for images of these (height, width) sizes (None: unknown until decoded), or of these
        views (per scale, their (H, W) as decoded)."""
        return make_plan(
            sizes,
            self.protocol,
            batch_size=self.batch_size,
            max_shapes=self.runtime.max_shapes,
            pad=self.pad,
            pad_batch=self.cuda,  # blanks cost compute: only where recurring shapes pay (cuDNN plans, compile)
            align=8 if self.cuda else 1,
            views=views,
        )

    def distinct_shapes(self) -> dict[int, int]:
        """Distinct forward shapes (batch, H, W) run so far, per scale index."""
        return count_shapes(self.shapes_run)

    def stream(self, plan: Plan, on_batch: Callable[[int], None] | None = None) -> Stream:
        return Stream(self, plan, on_batch)

    def feed(self, items: Sequence[Item], stream: Stream) -> None:
        """Hand decoded images to a stream: full batches run at once, the rest wait in their buckets."""
        for i, views in items:
            stream.add(i, views)

    def describe(self, items: Sequence[Item], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Final descriptors (len(items), dim) for decoded items, in their order, planned over these items.
        `on_batch(n)` is called after each forward of n images at one scale (through every net)."""
        n_scales = len(self.protocol.scales)
        views = [[(int(vs[s].shape[-2]), int(vs[s].shape[-1])) for _, vs in items] for s in range(n_scales)]
        plan = self.plan(views=views)
        with self.autotuning():
            stream = self.stream(plan, on_batch)
            self.feed(items, stream)
            stream.flush()
            return stream.take([i for i, _ in items])

    def autotuning(self) -> _CudnnFlag:
        return _CudnnFlag(self.cuda)


class _CudnnFlag:
    """Restores torch.backends.cudnn.benchmark on exit: a user's own CUDA code is not autotuned by us."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def __enter__(self) -> None:
        self.previous = torch.backends.cudnn.benchmark

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.backends.cudnn.benchmark = self.previous


class _Forwards:
    """Each net's forward, eager or (with compile) torch.compile'd, used for the plan's recurring bucket shapes
    only: odd shapes would only add graphs. After its first shape change torch marks the sizes dynamic and
    compiles one more graph for them all (cuDNN still picks its kernels per shape)."""

    def __init__(self, nets: Sequence[FeatureNet], compile: bool) -> None:
        self.nets, self.compile = list(nets), compile
        self.compiled: list[Callable | None] = [None] * len(self.nets)

    def __call__(self, k: int, x: torch.Tensor, sizes: torch.Tensor | None, recurring: bool) -> torch.Tensor:
        net = self.nets[k]
        if not (self.compile and recurring):
            return net(x, sizes)
        fn = self.compiled[k]
        if fn is None:
            fn = self.compiled[k] = torch.compile(net)
        return fn(x, sizes)


class Stream:
    """One extraction's batches in flight: views waiting in buckets, descriptors coming back."""

    def __init__(self, engine: DescriptorEngine, plan: Plan, on_batch: Callable[[int], None] | None) -> None:
        self.engine, self.plan = engine, plan
        self.n_scales = len(engine.protocol.scales)
        self.batcher = Batcher(plan, engine.images_per_batch, engine.pad)
        self.buckets = [set(p.buckets) for p in plan.scales]
        self.views: dict[int, torch.Tensor] = {}  # key i * S + s -> (3, h, w) uint8
        self.parts: dict[int, list[np.ndarray]] = {}  # image -> per net (S, D), filled as results come back
        self.left: dict[int, int] = {}  # image -> views not yet back on the host
        self.last: dict[int, int] = {}  # image -> sequence number of its last batch
        self.inflight: deque[tuple[int, torch.cuda.Event | None, list[torch.Tensor], list[int], int]] = deque()
        self.seq = 0
        self.report = BatchReporter(on_batch, engine.device)

    def add(self, i: int, views: list[torch.Tensor]) -> None:
        self.parts[i] = [np.empty((self.n_scales, net.dim), np.float32) for net in self.engine.nets]
        self.left[i] = self.n_scales
        for s, v in enumerate(views):
            key = i * self.n_scales + s
            self.views[key] = v
            for batch in self.batcher.add(key, s, int(v.shape[-2]), int(v.shape[-1])):
                self._run(batch)

    def flush(self) -> None:
        """Run every waiting view (remainders padded into larger buckets, the last batches partial)."""
        for batch in self.batcher.flush():
            self._run(batch)

    def launched(self, i: int) -> bool:
        """Whether image i's views have all been run (their results may still be on their way back)."""
        return all((i * self.n_scales + s) not in self.views for s in range(self.n_scales))

    def take(self, images: Sequence[int]) -> np.ndarray:
        """Final descriptors (len(images), dim) of images whose views have all run; forgets them."""
        if not images:
            return np.zeros((0, self.engine.dim), np.float32)
        last = max(self.last[i] for i in images)
        while self.inflight and self.inflight[0][0] <= last:
            self._retire()
        self.report.flush_until(last)
        parts = [np.stack([self.parts[i][k] for i in images]) for k in range(len(self.engine.nets))]
        for i in images:
            del self.parts[i], self.left[i], self.last[i]
        return combine(parts, self.engine.protocol)

    def _retire(self) -> None:
        seq, event, hosts, members, s = self.inflight.popleft()
        if event is not None:
            event.synchronize()  # this batch only: the batches launched after it keep the device busy
        for k, host in enumerate(hosts):
            f = host.numpy()
            for row, i in enumerate(members):
                self.parts[i][k][s] = f[row]

    @torch.inference_mode()
    def _run(self, batch: Batch) -> None:
        engine, n_scales = self.engine, self.n_scales
        device, s = engine.device, batch.scale
        views = [self.views.pop(key) for key in batch.members]
        images = [key // n_scales for key in batch.members]
        shapes = [(int(v.shape[-2]), int(v.shape[-1])) for v in views]
        recurring = batch.shape in self.buckets[s]
        padded = batch.blanks > 0 or any(sh != batch.shape for sh in shapes)
        flip = engine.protocol.flip
        if padded:
            x = torch.zeros((batch.size * (2 if flip else 1), 3, *batch.shape), dtype=torch.uint8, device=device)
            for b, v in enumerate(views):
                v = v.to(device, non_blocking=True)
                x[b, :, : v.shape[-2], : v.shape[-1]] = v
                if flip:  # each image mirrored inside its own region: the padding stays bottom/right
                    x[batch.size + b, :, : v.shape[-2], : v.shape[-1]] = v.flip(-1)
        else:
            # copy each pinned view on its own (a stacked tensor would be pageable), stack on the device
            x = torch.stack([v.to(device, non_blocking=True) for v in views])
            if flip:
                x = torch.cat([x, x.flip(-1)])  # (2B, 3, H, W): originals, then their mirror images
        # true sizes when padded; under compile always at a bucket (one graph per shape, padded or not)
        masked = padded or (engine.runtime.compile and engine.pad and recurring)
        full = (shapes + [batch.shape] * batch.blanks) * (2 if flip else 1)
        if engine.cuda:
            torch.backends.cudnn.benchmark = engine.cudnn_benchmark and recurring
        hosts = []
        for k, net in enumerate(engine.nets):
            sizes = net.true_sizes(full).to(device, non_blocking=True) if masked else None
            f = engine.forwards(k, x, sizes, recurring)  # (B or 2B, D)
            if flip:
                f = (f[: batch.size] + f[batch.size :]) / 2
            f = f[: len(views)]
            if engine.cuda:
                host = torch.empty(f.shape, dtype=f.dtype, pin_memory=True)
                host.copy_(f, non_blocking=True)
                hosts.append(host)
            else:
                hosts.append(f)
        self.seq += 1
        event = None
        if engine.cuda:
            event = torch.cuda.Event()
            event.record()
        self.inflight.append((self.seq, event, hosts, images, s))
        if not engine.cuda:
            self._retire()
        for i in images:
            self.left[i] -= 1
            self.last[i] = self.seq
        engine.shapes_run.append(batch)
        self.report.queued(len(views), self.seq)


class BatchReporter:
    """Calls `on_batch(n)` when a batch of n images has been computed. On the CPU that is when its forward
    returns; on CUDA a forward only queues kernels, so each batch records an event and is reported once the
    event completes, waiting only while more than `window` batches are in flight: the GPU always has work
    queued, and the bar follows the GPU, not the launches."""

    def __init__(self, on_batch: Callable[[int], None] | None, device: torch.device, window: int = 2) -> None:
        self.on_batch, self.window = on_batch, window
        self.events = device.type == "cuda" and on_batch is not None
        self.in_flight: deque[tuple[torch.cuda.Event, int, int]] = deque()

    def queued(self, n: int, seq: int = 0) -> None:
        if self.on_batch is None:
            return
        if not self.events:
            self.on_batch(n)
            return
        event = torch.cuda.Event()
        event.record()
        self.in_flight.append((event, n, seq))
        while len(self.in_flight) > self.window:
            self._report_oldest()

    def _report_oldest(self) -> None:
        event, n, _ = self.in_flight.popleft()
        event.synchronize()
        assert self.on_batch is not None  # only batches with a callback are put in flight
        self.on_batch(n)

    def flush_until(self, seq: int) -> None:
        while self.in_flight and self.in_flight[0][2] <= seq:
            self._report_oldest()

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

    The buckets are planned once over the whole input (`plan_input`), so every chunk batches into the same
    recurring shapes; batches never span chunks, so a chunk's descriptors depend on its own images only (a
    resumed run reproduces them bit for bit). Within a chunk a batch runs as soon as it is full, and what
    waits is flushed every `runtime.plan_window` images and at the chunk's end. The loader streams across
    chunk boundaries, so the net never waits for a chunk to load. `on_batch` as for `describe`.
    """
    indices = [i for c in chunks for i in c]
    if not indices:
        return
    plan = plan_input(engine, images)
    gpu_decode = engine.runtime.gpu_decode
    dataset = ScaledImages(images, engine.protocol, indices, raw_jpeg=gpu_decode)
    loader = make_loader(dataset, engine.runtime.workers, pin_memory=engine.cuda, device=engine.device.type)
    window = engine.runtime.plan_window or (2048 if engine.cuda else 64)
    order = deque(chunks)
    chunk_of = {i: c.start for c in chunks for i in c}
    streams: dict[int, tuple[Stream, dict[int, str | None]]] = {}  # chunk start -> (stream, image -> reason)
    batches = iter(loader)
    with engine.autotuning():
        while True:
            waited = time.perf_counter()
            loaded = next(batches, None)
            engine.loader_wait_s += time.perf_counter() - waited
            if loaded is None:
                break
            if gpu_decode:
                loaded = decode_views(loaded, engine.protocol, engine.device)
            for i, views, reason in loaded:
                stream, arrived = streams.setdefault(chunk_of[i], (engine.stream(plan, on_batch), {}))
                arrived[i] = reason
                if views is not None:
                    assert not isinstance(views, RawJpeg)  # decode_views has decoded every raw JPEG
                    engine.feed([(i, views)], stream)
                    if len(arrived) % window == 0:
                        stream.flush()  # bounds how long an image waits (and what an interruption loses)
            while order and len(streams.get(order[0].start, ((), ()))[1]) == len(order[0]):
                chunk = order.popleft()
                stream, arrived = streams.pop(chunk.start)
                stream.flush()
                index = [i for i in chunk if arrived[i] is None]
                skipped = [(i, reason) for i in chunk if (reason := arrived[i]) is not None]
                yield chunk, np.array(index, dtype=np.int64), stream.take(index), skipped
    log.debug("distinct forward shapes per scale: %s", engine.distinct_shapes())


# images whose headers the plan reads at most: an even sample of a larger input is as good a size histogram
PLAN_SAMPLE = 4096


def plan_input(engine: DescriptorEngine, images: Sequence[ImageInput]) -> Plan:
    """The buckets of a whole input, from the headers of (an even sample of) its images: the same for every
    chunk and every resumed run of it."""
    step = max(1, -(-len(images) // PLAN_SAMPLE))
    return engine.plan([header_size(images[i], engine.protocol) for i in range(0, len(images), step)])
