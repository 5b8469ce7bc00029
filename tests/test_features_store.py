"""The feature store through the CLI: bad inputs, resume after Ctrl-C and kill -9, settings, memory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT, store_paths, store_rows, write_png_header_only
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.features import shard_files
from vggfeat.features import store as fs
from vggfeat.features.extract import extract_part, extract_to_store

FAST = ["--scales", "64,80", "--workers", "0", "--quiet"]


@pytest.fixture
def weights(tmp_path):
    return str(
        vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, **TINY_GLOROT), tmp_path / "tiny.safetensors")
    )


def make_images(folder, n, seed=0, sizes=((60, 90), (80, 80), (90, 60))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = sizes[k % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{k:03d}.png")
    return folder


def run(args):
    result = CliRunner().invoke(cli, ["extract", *args], catch_exceptions=False)
    return result


def test_cli_store_with_every_kind_of_bad_input(tmp_path, weights, monkeypatch):
    src = make_images(tmp_path / "imgs", 4)
    (src / "empty.jpg").touch()
    (src / "garbage.jpg").write_bytes(b"\x00" * 100)
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "full.jpg")
    (src / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    write_png_header_only(src / "bomb.png", 40000, 40000)
    (src / "unreadable.png").write_bytes((src / "img000.png").read_bytes())
    (src / "notes.txt").write_text("not an image, and not picked up from a folder")
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(src / "tiny_gray.png")  # tiny: rescaled up to Q
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).convert("CMYK").save(src / "cmyk.jpg")

    real_open = Image.open

    def guarded_open(fp, *a, **kw):  # root reads any file, so refuse this one as the OS would
        if str(fp).endswith("unreadable.png"):
            raise PermissionError(13, "Permission denied")
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", guarded_open)
    out = tmp_path / "store"
    result = run([str(src), "-o", str(out), "--weights", weights, *FAST])
    assert result.exit_code == 0, result.output
    features = np.load(out / "emb" / "000000.npy")  # numpy alone reads a shard's rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert features.shape == (6, 32) and features.dtype == np.float32
    reasons = {os.path.basename(s["path"]): s["reason"] for s in vggfeat.load_store(out).skipped}
    assert set(reasons) == {"empty.jpg", "garbage.jpg", "truncated.jpg", "bomb.png", "unreadable.png"}
    assert "empty" in reasons["empty.jpg"] and "bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] and "permission" in reasons["unreadable.png"]
    assert [os.path.basename(p) for p in store_paths(out)] == [
        "cmyk.jpg",
        "img000.png",
        "img001.png",
        "img002.png",
        "img003.png",
        "tiny_gray.png",
    ]
    assert manifest["layer"] == "fc7" and manifest["scales"] == [64, 80] and manifest["dim"] == 32
    assert manifest["models"][0]["weights_sha256"] == vggfeat.utils.files.sha256_file(weights)
    assert manifest["vggfeat_version"] == vggfeat.__version__
    assert "skipped 5 unusable inputs" in result.output and "bomb.png" in result.output
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert not (out / ".partial").exists() and manifest["complete"] and manifest["rows"] == 6

    strict = run([str(src), "-o", str(tmp_path / "strict"), "--weights", weights, "--strict", *FAST])
    assert strict.exit_code != 0 and "--strict" in strict.output and "bomb.png" in strict.output


def test_cli_errors_are_clear(tmp_path, weights):
    (tmp_path / "empty").mkdir()
    result = run([str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--weights", weights, *FAST])
    assert result.exit_code != 0 and "no input images" in result.output
    result = run([str(tmp_path / "missing"), "-o", str(tmp_path / "o"), *FAST])
    assert result.exit_code != 0 and "missing" in result.output
    src = make_images(tmp_path / "imgs", 1)
    result = run([str(src), "-o", str(tmp_path / "o"), "--weights", weights, "--layer", "fc9", *FAST])
    assert result.exit_code != 0 and "valid: conv1_1" in result.output
    result = run([str(src), "-o", str(tmp_path / "o"), *FAST, "--scales", "64,x"])
    assert result.exit_code != 0 and "comma-separated" in result.output


def test_random_weights_only_when_asked_and_said(tmp_path):
    src = make_images(tmp_path / "imgs", 1, sizes=((224, 230),))
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            str(src),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "vgg_a",
            "--weights",
            "random",
            "--scales",
            "224",
            "--no-flip",
            "--workers",
            "0",
            "--quiet",
            "--layer",
            "pool5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "note: --weights random: vgg_a is randomly initialised (Glorot, seed 0)" in result.stderr
    assert store_rows(tmp_path / "o").shape == (1, 512)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["models"] == [{"model": "vgg_a", "weights": "random", "weights_sha256": None}]


def test_cli_winograd_switch(tmp_path, weights, monkeypatch):
    import vggfeat.features.extract as ex

    seen = []
    real = ex.extract_part
    monkeypatch.setattr(ex, "extract_part", lambda *a, **kw: seen.append(kw["runtime"].winograd) or real(*a, **kw))
    src = make_images(tmp_path / "imgs", 2)
    assert run([str(src), "-o", str(tmp_path / "w"), "--weights", weights, *FAST]).exit_code == 0
    assert run([str(src), "-o", str(tmp_path / "d"), "--weights", weights, "--no-winograd", *FAST]).exit_code == 0
    assert seen == [True, False]
    np.testing.assert_allclose(store_rows(tmp_path / "w"), store_rows(tmp_path / "d"), rtol=1e-4, atol=1e-6)


def test_finished_store_is_not_recomputed_and_settings_are_guarded(tmp_path, weights, monkeypatch):
    src = make_images(tmp_path / "imgs", 3)
    out = tmp_path / "store"
    assert run([str(src), "-o", str(out), "--weights", weights, *FAST]).exit_code == 0
    first = store_rows(out)
    import vggfeat.features.extract as ex

    def boom(*a, **kw):
        raise AssertionError("a finished store must not rebuild its nets")

    monkeypatch.setattr(ex, "build_feature_net", boom)
    assert run([str(src), "-o", str(out), "--weights", weights, *FAST]).exit_code == 0
    monkeypatch.undo()
    other = run([str(src), "-o", str(out), "--weights", weights, "--scales", "64", "--workers", "0", "--quiet"])
    assert other.exit_code != 0 and "other settings" in other.output and "scales" in other.output
    assert np.array_equal(store_rows(out), first)
    replaced = run(
        [
            str(src),
            "-o",
            str(out),
            "--weights",
            weights,
            "--scales",
            "64",
            "--workers",
            "0",
            "--quiet",
            "--overwrite",
            "--dtype",
            "float16",
        ]
    )
    assert replaced.exit_code == 0, replaced.output
    assert store_rows(out).dtype == np.float16
    assert json.loads((out / "manifest.json").read_text())["scales"] == [64]


def test_a_store_computed_in_bfloat16_is_not_reused_or_resumed_at_float32(tmp_path, weights):
    """bf16 changes a descriptor by ~1e-3, far beyond float rounding: a store records it in its settings, so
    the same command at float32 is refused (and with --overwrite computes what a fresh float32 store holds),
    and a part at float32 never joins the shards of a bf16 run."""
    from vggfeat.features.protocol import Protocol
    from vggfeat.features.runtime import Runtime
    from vggfeat.utils.files import sha256_json

    src = make_images(tmp_path / "imgs", 3)
    out, fresh = tmp_path / "store", tmp_path / "fresh"
    command = [str(src), "-o", str(out), "--weights", weights, *FAST]
    assert run([*command, "--precision", "bfloat16"]).exit_code == 0
    bf16 = store_rows(out)
    again = run(command)  # the default on the CPU: float32
    assert again.exit_code != 0 and "other settings" in again.output and "precision" in again.output
    assert "already complete" not in again.output  # before: the bf16 rows served as float32 ones
    assert np.array_equal(store_rows(out), bf16)
    assert run([*command, "--overwrite"]).exit_code == 0
    assert run([str(src), "-o", str(fresh), "--weights", weights, *FAST]).exit_code == 0
    np.testing.assert_array_equal(store_rows(out), store_rows(fresh))
    assert np.abs(bf16 - store_rows(fresh)).max() > 1e-4  # what reuse would have served

    # float32 (asked, or auto on the CPU) records nothing: a store made before precision was recorded keeps
    # its settings and their hash, and stays complete
    settings = json.loads((fresh / "manifest.json").read_text())["settings"]
    assert set(settings) == {"models", *Protocol().to_dict(), "dtype", "shard_size", "n_inputs", "inputs_sha256"}
    assert json.loads((fresh / "plan.json").read_text())["settings_sha256"] == sha256_json(settings)
    same = run([str(src), "-o", str(fresh), "--weights", weights, *FAST, "--precision", "float32"])
    assert same.exit_code == 0 and "already complete" in same.output

    kw = dict(models=[("auto", weights)], scales=(64, 80), progress=False, shard_size=1)
    half = extract_part([src], tmp_path / "parts", runtime=Runtime(device="cpu", workers=0, precision="bfloat16"),
                        part=(0, 2), **kw)  # fmt: skip
    assert half.written and not half.status.complete
    with pytest.raises(FileExistsError, match="unfinished run with other settings.*precision"):
        extract_part([src], tmp_path / "parts", runtime=Runtime(device="cpu", workers=0), part=(1, 2), **kw)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, weights, monkeypatch):
    src = make_images(tmp_path / "imgs", 10)
    kw = dict(models=[("auto", weights)], scales=(64, 80), workers=0, progress=False, shard_size=3)
    reference = extract_to_store([src], tmp_path / "ref", **kw)

    real_write, written = shard_files.write_shard, []

    def interrupt_after_two(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third shard
        written.append(args[1])
        real_write(*args, **kwargs)

    monkeypatch.setattr(shard_files, "write_shard", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store([src], tmp_path / "out", **kw)
    monkeypatch.undo()
    assert not fs.is_complete_store(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "shards").glob("*.json")) == ["000000.json", "000001.json"]
    assert sorted(p.name for p in (tmp_path / "out" / "emb").iterdir()) == ["000000.npy", "000001.npy"]
    resumed = extract_to_store([src], tmp_path / "out", **kw)
    assert np.array_equal(np.asarray(resumed.features), np.asarray(reference.features))
    assert resumed.paths == reference.paths


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, weights):
    src = make_images(tmp_path / "imgs", 40)
    args = [
        sys.executable,
        "-m",
        "vggfeat",
        "extract",
        str(src),
        "--weights",
        weights,
        "--scales",
        "64,96",
        "--workers",
        "1",
        "--quiet",
        "--shard-size",
        "2",
    ]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "shards").glob("*.json")))
    assert 3 <= done < 20 and not fs.is_complete_store(out), f"kill came too late ({done} shards)"
    subprocess.run([*args, "-o", str(out)], check=True, capture_output=True)
    subprocess.run([*args, "-o", str(tmp_path / "ref")], check=True, capture_output=True)
    assert np.array_equal(store_rows(out), store_rows(tmp_path / "ref"))
    assert store_paths(out) == store_paths(tmp_path / "ref")


def test_memory_stays_flat(tmp_path):
    model = dict(fc_dim=2048)
    path = vggfeat.save_weights(
        vggfeat.create_model("vgg_a", seed=0, **{**TINY_GLOROT, **model}), tmp_path / "w.safetensors"
    )
    sources = {n: make_images(tmp_path / f"imgs{n}", n, sizes=((64, 64),)) for n in (16, 96)}

    def extract(n, out):
        extract_to_store(
            [sources[n]],
            tmp_path / out,
            models=[("auto", path)],
            scales=(64,),
            workers=0,
            progress=False,
            chunk_size=8,
            shard_size=8,
        )

    # an untraced run first: pathlib interns every path component it parses, and the interpreter's table of
    # interned strings, grown by earlier tests, may resize (megabytes at once) while these names are added
    extract(96, "warm")
    peaks = {}
    for n in (16, 96):
        tracemalloc.start()
        extract(n, f"out{n}")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 6x the images: holding all descriptors would add 80 x 2048 x 4 bytes; chunks keep the peak level
    assert peaks[96] < peaks[16] + 300_000, peaks


def test_torchrun_two_processes_write_one_store(tmp_path, weights):
    src = make_images(tmp_path / "imgs", 9)
    common = [
        "extract",
        str(src),
        "--weights",
        weights,
        "--scales",
        "64,80",
        "--workers",
        "0",
        "--quiet",
        "--shard-size",
        "2",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's per-process default: same float reductions
    script = tmp_path / "run_cli.py"
    script.write_text(
        "import os, pathlib, sys, torch.distributed as dist\n"
        "from vggfeat.cli.main import cli\n"
        "cli.main(sys.argv[1:], standalone_mode=False)\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.txt')"
        ".write_text(os.environ['RANK'] + ' ' + str(dist.is_initialized()))\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(script),
            *common,
            "-o",
            str(tmp_path / "ddp"),
        ],
        check=True,
        capture_output=True,
        timeout=240,
        env=env,
    )
    # each rank ran the command, then found no process group left: extraction destroys the one it made
    assert sorted(p.read_text() for p in tmp_path.glob("rank*.txt")) == ["0 False", "1 False"]
    subprocess.run(
        [sys.executable, "-m", "vggfeat", *common, "-o", str(tmp_path / "one")],
        check=True,
        capture_output=True,
        timeout=240,
        env=env,
    )
    assert np.array_equal(store_rows(tmp_path / "ddp"), store_rows(tmp_path / "one"))


def test_timm_backbone_through_the_cli(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r.safetensors"))
    src = make_images(tmp_path / "imgs", 2)
    out = tmp_path / "store"
    result = run(
        [
            str(src),
            "-o",
            str(out),
            "--model",
            "timm:test_resnet",
            "--weights",
            str(tmp_path / "r.safetensors"),
            "--aggregate",
            "stack",
            *FAST,
        ]
    )
    assert result.exit_code == 0, result.output
    features = store_rows(out)
    assert features.shape == (2, 2 * net.num_features)  # stacked over 2 scales
    expected = vggfeat.extract_features(
        net.eval(), [Image.open(p) for p in sorted(src.glob("*.png"))], scales=(64, 80), aggregate="stack", device="cpu"
    )
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-6)
    bad = run(
        [
            str(src),
            "-o",
            str(tmp_path / "bad"),
            "--model",
            "timm:test_vit",
            "--weights",
            str(tmp_path / "r.safetensors"),
            *FAST,
        ]
    )
    assert bad.exit_code != 0 and "does not fit timm model 'test_vit'" in bad.output


def test_rows_for_matches_resolved_paths_then_unique_tails(tmp_path, monkeypatch):
    from vggfeat.features.store import FeatureStore, StoreError
    from vggfeat.utils.inputs import input_identities

    monkeypatch.chdir(tmp_path)
    for name in ("imgs/a/1.jpg", "data/b/2.jpg", "x/c/3.jpg", "y/c/3.jpg", "data/c/3.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    paths = ["imgs/a/1.jpg", "/elsewhere/b/2.jpg", "x/c/3.jpg", "y/c/3.jpg"]
    inputs = ["imgs/a/1.jpg", "/elsewhere/b/2.jpg", "imgs/a/9.jpg", "x/c/3.jpg", "y/c/3.jpg"]  # in input order
    manifest = {
        "paths": paths,
        "skipped": [{"path": "imgs/a/9.jpg", "reason": "empty file (0 bytes)"}],
        # the moved dataset's b/2.jpg is data/b/2.jpg: the same file (size and time) as was extracted
        "input_identities": input_identities(["imgs/a/1.jpg", "data/b/2.jpg", "imgs/a/9.jpg", *paths[2:]]),
        "settings": {"inputs_sha256": hashlib.sha256("\n".join(inputs).encode()).hexdigest()},
    }
    store = FeatureStore(tmp_path, np.zeros((4, 2), np.float32), manifest)
    # a relative path recorded at extraction equals its absolute form; a moved dataset matches by class/file
    assert store.rows_for([str(tmp_path / "imgs" / "a" / "1.jpg"), "data/b/2.jpg"]).tolist() == [0, 1]
    assert store.rows_for(["x/c/3.jpg", "y/c/3.jpg"]).tolist() == [2, 3]
    with pytest.raises(StoreError, match="1 of the 1 images"):
        store.rows_for(["/data/c/3.jpg"])  # two rows end in c/3.jpg: ambiguous, so no match
    with pytest.raises(StoreError, match="skipped at extraction: empty file"):
        store.rows_for(["/data/a/9.jpg"])
    # a file name alone is no match: without recorded identities the moved dataset cannot be told from another
    bare = FeatureStore(tmp_path, store.features, {k: manifest[k] for k in ("paths", "skipped")})
    assert bare.rows_for(["x/c/3.jpg"]).tolist() == [2]
    with pytest.raises(StoreError, match="by file name only"):
        bare.rows_for(["data/b/2.jpg"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_shard_layout_is_what_embedding_reader_reads(tmp_path, weights, dtype):
    """embedding-reader's parquet_npy format: emb/*.npy and meta/*.parquet paired by sorted name, row i of
    each npy described by row i of its parquet; nothing else under OUT ends in .npy or .parquet."""
    import pyarrow.parquet as pq

    src = make_images(tmp_path / "imgs", 7)
    (src / "img003.png").write_bytes(b"broken")
    out = tmp_path / "store"
    store = extract_to_store(
        [src], out, models=[("auto", weights)], scales=(64,), workers=0, progress=False, shard_size=3, dtype=dtype
    )
    embs, metas = sorted((out / "emb").glob("*.npy")), sorted((out / "meta").glob("*.parquet"))
    assert [p.stem for p in embs] == [p.stem for p in metas] == ["000000", "000001", "000002"]
    assert sorted(map(str, out.rglob("*.npy"))) == list(map(str, embs))
    assert sorted(map(str, out.rglob("*.parquet"))) == list(map(str, metas))
    rows, paths, keys = [], [], []
    for emb, meta in zip(embs, metas, strict=True):
        x, table = np.load(emb), pq.read_table(meta)
        assert x.dtype == np.dtype(dtype) and len(x) == table.num_rows
        assert {"path", "key", "size", "mtime_ns", "sha256"} <= set(table.column_names)
        rows.append(x)
        paths += table.column("path").to_pylist()
        keys += table.column("key").to_pylist()
    # 7 inputs in shards of 3: the broken one has no row, and is listed with its reason in its shard's record
    assert [os.path.basename(p) for p in paths] == [f"img00{i}.png" for i in (0, 1, 2, 4, 5, 6)] and keys == paths
    np.testing.assert_array_equal(np.concatenate(rows), np.asarray(store.features))
    record = json.loads((out / "shards" / "000001.json").read_text())
    assert [os.path.basename(s["path"]) for s in record["skipped"]] == ["img003.png"] and record["rows"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(s["name"], s["rows"], s["skipped"]) for s in manifest["shards"]] == [
        ("000000", 3, 0),
        ("000001", 2, 1),
        ("000002", 1, 0),
    ]
    assert manifest["shards"][1]["emb_sha256"] == vggfeat.utils.files.sha256_file(embs[1])
    assert "paths" not in manifest and manifest["complete"] and manifest["rows"] == 6


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_extraction_opens_the_weight_file_once(tmp_path, monkeypatch, suffix):
    """The manifest's weights_sha256 and the tensors come from one open of the file; before, a
    sha256 pass read it whole and loading read it again."""
    import safetensors
    import torch
    from helpers import count_opens

    net = vggfeat.create_model("vgg_d", seed=0, **TINY_GLOROT)
    path = tmp_path / f"net{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), path)
    else:
        vggfeat.save_weights(net, path)
    src = make_images(tmp_path / "imgs", 2)
    opens = count_opens(monkeypatch, path)

    def no_second_reader(*a, **k):
        raise AssertionError("safetensors opened the file again")

    monkeypatch.setattr(safetensors, "safe_open", no_second_reader)
    store = extract_to_store(
        [src], tmp_path / "out", models=[("auto", str(path))], scales=(64,), workers=0, progress=False
    )
    monkeypatch.undo()
    assert len(opens) == 1, opens
    assert store.manifest["models"][0]["weights_sha256"] == vggfeat.utils.files.sha256_file(path)
    expected = vggfeat.extract_features(net.eval(), [Image.open(p) for p in sorted(src.glob("*.png"))], scales=(64,))
    np.testing.assert_allclose(np.asarray(store.features), expected, rtol=1e-4, atol=1e-6)
