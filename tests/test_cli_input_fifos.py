"""Files a user names outside a benchmark's dataset root, through the CLI: an @list of images, a class file, a
labels file, a cached mean_rgb.json. A FIFO at such a path is refused by name in bounded time,
never waited on; each command runs in a subprocess with a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.data.synthetic import generate_synthetic

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, init="glorot", **TINY), path))


def _images(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    """root/c<k>/<i>.png, small random images."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


def _run_refused(tmp_path: Path, args: list[str], fifo: Path, regular: str = "not a regular file") -> str:
    """Run vggfeat with `args` in a subprocess while `fifo` is a FIFO; its one Error line, naming the FIFO."""
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    try:  # a reader that opens the FIFO blocks until a writer comes: the timeout turns that hang into a failure
        cmd = [sys.executable, "-m", "vggfeat", *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} hung reading the FIFO {fifo}")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("Error: ")] == lines[-1:] and "Traceback" not in done.stderr, lines
    assert str(fifo) in lines[-1] and "FIFO" in lines[-1] and regular in lines[-1], lines[-1]
    return lines[-1]


def test_extract_at_list_that_is_a_fifo(tmp_path, weights):
    lst = tmp_path / "list.txt"
    args = ["extract", f"@{lst}", "--weights", weights, "-o", tmp_path / "s", "--scales", "64", "--quiet"]
    _run_refused(tmp_path, args, lst)


@pytest.mark.parametrize("how", ["argument", "@list line"])
def test_extract_image_that_is_a_fifo_is_named(tmp_path, weights, how):
    fifo = tmp_path / "a.jpg"
    (tmp_path / "list.txt").write_text("a.jpg\n")
    given = fifo if how == "argument" else f"@{tmp_path / 'list.txt'}"
    args = ["extract", given, "--weights", weights, "-o", tmp_path / "s", "--scales", "64", "--quiet"]
    line = _run_refused(tmp_path, args, fifo, regular="not an image file or folder")
    assert "empty file" not in line and "no such" not in line
    if how == "@list line":
        assert f"{tmp_path / 'list.txt'}, line 1: " in line


@pytest.mark.parametrize("option", ["--classes", "--val-labels"])
def test_evaluate_class_or_labels_file_that_is_a_fifo(tmp_path, weights, option):
    root = _images(tmp_path / "data" / "val")
    fifo = tmp_path / "names.txt"
    args = ["evaluate", "--weights", weights, "--data-root", root.parent, option, fifo, "--scales", "64", "--quiet"]
    _run_refused(tmp_path, args, fifo)


def test_train_val_labels_that_is_a_fifo(tmp_path):
    data = tmp_path / "data"
    _images(data / "train")
    _images(data / "val")
    fifo = tmp_path / "val_labels.txt"
    sets = [f"data.val_labels={fifo}", "optim.epochs=1"]
    args = ["train", "smoke", "--data-root", data, "--out", tmp_path / "run", "--quiet"]
    _run_refused(tmp_path, [*args, *(a for s in sets for a in ("--set", s))], fifo)


def test_train_init_from_a_checkpoint_that_is_a_fifo(tmp_path):
    fifo = tmp_path / "ckpt.pt"  # a .pt is read as a training checkpoint, not through the weight readers
    data = generate_synthetic(tmp_path / "data", classes=10, per_class=2)  # one global batch of 16: the net is built
    args = ["train", "smoke", "--set", f"model.init_from={fifo}", "--data-root", data, "--out", tmp_path / "run"]
    args.append("--quiet")
    _run_refused(tmp_path, args, fifo)


def test_cached_mean_rgb_that_is_a_fifo_is_named_and_recomputed(tmp_path):
    root = _images(tmp_path / "data" / "train").parent
    cache = root / "mean_rgb.json"
    os.mkfifo(cache)
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    try:
        cmd = [sys.executable, "-m", "vggfeat", "mean-rgb", str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mean-rgb hung reading the FIFO {cache}")
    assert done.returncode == 0, done.stderr
    assert f"{cache} is a FIFO, not a regular file" in done.stderr and "recomputing" in done.stderr, done.stderr
    assert cache.is_file() and '"mean"' in cache.read_text()  # a broken cache is replaced, as a damaged one is


def _emb_meta(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "emb").mkdir(parents=True)
    (root / "meta").mkdir()
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    for i in range(2):
        np.save(root / "emb" / f"{i}.npy", x[i * 10 : (i + 1) * 10])
        pq.write_table(pa.table({"path": [f"{i}_{j}.jpg" for j in range(10)]}), root / "meta" / f"{i}.parquet")
    return root


@pytest.mark.parametrize("which", ["emb/1.npy", "meta/1.parquet"])
def test_index_build_over_vectors_or_paths_that_are_a_fifo(tmp_path, which):
    src = _emb_meta(tmp_path / "v")
    (src / which).unlink()
    _run_refused(tmp_path, ["index", "build", src, "-o", tmp_path / "idx", "--device", "cpu"], src / which)


@pytest.mark.parametrize("which", ["row_paths.bin", "row_offsets.npy"])
def test_index_search_with_row_paths_that_are_a_fifo(tmp_path, which):
    src = _emb_meta(tmp_path / "v")
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    build = [sys.executable, "-m", "vggfeat", "index", "build", src, "-o", tmp_path / "idx", "--device", "cpu"]
    assert subprocess.run(build, capture_output=True, env=env, timeout=120).returncode == 0
    np.save(tmp_path / "q.npy", np.load(src / "emb" / "0.npy")[:1])
    (tmp_path / "idx" / which).unlink()
    args = ["index", "search", tmp_path / "idx", "--vectors", tmp_path / "q.npy"]
    _run_refused(tmp_path, args, tmp_path / "idx" / which)


def test_store_bookkeeping_files_that_are_a_fifo_are_never_waited_on(tmp_path, weights):
    photos = _images(tmp_path / "photos")
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    run = [sys.executable, "-m", "vggfeat"]
    extract = [*run, "extract", photos, "-o", tmp_path / "st", "--weights", weights, "--scales", "64", "--quiet"]
    assert subprocess.run(extract, capture_output=True, env=env, timeout=120).returncode == 0
    from vggfeat.features.shard_files import record_file

    record = record_file(tmp_path / "st", "000000")
    record.unlink()
    os.mkfifo(record)  # a done record: the shard is not done (half-written), reported at once
    try:
        done = subprocess.run(
            [*run, "store", "status", tmp_path / "st"], capture_output=True, text=True, env=env, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"store status hung reading the FIFO {record}")
    assert "half-written" in done.stdout + done.stderr and "Traceback" not in done.stderr, done.stderr
    _run_refused(tmp_path, ["store", "status", tmp_path / "st"], tmp_path / "st" / "plan.json")


def test_index_search_query_vectors_that_are_a_fifo_or_an_archive(tmp_path):
    src = _emb_meta(tmp_path / "v")
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    build = [sys.executable, "-m", "vggfeat", "index", "build", src, "-o", tmp_path / "idx", "--device", "cpu"]
    assert subprocess.run(build, capture_output=True, env=env, timeout=120).returncode == 0
    q = tmp_path / "q.npy"
    _run_refused(tmp_path, ["index", "search", tmp_path / "idx", "--vectors", q], q)
    # an .npz archive: before, an AttributeError traceback ('NpzFile' object has no attribute 'ndim')
    q.unlink()
    np.savez(tmp_path / "q.npz", a=np.zeros((1, 4), np.float32))
    cmd = [sys.executable, "-m", "vggfeat", "index", "search", tmp_path / "idx", "--vectors", tmp_path / "q.npz"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'q.npz'}: an .npz archive (a)")
