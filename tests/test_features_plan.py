"""Planned extraction batches: sizes from headers, a bounded set of recurring shapes, and padded batches that
give each image exactly its unpadded descriptor (Sect. 3.2's dense evaluation with masked padding)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import vggfeat
from tests.helpers import TINY
from vggfeat.features.engine import DescriptorEngine, describe_chunks
from vggfeat.features.nets import VGGFeatureNet
from vggfeat.features.plan import Batcher, count_shapes, header_size, make_plan
from vggfeat.features.protocol import Protocol, scaled_size
from vggfeat.features.runtime import Runtime
from vggfeat.models import fastconv

# VOC 2007's common sizes (both orientations) and some odd ones
VOC_MIX = [(375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (500, 281), (366, 500), (375, 499)]


def tiny_net(seed=0):
    return VGGFeatureNet(vggfeat.create_model("vgg_d", init="glorot", seed=seed, **TINY).eval(), "fc7")


def items_at(sizes, protocol, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            i,
            [
                torch.from_numpy(rng.integers(0, 256, (3, *scaled_size(h, w, q)), dtype=np.uint8))
                for q in protocol.scales
            ],
        )
        for i, (h, w) in enumerate(sizes)
    ]


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("cpu_kernels", ["default", "winograd everywhere"])
def test_padded_mixed_batches_give_each_image_its_own_descriptor(flip, cpu_kernels, monkeypatch):
    """Every image alone (its own shape, no padding) against all of them in padded mixed batches; also with every
    conv and fc6 of the tiny net on the Winograd kernels (their bordered maps masked in place between layers)."""
    calls: list[str] = []
    if cpu_kernels == "winograd everywhere":
        monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
        for name in ("winograd_conv3x3_relu", "winograd_dense"):
            real = getattr(fastconv, name)
            monkeypatch.setattr(fastconv, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    protocol = Protocol(scales=(64, 77, 96), flip=flip, aggregate="stack", l2=False)  # each scale visible
    sizes = [(64, 97), (71, 64), (64, 64), (83, 101), (65, 77), (99, 64), (67, 67), (64, 97)]
    items = items_at(sizes, protocol)
    net = tiny_net()
    runtime = Runtime(device="cpu", batch_size=4, max_batch_pixels=1 << 30, max_shapes=3)
    mixed = DescriptorEngine([net], protocol, runtime)
    together = mixed.describe(items)
    padded = [
        b for b in mixed.shapes_run if any(tuple(items[k // 3][1][b.scale].shape[-2:]) != b.shape for k in b.members)
    ]
    assert len(padded) >= 3 and max(len(b.members) for b in mixed.shapes_run) == 4  # padded, mixed, full
    alone_engine = DescriptorEngine([net], protocol, replace_runtime(runtime, pad=False))
    alone = np.concatenate([alone_engine.describe([item]) for item in items])
    assert together.shape == (len(sizes), 3 * net.dim)
    assert np.abs(together - alone).max() <= 1e-5
    assert np.abs(alone).max() > 0.05  # the descriptors are not all zero
    fc6 = mixed.nets[0].model.fc6
    assert (type(fc6) is fastconv.WinogradDenseFC) == (cpu_kernels == "winograd everywhere")
    assert {"winograd_conv3x3_relu", "winograd_dense"} <= set(calls) or cpu_kernels == "default"


def replace_runtime(runtime, **kw):
    from dataclasses import replace

    return replace(runtime, **kw)


def simulate(sizes, protocol, batch_size, flush_every=None, **plan_kw):
    """The batches a stream forms for these images in this order (no net run)."""
    plan = make_plan(sizes, protocol, batch_size=batch_size, **plan_kw)
    batcher = Batcher(plan, lambda shape: batch_size)
    batches = []
    for i, (h, w) in enumerate(sizes):
        for s, q in enumerate(protocol.scales):
            batches += batcher.add(i * len(protocol.scales) + s, s, *scaled_size(h, w, q))
        if flush_every and (i + 1) % flush_every == 0:
            batches += batcher.flush()
    return plan, batches + batcher.flush()


def test_the_plan_bounds_the_shapes_on_a_voc_like_mix():
    rng = random.Random(0)
    sizes = [
        rng.choice(VOC_MIX) if rng.random() < 0.8 else (rng.randint(150, 500), rng.randint(150, 500))
        for _ in range(2048)
    ]
    protocol = Protocol(scales=(256, 384, 512))
    plan, batches = simulate(sizes, protocol, 32, flush_every=256, align=8)
    shapes = count_shapes(batches)
    assert set(shapes) == {0, 1, 2} and max(shapes.values()) <= 32, shapes
    # every view ran exactly once, at a canvas that holds it
    ran = sorted(k for b in batches for k in b.members)
    assert ran == list(range(len(sizes) * 3))
    for b in batches:
        for k in b.members:
            h, w = scaled_size(*sizes[k // 3], protocol.scales[b.scale])
            assert h <= b.shape[0] and w <= b.shape[1]
    # batches are full but for at most a few per scale and flush (the chains' last, padded to a power of two)
    partial = [b for b in batches if b.size < 32]
    assert all(b.size & (b.size - 1) == 0 for b in partial)
    assert len(partial) <= 2 * 3 * (2048 // 256)
    # planned over the whole input at once, padding costs little: the canvases hold < 8% more pixels than
    # the views (flushed every 256 images, as in 256-image chunks, the remainders make it about 22%)
    plan, batches = simulate(sizes, protocol, 32, align=8)
    assert max(count_shapes(batches).values()) <= 32
    canvas = sum(b.size * b.shape[0] * b.shape[1] for b in batches)
    true = sum(h * w for hw in sizes for q in protocol.scales for h, w in [scaled_size(*hw, q)])
    assert canvas / true < 1.08


def test_without_padding_every_batch_holds_one_size():
    protocol = Protocol(scales=(256,))
    sizes = [(375, 500), (500, 375), (375, 500), (333, 500)]
    plan, batches = simulate(sizes, protocol, 2, pad=False, pad_batch=False)
    assert sorted(b.shape for b in batches) == [(256, 341), (256, 384), (341, 256)]
    assert [len(b.members) for b in sorted(batches, key=lambda b: b.shape)] == [2, 1, 1]


def test_header_sizes_read_no_pixels_and_follow_exif(tmp_path, monkeypatch):
    plain, turned, bad = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    Image.new("RGB", (120, 80)).save(plain)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown as 80 wide, 120 high
    Image.new("RGB", (120, 80)).save(turned, exif=exif)
    bad.write_bytes(b"not an image")
    Image.init()  # every format plugin loaded first (one builds an image as it loads)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("header_size decoded pixels"))
    protocol = Protocol()
    assert header_size(plain, protocol) == (80, 120)
    assert header_size(turned, protocol) == (120, 80)
    assert header_size(bad, protocol) is None
    assert header_size(np.zeros((7, 9, 3), np.uint8), protocol) == (7, 9)


def test_extraction_results_come_back_in_input_order_whatever_the_batches(tmp_path):
    """Images of alternating sizes in chunks: the descriptors are the in-memory ones, row for row."""
    protocol = Protocol(scales=(64, 80))
    sizes = [(64, 97), (90, 64), (64, 64), (64, 97), (70, 70), (90, 64), (64, 120)]
    paths = []
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    net = tiny_net()
    engine = DescriptorEngine([net], protocol, Runtime(device="cpu", batch_size=3, max_batch_pixels=1 << 30))
    out = list(describe_chunks(engine, paths, [range(0, 4), range(4, 7)]))
    assert [list(index) for _, index, _, _ in out] == [[0, 1, 2, 3], [4, 5, 6]]
    got = np.concatenate([feats for _, _, feats, _ in out])
    alone = DescriptorEngine([net], protocol, Runtime(device="cpu", pad=False))
    for i, p in enumerate(paths):
        views = [torch.from_numpy(np.array(Image.open(p).resize(scaled_size(*sizes[i], q)[::-1], Image.BILINEAR)))
                 .permute(2, 0, 1) for q in protocol.scales]  # fmt: skip
        assert np.abs(alone.describe([(i, views)]) - got[i]).max() <= 1e-5


@pytest.mark.slow  # torch.compile builds C++ kernels: about 5 minutes on the shared 2-core machine
def test_compile_gives_the_eager_descriptors():
    protocol = Protocol(scales=(64, 80))
    items = items_at([(64, 97), (64, 97), (71, 64), (64, 64), (64, 88), (90, 64)], protocol)
    net = tiny_net()
    eager = DescriptorEngine([net], protocol, Runtime(device="cpu", batch_size=4)).describe(items)
    compiled = DescriptorEngine([net], protocol, Runtime(device="cpu", batch_size=4, compile=True)).describe(items)
    assert np.abs(eager - compiled).max() <= 1e-5


def test_a_view_too_small_for_the_dense_head_is_refused_padded_or_not():
    """Padded into a larger canvas, a view whose fc6 map would be empty must not average nothing (NaN)."""
    from vggfeat.errors import InputError

    protocol = Protocol(scales=(40,))  # the tiny net's fc6 spans 2 pool5 cells: 64 px at least
    items = items_at([(40, 90), (60, 40), (40, 70)], protocol)
    runtime = Runtime(device="cpu", batch_size=4, max_batch_pixels=1 << 30)
    for pad in (True, False):
        with pytest.raises(InputError, match="at least 64 px per side"):
            DescriptorEngine([tiny_net()], protocol, replace_runtime(runtime, pad=pad)).describe(items)


def test_gpu_decode_needs_cuda_and_says_so():
    from vggfeat.errors import InputError

    with pytest.raises(InputError, match="--gpu-decode decodes on a CUDA GPU.*--device cuda"):
        Runtime(device="cpu", gpu_decode=True)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--gpu-decode decodes JPEGs on a CUDA GPU.*drop --gpu-decode"):
            DescriptorEngine([tiny_net()], Protocol(scales=(64,)), Runtime(device="auto", gpu_decode=True))


def test_gpu_decode_path_run_on_the_cpu_is_close_to_the_exact_path(tmp_path, monkeypatch):
    """The --gpu-decode code path (raw bytes from the workers, batched decode_jpeg, EXIF orientation, torch's
    antialiased rescale) run with the CPU standing in for the GPU: same images, descriptors close to the
    exact PIL path, a PNG and a corrupt JPEG handled on their own."""
    import vggfeat.features.engine as engine_module
    import vggfeat.features.gpudecode as gpudecode

    monkeypatch.setattr(gpudecode, "check_gpu_decode", lambda device: None)
    monkeypatch.setattr(engine_module, "check_gpu_decode", lambda device: None)
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # smooth-ish photo
    paths = []
    for i, orientation in enumerate((1, 6, 3)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(base).save(paths[-1], quality=95, exif=exif)
    paths.append(tmp_path / "3.png")
    Image.fromarray(base[:, :100]).save(paths[-1])
    paths.append(tmp_path / "4.jpg")
    paths[-1].write_bytes(paths[0].read_bytes()[:300])  # truncated
    protocol = Protocol(scales=(64, 80))
    net = tiny_net()
    runtime = Runtime(device="auto", batch_size=4, max_batch_pixels=1 << 30)
    exact = list(describe_chunks(DescriptorEngine([net], protocol, runtime), paths, [range(5)]))
    gpu = list(
        describe_chunks(DescriptorEngine([net], protocol, replace_runtime(runtime, gpu_decode=True)), paths, [range(5)])
    )
    (_, index, feats, skipped), (_, index_g, feats_g, skipped_g) = exact[0], gpu[0]
    assert list(index) == list(index_g) == [0, 1, 2, 3] and [i for i, _ in skipped] == [i for i, _ in skipped_g] == [4]
    assert np.abs(feats - feats_g).max() < 0.05  # other rescale filter: close, not equal
    cos = (feats * feats_g).sum(1)
    assert cos.min() > 0.995


def test_header_size_with_fast_decode_is_the_draft_decoded_size(tmp_path):
    from vggfeat.data.images import load_rgb

    path = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 900)).save(path)
    protocol = Protocol(scales=(256,), fast_decode=True)
    decoded = load_rgb(path, min_side=256)
    assert header_size(path, protocol) == (decoded.height, decoded.width) != (900, 1200)
