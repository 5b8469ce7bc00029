"""Planning the forwards of a dense extraction before computing: every image's size read from its file header
(no decode), its scaled size at each Q (Appendix B), and a few recurring batch shapes per scale.

Each scale gets at most a fixed number of bucket shapes, chosen over the whole input to waste the fewest
padded pixels; an image runs in the smallest bucket that holds it, padded bottom/right (exact: see
FeatureNet.padded_pooled_map). `Batcher` fills full batches of one bucket from anywhere in the input as images
arrive, and on a flush carries each bucket's remainder up into the next larger bucket, so only a chain's last
batch is partial (its batch size rounded up to a power of two with blank images where shapes must recur).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vggfeat.data.images import _draft_request

from .protocol import Protocol, scaled_size

Shape = tuple[int, int]  # (H, W) of a view or of a forward's canvas
EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
MAX_DISTINCT = 1024  # long sides considered apart per line (more are binned)


def header_size(item: object, protocol: Protocol) -> Shape | None:
    """(height, width) an input decodes to, from its header only (EXIF orientation and, with fast_decode, JPEG
    draft scaling applied as the loader applies them); None when the header cannot be read (the loader then
    reports the file, and the engine places the image by its decoded size)."""
    if isinstance(item, np.ndarray):
        return (int(item.shape[0]), int(item.shape[1])) if item.ndim >= 2 else None
    if isinstance(item, Image.Image):
        return item.height, item.width
    if not isinstance(item, (str, Path)):
        return None
    try:
        with Image.open(item) as img:  # lazy: reads the header, decodes nothing
            if protocol.fast_decode and img.format == "JPEG" and min(img.size) > max(protocol.scales):
                img.draft("RGB", _draft_request(img.size, max(protocol.scales)))
            w, h = img.size
            transposed = img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED
    except Exception:  # any unreadable header: the loader names the problem when it decodes the file
        return None
    return (w, h) if transposed else (h, w)


def _partition(values: np.ndarray, counts: np.ndarray, k_max: int) -> list[list[int]]:
    """Best split of sorted distinct `values` (with `counts`) into 1..k_max contiguous groups, each padded to
    its largest value: result[k - 1] holds the group ends (indices) for k groups. Exact dynamic programme."""
    n = len(values)
    c = np.concatenate([[0], np.cumsum(counts)])
    cv = np.concatenate([[0], np.cumsum(counts * values)])
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # group = values[i..j]
    cost = np.where(i <= j, values[j] * (c[j + 1] - c[i]) - (cv[j + 1] - cv[i]), np.inf)  # padded pixels / Q
    best = cost[0].copy()  # best[j]: values[0..j] in one group
    back: list[np.ndarray] = []
    out = [[n - 1]]
    for _ in range(1, min(k_max, n)):
        prev = np.concatenate([[np.inf], best[:-1]])  # groups before i end at i - 1
        total = prev[:, None] + cost  # (i, j)
        back.append(total.argmin(axis=0))
        best = total.min(axis=0)
        ends, end = [n - 1], n - 1
        for b in reversed(back):
            end = int(b[end]) - 1
            ends.append(end)
        out.append(sorted(ends))
    return out


def _waste(values: np.ndarray, counts: np.ndarray, ends: list[int]) -> float:
    total, start = 0.0, 0
    for e in ends:
        total += float((values[e] - values[start : e + 1]) @ counts[start : e + 1])
        start = e + 1
    return total


@dataclass(frozen=True)
class ScalePlan:
    q: int
    buckets: tuple[Shape, ...]  # the recurring canvases, smallest area first

    def bucket_of(self, h: int, w: int) -> Shape:
        """The smallest bucket holding an (h, w) view; the view's own shape when none does."""
        fits = [b for b in self.buckets if b[0] >= h and b[1] >= w]
        return min(fits, key=lambda b: (b[0] * b[1], b)) if fits else (h, w)


def plan_scale(views: Sequence[Shape], q: int, n_buckets: int, align: int = 1) -> ScalePlan:
    """At most `n_buckets` canvases for these scaled sizes: one Q x W line (landscape) and one H x Q line
    (portrait); the buckets each line gets and their long sides minimise the padded pixels. `align` rounds a
    long side up first (e.g. 8, friendlier to GPU kernels; 1 on the CPU, where padding is pure cost)."""
    longest = max((max(h, w) for h, w in views), default=q)
    align = max(align, math.ceil((longest - q + 1) / MAX_DISTINCT))  # keeps the exact programme small
    lines: dict[str, dict[int, int]] = {"land": {}, "port": {}}
    for h, w in views:
        if h == q and w >= q:
            side, v = "land", w
        elif w == q and h > q:
            side, v = "port", h
        else:  # not on a Q line (a view the protocol did not make): it runs in its own shape
            continue
        v = align * math.ceil(v / align)
        lines[side][v] = lines[side].get(v, 0) + 1
    splits = {}
    for side, hist in lines.items():
        if hist:
            values = np.array(sorted(hist), dtype=np.float64)
            counts = np.array([hist[int(v)] for v in values], dtype=np.float64)
            splits[side] = (values, counts, _partition(values, counts, max(1, n_buckets)))
    # share the buckets between the two lines where they save the most padding
    land = splits.get("land")
    port = splits.get("port")
    best: tuple[float, int, int] | None = None
    for kl in range(len(land[2]) + 1 if land else 1):
        for kp in range(len(port[2]) + 1 if port else 1):
            if kl + kp > max(n_buckets, 2) or (land and kl == 0) or (port and kp == 0):
                continue
            waste = (_waste(land[0], land[1], land[2][kl - 1]) if land else 0.0) + (
                _waste(port[0], port[1], port[2][kp - 1]) if port else 0.0
            )
            if best is None or waste < best[0]:
                best = (waste, kl, kp)
    buckets: list[Shape] = []
    if best is not None:
        _, kl, kp = best
        if land:
            buckets += [(q, int(land[0][e])) for e in land[2][kl - 1]]
        if port:
            buckets += [(int(port[0][e]), q) for e in port[2][kp - 1]]
    return ScalePlan(q, tuple(sorted(buckets, key=lambda b: (b[0] * b[1], b))))


@dataclass(frozen=True)
class Plan:
    scales: tuple[ScalePlan, ...]
    pad_batch: bool  # partial batches rounded up to a power of two (blank images), so their shapes recur

    def bucket_of(self, s: int, h: int, w: int) -> Shape:
        return self.scales[s].bucket_of(h, w)


def reserved_shapes(batch_size: int) -> int:
    """Shapes a plan keeps for partial batches: a power-of-two batch size at each line's largest bucket."""
    return 2 * batch_size.bit_length()


def make_plan(
    sizes: Sequence[Shape | None],
    protocol: Protocol,
    *,
    batch_size: int,
    max_shapes: int = 32,
    pad: bool = True,
    pad_batch: bool = True,
    align: int = 1,
    views: Sequence[Sequence[Shape]] | None = None,
) -> Plan:
    """The plan of a whole input (or one output shard) from its images' sizes (`header_size`; None: unknown),
    or from the views themselves (per scale, their decoded (H, W)). Without `pad` (nets that padding would
    change) every distinct scaled size is its own bucket."""
    per_scale = []
    known = [s for s in sizes if s is not None]
    n_buckets = max(1, max_shapes - (reserved_shapes(batch_size) if pad_batch else 0))
    for s, q in enumerate(protocol.scales):
        views_s = views[s] if views is not None else [scaled_size(h, w, q, protocol.snap) for h, w in known]
        if pad:
            per_scale.append(plan_scale(views_s, q, n_buckets, align))
        else:
            per_scale.append(ScalePlan(q, tuple(sorted(set(views_s), key=lambda b: (b[0] * b[1], b)))))
    return Plan(tuple(per_scale), pad_batch and pad)


@dataclass
class Batch:
    scale: int
    shape: Shape  # the canvas (H, W)
    members: list[int]  # keys of the views in it, in batch order
    blanks: int = 0  # blank images appended so the batch size recurs

    @property
    def size(self) -> int:
        return len(self.members) + self.blanks


@dataclass
class Batcher:
    """Groups arriving views into batches of the plan's buckets. `add` returns the batches that became full,
    `flush` every pending view in batches (remainders carried up into larger buckets). Pure bookkeeping: no
    tensors, so the shapes a run will use can be counted without running it."""

    plan: Plan
    images_per_batch: Callable[[Shape], int]  # full batch size at a canvas
    pad: bool = True  # False: views only join batches of their own exact shape
    pending: dict[tuple[int, Shape], list[tuple[int, Shape]]] = field(default_factory=dict)  # (s, canvas) -> views

    def add(self, key: int, s: int, h: int, w: int) -> list[Batch]:
        shape = self.plan.bucket_of(s, h, w) if self.pad else (h, w)
        group = self.pending.setdefault((s, shape), [])
        group.append((key, (h, w)))
        if len(group) >= self.images_per_batch(shape):
            del self.pending[(s, shape)]
            return [Batch(s, shape, [k for k, _ in group])]
        return []

    def flush(self) -> list[Batch]:
        out: list[Batch] = []
        for s in sorted({s for s, _ in self.pending}):
            groups = {shape: views for (t, shape), views in self.pending.items() if t == s}
            while groups:
                shape = min(groups, key=lambda b: (b[0] * b[1], b))
                views = groups.pop(shape)
                full = self.images_per_batch(shape)
                while len(views) >= full:
                    out.append(Batch(s, shape, [k for k, _ in views[:full]]))
                    views = views[full:]
                if not views:
                    continue
                up = self._larger(s, shape, views) if self.pad else None
                if up is not None:
                    groups.setdefault(up, []).extend(views)  # carried up: a smaller remainder pads into it
                    continue
                blanks = 0
                if self.plan.pad_batch:
                    blanks = min(full, 1 << (len(views) - 1).bit_length()) - len(views)
                out.append(Batch(s, shape, [k for k, _ in views], max(0, blanks)))
        self.pending.clear()
        return out

    def _larger(self, s: int, shape: Shape, views: list[tuple[int, Shape]]) -> Shape | None:
        h = max(v[0] for _, v in views)
        w = max(v[1] for _, v in views)
        area = shape[0] * shape[1]
        fits = [
            b for b in self.plan.scales[s].buckets if b != shape and b[0] >= h and b[1] >= w and b[0] * b[1] >= area
        ]
        return min(fits, key=lambda b: (b[0] * b[1], b)) if fits else None

    def __len__(self) -> int:
        return sum(len(v) for v in self.pending.values())


def count_shapes(batches: Sequence[Batch]) -> dict[int, int]:
    """Distinct forward shapes (batch size, H, W) per scale index."""
    seen: dict[int, set] = {}
    for b in batches:
        seen.setdefault(b.scale, set()).add((b.size, *b.shape))
    return {s: len(v) for s, v in sorted(seen.items())}
