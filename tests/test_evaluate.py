"""Sect. 3.2 protocols on a tiny net against manual computations: dense (score map averaged, softmax,
flip-averaged, scales averaged), 150-crop multi-crop, both combined, and fusion of nets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vggfeat.data.folder import scan_folder
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.evaluate import dense_posterior, evaluate_nets, multicrop_posterior, topk_errors

SCALES = (64, 80, 96)


def _input(model, img, q):
    w, h = img.size
    size = (q, max(q, round(h * q / w))) if w <= h else (max(q, round(w * q / h)), q)  # (W, H)
    arr = np.asarray(img.resize(size, Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] - torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)


def test_dense_and_multicrop_against_manual(tiny_model):
    model = tiny_model("vgg_a", seed=3).eval()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    with torch.no_grad():
        dense, multi = [], []
        for q in SCALES:
            x = _input(model, img, q)
            for flip in (False, True):
                xi = x.flip(-1) if flip else x
                scores = model.forward_features(xi, "fc8").sum(dim=(2, 3)) / np.prod(model.forward_features(xi, "fc8").shape[2:])
                dense.append(scores.softmax(1)[0])
            _, _, h, w = x.shape
            ps = []
            for t in np.linspace(0, h - 64, 5).round().astype(int):
                for l in np.linspace(0, w - 64, 5).round().astype(int):
                    for flip in (False, True):
                        c = x[..., t:t + 64, l:l + 64]
                        ps.append(model(c.flip(-1) if flip else c).softmax(1)[0])  # one crop at a time
            assert len(ps) == 50
            multi.append(torch.stack(ps).mean(0))
    want_dense = torch.stack(dense).mean(0)
    want_multi = torch.stack(multi).mean(0)
    assert torch.allclose(dense_posterior(model, img, SCALES), want_dense, atol=1e-5)
    assert torch.allclose(multicrop_posterior(model, img, SCALES), want_multi, atol=1e-5)


def test_errors_protocols_and_fusion(tmp_path, tiny_model):
    root = generate_synthetic(tmp_path, classes=10, per_class=4, seed=1)
    samples = scan_folder(root / "val")
    nets = [tiny_model("vgg_a", seed=1).eval(), tiny_model("vgg_b", seed=2).eval()]
    rows = evaluate_nets(nets, samples, protocols=["dense", "multicrop", "both"], scales=(64, 96))
    got = {(r["net"], r["protocol"]): (r["top1_err"], r["top5_err"]) for r in rows}
    assert len(rows) == 9
    from vggfeat.data.images import load_rgb

    labels = torch.tensor(samples.labels)
    post = {}
    for i, net in enumerate(nets):
        imgs = [load_rgb(p) for p in samples.paths]
        d = torch.stack([dense_posterior(net, im, (64, 96)) for im in imgs])
        m = torch.stack([multicrop_posterior(net, im, (64, 96)) for im in imgs])
        post[i] = (d + m) / 2
        assert got[(f"net{i}", "dense")] == topk_errors(d, labels)
        assert got[(f"net{i}", "both")] == topk_errors((d + m) / 2, labels)
    assert got[("fusion", "both")] == topk_errors((post[0] + post[1]) / 2, labels)
    # top-k errors by hand
    p = torch.tensor([[0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02]] * 3)
    assert topk_errors(p, torch.tensor([0, 4, 6])) == pytest.approx((2 / 3, 1 / 3))  # hit, top-5 only, miss
