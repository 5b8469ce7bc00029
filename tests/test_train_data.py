"""Training inputs: the global batch is the same whatever the process count; augmentation is keyed by
(seed, epoch, index); pixel statistics match numpy; the synthetic set is deterministic; flat val labels."""

from __future__ import annotations

import numpy as np
import torch

from vggfeat.data.folder import imagenet_splits
from vggfeat.data.stats import pixel_stats
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.data.transforms import normalize_batch
from vggfeat.train.data import GlobalBatchSampler, TrainSet, ValSet, batch_split


def test_sampler_union_is_the_global_batch():
    one = list(GlobalBatchSampler(50, seed=1, epoch=2, split=batch_split(8, 2, 1), rank=0))
    two = [list(GlobalBatchSampler(50, seed=1, epoch=2, split=batch_split(8, 2, 2), rank=r)) for r in (0, 1)]
    assert len(one) == 6 * 4 and len(two[0]) == 6 * 2
    for step in range(6):
        a = sum(one[step * 4 : step * 4 + 4], [])
        b = sum(two[0][step * 2 : step * 2 + 2] + two[1][step * 2 : step * 2 + 2], [])
        assert a == b and len(set(a)) == 8
    resumed = list(GlobalBatchSampler(50, seed=1, epoch=2, split=batch_split(8, 2, 1), rank=0, start_step=4))
    assert resumed == one[16:]
    other = list(GlobalBatchSampler(50, seed=1, epoch=3, split=batch_split(8, 2, 1), rank=0))
    assert other != one  # reseeded per epoch


def test_synthetic_augmentation_stats_and_flat_val(tmp_path):
    generate_synthetic(tmp_path / "a", classes=3, per_class=4, seed=5)
    generate_synthetic(tmp_path / "b", classes=3, per_class=4, seed=5)
    fa, fb = sorted((tmp_path / "a").rglob("*.jpg")), sorted((tmp_path / "b").rglob("*.jpg"))
    assert len(fa) == 3 * 4 + 3 and [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    train, val = imagenet_splits(tmp_path / "a")
    assert train.classes == val.classes and len(train) == 12 and set(val.labels) == {0, 1, 2}
    ds = TrainSet(train, seed=0, scale=(64, 80), crop=64, flip=True, color_sigma=0.1)
    x1, a1, y1, skipped = ds[(3, 7)]
    x2, a2, y2, _ = ds[(3, 7)]
    x3, a3, _, _ = ds[(4, 7)]
    assert x1.shape == (64, 64, 3) and torch.equal(x1, x2) and torch.equal(a1, a2) and y1 == y2 == train.labels[7]
    assert skipped == ()
    assert not torch.equal(a1, a3)
    # flat val folder with a labels file gives the same samples as the class folders
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    (flat / "train").symlink_to(tmp_path / "a" / "train")
    lines = []
    for p, lab in zip(val.paths, val.labels, strict=False):
        (flat / "val" / p.name).write_bytes(p.read_bytes())
        lines.append(f"{p.name} {val.classes[lab] if lab % 2 else lab}")
    (flat / "labels.txt").write_text("\n".join(lines))
    _, val2 = imagenet_splits(flat, "labels.txt")
    assert val2.labels == val.labels
    # mean and covariance eigen-decomposition against numpy on the decoded pixels
    from vggfeat.data.images import load_rgb

    px = np.concatenate([np.asarray(load_rgb(p), dtype=np.float64).reshape(-1, 3) for p in train.paths])
    s = pixel_stats(train.paths, min_side=10_000)
    assert np.allclose(s["mean"], px.mean(0))
    val_np = np.sort(np.linalg.eigvalsh(np.cov(px.T, bias=True)))[::-1] / 255.0
    assert np.allclose(s["eigval"], val_np, rtol=1e-6)


def test_colour_shift_matches_manual():
    x = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    mean, val = (10.0, 20.0, 30.0), (3.0, 2.0, 1.0)
    vec = ((0.6, 0.8, 0.0), (-0.8, 0.6, 0.0), (0.0, 0.0, 1.0))
    alpha = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]])
    out = normalize_batch(x, mean, val, vec, alpha)
    for b in range(2):
        shift = np.array(vec) @ (alpha[b].numpy() * np.array(val))  # eigvec @ (alpha * eigval)
        want = (
            x[b].permute(2, 0, 1).float() - torch.tensor(mean).view(3, 1, 1) + torch.tensor(shift).float().view(3, 1, 1)
        )
        assert torch.allclose(out[b], want, atol=1e-5)


def _ramps(h, w):
    """(3, h, w) uint8 image whose red channel is the column index and green channel the row index."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([x, y, torch.zeros_like(x)]).to(torch.uint8)


def test_train_crop_rescales_to_s_and_crops_uniformly():
    """On ramps, a crop's pixel steps are the rescale factor and its first pixel is its source offset."""
    from vggfeat.data.transforms import sample_rng, train_crop

    img = _ramps(192, 256)  # rescaled to S=96: 96 x 128, so one output pixel spans 2 source pixels
    lefts, tops, flips = [], [], 0
    for i in range(60):
        out = train_crop(img, sample_rng(0, 0, i), scale=(96, 96), crop=48, flip=True)
        assert out.shape == (48, 48, 3) and out.dtype == torch.uint8
        red, green = out[24, :, 0].float(), out[:, 24, 1].float()
        if red[1] > red[-2]:  # mirrored
            flips += 1
            red = red.flip(0)
        assert torch.allclose(red[2:-1] - red[1:-2], torch.tensor(2.0), atol=1.0)  # scale S/min side = 1/2
        assert torch.allclose(green[2:-1] - green[1:-2], torch.tensor(2.0), atol=1.0)
        lefts.append(float(red[1] - 2.5))  # column j samples source x = left + 2j + 0.5
        tops.append(float(green[1] - 2.5))
    # window 96 x 96 source pixels: left uniform in [0, 160], top in [0, 96]
    assert min(lefts) < 20 and max(lefts) > 140 and min(tops) < 15 and max(tops) > 80
    assert all(-1 <= v <= 161 for v in lefts) and all(-1 <= v <= 97 for v in tops)
    assert 15 < flips < 45
    slopes = set()
    for i in range(40):  # scale jitter: S uniform in [96, 192] -> step 192 / S in [1, 2]
        red = train_crop(img, sample_rng(1, 0, i), scale=(96, 192), crop=48, flip=False)[24, :, 0].float()
        slopes.add(round(float(red[-2] - red[1]) / 45, 1))
    assert min(slopes) <= 1.2 and max(slopes) >= 1.8 and all(0.9 <= s <= 2.1 for s in slopes)


def test_train_crop_matches_rescaling_the_whole_photo():
    """Against the literal recipe - PIL rescales the whole photo to S, then the crop is cut out."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from vggfeat.data.transforms import _window, center_crop, isotropic_size, sample_rng, train_crop

    photo = load_sample_images().images[0]  # 427 x 640
    img = torch.from_numpy(photo.copy()).permute(2, 0, 1)
    for i, s in enumerate((256, 384, 300)):
        rng = sample_rng(2, 0, i)
        ours = train_crop(img, rng, scale=(s, s), crop=224, flip=False).numpy().astype(float)
        rng = sample_rng(2, 0, i)
        rng.integers(s, s + 1)
        wh, ww = _window(427, 640, s, 224)
        top, left = int(rng.integers(0, 427 - wh + 1)), int(rng.integers(0, 640 - ww + 1))
        rh, rw = isotropic_size(427, 640, s)
        full = np.asarray(Image.fromarray(photo).resize((rw, rh), Image.BILINEAR), dtype=float)
        y0, x0 = round(top * rh / 427), round(left * rw / 640)
        want = full[y0 : y0 + 224, x0 : x0 + 224]
        assert np.abs(ours - want)[2:-2, 2:-2].mean() < 8.0, s  # apart by the sub-pixel position only
        # PIL resampling exactly that window: the same filter (up to rounding) away from the window's edge
        box = np.asarray(
            Image.fromarray(photo).resize(
                (224, 224), Image.BILINEAR, box=(left, top, left + ww, top + wh), reducing_gap=None
            ),
            dtype=float,
        )
        assert np.abs(ours - box)[2:-2, 2:-2].max() <= 1.0, s
        dy, dx = (8 if y0 + 232 <= rh else -8), (8 if x0 + 232 <= rw else -8)  # 8 px off: clearly worse
        shifted = full[y0 + dy : y0 + dy + 224, x0 + dx : x0 + dx + 224]
        assert np.abs(ours - shifted)[2:-2, 2:-2].mean() > 2 * np.abs(ours - want)[2:-2, 2:-2].mean()
    centre = center_crop(img, size=256, crop=224).numpy().astype(float)
    rh, rw = isotropic_size(427, 640, 256)
    full = np.asarray(Image.fromarray(photo).resize((rw, rh), Image.BILINEAR), dtype=float)
    want = full[(rh - 224) // 2 : (rh - 224) // 2 + 224, (rw - 224) // 2 : (rw - 224) // 2 + 224]
    assert np.abs(centre - want)[2:-2, 2:-2].mean() < 8.0


def test_cached_decoding_gives_the_same_items_and_reads_each_file_once(tmp_path, monkeypatch):
    import vggfeat.train.data as train_data

    generate_synthetic(tmp_path, classes=3, per_class=4, seed=2)
    train, val = imagenet_splits(tmp_path)
    reads: list[str] = []
    real = train_data.load_rgb_tensor
    monkeypatch.setattr(train_data, "load_rgb_tensor", lambda p, **kw: reads.append(str(p)) or real(p, **kw))
    kw = dict(seed=0, scale=(64, 80), crop=64, flip=True, color_sigma=0.1)
    plain, cached = TrainSet(train, **kw), TrainSet(train, **kw, cache=True)
    for epoch in range(3):
        for i in range(len(train)):
            a, b = plain[(epoch, i)], cached[(epoch, i)]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    assert len(reads) == 3 * len(train) + len(train)  # plain: every read decodes; cached: the first only
    plain_v, cached_v = ValSet(val, size=72, crop=64), ValSet(val, size=72, crop=64, cache=True)
    for _ in range(2):
        for i in range(len(val)):
            a, b = plain_v[i], cached_v[i]
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert len(reads) == 4 * len(train) + 3 * len(val)
