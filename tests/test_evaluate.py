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
                scores = model.forward_features(xi, "fc8").sum(dim=(2, 3)) / np.prod(
                    model.forward_features(xi, "fc8").shape[2:]
                )
                dense.append(scores.softmax(1)[0])
            _, _, h, w = x.shape
            ps = []
            for t in np.linspace(0, h - 64, 5).round().astype(int):
                for left in np.linspace(0, w - 64, 5).round().astype(int):
                    for flip in (False, True):
                        c = x[..., t : t + 64, left : left + 64]
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


# the paper's rescale, labels that cannot shift, Q smaller than the crop, exact error ratios


def test_evaluate_rescales_the_fully_decoded_jpeg(tmp_path, tiny_model, monkeypatch):
    from vggfeat.evaluate import protocols

    (tmp_path / "val" / "a").mkdir(parents=True)
    arr = np.random.default_rng(0).integers(0, 256, (140, 160, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "val" / "a" / "x.jpg", quality=90)  # smallest side >= 2 Q: draft would kick in
    seen = []
    real = protocols._rescaled
    monkeypatch.setattr(protocols, "_rescaled", lambda img, *a: (seen.append(img.size), real(img, *a))[1])
    net = tiny_model("vgg_a", seed=1, num_classes=3).eval()
    samples = scan_folder(tmp_path / "val")
    evaluate_nets([net], samples, protocols=["dense"], scales=(64,))
    assert seen == [(160, 140)]  # not PIL's 1/2-size draft decode (80, 70)
    evaluate_nets([net], samples, protocols=["dense"], scales=(64,), fast_decode=True)
    assert seen[-1] == (80, 70)  # the reduced decode only when asked


@pytest.mark.parametrize("protocol", ["dense", "multicrop", "both"])
def test_q_smaller_than_crop_refused_up_front(tmp_path, tiny_model, protocol):
    from vggfeat import VggfeatError

    root = generate_synthetic(tmp_path, classes=2, per_class=1, seed=1)
    net = tiny_model("vgg_a", seed=1, num_classes=2).eval()
    with pytest.raises(VggfeatError, match="Q = 48 is smaller than the 64 px crop"):
        evaluate_nets([net], scan_folder(root / "val"), protocols=[protocol], scales=(48, 64))


def test_batched_and_loaded_by_workers_equals_one_image_at_a_time(tmp_path, tiny_model):
    # images of two sizes: dense batches only equal rescaled sizes together; multi-crop batches crops across images
    (tmp_path / "val" / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(70, 90), (64, 64), (70, 90), (90, 70), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "val" / "a" / f"{i}.png")
    samples = scan_folder(tmp_path / "val")
    net = tiny_model("vgg_a", seed=1).eval()
    from vggfeat.data.images import load_rgb
    from vggfeat.evaluate import protocols

    for protocol, one in (("dense", dense_posterior), ("multicrop", multicrop_posterior)):
        want = torch.stack([one(net, load_rgb(p), (64, 80)) for p in samples.paths])
        for batch_size, workers in ((1, 0), (3, 0), (16, 2)):
            got = protocols.posteriors(net, map(load_rgb, samples.paths), (64, 80), protocol, batch_size=batch_size)
            assert torch.allclose(got, want, atol=1e-6), (protocol, batch_size)
            rows = evaluate_nets(
                [net], samples, protocols=[protocol], scales=(64, 80), batch_size=batch_size, workers=workers
            )
            assert (rows[0]["top1_err"], rows[0]["top5_err"]) == topk_errors(want, torch.tensor(samples.labels))


def test_an_unreadable_image_loaded_by_a_worker_is_one_line(tmp_path, tiny_model):
    from vggfeat.data.images import ImageError

    root = generate_synthetic(tmp_path, classes=2, per_class=2, seed=1)
    bad = sorted((root / "val").rglob("*.*"))[1]
    bad.write_bytes(b"not an image")
    net = tiny_model("vgg_a", seed=1, num_classes=2).eval()
    with pytest.raises(ImageError, match=f"^{bad}: "):
        evaluate_nets([net], scan_folder(root / "val"), protocols=["dense"], scales=(64,), workers=2)


def test_error_values_are_exact_ratios_of_counts():
    post = torch.zeros(36, 6)
    post[:, 0] = 1.0
    labels = torch.tensor([0] * 7 + [5] * 29)  # 29 of 36 miss at top-1
    t1, _ = topk_errors(post, labels)
    assert t1 == 29 / 36  # float64 ratio, not float32's 0.80555558


def test_protocol_all_computes_each_posterior_once(tmp_path, tiny_model):
    root = generate_synthetic(tmp_path, classes=3, per_class=2, seed=1)
    samples = scan_folder(root / "val")

    def counted(protocols):
        net = tiny_model("vgg_a", seed=1, num_classes=3).eval()
        calls = []
        net.register_forward_hook(lambda *a: calls.append(1))
        rows = evaluate_nets([net], samples, protocols=protocols, scales=(64,), batch_size=1)
        return len(calls), rows

    n_all, rows = counted(["dense", "multicrop", "both"])
    n_dense, _ = counted(["dense"])
    n_multi, _ = counted(["multicrop"])
    assert n_all == n_dense + n_multi and (n_dense, n_multi) == (len(samples), 25 * len(samples))  # 1 pass a crop
    assert [r["protocol"] for r in rows] == ["dense", "multicrop", "both"]


def _ten_class_root(tmp_path, tiny_model):
    import vggfeat

    for c in ("n03", "n07"):
        (tmp_path / "d" / "val" / c).mkdir(parents=True)
        for k in range(2):
            arr = np.random.default_rng(k + len(c)).integers(0, 256, (70, 80, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "d" / "val" / c / f"{k}.png")
    w = vggfeat.save_weights(tiny_model("vgg_a", seed=1, num_classes=10), tmp_path / "n.safetensors")
    return tmp_path / "d", w


def test_val_folders_map_to_the_full_class_list(tmp_path, tiny_model):
    import json

    from click.testing import CliRunner

    import vggfeat
    from vggfeat.cli.main import cli
    from vggfeat.data.folder import Samples

    root, w = _ten_class_root(tmp_path, tiny_model)
    args = [
        "evaluate",
        "--weights",
        str(w),
        "--data-root",
        str(root),
        "--scales",
        "64",
        "--json",
        "--quiet",
        "--device",
        "cpu",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "2 class folders but the net has 10 classes" in res.output  # no silent shift
    (tmp_path / "classes.txt").write_text("\n".join(f"n{i:02d}" for i in range(10)) + "\n")
    res = CliRunner().invoke(cli, args + ["--classes", str(tmp_path / "classes.txt")])
    assert res.exit_code == 0, res.output
    s = scan_folder(root / "val")
    want = evaluate_nets(
        [vggfeat.load_model(w)], Samples(s.paths, (3, 3, 7, 7), s.classes), protocols=["dense"], scales=(64,)
    )
    assert [(r["top1_err"], r["top5_err"]) for r in json.loads(res.output)] == [
        (want[0]["top1_err"], want[0]["top5_err"])
    ]
    (tmp_path / "few.txt").write_text("n03\nn05\n" + "\n".join(f"x{i}" for i in range(8)))
    res = CliRunner().invoke(cli, args + ["--classes", str(tmp_path / "few.txt")])
    assert res.exit_code == 1 and "val/ folders n07 are not in" in res.output


def test_cli_scales_errors(tmp_path, tiny_model):
    from click.testing import CliRunner

    from vggfeat.cli.main import cli

    root, w = _ten_class_root(tmp_path, tiny_model)
    base = ["evaluate", "--weights", str(w), "--data-root", str(root), "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(cli, base + ["--scales", "abc"])
    assert res.exit_code == 2 and "expected comma-separated integers" in res.output
    res = CliRunner().invoke(cli, base + ["--scales", "256,16"])  # no VGG runs below 32 px: a usage error
    assert res.exit_code == 2 and "Q = 16 is below the minimum 32" in res.output
    res = CliRunner().invoke(cli, base + ["--scales", "48"])  # this net's crop is 64 px: known once it is loaded
    assert res.exit_code == 1 and "Q = 48 is smaller than the 64 px crop" in res.output
    assert "Traceback" not in res.output


def test_cli_progress_bar_on_stderr_and_nets_named_by_path(tmp_path, tiny_model):
    import json

    from click.testing import CliRunner

    from vggfeat.cli.main import cli

    root, w = _ten_class_root(tmp_path, tiny_model)
    (tmp_path / "classes.txt").write_text("\n".join(f"n{i:02d}" for i in range(10)))
    args = [
        "evaluate",
        "--weights",
        str(w),
        "--data-root",
        str(root),
        "--scales",
        "64",
        "--device",
        "cpu",
        "--classes",
        str(tmp_path / "classes.txt"),
    ]
    res = CliRunner().invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    assert "evaluate: 100%" in res.stderr and "4/4" in res.stderr  # a progress bar, on stderr only
    assert [r["net"] for r in json.loads(res.stdout)] == [str(w)]
    res = CliRunner().invoke(cli, args + ["--quiet"])
    assert res.stderr == "" and str(w) in res.stdout


def test_flat_val_labelled_by_index_without_a_class_list(tmp_path, tiny_model):
    from click.testing import CliRunner

    from vggfeat.cli.main import cli

    root, w = _ten_class_root(tmp_path, tiny_model)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((root / "val").rglob("*.png")):
        p.rename(flat / f"{p.parent.name}_{p.name}")
    (tmp_path / "labels.txt").write_text("".join(f"{p.name} {int(p.name[1:3])}\n" for p in sorted(flat.iterdir())))
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--weights",
            str(w),
            "--data-root",
            str(flat),
            "--val-labels",
            str(tmp_path / "labels.txt"),
            "--scales",
            "64",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 images" in res.stdout


def test_evaluation_never_changes_the_callers_net(tmp_path, tiny_model, monkeypatch):
    """A net given in training mode is evaluated without dropout and handed back as it was: mode, parameters
    (objects, memory, values), attributes; the CPU kernels run on evaluation's own copy of it."""
    from helpers import assert_same_state, module_state

    from vggfeat.models import fastconv

    monkeypatch.setattr(fastconv, "WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    root = generate_synthetic(tmp_path, classes=3, per_class=2, seed=1)
    samples = scan_folder(root / "val")
    net = tiny_model("vgg_a", seed=1, num_classes=3)  # training mode
    before = module_state(net)
    rows = evaluate_nets([net], samples, protocols=["dense", "multicrop"], scales=(64,))
    assert_same_state(before, module_state(net))
    want = evaluate_nets(
        [tiny_model("vgg_a", seed=1, num_classes=3).eval()], samples, protocols=["dense", "multicrop"], scales=(64,)
    )
    assert rows == want


def test_cpu_evaluation_keeps_freed_memory(tmp_path, tiny_model, monkeypatch):
    """Evaluation on the CPU runs the fused kernels with each batch's maps on the last one's pages (utils.heap),
    as extraction does."""
    import vggfeat.evaluate.protocols as protocols

    calls = []
    monkeypatch.setattr(protocols, "keep_freed_memory", lambda: calls.append(1) or True)
    root = generate_synthetic(tmp_path, classes=3, per_class=2, seed=1)
    evaluate_nets(
        [tiny_model("vgg_a", seed=1, num_classes=3)], scan_folder(root / "val"), protocols=["dense"], scales=(64,)
    )
    assert calls == [1]


def test_a_class_file_is_read_in_time_linear_in_its_lines(tmp_path):
    """The check for repeated names counted each name over the whole list: 20,000 wnids took 9 s."""
    import time

    from vggfeat.evaluate.labels import EvaluateError, read_class_file

    path = tmp_path / "classes.txt"
    path.write_text("# wnids\n" + "".join(f"n{i:08d} name {i}\n" for i in range(20_000)))
    start = time.perf_counter()
    names = read_class_file(path)
    assert time.perf_counter() - start < 1.5
    assert len(names) == 20_000 and names[:2] == ("n00000000", "n00000001") and names[-1] == "n00019999"
    path.write_text("a\nb\n\nc\nb\na\n")
    with pytest.raises(EvaluateError, match=rf"^{path}, line 5: class name 'b' repeats line 2$"):
        read_class_file(path)
