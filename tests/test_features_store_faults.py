"""A feature store under faults: --overwrite that fails keeps the old store, a second
writer never writes a shard being written, an image replaced at the same path is re-extracted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.features import shard_files
from vggfeat.features import store as fs
from vggfeat.features.extract import extract_to_store

FAST = ["--scales", "64", "--workers", "0", "--quiet"]


@pytest.fixture
def weights(tmp_path):
    return str(
        vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), tmp_path / "tiny.safetensors")
    )


def _image(path, seed, size=(64, 80)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        _image(folder / f"img{k}.png", k)
    return folder


def _extract(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args)])


def _one_error_line(r):
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1, r.output
    return errors[0]


@pytest.mark.parametrize("bad", ["layer", "weights", "weights_unreadable"])
def test_overwrite_that_fails_keeps_the_old_store(tmp_path, weights, bad):
    src, out = _images(tmp_path / "imgs", 3), tmp_path / "store"
    assert _extract(src, "-o", out, "--weights", weights, *FAST).exit_code == 0
    before = np.asarray(fs.load_store(out).features)
    if bad == "layer":
        args = ["--weights", weights, "--layer", "fc9"]
    elif bad == "weights":
        (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
        args = ["--weights", tmp_path / "junk.safetensors"]
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a 0000 file")
        (tmp_path / "locked.safetensors").write_bytes(open(weights, "rb").read())
        (tmp_path / "locked.safetensors").chmod(0)
        args = ["--weights", tmp_path / "locked.safetensors"]
    r = _extract(src, "-o", out, *args, *FAST, "--overwrite")
    _one_error_line(r)
    # before: --overwrite deleted the finished store before the new settings were checked
    store = fs.load_store(out)
    assert np.array_equal(np.asarray(store.features), before) and store.manifest["layer"] == "fc7"


def test_overwrite_interrupted_keeps_the_old_store_until_the_new_is_complete(tmp_path, weights, monkeypatch):
    src, out = _images(tmp_path / "imgs", 5), tmp_path / "store"
    kw = dict(models=[("auto", weights)], workers=0, progress=False, shard_size=2)
    old = extract_to_store([src], out, scales=(64,), **kw)
    before = np.asarray(old.features).copy()
    real, written = shard_files.write_shard, []

    def interrupt(*a, **k):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the new run's last shard
        written.append(a[1])
        real(*a, **k)

    monkeypatch.setattr(shard_files, "write_shard", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store([src], out, scales=(80,), overwrite=True, **kw)
    monkeypatch.undo()
    kept = fs.load_store(out)
    assert kept.manifest["scales"] == [64] and np.array_equal(np.asarray(kept.features), before)
    new = extract_to_store([src], out, scales=(80,), overwrite=True, **kw)  # resumes the new run and swaps it in
    assert new.manifest["scales"] == [80] and not np.allclose(np.asarray(new.features), before)
    fresh = extract_to_store([src], tmp_path / "fresh", scales=(80,), **kw)
    assert np.array_equal(np.asarray(new.features), np.asarray(fresh.features))


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete"])
def test_a_damaged_shard_file_is_named_and_redone(tmp_path, weights, damage, caplog):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2"]
    assert _extract(*args).exit_code == 0
    good = np.asarray(fs.load_store(out).features)
    victim = out / "emb" / "000001.npy"
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:-40] if damage == "truncate" else b"")
    # before: a zero-length chunk ended in "Aborted!" and the rerun did not recover
    error = _one_error_line(CliRunner().invoke(cli, ["index", "build", str(out), "-o", str(tmp_path / "i")]))
    assert "000001" in error and "unfinished" in error and "vggfeat extract" in error
    r = _extract(*args)
    assert r.exit_code == 0, r.output
    assert any("000001.npy" in m and "redoing it" in m for m in caplog.messages), caplog.messages
    assert np.array_equal(np.asarray(fs.load_store(out).features), good)


@pytest.mark.parametrize("hash_inputs", [False, True])
def test_an_image_replaced_at_the_same_path_is_re_extracted(tmp_path, weights, hash_inputs):
    src, out = _images(tmp_path / "imgs", 5), tmp_path / "store"
    kw = dict(models=[("auto", weights)], scales=(64,), workers=0, progress=False, shard_size=2)
    if hash_inputs:  # (main had no such option; the default must catch the replacement too)
        kw["hash_inputs"] = True
    first = np.asarray(extract_to_store([src], out, **kw).features).copy()
    _image(src / "img3.png", 99)  # another picture under the same name
    (src / "img0.png").touch()  # only touched: same content
    again = extract_to_store([src], out, **kw)
    # before: the rerun found a finished store with the same paths and kept img3's stale row
    fresh = extract_to_store([src], tmp_path / "fresh", **kw)
    assert np.array_equal(np.asarray(again.features), np.asarray(fresh.features))
    assert not np.allclose(again.features[3], first[3])
    assert np.array_equal(np.asarray(again.features)[[0, 1, 2, 4]], first[[0, 1, 2, 4]])


def test_a_broken_image_fixed_at_the_same_path_gets_its_row(tmp_path, weights):
    src, out = _images(tmp_path / "imgs", 3), tmp_path / "store"
    (src / "img1.png").write_bytes(b"truncated")
    kw = dict(models=[("auto", weights)], scales=(64,), workers=0, progress=False)
    assert len(extract_to_store([src], out, **kw)) == 2
    _image(src / "img1.png", 1)
    store = extract_to_store([src], out, **kw)
    assert len(store) == 3 and store.skipped == []


def test_a_second_writer_leaves_the_shard_being_written_to_the_first(tmp_path, weights):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    hold = "import sys, time\nfrom vggfeat.utils.locks import folder_lock\n"
    hold += "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    lock = out / ".locks" / "000000"  # a process writing shard 0
    p = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "locked"
        r = _extract(src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2")
    finally:
        p.kill()
        p.wait()
    assert r.exit_code == 0, r.output
    assert "1 shards were being written by other processes (e.g. 000000)" in r.output
    assert "1 of 2 shards done" in r.output and not fs.is_complete_store(out)
    assert not (out / "emb" / "000000.npy").exists()  # left to its writer
    again = _extract(src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2")  # the holder is gone
    assert again.exit_code == 0 and "4 images ->" in again.output, again.output
    assert json.loads((out / "manifest.json").read_text())["n_inputs"] == 4


@pytest.mark.slow
def test_two_real_extract_runs_into_one_store(tmp_path, weights):
    """The reported case: a second `vggfeat extract` with other settings into a store being written."""
    import time

    src, out = _images(tmp_path / "imgs", 24), tmp_path / "store"
    common = [sys.executable, "-m", "vggfeat", "extract", str(src), "-o", str(out), "--weights", weights]
    common += ["--scales", "64,96,128", "--workers", "0", "--quiet", "--shard-size", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(common, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any((out / "shards").glob("*.json")):
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # hold the first mid-run (a stopped process keeps its lock) ...
    try:
        second = subprocess.run([*common, "--layer", "fc6"], env=env, capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)  # ... and let it finish
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # before: both wrote chunks into one .partial and the manifest said fc7 over rows of both layers
    assert second.returncode == 1 and "unfinished run with other settings" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    store = fs.load_store(out)
    fresh = extract_to_store([src], tmp_path / "fresh", models=[("auto", weights)], scales=(64, 96, 128), workers=0)
    assert store.manifest["layer"] == "fc7" and store.paths == fresh.paths
    np.testing.assert_allclose(store.features, fresh.features, atol=1e-5)  # batching differs: float rounding


def test_an_image_replaced_between_interruption_and_resume_is_re_extracted(tmp_path, weights, monkeypatch):
    src, out = _images(tmp_path / "imgs", 6), tmp_path / "store"
    kw = dict(models=[("auto", weights)], scales=(64,), workers=0, progress=False, shard_size=2)
    real, written = shard_files.write_shard, []

    def interrupt(*a, **k):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(a[1])
        real(*a, **k)

    monkeypatch.setattr(shard_files, "write_shard", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store([src], out, **kw)
    monkeypatch.undo()
    _image(src / "img1.png", 42)  # in chunk 0, already written
    resumed = extract_to_store([src], out, **kw)
    fresh = extract_to_store([src], tmp_path / "fresh", **kw)
    assert np.array_equal(np.asarray(resumed.features), np.asarray(fresh.features))


def test_with_hash_inputs_a_touched_image_is_not_re_extracted(tmp_path, weights):
    src, out = _images(tmp_path / "imgs", 2), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST, "--hash-inputs"]
    assert _extract(*args).exit_code == 0
    os.utime(src / "img0.png", ns=(1, 1))  # another time, the same bytes
    assert "already complete" in _extract(*args).output
    _image(src / "img1.png", 7)  # other bytes
    assert "2 images ->" in _extract(*args).output


def test_store_status_verify_finds_a_flipped_byte_and_the_rerun_redoes_that_shard(tmp_path, weights):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2"]
    assert _extract(*args).exit_code == 0
    good = np.asarray(fs.load_store(out).features).copy()
    victim = out / "emb" / "000001.npy"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size, other content: only the checksum tells
    victim.write_bytes(bytes(data))
    assert CliRunner().invoke(cli, ["store", "status", str(out)]).exit_code == 0
    r = CliRunner().invoke(cli, ["store", "status", str(out), "--verify"])
    assert r.exit_code == 1 and "000001" in r.output and "sha256" in r.output, r.output
    assert _extract(*args).exit_code == 0
    assert np.array_equal(np.asarray(fs.load_store(out).features), good)


def test_store_status_verify_clears_a_damaged_shard_that_also_has_a_stale_failure_record(tmp_path, weights):
    """A crash between a shard's done record and the removal of an earlier try's failure record leaves both; the
    shard is still done. If its file is then damaged, `status --verify` must clear its done record all the same
    (it did so only for shards it listed as missing, so the rerun kept the damaged rows)."""
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2"]
    assert _extract(*args).exit_code == 0
    good = np.asarray(fs.load_store(out).features).copy()
    shard_files.record_failure(out, "000001", "an earlier try ran out of memory")
    victim = out / "emb" / "000001.npy"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = CliRunner().invoke(cli, ["store", "status", str(out), "--verify"])
    assert r.exit_code == 1 and "damaged 000001" in r.output, r.output
    assert shard_files.read_done_record(out, "000001") is None
    assert _extract(*args).exit_code == 0
    assert np.array_equal(np.asarray(fs.load_store(out).features), good)


def test_an_interrupted_shard_resumes_from_its_finished_chunks(tmp_path, weights, monkeypatch, caplog):
    """A shard of 10,000 images must not cost 10,000 images when Ctrl-C comes: finished chunks are kept."""
    from vggfeat.features import chunk_files

    src, out = _images(tmp_path / "imgs", 7), tmp_path / "store"
    kw = dict(models=[("auto", weights)], scales=(64,), workers=0, progress=False, chunk_size=2)
    reference = np.asarray(extract_to_store([src], tmp_path / "ref", **kw).features)
    real, written = chunk_files.ChunkCache.write, []

    def interrupt(self, k, *a):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the third chunk of the one shard
        written.append(k)
        real(self, k, *a)

    monkeypatch.setattr(chunk_files.ChunkCache, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store([src], out, **kw)
    monkeypatch.undo()
    kept = sorted(p.name for p in (out / ".partial" / "000000").glob("chunk_*"))
    assert kept == ["chunk_000000.npz", "chunk_000001.npz"] and not fs.is_complete_store(out)
    (out / ".partial" / "000000" / "chunk_000001.npz").write_bytes(b"")  # and one of them damaged since
    computed = []

    def counting(self, k, *a):
        computed.append(k)
        real(self, k, *a)

    monkeypatch.setattr(chunk_files.ChunkCache, "write", counting)
    resumed = extract_to_store([src], out, **kw)
    # before: the rerun said only "Aborted!" on a zero-length chunk and never recovered
    assert computed == [1, 2, 3]  # chunk 0 read back; the emptied chunk 1 and the rest computed
    assert any("chunk_000001.npz: unreadable" in m for m in caplog.messages), caplog.messages
    np.testing.assert_array_equal(np.asarray(resumed.features), reference)
    assert not (out / ".partial").exists()


def _damage_bookkeeping(out, damage):
    plan = json.loads((out / "plan.json").read_text())
    record = json.loads((out / "shards" / "000000.json").read_text())
    if damage == "plan_empty_object":
        plan = {}
    elif damage == "plan_shards_not_list":
        plan["shards"] = 5
    elif damage == "plan_shard_listed_twice":
        plan["shards"] = plan["shards"] * 2
    elif damage == "plan_shard_name_a_path":
        plan["shards"][0]["name"] = "../../elsewhere"
    elif damage == "plan_store_not_object":
        plan["store"] = [1]
    elif damage == "plan_dim_text":
        plan["store"]["dim"] = "sixteen"
    elif damage == "record_rows_text":
        record["rows"] = "four"
    elif damage == "record_skipped_not_list":
        record["skipped"] = 3
    (out / "plan.json").write_text(json.dumps(plan))
    (out / "shards" / "000000.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("plan_empty_object", 'plan.json: "shards" must be a list of objects'),
        ("plan_shards_not_list", 'plan.json: "shards" must be a list of objects'),
        ("plan_shard_listed_twice", "plan.json: shard 000000 is listed twice"),
        ("plan_shard_name_a_path", "plan.json: shard name '../../elsewhere' is not a shard number"),
        ("plan_store_not_object", 'plan.json: "store" must be an object'),
        ("plan_dim_text", "plan.json: dimension 'sixteen' is not a positive whole number"),
    ],
)
def test_a_damaged_plan_is_one_line_and_overwrite_replaces_it(tmp_path, weights, damage, message):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST]
    assert _extract(*args).exit_code == 0
    good = np.asarray(fs.load_store(out).features)
    _damage_bookkeeping(out, damage)
    # before: KeyError/TypeError tracebacks, or (a shard listed twice) every row indexed twice: "8 x 16 vectors"
    for command in (["index", "build", out, "-o", tmp_path / "i"], ["store", "status", out]):
        error = _one_error_line(CliRunner().invoke(cli, list(map(str, command))))
        assert message in error and str(out) in error and "--overwrite" in error, error
    assert not (tmp_path / "i").exists()
    # the fix the message names works: --overwrite replaces the damaged plan and the store reads whole again
    assert _extract(*args, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(np.asarray(fs.load_store(out).features), good)


@pytest.mark.parametrize("damage", ["record_rows_text", "record_skipped_not_list"])
def test_a_damaged_done_record_leaves_its_shard_to_be_redone(tmp_path, weights, damage, caplog):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    args = [src, "-o", out, "--weights", weights, *FAST, "--shard-size", "2"]
    assert _extract(*args).exit_code == 0
    good = np.asarray(fs.load_store(out).features)
    _damage_bookkeeping(out, damage)
    status = shard_files.store_status(out)
    assert status.done == ["000001"] and status.rows == 2 and list(status.damaged) == ["000000"]
    assert "000000.json: not a done record" in status.damaged["000000"], status.damaged
    # before: ValueError/TypeError tracebacks from `index build`; now the store is unfinished, and says so
    error = _one_error_line(CliRunner().invoke(cli, ["index", "build", str(out), "-o", str(tmp_path / "i")]))
    assert "000000" in error and "unfinished" in error and "not a done record" in error, error
    assert _extract(*args).exit_code == 0
    assert any("000000" in m and "redoing it" in m for m in caplog.messages), caplog.messages
    np.testing.assert_array_equal(np.asarray(fs.load_store(out).features), good)


def test_a_store_without_plan_json_is_read_through_its_checked_manifest(tmp_path, weights):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    assert _extract(src, "-o", out, "--weights", weights, *FAST).exit_code == 0
    good = np.asarray(fs.load_store(out).features)
    (out / "plan.json").unlink()
    np.testing.assert_array_equal(np.asarray(fs.load_store(out).features), good)
    manifest = json.loads((out / "manifest.json").read_text())
    for damage, message in (
        ({"shards": manifest["shards"] * 2}, "manifest.json: shard 000000 is listed twice"),
        ({"dim": "x"}, "manifest.json: dimension 'x' is not a positive whole number"),
        ({"shards": [{**manifest["shards"][0], "rows": -4}]}, "manifest.json: shard 000000 has rows -4"),
    ):
        (out / "manifest.json").write_text(json.dumps({**manifest, **damage}))
        # before: the shard listed twice was read twice (8 rows from 4 images); the others, tracebacks
        with pytest.raises(fs.StoreError, match=message):
            fs.load_store(out)
