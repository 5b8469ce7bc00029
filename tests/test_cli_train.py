"""The train, evaluate and mean-rgb commands: instant --help, usage errors, results equal the library's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.folder import scan_folder
from vggfeat.data.stats import cached_stats, pixel_stats
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.evaluate import evaluate_nets

REPO = Path(__file__).resolve().parents[1]


def test_help_names_every_option_without_importing_torch():
    # --help must be instant: the commands import torch only when they run (tests/test_imports.py checks the rule)
    code = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from vggfeat.cli.main import cli\n"
        "out = {c: CliRunner().invoke(cli, [c, '--help']).output for c in ('train', 'evaluate', 'mean-rgb', 'demo')}\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'help': out}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch"] is False
    for cmd, words in (
        ("train", ("[RECIPE]", "--set KEY=VALUE", "--data-root", "--out", "--resume", "--overwrite", "torchrun")),
        ("evaluate", ("--weights", "--protocol", "--scales", "--data-root")),
        ("mean-rgb", ("ROOT", "--max-images", "--refresh", "mean_rgb.json")),
        ("demo", ("--out", "--quick", "--seed", "random")),
    ):
        text = " ".join(result["help"][cmd].split())
        assert text.startswith(f"Usage: cli {cmd} [OPTIONS]") and all(w in text for w in words), (cmd, text)


def test_bad_recipe_key_names_the_nearest_one():
    res = CliRunner().invoke(cli, ["train", "recipes/train/smoke.yaml", "--set", "optim.lrr=1"])
    assert res.exit_code == 2 and "did you mean 'optim.lr'" in res.output, res.output


def test_mean_rgb_and_evaluate(tmp_path, tiny_model):
    root = generate_synthetic(tmp_path / "d", classes=3, per_class=4, seed=2)
    res = CliRunner().invoke(cli, ["mean-rgb", str(root)])
    assert res.exit_code == 0, res.output
    cached = json.loads((root / "mean_rgb.json").read_text())
    assert cached["mean"] == pytest.approx(pixel_stats(scan_folder(root / "train").paths)["mean"])
    nets = [tiny_model("vgg_a", seed=1, num_classes=3), tiny_model("vgg_d", seed=2, num_classes=3)]
    files = [vggfeat.save_weights(n, tmp_path / f"n{i}.safetensors") for i, n in enumerate(nets)]
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--weights",
            str(files[0]),
            "--weights",
            str(files[1]),
            "--data-root",
            str(root),
            "--protocol",
            "both",
            "--scales",
            "64,96",
            "--json",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    want = evaluate_nets(
        [vggfeat.load_model(f) for f in files], scan_folder(root / "val"), protocols=["both"], scales=(64, 96)
    )
    assert [r["net"] for r in rows] == [str(files[0]), str(files[1]), "fusion"]  # nets named by path
    assert [(r["top1_err"], r["top5_err"]) for r in rows] == [(r["top1_err"], r["top5_err"]) for r in want]


def test_mean_rgb_with_workers_and_batches_equals_the_sums_by_hand(tmp_path):
    from vggfeat.data.images import load_rgb

    root = generate_synthetic(tmp_path / "d", classes=3, per_class=3, seed=4)
    paths = scan_folder(root / "train").paths
    px = np.concatenate([np.asarray(load_rgb(p, min_side=256), np.float64).reshape(-1, 3) for p in paths])
    bad = paths[4]
    bad.write_bytes(b"not an image")  # skipped, named, and not counted
    good = np.concatenate([np.asarray(load_rgb(p, min_side=256), np.float64).reshape(-1, 3) for p in paths if p != bad])
    for args in (["--workers", "0", "--batch-size", "1"], ["--workers", "2", "--batch-size", "4"]):
        res = CliRunner().invoke(cli, ["mean-rgb", str(root), "--refresh", "--device", "cpu", *args])
        assert res.exit_code == 0, res.output
        got = json.loads((root / "mean_rgb.json").read_text())
        assert got["mean"] == pytest.approx(good.mean(0).tolist(), rel=1e-12) and got["pixels"] == len(good)
        assert got["eigval"] == pytest.approx(
            sorted(np.linalg.eigvalsh(np.cov(good.T, bias=True)) / 255)[::-1], rel=1e-9
        )
        assert got["images"] == len(paths) - 1 and len(got["skipped"]) == 1 and str(bad) in got["skipped"][0]
    assert len(px) > len(good)


def _mean_rgb(root: Path, *args: str) -> tuple[list[float], str]:
    """The mean `vggfeat mean-rgb ROOT ARGS` prints (to its 3 decimals) and its output."""
    res = CliRunner().invoke(cli, ["mean-rgb", str(root), "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]  # "mean RGB: r, g, b  (N images)"
    return [float(v) for v in first.split(":")[1].split("(")[0].split(",")], res.output


def test_mean_rgb_cache_is_reused_only_for_the_same_images_and_settings(tmp_path, monkeypatch):
    from vggfeat.data import stats

    root = generate_synthetic(tmp_path / "d", classes=3, per_class=4, seed=2)
    paths = scan_folder(root / "train").paths
    full = pixel_stats(paths)["mean"]
    two, out = _mean_rgb(root, "--max-images", "2")
    assert two == pytest.approx(pixel_stats(paths[:2])["mean"], abs=1e-3) and "(2 images)" in out
    mean, out = _mean_rgb(root)  # all images: the 2-image estimate is not the answer
    assert mean == pytest.approx(full, abs=1e-3) and "(12 images)" in out and "computed" in out

    computed = []
    monkeypatch.setattr(stats, "_stats", lambda *a, **k: computed.append(1))  # any computation fails the test
    before = (root / "mean_rgb.json").stat().st_mtime_ns
    mean, out = _mean_rgb(root)  # nothing changed: read back, not recomputed
    assert mean == pytest.approx(full, abs=1e-3) and f"reused {root}/mean_rgb.json" in out
    assert computed == [] and (root / "mean_rgb.json").stat().st_mtime_ns == before
    monkeypatch.undo()

    other = generate_synthetic(tmp_path / "other", classes=3, per_class=4, seed=5)  # same names, other pixels
    shutil.rmtree(root / "train")
    shutil.copytree(other / "train", root / "train")
    new_paths = scan_folder(root / "train").paths
    assert [p.name for p in new_paths] == [p.name for p in paths]
    want = pixel_stats(new_paths)["mean"]
    assert want != pytest.approx(full, abs=1e-3)
    assert cached_stats(root, new_paths)["mean"] == pytest.approx(want)  # as training asks for it
    assert _mean_rgb(root)[0] == pytest.approx(want, abs=1e-3)

    key_less = {k: v for k, v in json.loads((root / "mean_rgb.json").read_text()).items() if k != "key"}
    (root / "mean_rgb.json").write_text(json.dumps({**key_less, "mean": [1.0, 2.0, 3.0]}))  # an older file
    assert cached_stats(root)["mean"] == pytest.approx(want)  # not trusted: recomputed and rewritten
    assert json.loads((root / "mean_rgb.json").read_text())["mean"] == pytest.approx(want)


def test_train_without_recipe_lists_shipped_recipes():
    res = CliRunner().invoke(cli, ["train"])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith("  ")}
    assert {"smoke", "vgg_a_s256", "vgg_d_s256", "vgg_e_jitter"} <= set(lines) and "_imagenet" not in lines
    assert "Net D at S=256" in lines["vgg_d_s256"]  # the recipe's first comment line
    assert "vggfeat train NAME" in res.output


def test_train_recipe_by_name_and_unknown_name():
    r = CliRunner()
    res = r.invoke(cli, ["train", "smoke", "--set", "optim.lrr=1"])  # a name resolves; the bad key proves it was read
    assert res.exit_code == 2 and "did you mean 'optim.lr'" in res.output
    res = r.invoke(cli, ["train", "smok"])
    assert res.exit_code == 1 and "shipped train recipes: smoke, vgg_a_glorot" in res.output
