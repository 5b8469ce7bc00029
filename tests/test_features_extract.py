"""Descriptors against manual computations of every protocol step (Appendix B), batching, flips, nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_GLOROT
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

import vggfeat
from vggfeat.features.extract import extract_features
from vggfeat.models import CAFFE


def tiny(name="vgg_d", seed=0, **kw):
    return vggfeat.create_model(name, seed=seed, **{**TINY_GLOROT, **kw}).eval()


def random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def manual_descriptor(model, array, scales, layer="fc7", flip=True, aggregate="mean", l2=True):
    """The protocol written out step by step, one image, one forward per scale and per flip."""
    img = Image.fromarray(array)
    per_scale = []
    for q in scales:
        w, h = img.size
        size = (round(w * q / h), q) if h <= w else (q, round(h * q / w))  # smallest side -> Q
        views = [img.resize(size, Image.BILINEAR)]
        if flip:
            views.append(ImageOps.mirror(views[0]))
        pooled = []
        for v in views:
            x = torch.from_numpy(np.array(v)).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                fmap = model.forward_features(model.preprocessing.apply(x), layer)
            pooled.append(fmap.mean(dim=(2, 3))[0].numpy())  # global average pooling
        per_scale.append(sum(pooled) / len(pooled))  # average with the flipped image
    d = np.mean(per_scale, axis=0) if aggregate == "mean" else np.concatenate(per_scale)
    return d / np.linalg.norm(d) if l2 else d


@pytest.mark.parametrize("aggregate", ["mean", "stack"])
@pytest.mark.parametrize("layer", ["fc7", "pool4"])
def test_matches_manual_protocol(aggregate, layer):
    model = tiny()
    model.preprocessing = CAFFE  # the weights' convention is applied (BGR, 0-255, mean pixel)
    images = random_images([(100, 150), (90, 70)])
    got = extract_features(model, images, layer=layer, scales=(64, 80), aggregate=aggregate)
    for k, array in enumerate(images):
        np.testing.assert_allclose(
            got[k], manual_descriptor(model, array, (64, 80), layer, aggregate=aggregate), rtol=1e-4, atol=1e-6
        )
    no_l2 = extract_features(model, images, layer=layer, scales=(64, 80), aggregate=aggregate, l2=False)
    np.testing.assert_allclose(
        no_l2[1],
        manual_descriptor(model, images[1], (64, 80), layer, aggregate=aggregate, l2=False),
        rtol=1e-4,
        atol=1e-6,
    )


def test_without_flip_matches_manual():
    model, images = tiny("vgg_b"), random_images([(70, 120)])
    got = extract_features(model, images, scales=(64,), flip=False)
    np.testing.assert_allclose(got[0], manual_descriptor(model, images[0], (64,), flip=False), rtol=1e-4, atol=1e-6)


def test_flip_average_makes_mirror_images_agree():
    model = tiny()
    image = random_images([(80, 112)])[0]
    mirrored = np.ascontiguousarray(image[:, ::-1])
    with_flip = extract_features(model, [image, mirrored], scales=(64, 96))
    np.testing.assert_allclose(with_flip[0], with_flip[1], rtol=1e-4, atol=1e-6)
    without = extract_features(model, [image, mirrored], scales=(64, 96), flip=False)
    assert np.abs(without[0] - without[1]).max() > 1e-3


def test_batched_equals_one_image_at_a_time():
    model = tiny("vgg_c")
    sizes = [(64, 96), (80, 80), (64, 96), (96, 64), (64, 96), (70, 91), (80, 80)]
    images = random_images(sizes, seed=3)
    batched = extract_features(model, images, scales=(64, 72), batch_size=8)
    single = np.stack([extract_features(model, [im], scales=(64, 72), batch_size=1)[0] for im in images])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)  # L2 per sample


def test_winograd_switch_reaches_the_net(monkeypatch):
    """winograd=True runs the net's 3x3 convs through Winograd (threshold lowered for the tiny net),
    winograd=False keeps them direct; both give the manual protocol's descriptors."""
    from vggfeat.models import fastconv

    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    calls = []
    real = fastconv.winograd_conv3x3_relu
    monkeypatch.setattr(fastconv, "winograd_conv3x3_relu", lambda *a: calls.append(1) or real(*a))
    model, images = tiny(), random_images([(70, 100)], seed=5)
    direct = extract_features(model, images, scales=(64,), winograd=False, device="cpu")
    assert calls == []
    fast = extract_features(model, images, scales=(64,), device="cpu")
    assert len(calls) == 13  # config D's 3x3 convs, one batch (image + flip)
    np.testing.assert_allclose(fast, direct, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(direct[0], manual_descriptor(model, images[0], (64,)), rtol=1e-5, atol=1e-7)
    assert len(calls) == 13  # the manual protocol runs the net's own modules


def test_a_net_in_training_mode_gives_eval_descriptors_and_keeps_its_mode():
    """create_model returns a net in training mode: extraction must not run its dropout, nor leave it in eval."""
    model, images = tiny(), random_images([(70, 90), (64, 64)], seed=2)
    expected = extract_features(model, images, scales=(64,))
    model.train()
    model.fc7.eval()  # a mixed state is given back as it was, module by module
    got = [extract_features(model, images, scales=(64,)) for _ in range(2)]
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_allclose(got[0], expected, rtol=1e-6, atol=1e-7)
    assert model.training and model.drop6.training and not model.fc7.training


def test_the_callers_net_keeps_its_memory_layout():
    """The engine runs channels_last; the caller's net must come back in its own layout (and device)."""
    model, images = tiny(), random_images([(70, 90)], seed=3)
    weight = model.conv1_1.weight
    extract_features(model, images, scales=(64,), device="cpu")
    assert model.conv1_1.weight is weight and weight.is_contiguous()
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.gpu
def test_a_cpu_net_stays_on_the_cpu_after_a_cuda_extraction():
    model, images = tiny(), random_images([(70, 90)], seed=3)
    extract_features(model, images, scales=(64,), device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    model.eval()(torch.zeros(1, 3, 64, 64))  # usable on the CPU as before


def test_several_nets_stack():
    d, e = tiny("vgg_d", seed=1), tiny("vgg_e", seed=2, fc_dim=24)
    images = random_images([(64, 80), (72, 64)])
    both = extract_features([d, e], images, scales=(64,), l2=False)
    alone = [extract_features(m, images, scales=(64,), l2=False) for m in (d, e)]
    assert both.shape == (2, 32 + 24)
    np.testing.assert_allclose(both, np.hstack(alone), rtol=1e-5, atol=1e-7)


def test_timm_backbone_pooled_penultimate_features():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    image = random_images([(64, 96)])[0]
    got = extract_features(model, [image], scales=(64,), l2=False)
    cfg = model.pretrained_cfg
    views = [Image.fromarray(image).resize((96, 64), Image.BILINEAR)]
    views.append(ImageOps.mirror(views[0]))
    manual = []
    for v in views:
        x = torch.from_numpy(np.array(v)).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            manual.append(model.forward_head(model.forward_features(x), pre_logits=True)[0].numpy())
    np.testing.assert_allclose(got[0], (manual[0] + manual[1]) / 2, rtol=1e-4, atol=1e-5)


def test_real_photos():
    photos = load_sample_images().images  # china.jpg and flower.jpg, 427 x 640
    model = tiny()
    feats = extract_features(model, photos, scales=(64, 96, 128))
    assert feats.shape == (2, 32) and np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(feats[0], manual_descriptor(model, photos[0], (64, 96, 128)), rtol=1e-4, atol=1e-6)
    assert np.abs(feats[0] - feats[1]).max() > 1e-3


def test_bad_image_raises_in_memory_api(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(vggfeat.data.images.ImageError, match="bad.jpg: not an image"):
        extract_features(tiny(), [bad], scales=(64,))


@pytest.mark.gpu
def test_cuda_bf16_close_to_cpu_float32():
    model = tiny()
    images = random_images([(64, 96), (64, 96), (80, 64)])
    cpu = extract_features(model, images, scales=(64, 96), device="cpu")
    gpu = extract_features(model, images, scales=(64, 96), device="cuda")  # bf16 autocast, channels_last
    assert np.abs(gpu - cpu).max() < 0.05
    exact = extract_features(model, images, scales=(64, 96), device="cuda", precision="float32")
    np.testing.assert_allclose(exact, cpu, atol=1e-3)


@pytest.mark.gpu
def test_cudnn_autotuning_is_switched_on_for_extraction_only():
    images = random_images([(64, 96)])
    for previous in (False, True):
        torch.backends.cudnn.benchmark = previous
        for autotune in (False, True):
            extract_features(tiny(), images, scales=(64,), device="cuda", cudnn_benchmark=autotune)
            assert torch.backends.cudnn.benchmark is previous  # the caller's setting again


# one definition of the rescale (a path and a decoded array agree); an image enormous after rescaling


def _photo_jpeg(path, size=(600, 512)):
    china = load_sample_images().images[0]  # 427 x 640 photo
    Image.fromarray(china).resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def test_path_and_array_give_the_same_descriptor(tmp_path):
    path = _photo_jpeg(tmp_path / "photo.jpg")  # short side 512 >= 2 Q: PIL draft mode would decode at 1/2
    array = np.asarray(Image.open(path).convert("RGB"))
    net = tiny("vgg_a", seed=1)
    from_path, from_array = extract_features(net, [path, array], scales=(256,), device="cpu")
    np.testing.assert_allclose(from_path, from_array, atol=1e-6)
    fast = extract_features(net, [path], scales=(256,), device="cpu", fast_decode=True)[0]
    assert np.abs(fast - from_array).max() > 1e-4  # the reduced decode is a different image, only when asked


def test_image_enormous_after_rescale_is_skipped_with_a_reason(tmp_path):
    from vggfeat.data.folder import Samples
    from vggfeat.evaluate import evaluate_nets
    from vggfeat.features.loader import ScaledImages
    from vggfeat.features.protocol import Protocol

    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 2000, 3), 128, np.uint8)).save(strip)  # 512 x 1,024,000 at Q = 512
    i, views, reason = ScaledImages([strip], Protocol(scales=(256, 512)))[0]
    assert views is None and "too large after rescaling" in reason and "1,024,000" in reason  # the extract skip path
    i, views, reason = ScaledImages([strip], Protocol(scales=(4,)))[0]
    assert reason is None and views[0].shape == (3, 4, 8000)
    with pytest.raises(vggfeat.VggfeatError, match="too large after rescaling"):
        evaluate_nets([tiny("vgg_a", seed=1)], Samples((strip,), (0,), ("a",)), protocols=["dense"], scales=(512,))


def test_protocol_and_runtime_objects_equal_the_legacy_keywords():
    from vggfeat.features.protocol import Protocol
    from vggfeat.features.runtime import Runtime

    model, images = tiny(), random_images([(64, 80), (72, 64)])
    legacy = extract_features(model, images, scales=(64, 72), aggregate="stack", l2=False, batch_size=1, device="cpu")
    objects = extract_features(
        model, images, Protocol(scales=(64, 72), aggregate="stack", l2=False), Runtime(batch_size=1, device="cpu")
    )
    np.testing.assert_array_equal(objects, legacy)
    assert objects.shape == (2, 2 * 32)
    with pytest.raises(TypeError, match="inside protocol="):  # one of the two would silently lose
        extract_features(model, images, Protocol(scales=(64,)), scales=(72,))
    with pytest.raises(TypeError, match="inside runtime="):
        extract_features(model, images, runtime=Runtime(), device="cpu")
    with pytest.raises(TypeError, match="scale"):  # a typo is not ignored
        extract_features(model, images, scale=(64,))


def test_runtime_refuses_bad_values_as_input_errors():
    from vggfeat.errors import InputError
    from vggfeat.features.runtime import Runtime

    for bad, match in [
        (dict(precision="fp8"), "valid: auto, float32, bfloat16"),
        (dict(batch_size=0), "batch size"),
        (dict(workers=-1), "workers"),
    ]:
        with pytest.raises(InputError, match=match):
            Runtime(**bad)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        Runtime().batch_size = 2  # frozen: built once, shared by every call
