"""Training from tar shards: every sample exactly once per epoch over processes and DataLoader workers, a
seeded shard order and bounded shuffle, the same batches whatever the worker count, resuming mid-epoch, the
recipe's data.train_shards checks, and a killed-and-resumed run equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import KILLED_AT_STEP
from safetensors.torch import load_file

from vggfeat.config import ConfigError
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.data.tar_shards import write_tar_shard
from vggfeat.errors import DatasetError
from vggfeat.train.data import batch_split, collate_skips
from vggfeat.train.loop import validate
from vggfeat.train.recipe import load_recipe
from vggfeat.train.shard_index import index_shards
from vggfeat.train.tar_data import TarSplit, TarTrainSet, TarTrainStream, TarValSet, buffer_shuffle
from vggfeat.utils.distributed import DistInfo

REPO = Path(__file__).parent.parent
SMOKE = REPO / "recipes" / "train" / "smoke.yaml"


def folder_to_shards(folder: Path, out: Path, sizes: list[int]) -> list[str]:
    """A class-folder split (<class>/<image>) as webdataset tars of `sizes` samples (the last takes the rest),
    labels the sorted class index, samples in a fixed interleaved order."""
    classes = sorted(p.name for p in folder.iterdir())
    images = sorted((p for c in classes for p in (folder / c).iterdir()), key=lambda p: (p.stem[-4:], p.name))
    samples = [(f"{p.parent.name}/{p.stem}", classes.index(p.parent.name), p) for p in images]
    out.mkdir(parents=True, exist_ok=True)
    urls, start = [], 0
    for i, size in enumerate([*sizes, len(samples)]):
        chunk = samples[start : start + size]
        start += size
        if not chunk:
            break
        urls.append(str(out / f"{i:06d}.tar"))
        write_tar_shard(urls[-1], [(k, {p.suffix[1:]: p.read_bytes(), "cls": b"%d" % y}) for k, y, p in chunk])
    return urls


def _keyed_shards(tmp_path: Path, sizes: list[int]) -> TarSplit:
    """Shards of tiny fake samples (keys only matter), counted like a run counts them."""
    urls, n = [], 0
    for i, size in enumerate(sizes):
        urls.append(str(tmp_path / f"k{i}.tar"))
        write_tar_shard(urls[-1], [(f"s{n + j:03d}", {"jpg": b"x", "cls": b"0"}) for j in range(size)])
        n += size
    return TarSplit(tuple(index_shards(urls, tmp_path / "index.json")), ("0",))


def _keys(split: TarSplit, *, epoch: int, world: int, workers: int, start_step: int = 0, buffer: int = 5) -> list:
    """Per rank, its micro-batches' keys in the order the loop takes them (the DataLoader's round robin)."""
    data = TarTrainSet(split, seed=3, scale=(8, 8), crop=8, flip=True, color_sigma=0.1, shuffle_buffer=buffer)
    out = []
    for rank in range(world):
        s = TarTrainStream(data, epoch=epoch, start_step=start_step, split=batch_split(8, 2, world), rank=rank)
        per_worker = [[x.key for _, x, _ in s.positions(w, workers)] for w in range(workers)]
        batches = [[ks[i : i + 2] for i in range(0, len(ks), 2)] for ks in per_worker]
        rr = [b.pop(0) for _ in range(sum(map(len, batches))) for b in batches if b]
        out.append(rr)
    return out


def test_every_sample_once_per_epoch_over_ranks_and_workers(tmp_path):
    split = _keyed_shards(tmp_path, [7, 13, 5, 11])  # 36 samples, uneven shards; 4 global batches of 8
    assert len(split) == 36
    for epoch in (0, 1):
        ref = _keys(split, epoch=epoch, world=2, workers=1)
        for workers in (2, 3):
            assert _keys(split, epoch=epoch, world=2, workers=workers) == ref  # the worker count changes nothing
        keys = [k for rank in ref for batch in rank for k in batch]
        assert len(keys) == 32 and len(set(keys)) == 32  # no duplicates; only the 4 that fill no batch are out
        assert all(len(rank) == 8 for rank in ref)  # 4 steps x 2 accumulation micro-batches on each rank
    e0, e1 = (_keys(split, epoch=e, world=2, workers=1) for e in (0, 1))
    assert e0 != e1  # a new shard order and shuffle each epoch
    assert e0 == _keys(split, epoch=0, world=2, workers=1)  # seeded


def test_resume_mid_epoch_takes_the_remaining_batches(tmp_path):
    split = _keyed_shards(tmp_path, [7, 13, 5, 11])
    full = _keys(split, epoch=2, world=2, workers=2)
    later = _keys(split, epoch=2, world=2, workers=3, start_step=3)  # steps 3.. = micro-batches 6.. per rank
    assert later == [rank[6:] for rank in full]


def test_buffer_shuffle_is_a_bounded_permutation():
    rng = np.random.default_rng(0)
    order = buffer_shuffle(1000, 50, rng)
    assert sorted(order) == list(range(1000))
    assert all(order[j] <= j + 49 for j in range(1000))  # drawn from what the buffer could hold
    assert (order != np.arange(1000)).mean() > 0.9
    assert list(buffer_shuffle(10, 1, rng)) == list(range(10))


def test_changed_shard_is_an_error(tmp_path):
    split = _keyed_shards(tmp_path, [8, 8])
    write_tar_shard(split.counts[1].url, [(f"t{j}", {"jpg": b"x", "cls": b"0"}) for j in range(5)])
    with pytest.raises(DatasetError, match="k1.tar now holds 5 labelled samples .* counted 8"):
        _keys(split, epoch=0, world=1, workers=1, buffer=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The synthetic 10-class set as tars: 80 training samples in uneven shards, 20 validation samples."""
    root = tmp_path_factory.mktemp("tars")
    data = generate_synthetic(root / "folder", classes=10, per_class=8, seed=0)
    folder_to_shards(data / "train", root / "train", [30, 17])
    folder_to_shards(data / "val", root / "val", [6, 6])
    return root


def test_workers_give_the_same_batches_and_validation_sees_each_sample_once(shards):
    urls = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    split = TarSplit(tuple(index_shards(urls, shards / "train-index.json")), tuple("0123456789"))
    data = TarTrainSet(split, seed=0, scale=(72, 88), crop=64, flip=True, color_sigma=0.1, shuffle_buffer=16)
    kw = dict(epoch=1, start_step=1, split=batch_split(16, 8, 1), rank=0, pin_memory=False)
    runs = [list(data.epoch_loader(workers=w, collate_fn=collate_skips, **kw)) for w in (0, 2)]
    assert len(runs[0]) == 2 * 4  # steps 1..4 of 5, 2 micro-batches each
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a[3] == b[3] == []
    vurls = sorted(str(p) for p in (shards / "val").glob("*.tar"))
    vsplit = TarSplit(tuple(index_shards(vurls, shards / "val-index.json")), tuple("0123456789"))
    val = TarValSet(vsplit, size=80, crop=64)
    labels = Counter()
    for rank in range(2):
        loader = torch.utils.data.DataLoader(val.rank_share(rank, 2, 0), batch_size=4, num_workers=2)
        labels.update(y for _, ys, _ in loader for y in ys.tolist())
    assert sum(labels.values()) == 20 and set(labels) == set(range(10))  # 2 per class, each once
    assert sum(len(x) for x, _, _ in torch.utils.data.DataLoader(val.rank_share(0, 1, 9), batch_size=4)) == 9


def test_recipe_checks_the_shard_keys(tmp_path):
    sets = ["data.root=null", "data.cache_decoded=false"]
    r = load_recipe(SMOKE, [*sets, "data.train_shards=s/{000..002}.tar", "data.val_shards=[v/a.tar, v/b.tar]"])
    assert r.data.train_shards == "s/{000..002}.tar" and r.data.val_shards == ("v/a.tar", "v/b.tar")
    with pytest.raises(ConfigError, match="set data.val_shards"):
        load_recipe(SMOKE, [*sets, "data.train_shards=s.tar"])
    with pytest.raises(ConfigError, match="data.cache_decoded is for a folder dataset"):
        load_recipe(SMOKE, ["data.root=null", "data.train_shards=s.tar", "data.val_shards=v.tar"])
    with pytest.raises(ConfigError, match="did you mean 'data.train_shards'"):
        load_recipe(SMOKE, ["data.train_shard=s.tar"])
    with pytest.raises(ConfigError, match="shuffle_buffer must be >= 1"):
        load_recipe(SMOKE, ["data.shuffle_buffer=0"])


def _cli(*args: str, killed_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    how = ["-m", "vggfeat"] if killed_at is None else ["-c", KILLED_AT_STEP, str(killed_at)]
    return subprocess.run([sys.executable, *how, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three subprocess runs: 92 s on 2 cores at load 19 (shared machine)
def test_tar_shard_run_killed_and_resumed_equals_uninterrupted(tmp_path, shards):
    sets = [
        "data.root=null",
        "data.cache_decoded=false",
        f"data.train_shards={shards}/train/{{000000..000002}}.tar",
        f"data.val_shards={shards}/val/*.tar",
        "data.shuffle_buffer=16",
        "data.workers=2",
        "optim.epochs=1",
        "optim.per_device_batch=8",  # 2 accumulation steps: micro-batches from both workers in one step
        "checkpoint.every_steps=2",
    ]
    args = [a for s in sets for a in ("--set", s)]
    full = _cli("train", str(SMOKE), *args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    killed = _cli("train", str(SMOKE), *args, "--out", str(tmp_path / "cut"), killed_at=4)
    assert killed.returncode == -9, killed.stderr  # mid-epoch (5 steps), after step 4's checkpoint
    resumed = _cli("train", str(SMOKE), *args, "--set", "data.workers=0", "--resume", "--out", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, with other workers
    ckpt = torch.load(sorted((tmp_path / "cut").glob("ckpt-*.pt"))[-1], weights_only=True)
    assert ckpt["data_position"]["shards"] and ckpt["data_position"]["world"] == 1
    assert (tmp_path / "full" / "mean_rgb.json").exists()  # computed on the shards, cached in the run folder


def test_undecodable_image_keeps_its_slot_with_label_minus_one(tmp_path, shards):
    from vggfeat.data.tar_shards import iter_tar_samples

    first = sorted((shards / "train").glob("*.tar"))[0]
    samples = [(s.key, {"jpg": s.data, **s.extras}) for s in iter_tar_samples(first)][:8]
    samples[3][1]["jpg"] = b"not a jpeg"
    write_tar_shard(tmp_path / "bad.tar", samples)
    split = TarSplit(tuple(index_shards([str(tmp_path / "bad.tar")], tmp_path / "i.json")), tuple("0123456789"))
    data = TarTrainSet(split, seed=0, scale=(72, 88), crop=64, flip=True, color_sigma=0.1, shuffle_buffer=1)
    items = list(TarTrainStream(data, epoch=0, start_step=0, split=batch_split(8, 8, 1), rank=0))
    assert [y for _, _, y, _ in items] == [int(m["cls"]) if i != 3 else -1 for i, (_, m) in enumerate(samples)]
    assert f"bad.tar:{samples[3][0]}.jpg" in items[3][3][0] and items[3][0].shape == (64, 64, 3)


@pytest.mark.slow  # one short run in this process: 11 s on 2 cores at load 19
def test_undecodable_image_is_left_out_and_other_shards_refuse_to_resume(tmp_path, shards):
    """One training image is garbage: with one image per micro-batch its micro-batch has no loss at all, and
    the run goes on with finite losses; resuming the run with other shards is refused, naming the checkpoint."""
    from vggfeat.data.tar_shards import iter_tar_samples
    from vggfeat.train.checkpoint import CheckpointError
    from vggfeat.train.loop import train

    first = sorted((shards / "train").glob("*.tar"))[0]
    samples = [(s.key, {"jpg": s.data, **s.extras}) for s in iter_tar_samples(first)][:16]
    samples[5][1]["jpg"] = b"not a jpeg"
    write_tar_shard(tmp_path / "bad.tar", samples)
    sets = [
        "data.root=null",
        "data.cache_decoded=false",
        f"data.train_shards={tmp_path}/bad.tar",
        f"data.val_shards={shards}/val/000000.tar",
        "optim.epochs=1",
        "optim.per_device_batch=1",
        "checkpoint.every_steps=100",
        "checkpoint.log_every=1",
        "data.mean_rgb=[120,120,120]",
    ]
    out = train(load_recipe(SMOKE, sets), tmp_path / "run", progress=False)
    assert out["global_step"] == 1
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(s for s in steps if s["kind"] == "step")
    assert step["skipped_images"] == 1 and np.isfinite(step["loss"])
    write_tar_shard(tmp_path / "other.tar", samples[:15] + [("zz", samples[0][1])])
    again = [*sets[:2], f"data.train_shards={tmp_path}/other.tar", *sets[3:4], "optim.epochs=2", *sets[5:]]
    with pytest.raises(CheckpointError, match="ckpt-e001-s00000001.pt was written reading other training shards"):
        train(load_recipe(SMOKE, again), tmp_path / "run", resume=True, progress=False)


def test_processes_share_the_counting(tmp_path, monkeypatch):
    """Two processes (threads here, with a barrier) count each shard once between them and get the same index;
    the next call reads the cache and counts nothing."""
    import threading

    import vggfeat.train.shard_index as shard_index

    urls = []
    for i, size in enumerate([3, 4, 5]):
        urls.append(str(tmp_path / f"p{i}.tar"))
        write_tar_shard(urls[-1], [(f"s{i}_{j}", {"jpg": b"x", "cls": b"%d" % j}) for j in range(size)])
    counted, real = [], shard_index.count_shard
    monkeypatch.setattr(shard_index, "count_shard", lambda url: counted.append(url) or real(url))
    barrier, results = threading.Barrier(2), {}

    def run(rank: int) -> None:
        results[rank] = index_shards(urls, tmp_path / "idx.json", rank=rank, world=2, sync=barrier.wait)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(counted) == urls and results[0] == results[1]
    assert [(c.samples, c.max_label) for c in results[0]] == [(3, 2), (4, 3), (5, 4)]
    assert index_shards(urls, tmp_path / "idx.json") == results[0] and len(counted) == 3
    assert sorted(p.name for p in tmp_path.glob("idx*")) == ["idx.json"]  # the parts are gone


@pytest.mark.parametrize(
    "damage",
    [
        {"samples": None},  # missing
        {"samples": "many", "max_label": 10**9},
        {"samples": True},
        {"samples": -1},
        {"max_label": -1},  # a sample but no label
        {"problems": 1.5},
        {"url": 5},
        {"extra": 1},
    ],
)
def test_damaged_cache_entries_are_counted_again(tmp_path, monkeypatch, damage):
    """A cached count with a field missing, of the wrong type or out of range is counted again, not trusted."""
    import vggfeat.train.shard_index as shard_index

    urls = [str(tmp_path / f"d{i}.tar") for i in range(2)]
    for i, url in enumerate(urls):
        write_tar_shard(url, [(f"s{j}", {"jpg": b"x", "cls": b"%d" % (i + j)}) for j in range(2)])
    first = index_shards(urls, tmp_path / "idx.json")
    cache = json.loads((tmp_path / "idx.json").read_text())
    entry = {**cache["shards"][1], **damage}
    cache["shards"][1] = {k: v for k, v in entry.items() if v is not None}
    (tmp_path / "idx.json").write_text(json.dumps(cache))
    counted, real = [], shard_index.count_shard
    monkeypatch.setattr(shard_index, "count_shard", lambda url: counted.append(url) or real(url))
    again = index_shards(urls, tmp_path / "idx.json")
    assert again == first and [(c.samples, c.problems, c.max_label) for c in again] == [(2, 0, 1), (2, 0, 2)]
    assert counted == [urls[1]]  # the intact entry is still used
    assert json.loads((tmp_path / "idx.json").read_text())["shards"][1] == asdict(first[1])


@pytest.mark.slow  # torchrun with 2 gloo processes: 26 s on 2 cores at load 19
def test_two_processes_count_and_train_in_step(tmp_path, shards):
    """Under torchrun the two processes count the shards between them and take equal shares: the run ends
    (a share one micro-batch short would hang the other process in its all-reduce)."""
    sets = [
        "data.root=null",
        "data.cache_decoded=false",
        f"data.train_shards={shards}/train/*.tar",
        f"data.val_shards={shards}/val/*.tar",
        "data.mean_rgb=[120,120,120]",
        "optim.epochs=1",
        "optim.per_device_batch=4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
        + ["-m", "vggfeat", "train", str(SMOKE), *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    index = json.loads((tmp_path / "shards-train.json").read_text())["shards"]
    assert sum(e["samples"] for e in index) == 80 and not list(tmp_path.glob("*.part*"))
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["kind"] == "step"] == [5]  # 80 samples, global batch 16
    ckpt = torch.load(sorted(tmp_path.glob("ckpt-*.pt"))[-1], weights_only=True)
    assert ckpt["data_position"]["world"] == 2


def test_labels_beyond_num_classes_and_missing_shards_are_one_line_errors(tmp_path):
    from vggfeat.errors import InputError
    from vggfeat.train.tar_data import load_tar_splits
    from vggfeat.utils.distributed import DistInfo

    write_tar_shard(tmp_path / "t.tar", [(f"s{j}", {"jpg": b"x", "cls": b"%d" % (3 * j)}) for j in range(5)])
    with pytest.raises(
        ConfigError, match=r"model.num_classes is 10 but .*t.tar has label 12; set model.num_classes: 13"
    ):
        load_tar_splits((f"{tmp_path}/t.tar",), (f"{tmp_path}/t.tar",), 10, tmp_path, DistInfo())
    with pytest.raises(InputError, match=r"1 of the 2 files it names are missing, first .*u.tar"):
        load_tar_splits((f"{tmp_path}/{{t,u}}.tar",), (f"{tmp_path}/t.tar",), 13, tmp_path, DistInfo())
    train, val = load_tar_splits((f"{tmp_path}/t.tar",), (f"{tmp_path}/*.tar",), 13, tmp_path, DistInfo())
    assert len(train) == len(val) == 5 and len(train.classes) == 13


def test_cli_refuses_data_root_beside_shards(tmp_path):
    from click.testing import CliRunner

    from vggfeat.cli.main import cli

    write_tar_shard(tmp_path / "t.tar", [("a", {"jpg": b"x", "cls": b"0"})])
    sets = ["data.root=null", "data.cache_decoded=false"]
    sets += [f"data.train_shards={tmp_path}/t.tar", f"data.val_shards={tmp_path}/t.tar"]
    args = ["train", "smoke", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "run")]
    r = CliRunner().invoke(cli, [*args, "--data-root", str(tmp_path)])
    assert r.exit_code == 1 and "--data-root names a dataset folder but the recipe reads tar shards" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_mean_rgb_of_shards_equals_that_of_the_folder_and_follows_the_shards(tmp_path, shards):
    from vggfeat.data.stats import cached_tar_stats, pixel_stats

    urls = sorted(str(p) for p in (shards / "train").glob("*.tar"))
    folder = sorted((shards / "folder" / "train").rglob("*.jpg"))
    want, got = pixel_stats(folder), cached_tar_stats(tmp_path, urls)
    assert got["images"] == want["images"] == 80
    for k in ("mean", "eigval", "eigvec"):
        assert np.allclose(got[k], want[k], rtol=1e-9, atol=1e-9), k
    assert cached_tar_stats(tmp_path, urls)["mean"] == got["mean"]  # read back
    fewer = cached_tar_stats(tmp_path, urls[:1])  # other shards, same folder: computed afresh
    assert fewer["images"] == 30 and fewer["mean"] != got["mean"]
    small = cached_tar_stats(tmp_path, urls[:1], min_side=16)  # decoded smaller (JPEG draft): other pixels
    (tmp_path / "fresh").mkdir()
    want = cached_tar_stats(tmp_path / "fresh", urls[:1], min_side=16)
    assert small["pixels"] == want["pixels"] < fewer["pixels"] and small["mean"] == want["mean"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_the_shard_index_is_named_and_recounted(tmp_path):
    url = str(tmp_path / "k0.tar")
    write_tar_shard(url, [(f"s{j}", {"jpg": b"x", "cls": b"0"}) for j in range(3)])
    os.mkfifo(tmp_path / "index.json")  # a plain read blocks until a writer comes
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from vggfeat.train.shard_index import index_shards\n"
        f"print(json.dumps([c.samples for c in index_shards([{url!r}], Path({str(tmp_path / 'index.json')!r}))]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("counting the shards hung reading the FIFO index.json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [3]
    assert "is a FIFO, not a regular file" in done.stderr and "counting its shards again" in done.stderr
    assert (tmp_path / "index.json").is_file()  # replaced by the fresh count


def test_a_shard_index_nested_past_the_recursion_limit_is_recounted(tmp_path, caplog):
    url = str(tmp_path / "k0.tar")
    write_tar_shard(url, [(f"s{j}", {"jpg": b"x", "cls": b"0"}) for j in range(3)])
    (tmp_path / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    assert [c.samples for c in index_shards([url], tmp_path / "index.json")] == [3]
    assert "is not a shard index (nested" in caplog.text and "counting its shards again" in caplog.text
    assert json.loads((tmp_path / "index.json").read_text())["shards"][0]["samples"] == 3


def test_validation_builds_no_autograd_graph(shards):
    vurls = sorted(str(p) for p in (shards / "val").glob("*.tar"))
    val = TarValSet(
        TarSplit(tuple(index_shards(vurls, shards / "val-index.json")), tuple("0123456789")), size=80, crop=64
    )
    grad_seen = []
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    model.register_forward_hook(lambda m, i, o: grad_seen.append(o.requires_grad))
    recipe = load_recipe(SMOKE, ["data.workers=0"])
    top1, top5 = validate(model, val, DistInfo(), torch.device("cpu"), (0.0, 0.0, 0.0), None, recipe)
    assert grad_seen and not any(grad_seen)  # no graph kept over the validation set
    assert 0.0 <= top1 <= top5 <= 1.0
