"""The training loop: the smoke recipe learns; a run killed with SIGKILL and resumed ends bitwise equal
to an uninterrupted one; DDP over 2 gloo processes matches one process with the same global batch;
checkpoints hold everything as plain containers; a NaN loss stops the run and keeps the last checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import KILLED_AT_STEP
from safetensors.torch import load_file

import vggfeat
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.train.checkpoint import list_checkpoints, load_checkpoint
from vggfeat.train.loop import NonFiniteLoss, train
from vggfeat.train.recipe import load_recipe

REPO = Path(__file__).parent.parent
SMOKE = REPO / "recipes" / "train" / "smoke.yaml"
# 10 classes x 8 images, global batch 16: 5 steps an epoch
FAST = ["optim.epochs=2", "checkpoint.every_steps=2", "checkpoint.keep_last=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), classes=10, per_class=8, seed=0)


def _cli(*args: str, killed_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    how = ["-m", "vggfeat"] if killed_at is None else ["-c", KILLED_AT_STEP, str(killed_at)]
    return subprocess.run([sys.executable, *how, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # ~17 s on 2 cores
def test_smoke_recipe_learns(tmp_path):
    r = load_recipe(SMOKE, ["optim.epochs=12"])
    generate_synthetic(tmp_path / "data", classes=10, per_class=60, seed=0)
    out = train(r, tmp_path / "run", data_root=tmp_path / "data", progress=False)
    accs = [h["val_top1"] for h in out["history"]]
    assert max(accs[-3:]) >= 0.2 and accs[-1] > accs[0], accs  # chance 0.1 (10 classes, 150 val images)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s["kind"] == "step"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    # the exported weights load as a net with the recipe's (computed) mean RGB convention
    model = vggfeat.load_model(tmp_path / "run" / "model.safetensors")
    mean = json.loads((tmp_path / "data" / "mean_rgb.json").read_text())["mean"]
    assert model.preprocessing.mean == pytest.approx(tuple(mean)) and model.preprocessing.value_range == 255


@pytest.mark.slow  # ~16 s: three subprocess runs
def test_killed_and_resumed_equals_uninterrupted(tmp_path, data):
    sets = [a for s in FAST for a in ("--set", s)]
    full = _cli("train", str(SMOKE), *sets, "--data-root", str(data), "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = _cli("train", str(SMOKE), *sets, "--data-root", str(data), "--out", str(tmp_path / "cut"), killed_at=8)
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL mid-epoch 2, after step 8's checkpoint
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert list_checkpoints(tmp_path / "cut")[-1].name == "ckpt-e001-s00000008.pt"
    resumed = _cli("train", str(SMOKE), *sets, "--resume", "--data-root", str(data), "--out", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    # keep_last=2 step checkpoints, atomic names only, plain containers
    ckpts = list_checkpoints(tmp_path / "full")
    assert [p.name for p in ckpts] == ["ckpt-e001-s00000008.pt", "ckpt-e002-s00000010.pt"]
    ck = load_checkpoint(ckpts[-1])  # torch.load(weights_only=True)
    assert {
        "model",
        "optimizer",
        "schedule",
        "rng",
        "epoch",
        "step_in_epoch",
        "global_step",
        "recipe",
        "history",
    } <= set(ck)
    assert "scaler" not in ck  # an always-empty entry, gone; old checkpoints with it still load
    assert ck["recipe"]["optim"]["epochs"] == 2 and ck["global_step"] == 10 and ck["epoch"] == 2
    assert not list((tmp_path / "full").glob(".*tmp*"))
    assert (tmp_path / "full" / "recipe.yaml").exists() and (tmp_path / "full" / "best.pt").exists()


def test_resume_passes_over_a_checkpoint_without_weights(tmp_path):
    """The newest checkpoint has every entry but its "model" is not named tensors: resuming takes the one before,
    naming why, rather than failing on it later."""
    from vggfeat.train.checkpoint import REQUIRED, load_latest_checkpoint, save_checkpoint

    good = {**dict.fromkeys(REQUIRED, 0), "model": {"fc8.bias": torch.zeros(2)}, "epoch": 1, "global_step": 2}
    save_checkpoint(tmp_path, good, keep_last=3)
    for step, model in [(4, [torch.zeros(2)]), (6, {"fc8.bias": "zeros"}), (8, torch.zeros(2))]:
        save_checkpoint(tmp_path, {**good, "global_step": step, "model": model}, keep_last=9)
    path, ckpt, bad = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-e001-s00000002.pt" and torch.equal(ckpt["model"]["fc8.bias"], torch.zeros(2))
    why = 'not a training checkpoint (no "model" entry of named tensors)'
    assert [(p.name, r) for p, r in bad] == [(f"ckpt-e001-s0000000{s}.pt", why) for s in (8, 6, 4)]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, data, monkeypatch):
    import torch.nn.functional as F

    calls, cross_entropy = [], F.cross_entropy

    def nan_at_step_4(*args, **kwargs):  # one micro-batch a step: call k is step k's loss
        calls.append(1)
        loss = cross_entropy(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(F, "cross_entropy", nan_at_step_4)
    r = load_recipe(SMOKE, FAST)
    with pytest.raises(NonFiniteLoss, match=r"global step 4.*ckpt-e000-s00000002\.pt"):
        train(r, tmp_path / "run", data_root=data, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt-e000-s00000002.pt"]


@pytest.mark.slow  # ~15 s: torchrun with 2 gloo processes
def test_ddp_two_gloo_processes_match_one(tmp_path, data):
    sets = FAST + ["optim.epochs=1", "model.dropout=0", "optim.per_device_batch=8"]
    args = [a for s in sets for a in ("--set", s)] + ["--data-root", str(data)]
    one = _cli("train", str(SMOKE), *args, "--out", str(tmp_path / "one"))  # 1 process, 2 accumulation steps
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "vggfeat",
            "train",
            str(SMOKE),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    m = load_recipe(SMOKE).model
    init = vggfeat.create_model(
        "vgg_a",
        num_classes=m.num_classes,
        width_mult=m.width_mult,
        fc_dim=m.fc_dim,
        fc6_kernel=m.fc6_kernel,
        init="glorot",
        seed=0,
    )
    moved = max((a[k] - init.state_dict()[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training changed the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def _step_lines(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]


def test_cpu_training_keeps_freed_memory(tmp_path, data, monkeypatch):
    """On the CPU each step's activations and gradients reuse the last step's pages (utils.heap): 16% of a
    full-size VGG-A step (batch 8) on 2 cores went to page faults without it."""
    import vggfeat.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)
    train(
        load_recipe(SMOKE, ["optim.epochs=1", "runtime.device=cpu"]), tmp_path / "run", data_root=data, progress=False
    )
    assert calls == [1]


def test_cpu_training_loads_in_process_below_8_cpus(tmp_path, data, monkeypatch):
    """Loader workers beside the compute threads make them wait at every barrier: on 2 CPUs the smoke recipe took
    34.5-35.0 s with one worker and 20.1-23.0 s loading between steps. Training sizes its loaders as extraction
    does (utils.cpus.share_cpus): none on the CPU below 8 CPUs, the recipe's on a GPU machine's spare cores."""
    from vggfeat.utils import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda *a, **k: 2)
    asked = []
    real = torch.utils.data.DataLoader.__init__

    def recording(self, *args, **kwargs):
        asked.append(kwargs.get("num_workers", 0))
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", recording)
    sets = ["optim.epochs=1", "runtime.device=cpu", "data.workers=2"]
    train(load_recipe(SMOKE, sets), tmp_path / "run", data_root=data, progress=False)
    assert asked and set(asked) == {0}  # the training epoch's loader and validation's
    assert cpus.share_cpus(2, "cuda", cpus=2).workers == 1  # on a GPU machine a core decodes


def test_one_host_sync_per_log_line(tmp_path, data, monkeypatch):
    """nanoGPT's rule: the loop reads its numbers back from the device only when it logs them (the loss,
    hits and counts of each step stay on the device till then), not several times per micro-batch."""
    import vggfeat.train.loop as loop

    syncs, counting = [], [False]
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if counting[0] and sys._getframe(1).f_code.co_filename == loop.__file__:
                syncs.append(_name)  # a read-back written in the loop itself
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train_epoch = loop._Trainer._train_epoch

    def counted_epoch(self):  # the steps, without the validation and checkpoint that end an epoch
        counting[0] = True
        try:
            train_epoch(self)
        finally:
            counting[0] = False

    monkeypatch.setattr(loop._Trainer, "_train_epoch", counted_epoch)
    # 2 epochs of 5 steps of 2 micro-batches, a log line every 5 steps
    sets = ["optim.epochs=2", "optim.per_device_batch=8", "checkpoint.every_steps=1000", "checkpoint.log_every=5"]
    train(load_recipe(SMOKE, sets), tmp_path / "run", data_root=data, progress=False)
    logged = _step_lines(tmp_path / "run")
    assert [s["global_step"] for s in logged] == [5, 10]
    assert len(syncs) <= len(logged), syncs  # before: 4 per micro-batch and 2 per step, 100 in all


def test_logged_accuracy_counts_labelled_samples_only(tmp_path, monkeypatch):
    """A sample with label -1 (a tar image that did not decode keeps its slot) has no loss and no hit; the
    logged top-1 and top-5 were divided by the whole batch, as if such a sample were a miss."""
    from vggfeat.train.data import TrainSet

    root = generate_synthetic(tmp_path / "d", classes=5, per_class=16, seed=0)
    real = TrainSet.__getitem__

    def half_unlabelled(self, key):
        crop, alpha, label, skipped = real(self, key)
        return crop, alpha, label if key[1] % 2 else -1, skipped

    monkeypatch.setattr(TrainSet, "__getitem__", half_unlabelled)
    sets = ["optim.epochs=1", "model.num_classes=5", "checkpoint.log_every=1", "checkpoint.every_steps=1000"]
    train(load_recipe(SMOKE, sets), tmp_path / "run", data_root=root, progress=False)
    logged = _step_lines(tmp_path / "run")
    assert len(logged) == 5  # 80 images, global batch 16
    assert [s["top5"] for s in logged] == [1.0] * 5  # 5 classes: every labelled sample is in the top 5
    assert all(0 <= s["top1"] <= 1 and math.isfinite(s["loss"]) for s in logged), logged


def test_metrics_lines_stay_json_when_a_value_is_not_finite(tmp_path):
    from vggfeat.train.loop import _Logger

    logger = _Logger(tmp_path, enabled=True)
    logger.tb = None  # the file alone is under test
    logger.write({"kind": "step", "global_step": 1, "loss": float("nan"), "lr": float("inf"), "top1": 0.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} written as a number: {line}"))
    assert record == {
        "kind": "step",
        "global_step": 1,
        "loss": None,
        "lr": None,
        "top1": 0.5,
        "nonfinite": ["loss", "lr"],
    }


def test_validate_gives_each_module_its_mode_back(data):
    """validate runs the net in eval mode, then gives every submodule the mode it had (not train() for all)."""
    from vggfeat.data.folder import scan_folder
    from vggfeat.train.data import ValSet
    from vggfeat.train.loop import build_model, validate
    from vggfeat.utils.distributed import DistInfo

    recipe = load_recipe(SMOKE)
    model = build_model(recipe, 10).eval()
    model.fc7.train()  # a mixed state
    valset = ValSet(scan_folder(data / "val"), size=72, crop=64)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append([x.training for x in m.modules()]))
    top1, top5 = validate(model, valset, DistInfo(), torch.device("cpu"), (128.0, 128.0, 128.0), None, recipe)
    assert seen and not any(any(modes) for modes in seen)  # dropout off while validating
    assert 0.0 <= top1 <= top5 <= 1.0
    assert not model.training and model.fc7.training and not model.drop6.training


class _Died(RuntimeError):
    pass


def _records(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["kind"], r["global_step"], r.get("loss"), r.get("val_top1")) for r in map(json.loads, lines)]


def test_a_resumed_runs_records_equal_an_uninterrupted_runs(tmp_path, data, monkeypatch):
    """A run that dies after logging steps past its last checkpoint logs them again when resumed: the lines it
    wrote after the checkpoint are dropped on resume, not kept twice; a new run drops a dead run's lines."""
    import vggfeat.train.loop as loop

    sets = ["optim.epochs=2", "checkpoint.every_steps=2", "checkpoint.log_every=1", "runtime.device=cpu"]
    recipe = load_recipe(SMOKE, sets)
    train(recipe, tmp_path / "full", data_root=data, progress=False)
    write = loop._Logger.write

    def dies_after_step_9(self, record):
        write(self, record)
        if record["global_step"] == 9 and record["kind"] == "step":
            with open(self.path, "a") as f:
                f.write('{"kind": "step", "glob')  # and in the middle of the next line
            raise _Died

    monkeypatch.setattr(loop._Logger, "write", dies_after_step_9)
    with pytest.raises(_Died):
        train(recipe, tmp_path / "cut", data_root=data, progress=False)
    monkeypatch.setattr(loop._Logger, "write", write)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "ckpt-e001-s00000008.pt"
    train(recipe, tmp_path / "cut", data_root=data, progress=False, resume=True)
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
    assert [r[1] for r in _records(tmp_path / "full")] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 10]
    # a run that died before its first checkpoint leaves lines (and TensorBoard events) a new run must not keep
    dead = tmp_path / "dead"
    (dead / "tb").mkdir(parents=True)
    (dead / "tb" / "events.out.tfevents.old").write_bytes(b"old")
    (dead / "metrics.jsonl").write_text((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    train(recipe, dead, data_root=data, progress=False)
    assert _records(dead) == _records(tmp_path / "full")
    assert not (dead / "tb" / "events.out.tfevents.old").exists()
