"""Training inputs: the global batch is the same whatever the process count; augmentation is keyed by
(seed, epoch, index); pixel statistics match numpy; the synthetic set is deterministic; flat val labels."""
from __future__ import annotations

import numpy as np
import torch

from vggfeat.data.folder import imagenet_splits
from vggfeat.data.stats import pixel_stats
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.data.transforms import normalize_batch
from vggfeat.train.data import GlobalBatchSampler, TrainSet


def test_sampler_union_is_the_global_batch():
    one = list(GlobalBatchSampler(50, seed=1, epoch=2, batch_size=8, per_device=2, rank=0, world=1))
    two = [list(GlobalBatchSampler(50, seed=1, epoch=2, batch_size=8, per_device=2, rank=r, world=2)) for r in (0, 1)]
    assert len(one) == 6 * 4 and len(two[0]) == 6 * 2
    for step in range(6):
        a = sum(one[step * 4:step * 4 + 4], [])
        b = sum(two[0][step * 2:step * 2 + 2] + two[1][step * 2:step * 2 + 2], [])
        assert a == b and len(set(a)) == 8
    resumed = list(GlobalBatchSampler(50, seed=1, epoch=2, batch_size=8, per_device=2, rank=0, world=1, start_step=4))
    assert resumed == one[16:]
    other = list(GlobalBatchSampler(50, seed=1, epoch=3, batch_size=8, per_device=2, rank=0, world=1))
    assert other != one  # reseeded per epoch


def test_synthetic_augmentation_stats_and_flat_val(tmp_path):
    generate_synthetic(tmp_path / "a", classes=3, per_class=4, seed=5)
    generate_synthetic(tmp_path / "b", classes=3, per_class=4, seed=5)
    fa, fb = sorted((tmp_path / "a").rglob("*.jpg")), sorted((tmp_path / "b").rglob("*.jpg"))
    assert len(fa) == 3 * 4 + 3 and [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]
    train, val = imagenet_splits(tmp_path / "a")
    assert train.classes == val.classes and len(train) == 12 and set(val.labels) == {0, 1, 2}
    ds = TrainSet(train, seed=0, scale=(64, 80), crop=64, flip=True, color_sigma=0.1)
    x1, a1, y1 = ds[(3, 7)]
    x2, a2, y2 = ds[(3, 7)]
    x3, a3, _ = ds[(4, 7)]
    assert x1.shape == (64, 64, 3) and torch.equal(x1, x2) and torch.equal(a1, a2) and y1 == y2 == train.labels[7]
    assert not torch.equal(a1, a3)
    # flat val folder with a labels file gives the same samples as the class folders
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    (flat / "train").symlink_to(tmp_path / "a" / "train")
    lines = []
    for p, lab in zip(val.paths, val.labels):
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
        want = x[b].permute(2, 0, 1).float() - torch.tensor(mean).view(3, 1, 1) + torch.tensor(shift).float().view(3, 1, 1)
        assert torch.allclose(out[b], want, atol=1e-5)
