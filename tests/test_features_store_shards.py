"""The sharded feature store: tar shards in, parts at once (killed and restarted), half-written shards, the
status and convert commands, and probes and indices that read a sharded store as they read a single-file one."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.tar_shards import write_tar_shard
from vggfeat.features import shard_files
from vggfeat.features import store as fs
from vggfeat.features.extract import extract_to_store
from vggfeat.features.shard_plan import default_part, parse_part

FAST = ["--scales", "64", "--workers", "0", "--quiet"]


@pytest.fixture
def weights(tmp_path):
    net = vggfeat.create_model("vgg_a", seed=0, **{**TINY, "init": "glorot"})
    return str(vggfeat.save_weights(net, tmp_path / "tiny.safetensors"))


def _png(seed: int, size=(64, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, n):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        (root / f"img{k:03d}.png").write_bytes(_png(k))
    return root


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def _by_key(store, key_of=lambda k: k):
    return {key_of(k): row for k, row in zip(store.keys, np.asarray(store.features), strict=True)}


def test_a_folder_and_the_same_images_as_tar_shards_give_the_same_rows(tmp_path, weights):
    folder = _folder(tmp_path / "imgs", 60)
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        samples = [(f"img{k:03d}", {"png": _png(k), "cls": b"1"}) for k in range(20 * s, 20 * s + 20)]
        write_tar_shard(shards / f"{s:06d}.tar", samples)
    assert (
        _cli("extract", folder, "-o", tmp_path / "a", "--weights", weights, *FAST, "--shard-size", "25").exit_code == 0
    )
    braces = _cli("extract", f"{shards}/{{000000..000002}}.tar", "-o", tmp_path / "b", "--weights", weights, *FAST)
    assert braces.exit_code == 0, braces.output
    glob = _cli("extract", f"{shards}/*.tar", "-o", tmp_path / "c", "--weights", weights, *FAST)
    assert glob.exit_code == 0, glob.output
    a, b, c = (fs.load_store(tmp_path / x) for x in "abc")
    assert b.shard_names == ["000000", "000001", "000002"] and len(b) == 60  # one tar, one shard
    assert [s["rows"] for s in b.manifest["shards"]] == [20, 20, 20]
    rows_a = _by_key(a, lambda p: os.path.basename(p).removesuffix(".png"))
    rows_b = _by_key(b)
    assert sorted(rows_a) == sorted(rows_b) == [f"img{k:03d}" for k in range(60)]
    for key, row in rows_b.items():
        np.testing.assert_allclose(row, rows_a[key], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(c.features), np.asarray(b.features))
    assert b.paths[0].endswith("000000.tar#img000.png") and b.keys == sorted(b.keys)


def test_a_damaged_tar_is_read_up_to_the_damage_and_recorded(tmp_path, weights):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar_shard(shards / "000000.tar", [(f"k{k}", {"png": _png(k)}) for k in range(3)] + [("bad", {"png": b"x"})])
    write_tar_shard(shards / "000001.tar", [(f"m{k}", {"png": _png(10 + k)}) for k in range(4)])
    data = (shards / "000001.tar").read_bytes()
    (shards / "000001.tar").write_bytes(data[: len(data) // 2])  # cut in the middle
    r = _cli("extract", f"{shards}/*.tar", "-o", tmp_path / "s", "--weights", weights, *FAST)
    assert r.exit_code == 0, r.output
    store = fs.load_store(tmp_path / "s")
    assert store.keys[:3] == ["k0", "k1", "k2"] and 3 < len(store) < 7
    reasons = {s["key"]: s["reason"] for s in store.skipped}
    assert "bad" in reasons and any(k not in ("bad",) for k in reasons), reasons
    record = json.loads((tmp_path / "s" / "shards" / "000001.json").read_text())
    assert record.get("problem"), record  # the shard records that its tar was cut short


def test_half_written_shard_is_never_read_as_done(tmp_path, weights, monkeypatch):
    src, out = _folder(tmp_path / "imgs", 6), tmp_path / "store"
    kw = dict(models=[("auto", weights)], scales=(64,), workers=0, progress=False, shard_size=2)
    reference = extract_to_store([src], tmp_path / "ref", **kw)
    real_replace = os.replace

    def killed_before_the_parquet(a, b):  # the process dies between the npy's rename and the parquet's
        if str(b).endswith("000001.parquet"):
            raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(shard_files.os, "replace", killed_before_the_parquet)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store([src], out, **kw)
    monkeypatch.undo()
    assert (out / "emb" / "000001.npy").is_file() and not (out / "meta" / "000001.parquet").exists()
    status = shard_files.store_status(out, rebuild=True)
    assert status.done == ["000000"] and "half-written" in status.missing["000001"] and not status.complete
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    with pytest.raises(fs.StoreError, match="unfinished"):
        fs.load_store(out)
    r = _cli("store", "status", out)
    assert r.exit_code == 1 and "missing 000001: half-written" in r.output and "finish it with:" in r.output
    assert not any(p.name.endswith(".tmp-" + str(os.getpid())) for p in out.rglob("*"))
    resumed = extract_to_store([src], out, **kw)
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(reference.features))


def test_three_parts_at_once_one_killed_and_restarted_equal_one_process(tmp_path, weights):
    src = _folder(tmp_path / "imgs", 24)
    out = tmp_path / "parts"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "vggfeat", "extract", str(src), "--weights", weights, "--quiet"]
    base += ["--scales", "64,96", "--workers", "0", "--shard-size", "2", "-o"]

    def start(i):
        cmd = [*base, str(out), "--part", f"{i}/3"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [start(i) for i in range(3)]
    part1 = [shard_files.shard_name(i, 12) for i in range(1, 12, 3)]  # shards 1, 4, 7, 10
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / "shards" / f"{n}.json").exists() for n in part1):
        time.sleep(0.005)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    done1 = [n for n in part1 if (out / "shards" / f"{n}.json").exists()]
    assert 1 <= len(done1) < len(part1), f"kill came too late ({done1})"
    for p in (procs[0], procs[2]):
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    assert not fs.is_complete_store(out)
    again = subprocess.run([*base, str(out), "--part", "1/3"], env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    one = subprocess.run([*base, str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr
    parts, single = fs.load_store(out), fs.load_store(tmp_path / "one")
    assert parts.keys == single.keys and len(set(parts.keys)) == len(parts.keys) == 24  # each key exactly once
    np.testing.assert_array_equal(np.asarray(parts.features), np.asarray(single.features))


# in the default suite (the corpus work asks for it there): 5 s on 2 quiet cores, 40 s under heavy load
def test_array_through_submitits_local_launcher_equals_one_process(tmp_path, weights):
    src = _folder(tmp_path / "imgs", 9)
    common = [src, "--weights", weights, *FAST, "--shard-size", "2"]
    r = _cli("extract", *common, "-o", tmp_path / "arr", "--array", "3", "--launcher", "local")
    assert r.exit_code == 0, r.output
    assert "submitted 3 parts (local)" in r.output and "vggfeat store status" in r.output
    assert _cli("extract", *common, "-o", tmp_path / "one").exit_code == 0
    arr, one = fs.load_store(tmp_path / "arr"), fs.load_store(tmp_path / "one")
    assert arr.keys == one.keys and len(set(arr.keys)) == 9
    np.testing.assert_array_equal(np.asarray(arr.features), np.asarray(one.features))


def test_array_without_slurm_is_one_line(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    src = _folder(tmp_path / "imgs", 2)
    r = _cli("extract", src, "-o", tmp_path / "s", "--weights", weights, *FAST, "--array", "2")
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "--launcher slurm" in errors[0] and "srun" in errors[0], r.output


def _single_file_copy(store, root):
    """The same rows in the format before shards: features.npy and a manifest listing every path."""
    root.mkdir()
    np.save(root / fs.FEATURES_FILE, np.asarray(store.features))
    skip = {"format", "shards", "complete", "rows", "n_skipped", "layout"}
    manifest = {k: v for k, v in store.manifest.items() if k not in skip}
    manifest.update(paths=store.paths, skipped=store.skipped, input_identities=store.row_identities)
    (root / fs.MANIFEST_FILE).write_text(json.dumps(manifest))
    return root


def test_probes_and_indices_read_a_sharded_store_as_a_single_file_one(tmp_path, weights):
    data = tmp_path / "data"
    for c in ("a", "b"):
        _folder(data / c, 6)
    sharded = tmp_path / "sharded"
    assert _cli("extract", data, "-o", sharded, "--weights", weights, *FAST, "--shard-size", "5").exit_code == 0
    store = fs.load_store(sharded)
    assert len(store.shard_names) == 3
    old = _single_file_copy(store, tmp_path / "old")
    status = _cli("store", "status", old)
    assert status.exit_code == 0 and "single-file format" in status.output
    converted = tmp_path / "converted"
    assert _cli("store", "convert", old, converted, "--shard-size", "4").exit_code == 0
    conv = fs.load_store(converted)
    assert conv.paths == store.paths and len(conv.shard_names) == 3
    np.testing.assert_array_equal(np.asarray(conv.features), np.asarray(store.features))
    blocks = list(conv.blocks(rows=3))
    assert max(len(b[0]) for b in blocks) <= 3 and [p for b in blocks for p in b[1]] == conv.paths
    reports = {}
    for name, features in (("sharded", sharded), ("old", old), ("converted", converted)):
        for probe in ("linear-probe", "knn-probe"):
            o = tmp_path / f"{probe}-{name}"
            r = _cli(probe, "folder", "--root", data, "--features", features, "-o", o, "--splits", "1")
            assert r.exit_code == 0, r.output
            report = json.loads((o / f"{probe}.json").read_text())
            reports.setdefault(probe, []).append((report["headline"], report["per_class"]))
        r = _cli("index", "build", features, "-o", tmp_path / f"idx-{name}")
        assert r.exit_code == 0, r.output
        search = _cli("index", "search", tmp_path / f"idx-{name}", data / "a" / "img001.png", "-k", "3")
        assert search.exit_code == 0, search.output
        reports.setdefault("search", []).append(search.output)
    for probe, results in reports.items():
        assert all(r == results[0] for r in results), probe


def test_part_options():
    assert parse_part("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(vggfeat.errors.InputError, match="--part"):
            parse_part(bad)
    assert default_part({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}) == (
        2,
        4,
    )
    assert default_part({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2) and default_part({}) == (0, 1)


@pytest.mark.skipif(
    not os.environ.get("VGGFEAT_EMBEDDING_READER_PYTHON"),
    reason="embedding-reader pins an old numpy: set VGGFEAT_EMBEDDING_READER_PYTHON to a Python that has it",
)
def test_embedding_reader_reads_every_row_with_its_path_and_key(tmp_path, weights):
    src = _folder(tmp_path / "imgs", 7)
    out = tmp_path / "store"
    store = extract_to_store(
        [src], out, models=[("auto", weights)], scales=(64,), workers=0, progress=False, shard_size=3
    )
    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from embedding_reader import EmbeddingReader\n"
        "r = EmbeddingReader(sys.argv[1] + '/emb', file_format='parquet_npy', metadata_folder=sys.argv[1] + '/meta',"
        " meta_columns=['path', 'key'])\n"
        "parts = list(r(batch_size=10**6, start=0, end=r.count, show_progress=False))\n"
        "np.save(sys.argv[2], np.concatenate([e for e, _ in parts]))\n"
        "pd.concat([m for _, m in parts])[['path', 'key']].to_json(sys.argv[3], orient='records')\n"
    )
    python = os.environ["VGGFEAT_EMBEDDING_READER_PYTHON"]
    rows, meta = tmp_path / "rows.npy", tmp_path / "meta.json"
    subprocess.run([python, "-c", code, str(out), str(rows), str(meta)], check=True, capture_output=True, timeout=120)
    np.testing.assert_array_equal(np.load(rows), np.asarray(store.features))
    assert [(m["path"], m["key"]) for m in json.loads(meta.read_text())] == list(
        zip(store.paths, store.keys, strict=True)
    )


def test_store_status_reads_each_done_record_once_and_counts_the_one_it_checked(tmp_path, weights, monkeypatch):
    data = _folder(tmp_path / "imgs", 7)
    out = tmp_path / "st"
    assert _cli("extract", data, "-o", out, "--weights", weights, *FAST, "--shard-size", "3").exit_code == 0
    reads = []
    real = shard_files.read_done_record

    def counted(root, name):
        reads.append(name)
        record = real(root, name)
        # a writer replacing the record between two reads (here: on the second read) must not be counted
        return {**record, "rows": 1000} if record and reads.count(name) > 1 else record

    monkeypatch.setattr(shard_files, "read_done_record", counted)
    status = shard_files.store_status(out)
    # before: each record was read to check it, then again to count it (the second copy counted: 3000 rows)
    assert sorted(reads) == sorted(status.shards) and len(status.shards) == 3
    assert status.complete and status.rows == 7
