"""`vggfeat train` and `mean-rgb` under user mistakes and faults: wrong choices and data roots are
one line before any work; a damaged newest checkpoint falls back to the one before; unreadable images are
skipped, named and counted; a full disk or read-only run folder is one line."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vggfeat.cli.main import cli
from vggfeat.data.stats import StatsError, cached_stats, pixel_stats
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.train.checkpoint import list_checkpoints, load_checkpoint
from vggfeat.train.loop import train
from vggfeat.train.recipe import load_recipe

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "train" / "smoke.yaml"
# 10 classes x 8 images, global batch 16: 5 steps an epoch; checkpoints at steps 2, 4 and 5 (epoch end)
ONE_EPOCH = [
    "optim.epochs=1",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=3",
    "checkpoint.log_every=5",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), classes=10, per_class=8, seed=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A finished one-epoch run: the reference a resumed run must equal."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(load_recipe(SMOKE, ONE_EPOCH), run, data_root=data, progress=False)
    return run


def _train_cli(*args: str):
    return CliRunner().invoke(cli, ["train", str(SMOKE), *args])


def _sets(settings) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


@pytest.mark.parametrize(
    "setting, words",
    [
        ("model.name=vgg_z", "model.name: unknown model 'vgg_z'; valid: vgg_a, vgg_a_lrn, vgg_b"),
        ("model.init=xavier", "model.init: unknown init 'xavier'; valid: normal, glorot"),
        ("runtime.device=tpu", "runtime.device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
    ],
)
def test_unknown_choices_are_one_line_before_any_work(tmp_path, setting, words):
    res = _train_cli("--set", setting, "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "d"))
    assert res.exit_code == 2 and words in res.output, res.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "run").exists()  # nothing generated or written


def test_num_classes_not_matching_the_data_names_both(tmp_path, data):
    res = _train_cli(
        *_sets(ONE_EPOCH + ["model.num_classes=7", "data.mean_rgb=null"]),
        "--data-root",
        str(data),
        "--out",
        str(tmp_path / "run"),
    )
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"model.num_classes is 7 but {data}/train has 10 class folders; set model.num_classes: 10" in res.output
    assert not (data / "mean_rgb.json").exists()  # refused before the pixel statistics


def test_missing_or_absent_data_root_is_named(tmp_path):
    run = ["--out", str(tmp_path / "run")]
    res = _train_cli("--set", "data.root=null", *run)
    assert res.exit_code == 1, res.output
    assert "no dataset: data.root is not set in the recipe and no --data-root was given" in res.output
    res = _train_cli("--data-root", str(tmp_path / "nowhere"), *run)
    assert res.exit_code == 1 and f"--data-root {tmp_path / 'nowhere'} does not exist" in res.output, res.output
    (tmp_path / "empty").mkdir()
    res = _train_cli("--set", f"data.root={tmp_path / 'empty'}", *run)
    assert res.exit_code == 1 and f"data.root {tmp_path / 'empty'} has no train/ folder" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


def _damaged_copy(finished: Path, dest: Path, damage: dict[str, bytes | None]) -> Path:
    """The finished run without its final weights, as if killed after its last checkpoint, with checkpoints
    truncated to the given bytes (None: cut to half)."""
    shutil.copytree(finished, dest)
    (dest / "model.safetensors").unlink()
    for name, content in damage.items():
        path = dest / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    return dest


def test_resume_falls_back_from_a_damaged_newest_checkpoint(tmp_path, data, finished, caplog):
    names = [p.name for p in list_checkpoints(finished)]
    assert names == ["ckpt-e000-s00000002.pt", "ckpt-e000-s00000004.pt", "ckpt-e001-s00000005.pt"]
    run = _damaged_copy(finished, tmp_path / "run", {names[2]: None})
    # an old checkpoint still holding the always-empty "scaler" entry (no longer written) resumes as before
    old = load_checkpoint(run / names[1])
    torch.save({**old, "scaler": {}}, run / names[1])
    with caplog.at_level(logging.WARNING):
        train(load_recipe(SMOKE, ONE_EPOCH), run, data_root=data, resume=True, progress=False)
    assert f"{run / names[2]} cannot be loaded (truncated or corrupt" in caplog.text
    a, b = load_file(finished / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # continued from step 4: same run


def test_resume_over_empty_checkpoints_and_none_loadable(tmp_path, data, finished, caplog):
    names = [p.name for p in list_checkpoints(finished)]
    run = _damaged_copy(finished, tmp_path / "run", {names[2]: b"", names[1]: b"garbage"})
    with caplog.at_level(logging.WARNING):
        res = _train_cli(*_sets(ONE_EPOCH), "--resume", "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 0, res.output  # from step 2
    assert f"{run / names[2]} cannot be loaded (empty file (0 bytes))" in caplog.text
    assert f"{run / names[1]} cannot be loaded (truncated or corrupt" in caplog.text
    assert load_file(run / "model.safetensors").keys() == load_file(finished / "model.safetensors").keys()

    run2 = _damaged_copy(finished, tmp_path / "run2", dict.fromkeys(names, b""))
    res = _train_cli(*_sets(ONE_EPOCH), "--resume", "--data-root", str(data), "--out", str(run2))
    assert res.exit_code == 1 and "Aborted" not in res.output, res.output
    assert f"Error: no checkpoint in {run2} can be loaded (ckpt-e001-s00000005.pt: empty file (0 bytes);" in res.output
    assert "start over with --overwrite" in res.output and len(res.output.strip().splitlines()) == 1


def test_unreadable_training_images_are_skipped_named_and_counted(tmp_path, caplog):
    root = generate_synthetic(tmp_path / "d", classes=10, per_class=8, seed=0)
    bad_train = sorted((root / "train").rglob("*.jpg"))[5]
    bad_train.write_bytes(b"\xff\xd8\xff garbage")
    bad_val = sorted((root / "val").rglob("*.jpg"))[0]
    bad_val.write_bytes(b"")
    r = load_recipe(SMOKE, ONE_EPOCH + ["optim.epochs=2"])  # mean_rgb: null, so mean RGB is computed too
    with caplog.at_level(logging.WARNING):
        out = train(r, tmp_path / "run", data_root=root, progress=False)
    assert out["epochs"] == 2
    assert f"skipping an unreadable training image: {bad_train}: not an image" in caplog.text
    assert caplog.text.count(f"skipping an unreadable validation image: {bad_val}: empty file") == 1
    assert f"skipping an unreadable image: {bad_train}" in caplog.text  # the mean RGB's pass
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert sum(s["skipped_images"] for s in steps) == 2  # every image is used once an epoch
    assert [r["unreadable_images"] for r in records if r["kind"] == "epoch"] == [2, 2]
    assert json.loads((root / "mean_rgb.json").read_text())["images"] == 79


def test_mean_rgb_skips_unreadable_images_and_names_broken_roots(tmp_path):
    root = generate_synthetic(tmp_path / "d", classes=2, per_class=3, seed=1)
    paths = sorted((root / "train").rglob("*.jpg"))
    want = pixel_stats(paths[1:])
    paths[0].write_bytes(b"not an image")
    res = CliRunner().invoke(cli, ["mean-rgb", str(root)])
    assert res.exit_code == 0 and "(5 images, 1 unreadable skipped)" in res.output, res.output
    got = json.loads((root / "mean_rgb.json").read_text())
    assert got["mean"] == pytest.approx(want["mean"]) and got["skipped"][0].startswith(str(paths[0]))

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "mean_rgb.json").write_text("{not json")
    res = CliRunner().invoke(cli, ["mean-rgb", str(bare)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: {bare} has no train/ folder to check {bare}/mean_rgb.json against" in res.output
    (bare / "mean_rgb.json").unlink()
    res = CliRunner().invoke(cli, ["mean-rgb", str(bare)])
    assert res.exit_code == 1 and f"{bare} has no train/ folder" in res.output, res.output
    (root / "mean_rgb.json").write_text("[1, 2]")  # parses, but is not the statistics: recomputed
    assert cached_stats(root)["mean"] == pytest.approx(want["mean"])
    with pytest.raises(StatsError, match="none of the 1 images can be read"):
        pixel_stats(paths[:1])


@pytest.mark.parametrize(
    "damage",
    [
        {"mean": [float("nan")] * 3},
        {"eigval": [float("inf"), 0.1, 0.01]},
        {"eigval": [1.0, 0.1, -5.0]},
        {"eigvec": [[1, 0, 0], [0, "x", 0], [0, 0, 1]]},
        {"mean": ["a", "b", "c"]},
        {"images": "many"},
        {"images": None},
    ],
)
def test_a_mean_rgb_cache_with_values_no_computation_gives_is_recomputed_never_trained_with(tmp_path, damage):
    root = generate_synthetic(tmp_path / "d", classes=2, per_class=2, seed=3)
    want = cached_stats(root)
    cache = root / "mean_rgb.json"
    stats = json.loads(cache.read_text())
    stats.update(damage)
    if damage.get("images", 0) is None:
        del stats["images"]
    cache.write_text(json.dumps(stats))  # its key still matches: only the values are wrong
    got = cached_stats(root)
    assert not got["reused"]
    assert got["mean"] == pytest.approx(want["mean"]) and got["eigval"] == pytest.approx(want["eigval"])
    assert json.loads(cache.read_text())["images"] == want["images"]  # and rewritten


def test_full_disk_while_training_is_one_line(tmp_path, data, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vggfeat.train.checkpoint.atomic_write_bytes", full)
    run = tmp_path / "run"
    res = _train_cli(*_sets(ONE_EPOCH), "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"Error: the disk is full while writing to {run}: free some space, then run again with --resume" in (
        res.output
    )


def test_unwritable_run_folder_is_one_line(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = _train_cli(*_sets(ONE_EPOCH), "--data-root", str(data), "--out", str(blocker / "run"))
    assert res.exit_code == 1 and f"Error: cannot write to {blocker / 'run'}" in res.output, res.output
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _train_cli(*_sets(ONE_EPOCH), "--data-root", str(data), "--out", str(ro / "run"))
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 1 and "cannot write to" in res.output and "Permission denied" in res.output, res.output


def test_read_only_run_folder_is_one_line_even_as_root(tmp_path, data, monkeypatch):
    run = tmp_path / "run"
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == run:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = _train_cli(*_sets(ONE_EPOCH), "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"Error: cannot write to {run}: Read-only file system; choose another folder with --out" in res.output


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_resume_from_non_finite_weights_is_one_line_naming_the_tensor(tmp_path, data, finished, where):
    run = _damaged_copy(finished, tmp_path / "run", {})
    newest = run / "ckpt-e001-s00000005.pt"
    ckpt = load_checkpoint(newest)
    if where == "model":
        name = next(iter(ckpt["model"]))  # the first conv's weights
        ckpt["model"][name][(0,) * ckpt["model"][name].ndim] = float("nan")
        tensor = f"tensor {name} holds 1 non-finite value"
    else:
        momentum = ckpt["optimizer"]["state"][0]["momentum_buffer"]
        momentum[(0,) * momentum.ndim] = float("inf")
        tensor = "tensor optimizer state 0 momentum_buffer holds 1 non-finite value"
    torch.save(ckpt, newest)
    res = _train_cli(*_sets(ONE_EPOCH), "--resume", "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith(f"Error: {newest}: {tensor}") and len(res.output.strip().splitlines()) == 1, res.output
    assert "delete it to resume from the checkpoint before" in res.output


@pytest.mark.parametrize("setting", ["optim.lr=inf", "optim.lr=nan", "optim.epochs=inf", "optim.momentum=-inf"])
def test_non_finite_recipe_numbers_are_one_line(tmp_path, setting):
    res = _train_cli("--set", setting, "--out", str(tmp_path / "run"))
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    key, value = setting.split("=")
    assert f": {key}: expected a finite " in res.output and f"got '{value}'" in res.output, res.output


@pytest.mark.parametrize(
    "change, words",
    [
        ("model.fc_dim=32", "model.fc_dim 128 -> 32"),
        ("optim.lr=0.05", "optim.lr 0.005 -> 0.05"),  # was resumed under the old lr, labelled with the new one
        ("seed=7", "seed 0 -> 7"),  # was neither the old run nor a fresh seed-7 one
    ],
)
def test_resume_with_a_changed_recipe_is_one_line_naming_the_keys(tmp_path, data, finished, change, words):
    run = _damaged_copy(finished, tmp_path / "run", {"ckpt-e001-s00000005.pt": b""})  # killed after step 4
    saved = (run / "recipe.yaml").read_text()
    res = _train_cli(*_sets(ONE_EPOCH + [change]), "--resume", "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith(
        f"Error: {run / 'ckpt-e000-s00000004.pt'} was written under another recipe ({words}); resume with the "
        f"recipe the run started with ({run / 'recipe.yaml'}) or start over with --overwrite"
    ), res.output
    assert len(res.output.strip().splitlines()) == 1
    assert (run / "recipe.yaml").read_text() == saved and not (run / "model.safetensors").exists()


def _cut_at_step_4(finished: Path, dest: Path) -> Path:
    """The finished run as if killed right after its step-4 checkpoint."""
    run = _damaged_copy(finished, dest, {})
    for name in ("ckpt-e001-s00000005.pt", "best.pt", "best.safetensors", "last.json"):
        (run / name).unlink()
    return run


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_resume_accepts_runtime_only_changes_and_a_moved_dataset(tmp_path, data, finished):
    """Settings that change no weight (loader workers, caching, checkpoint and log cadence, the recipe's name)
    and a dataset copied elsewhere with its file times (rsync -a): the resumed run is still the finished one."""
    moved = shutil.copytree(data, tmp_path / "moved")
    run = _cut_at_step_4(finished, tmp_path / "run")
    runtime = ["name=renamed", "data.workers=3", "data.cache_decoded=false", "checkpoint.log_every=1"]
    runtime += ["checkpoint.every_steps=7", "checkpoint.keep_last=1", f"data.root={tmp_path / 'elsewhere'}"]
    train(load_recipe(SMOKE, ONE_EPOCH + runtime), run, data_root=moved, resume=True, progress=False)
    assert _same_weights(run, finished)


def test_resume_on_another_dataset_is_one_line(tmp_path, data, finished):
    # the same class folders, file names and counts, other images
    other = generate_synthetic(tmp_path / "other", classes=10, per_class=8, seed=3)
    run = _cut_at_step_4(finished, tmp_path / "run")
    res = _train_cli(*_sets(ONE_EPOCH), "--resume", "--data-root", str(other), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith(
        f"Error: {run / 'ckpt-e000-s00000004.pt'} was written training on other images than {other}/train and "
        f"{other}/val hold now (other files, labels, sizes or modification times); resume on the same dataset "
        "or start over with --overwrite"
    ), res.output
    assert len(res.output.strip().splitlines()) == 1 and not (run / "model.safetensors").exists()


def test_resume_of_a_checkpoint_without_a_dataset_digest_warns_and_continues(tmp_path, data, finished, caplog):
    """Checkpoints of an older vggfeat recorded no digest of their images: resumed (the run may be days of
    work), saying the dataset cannot be checked."""
    run = _cut_at_step_4(finished, tmp_path / "run")
    ckpt = load_checkpoint(run / "ckpt-e000-s00000004.pt")
    del ckpt["data_position"]["images"], ckpt["init_from_sha256"]
    torch.save(ckpt, run / "ckpt-e000-s00000004.pt")
    with caplog.at_level(logging.WARNING):
        train(load_recipe(SMOKE, ONE_EPOCH), run, data_root=data, resume=True, progress=False)
    assert "ckpt-e000-s00000004.pt records no digest of the images it was trained on" in caplog.text
    assert _same_weights(run, finished)


def test_resume_of_a_tar_shard_run_on_a_dataset_folder_is_refused(tmp_path):
    from vggfeat.train.checkpoint import CheckpointError
    from vggfeat.train.resume import check_images

    shards = {"epoch": 0, "step_in_epoch": 4, "world": 1, "shards": "0123456789abcdef", "samples_done": 64}
    with pytest.raises(
        CheckpointError, match=f"ck.pt was written reading tar shards .*, not the dataset folder {tmp_path}"
    ):
        check_images(shards, "fedcba9876543210", tmp_path / "ck.pt", tmp_path, is_main=True)


def test_resume_may_extend_a_run_to_more_epochs(tmp_path, data, finished):
    """The schedule never looks at optim.epochs: a finished run continued to 2 epochs is a 2-epoch run."""
    extended = _damaged_copy(finished, tmp_path / "extended", {})
    train(load_recipe(SMOKE, ONE_EPOCH + ["optim.epochs=2"]), extended, data_root=data, resume=True, progress=False)
    fresh = tmp_path / "fresh"
    train(load_recipe(SMOKE, ONE_EPOCH + ["optim.epochs=2"]), fresh, data_root=data, progress=False)
    assert _same_weights(extended, fresh)
    # but not cut short below where the checkpoint already is
    res = _train_cli(*_sets(ONE_EPOCH), "--resume", "--data-root", str(data), "--out", str(extended))
    assert res.exit_code == 1 and "was written under another recipe (optim.epochs 2 -> 1)" in res.output, res.output


def test_resume_with_other_init_weights_at_the_same_path_is_one_line(tmp_path, data, finished):
    """model.init_from is a path: the file there retrained since the checkpoint makes another run."""
    init = shutil.copy(finished / "model.safetensors", tmp_path / "init.safetensors")
    sets = ONE_EPOCH + ["model.init_layers=all", f"model.init_from={init}"]
    run = tmp_path / "run"
    train(load_recipe(SMOKE, sets), run, data_root=data, progress=False)
    (run / "model.safetensors").unlink()
    shutil.copy(run / "best.safetensors", init)  # the same net, other weights
    res = _train_cli(*_sets(sets), "--resume", "--data-root", str(data), "--out", str(run))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith(
        f"Error: {run / 'ckpt-e001-s00000005.pt'} was written starting from other weights than model.init_from "
        f"{init} holds now (sha256 "
    ), res.output
    assert "start over with --overwrite" in res.output and len(res.output.strip().splitlines()) == 1


def test_train_cli_skips_a_corrupt_image_saying_so_and_writes_plain_permissions(tmp_path, caplog):
    """Where the user meets it: `vggfeat train` names the unreadable image and counts it, and under umask 027
    every file of the run is 0640 as a plain write makes it (atomic writes used to leave 0600)."""
    root = generate_synthetic(tmp_path / "d", classes=10, per_class=8, seed=0)
    bad = sorted((root / "train").rglob("*.jpg"))[5]
    bad.write_bytes(b"\xff\xd8\xff garbage")
    old = os.umask(0o027)
    caplog.set_level(logging.WARNING)  # the CLI's log handler writes to the real stderr
    try:
        res = _train_cli(
            *_sets(ONE_EPOCH + ["data.mean_rgb=null"]), "--data-root", str(root), "--out", str(tmp_path / "r")
        )
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert f"skipping an unreadable training image: {bad}: not an image" in caplog.text
    steps = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum(s.get("skipped_images", 0) for s in steps if s["kind"] == "step") == 1
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes
    assert (root / "mean_rgb.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("layers", ["net_a", "all"])
def test_init_from_weights_that_do_not_fit_is_one_line_naming_the_file(tmp_path, data, layers):
    """model.init_from pointing at a net of other widths (Sect. 3.1's init from net A, or a whole net for
    S=384 from S=256) was a ValueError / RuntimeError traceback."""
    import vggfeat

    wide = vggfeat.save_weights(
        vggfeat.create_model("vgg_a", seed=0, width_mult=1 / 8, fc_dim=64, num_classes=10),
        tmp_path / "wide.safetensors",
    )
    name = "model.name=vgg_d" if layers == "net_a" else "model.name=vgg_a"
    sets = [name, f"model.init_layers={layers}", f"model.init_from={wide}", "optim.epochs=1"]
    res = _train_cli(*_sets(sets), "--data-root", str(data), "--out", str(tmp_path / "run"))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.output.startswith(f"Error: model.init_from {wide}: ") and len(res.output.strip().splitlines()) == 1
    assert "fc6.weight: file (64, 64, 7, 7) vs model (" in res.output or "fc6.weight: net A has (64, 64, 7, 7)" in (
        res.output
    ), res.output
