"""`vggfeat index build|search|info` past RAM: every automatic choice builds and reaches the recall it reports,
rows are streamed (peak memory below the store's size), blocks merged on disk search like the in-memory index,
parts merge into the same index, and a build killed at any stage leaves the old index searchable."""

from __future__ import annotations

import json
import os
import re

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import VGGFEAT_COMMAND, peak_rss_growth

from vggfeat.cli import main
from vggfeat.index import build as build_mod
from vggfeat.index import choose, ondisk
from vggfeat.index.build import sample_rows
from vggfeat.index.folder import load_index
from vggfeat.index.tune import recall_at_k


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # tiny k-means runs spend seconds in OpenMP waits on a busy 2-core machine; one thread takes milliseconds
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def vectors(n, d, seed=0, centres=20):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def emb_meta(root, x, files=2):
    """An embedding-reader folder: emb/<i>.npy + meta/<i>.parquet with a `path` column."""
    (root / "emb").mkdir(parents=True)
    (root / "meta").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(x)), files)):
        np.save(root / "emb" / f"{i}.npy", x[part])
        pq.write_table(pa.table({"path": [f"img_{j}.jpg" for j in part]}), root / "meta" / f"{i}.parquet")
    return root


def store(root, x):
    root.mkdir()
    np.save(root / "features.npy", x)
    (root / "manifest.json").write_text(json.dumps({"paths": [f"{i}.jpg" for i in range(len(x))], "models": []}))
    return root


def build(src, out, *args):
    r = CliRunner().invoke(main.cli, ["index", "build", str(src), "-o", str(out), "--device", "cpu", *args])
    assert r.exit_code == 0, r.output
    return r.output


def held_out_recall(x, out, k=10, n_queries=1000, seed=0):
    """The index's recall@k re-measured from scratch: plain faiss.read_index (tuned parameters already set),
    the build's own held-out queries, exact top-k by numpy."""
    meta = json.loads((out / "index.json").read_text())
    q_rows, _ = sample_rows(len(x), n_queries, meta["build"]["train_rows"], seed)
    q = x[q_rows]
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    index = faiss.read_index(str(out / "index.faiss"))
    return recall_at_k(index.search(q, k)[1], truth), meta


@pytest.mark.parametrize(
    "budget, flat_max, expect",
    [
        ("1GB", 5000, "Flat"),
        ("1GB", 500, "HNSW32"),
        ("300KB", 500, "IVF*,Flat"),
        ("60KB", 500, "IVF*,PQ"),
        ("8KB", 500, "IVF*,PQ8x8"),  # nothing fits: lists on disk
    ],
)
def test_every_automatic_choice_builds_and_reaches_its_reported_recall(tmp_path, monkeypatch, budget, flat_max, expect):
    monkeypatch.setattr(choose, "FLAT_MAX_ROWS", flat_max)  # small data, every branch of the choice
    x = vectors(2000, 16)
    out = tmp_path / "idx"
    text = build(emb_meta(tmp_path / "v", x), out, "--max-memory", budget, "--queries", "200", "--block-rows", "700")
    recall, meta = held_out_recall(x, out, n_queries=200)
    assert re.fullmatch(expect.replace("*", "[0-9]+") + ".*", meta["factory"]) and meta["reason"] in text
    assert meta["ondisk"] == (budget == "8KB") and (out / "index.ivfdata").is_file() == meta["ondisk"]
    assert recall == pytest.approx(meta["measured"]["recall@10"], abs=1e-4)  # what it reports is what it reaches
    assert recall >= (0.999 if expect == "Flat" else 0.5)
    assert f"recall@10 {recall:.4f}" in text
    info = CliRunner().invoke(main.cli, ["index", "info", str(out)])
    assert info.exit_code == 0 and meta["factory"] in info.output and f"recall@10 {recall:.4f}" in info.output
    assert not (tmp_path / "idx.blocks").exists()  # the blocks are gone once merged


def test_ondisk_merged_index_searches_like_the_in_memory_one_and_parts_merge_into_it(tmp_path):
    x = vectors(3000, 16, seed=1)
    src = emb_meta(tmp_path / "v", x, files=3)
    args = ["--factory", "IVF32,Flat", "--queries", "100", "--block-rows", "500", "--max-memory", "10KB"]
    for part in ("1/3", "0/3"):  # the parts in any order, then one command merges
        text = build(src, tmp_path / "disk", *args, "--part", part)
        assert "still to build" in text
    blocks = tmp_path / "disk.blocks"
    assert not (tmp_path / "disk").exists() and len(list(blocks.glob("block_*.index"))) == 4  # parts 0 and 1 of 3
    # the in-memory reference: the same trained index, every row added at once
    mem = faiss.read_index(str(blocks / ondisk.TRAINED_FILE))
    mem.add(x)
    text = build(src, tmp_path / "disk", *args)
    assert "merged 6 blocks" in text and not blocks.exists()
    disk, meta = load_index(tmp_path / "disk")
    assert ondisk.is_ondisk(disk) and not ondisk.is_ondisk(mem) and disk.ntotal == 3000
    q = vectors(50, 16, seed=2)
    for nprobe in (1, 4, 32):
        faiss.ParameterSpace().set_index_parameters(mem, f"nprobe={nprobe}")
        faiss.ParameterSpace().set_index_parameters(disk, f"nprobe={nprobe}")
        (sm, im), (sd, idd) = mem.search(q, 10), disk.search(q, 10)
        assert np.array_equal(im, idd) and np.array_equal(sm, sd)
    # the command searches the memory-mapped lists with the tuned parameters, and answers in JSON
    np.save(tmp_path / "q.npy", q[:3])
    cmd = ["index", "search", str(tmp_path / "disk"), "--vectors", str(tmp_path / "q.npy"), "--json"]
    r = CliRunner().invoke(main.cli, cmd)
    assert r.exit_code == 0, r.output
    faiss.ParameterSpace().set_index_parameters(mem, meta["search_params"])
    want = mem.search(q[:3], 10)[1]
    got = [[hit["path"] for hit in res["results"]] for res in json.loads(r.output)["queries"]]
    assert got == [[f"img_{i}.jpg" for i in row] for row in want]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_streamed_build_peak_memory_stays_below_the_store_size(tmp_path):
    x = vectors(50_000, 256, seed=3)  # 51 MB of float32, the budget 1 MB
    src = store(tmp_path / "s", x)
    del x
    size = (src / "features.npy").stat().st_size
    cmd = ["index", "build", str(src), "-o", str(tmp_path / "idx"), "--max-memory", "1MB", "--device", "cpu"]
    cmd += ["--factory", "IVF32,PQ8", "--block-rows", "2048", "--queries", "200"]
    growth, _ = peak_rss_growth(VGGFEAT_COMMAND, "main.cli(sys.argv[1:], standalone_mode=False)", cmd)
    # before: every row was loaded (np.ascontiguousarray of the store) - a growth of at least the store's size.
    # Now: the sample, a block, the index and faiss's fixed scratch buffers (tens of MB whatever the data)
    assert growth < size, (growth, size)
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["ntotal"] == 50_000


@pytest.mark.parametrize("stage", ["train", "block", "merge", "save"])
def test_a_build_killed_at_any_stage_leaves_the_old_index_searchable(tmp_path, monkeypatch, stage):
    x = vectors(1500, 16, seed=4)
    src = emb_meta(tmp_path / "v", x)
    out = tmp_path / "idx"
    args = ["--factory", "IVF16,Flat", "--queries", "50", "--block-rows", "400", "--max-memory", "4KB"]
    build(src, out, *args)
    before = faiss.read_index(str(out / "index.faiss"))
    q = x[:5]
    want = before.search(q, 5)

    def die(*a, **k):
        raise KeyboardInterrupt

    target = {"train": (build_mod.gpu, "train"), "block": (ondisk, "write_block"), "merge": (ondisk, "merge")}
    if stage == "save":
        from vggfeat.index import folder

        target["save"] = (folder, "atomic_write_json")
    monkeypatch.setattr(*target[stage], die)
    r = CliRunner().invoke(
        main.cli, ["index", "build", str(src), "-o", str(out), "--device", "cpu", *args, "--seed", "1"]
    )
    assert r.exit_code == 1 and "Aborted!" in r.output  # click's answer to the interrupt
    index, meta = load_index(out)  # the old one, whole
    assert meta["measured"]["seed"] == 0
    got = index.search(q, 5)
    assert np.array_equal(got[1], want[1])
    monkeypatch.undo()
    build(src, out, *args, "--seed", "1")  # a rerun finishes (kept blocks of the killed run are reused)
    assert load_index(out)[1]["measured"]["seed"] == 1 and not (tmp_path / "idx.blocks").exists()


def test_parts_are_taken_in_natural_order_whatever_digits_their_names_hold(tmp_path):
    root = tmp_path / "v"
    (root / "emb").mkdir(parents=True)
    (root / "meta").mkdir()
    # "²" passes str.isdigit() but not int(): the sort key was a ValueError traceback
    names = ["p10", "p²1", "p2"]
    for i, name in enumerate(names):
        np.save(root / "emb" / f"{name}.npy", vectors(3, 4, seed=i))
        pq.write_table(pa.table({"path": [f"{name}/{j}.jpg" for j in range(3)]}), root / "meta" / f"{name}.parquet")
    from vggfeat.index.source import open_source

    source = open_source(root)
    assert [f.stem for f in source.rows.files] == ["p2", "p10", "p²1"]
    assert list(source.iter_paths())[::3] == ["p2/0.jpg", "p10/0.jpg", "p²1/0.jpg"]


def test_old_options_and_image_queries_on_plain_vectors_are_one_line(tmp_path):
    x = vectors(500, 16)
    src = emb_meta(tmp_path / "v", x)
    runner = CliRunner()
    r = runner.invoke(main.cli, ["index", "build", str(src), "-o", str(tmp_path / "i"), "--type", "ivfpq"])
    assert r.exit_code == 1 and "--type ivfpq is gone: give --factory 'IVF" in r.output and ",PQ" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(main.cli, ["index", "build", str(src), "-o", str(tmp_path / "i"), "--gpu"])
    assert r.exit_code == 1 and "use --device cuda" in r.output
    r = runner.invoke(main.cli, ["index", "build", str(src), "-o", str(tmp_path / "i"), "--factory", "IVF9,Bogus"])
    assert r.exit_code == 1 and "--factory 'IVF9,Bogus': faiss cannot build it" in r.output
    assert len(r.output.strip().splitlines()) == 1
    build(src, tmp_path / "i")
    (tmp_path / "q.jpg").write_bytes(b"")
    r = runner.invoke(main.cli, ["index", "search", str(tmp_path / "i"), str(tmp_path / "q.jpg")])
    assert r.exit_code == 1 and "not a vggfeat store" in r.output and "--vectors Q.npy" in r.output
    np.save(tmp_path / "q.npy", x[:2, :8])
    r = runner.invoke(main.cli, ["index", "search", str(tmp_path / "i"), "--vectors", str(tmp_path / "q.npy")])
    assert r.exit_code == 1 and "need (M, 16) query vectors" in r.output
    np.save(tmp_path / "q.npy", x[7:8])
    r = runner.invoke(
        main.cli, ["index", "search", str(tmp_path / "i"), "--vectors", str(tmp_path / "q.npy"), "-k", "2"]
    )
    assert r.exit_code == 0 and r.output.splitlines()[1].split()[2] == "img_7.jpg"


@pytest.mark.parametrize(
    "n, d, budget, want",
    [
        (50_000, 128, 4 << 20, "IVF512,PQ64x8"),  # the bench: the largest code that fits
        (1_000_000, 256, 64 << 20, "IVF2048,PQ64x7"),
        (200_000, 128, 1 << 30, "HNSW32"),
        (2_000_000, 96, 8 << 30, "IVF65536_HNSW32,PQ96x8"),  # 10^6 rows and more: 2^16 lists, a graph finds them
        (10**8, 256, 64 << 20, "IVF2048,PQ64x8"),  # nothing fits: on disk
    ],
)
def test_choice_at_scale_fits_its_budget(n, d, budget, want):
    plan = choose.choose_index(n, d, budget)
    assert plan.factory == want, plan.reason
    assert plan.ondisk == (n == 10**8) and (plan.index_bytes <= budget) != plan.ondisk
    if want.startswith("IVF"):  # 30+ training rows per list, never more than the budget plus a block holds
        assert 30 * int(want.split(",")[0][3:].split("_")[0]) <= plan.train_rows <= n
        assert plan.train_rows * d * 4 <= max(budget + (64 << 20), 30 * 256 * d * 4) / 2


def test_an_error_inside_the_waiting_lock_is_the_callers_not_a_retry(tmp_path):
    # before: the retry loop's except also caught a FolderLockedError raised by the block itself, so the
    # generator yielded twice and Python raised RuntimeError instead of the caller's error
    from vggfeat.index.ondisk import waiting_lock
    from vggfeat.utils.locks import FolderLockedError

    with pytest.raises(FolderLockedError, match="inner"):
        with waiting_lock(tmp_path / "blocks"):
            raise FolderLockedError("inner")
    with waiting_lock(tmp_path / "blocks"):  # released: taken again at once
        pass


def _long_path_folder(root, rows, d=4, file_rows=10_000):
    """An emb/meta folder whose paths (200 bytes each) outweigh its vectors 12 to 1."""
    x = vectors(rows, d, seed=5)
    (root / "emb").mkdir(parents=True)
    (root / "meta").mkdir()
    for i, start in enumerate(range(0, rows, file_rows)):
        part = np.arange(start, min(start + file_rows, rows))
        np.save(root / "emb" / f"{i}.npy", x[part])
        pq.write_table(pa.table({"path": [_long_path(j) for j in part]}), root / "meta" / f"{i}.parquet")
    return root, x


def _long_path(j):
    return "photos/" + "x" * 180 + f"/{j:09d}.jpg"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_row_paths_are_streamed_beside_the_index_never_held_or_written_into_index_json(tmp_path):
    growth = {}
    for rows in (100_000, 400_000):
        root, x = _long_path_folder(tmp_path / f"v{rows}", rows)
        out = tmp_path / f"idx{rows}"
        cmd = ["index", "build", str(root), "-o", str(out), "--device", "cpu", "--factory", "Flat", "--queries", "50"]
        growth[rows], _ = peak_rss_growth(VGGFEAT_COMMAND, "main.cli(sys.argv[1:], standalone_mode=False)", cmd)
    extra_paths = 300_000 * len(_long_path(0))  # 60 MB more paths
    extra_vectors = 300_000 * 4 * 4  # 4.8 MB more vectors: the Flat index holds them, and copies them to save
    # before: every path held as a Python string, then all of them in index.json's text: 143 -> 380 MB here.
    # Now a few thousand paths at a time, whatever the number of rows: 25 -> 36 MB, the vectors' share
    assert growth[400_000] - growth[100_000] < 3 * extra_vectors + extra_paths / 10, growth
    text = (out / "index.json").read_text()
    assert "photos/" not in text and len(text) < 10_000  # no per-row data: the same size for any number of rows
    _, meta = load_index(out)
    picks = [0, 7, 9_999, 10_000, 399_999]
    assert meta["paths"].lookup(picks[::-1]) == [_long_path(j) for j in picks[::-1]]
    np.save(tmp_path / "q.npy", x[[123_456]])
    r = CliRunner().invoke(main.cli, ["index", "search", str(out), "--vectors", str(tmp_path / "q.npy"), "-k", "1"])
    assert r.exit_code == 0 and _long_path(123_456) in r.output, r.output


def test_damaged_row_path_files_are_refused_with_one_line_never_a_wrong_path(tmp_path):
    x = vectors(300, 8, seed=6)
    out = tmp_path / "idx"
    build(emb_meta(tmp_path / "v", x), out, "--factory", "Flat", "--queries", "20")
    good_paths = (out / "row_paths.bin").read_bytes()
    good_offsets = (out / "row_offsets.npy").read_bytes()
    assert load_index(out)[1]["paths"][299] == "img_299.jpg"
    from vggfeat.index.folder import FaissIndexError

    (out / "row_paths.bin").write_bytes(good_paths[:-3])  # truncated
    with pytest.raises(FaissIndexError, match="row_paths.bin: .* bytes but .* were written"):
        load_index(out)
    (out / "row_paths.bin").write_bytes(good_paths)
    (out / "row_offsets.npy").write_bytes(good_offsets[:-8])
    with pytest.raises(FaissIndexError, match="row_offsets.npy: .* is not the 301 offsets of 300 rows"):
        load_index(out)
    # fuzz: any one byte of either file changed gives the true paths (a header byte numpy reads the same), or one
    # error naming the file - never another row's path, an exception of another kind, or a hang
    from vggfeat.index.row_paths import RowPathsError

    rng = np.random.default_rng(0)
    truth = [f"img_{i}.jpg" for i in range(300)]
    for name, good in (("row_offsets.npy", good_offsets), ("row_paths.bin", good_paths)):
        for pos in [*range(0, 12), *rng.integers(0, len(good), 200).tolist()]:
            bad = bytearray(good)
            bad[pos] ^= int(rng.integers(1, 256))
            (out / name).write_bytes(bytes(bad))
            try:
                got = load_index(out)[1]["paths"].lookup(range(300))
            except (FaissIndexError, RowPathsError) as e:
                assert name in str(e) and len(str(e).splitlines()) == 1, e
                continue
            assert name == "row_offsets.npy" and got == truth, pos
        (out / name).write_bytes(good)
    assert load_index(out)[1]["paths"].lookup(range(300)) == truth


def test_blocks_of_vectors_rewritten_since_are_never_merged_into_the_index(tmp_path):
    x = vectors(3000, 16, seed=7)
    src = emb_meta(tmp_path / "v", x, files=3)
    args = ["--factory", "IVF32,Flat", "--queries", "100", "--block-rows", "500", "--max-memory", "10KB"]
    build(src, tmp_path / "disk", *args, "--part", "0/2")
    y = vectors(3000, 16, seed=8)  # the vectors re-extracted (same shape) before the other part and the merge run
    for i, part in enumerate(np.array_split(np.arange(3000), 3)):
        np.save(src / "emb" / f"{i}.npy", y[part])
    cmd = ["index", "build", str(src), "-o", str(tmp_path / "disk"), "--device", "cpu", *args]
    r = CliRunner().invoke(main.cli, cmd)
    # before: part 0's blocks of the old vectors were merged with new ones into one index, silently
    assert r.exit_code == 1 and "holds blocks built from other vectors" in r.output, r.output
    assert not (tmp_path / "disk").exists()
    import shutil

    shutil.rmtree(tmp_path / "disk.blocks")
    build(src, tmp_path / "disk", *args)
    index, meta = load_index(tmp_path / "disk")
    faiss.ParameterSpace().set_index_parameters(index, "nprobe=32")
    assert (index.search(y[[5, 2999]], 1)[1].ravel() == [5, 2999]).all()


def _refused(src, out, *args):
    """The one error line of a build that must be refused."""
    r = CliRunner().invoke(main.cli, ["index", "build", str(src), "-o", str(out), "--device", "cpu", *args])
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


def test_blocks_trained_at_another_budget_are_refused_and_the_merge_reports_the_rows_it_trained_on(tmp_path):
    x = vectors(3000, 16, seed=3)
    src = emb_meta(tmp_path / "v", x, files=3)
    args = ["--factory", "IVF32,Flat", "--queries", "100", "--block-rows", "500"]
    build(src, tmp_path / "disk", *args, "--max-memory", "10KB", "--part", "0/2")  # trains on 960 rows
    # 100KB samples 1,050 training rows: before, the merge reused the 960-row trained.index and reported 1,050
    error = _refused(src, tmp_path / "disk", *args, "--max-memory", "100KB")
    assert "holds blocks of another build (train_rows 960 -> 1050 (--max-memory))" in error
    assert not (tmp_path / "disk").exists()
    build(src, tmp_path / "disk", *args, "--max-memory", "60KB")  # another budget, the same 960 training rows
    meta = json.loads((tmp_path / "disk" / "index.json").read_text())
    assert meta["build"]["train_rows"] == 960 and meta["build"]["max_memory"] == 60 << 10


def test_blocks_trained_on_a_gpu_are_refused_by_a_merge_on_the_cpu(tmp_path, monkeypatch):
    x = vectors(3000, 16, seed=4)
    src = emb_meta(tmp_path / "v", x, files=3)
    args = ["--factory", "IVF32,Flat", "--queries", "100", "--block-rows", "500", "--max-memory", "10KB"]
    with monkeypatch.context() as m:  # a part whose k-means ran on a GPU (here, faiss's CPU k-means stands in)
        m.setattr(build_mod.gpu, "faiss_gpus", lambda device: [0])
        m.setattr(build_mod.gpu, "train", lambda index, x, gpus: index.train(x))
        build(src, tmp_path / "disk", *args, "--part", "0/2")
    # before: merged on the CPU into an index that index.json said was trained there
    assert "holds blocks of another build (train_device 'gpu' -> 'cpu' (--device))" in _refused(
        src, tmp_path / "disk", *args
    )


ONDISK = ["--factory", "IVF16,Flat", "--queries", "50", "--block-rows", "400", "--max-memory", "4KB"]


def _ondisk_index(tmp_path, *extra):
    """An index of 1,200 rows whose inverted lists are on disk (index.ivfdata), or with `extra` (--part 0/2) the
    blocks folder such a build leaves: blocks 0 and 2 of 3."""
    x = vectors(1200, 16, seed=9)
    src, out = emb_meta(tmp_path / "v", x), tmp_path / "disk"
    build(src, out, *ONDISK, *extra)
    return x, src, out


def test_search_json_on_an_ondisk_index_is_only_json_on_stdout(tmp_path):
    import subprocess
    import sys

    x, _, out = _ondisk_index(tmp_path)
    np.save(tmp_path / "q.npy", x[5:7])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "vggfeat", "index", "search", str(out), "--vectors", str(tmp_path / "q.npy")]
    p = subprocess.run([*cmd, "-k", "2", "--json"], capture_output=True, text=True, env=env, timeout=120)
    # before: faiss's "IO_FLAG_ONDISK_SAME_DIR: updating ondisk filename ..." came first on stdout
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    assert [q["results"][0]["path"] for q in doc["queries"]] == ["img_5.jpg", "img_6.jpg"]


def _one_line_error(r, *names, after_progress=False):
    """`r` failed with one "Error: " line naming `names`: its whole output, or its last line after the progress
    lines a build prints."""
    text = r.output.strip().splitlines()[-1] if after_progress else r.output
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit) and text.startswith("Error: "), r.output
    assert len(text.strip().splitlines()) == 1 and all(n in text for n in names), r.output


def _overwrite(path, data):
    """`data` written over the bytes of `path` in place: an index that a search left memory-mapped (the failed
    search's traceback holds it) must never see its file shrink (SIGBUS)."""
    with open(path, "r+b") as f:
        f.write(data)


def test_damaged_inverted_lists_on_disk_are_refused_never_searched(tmp_path):
    from vggfeat.index.folder import FaissIndexError

    x, _, out = _ondisk_index(tmp_path)
    np.save(tmp_path / "q.npy", x[:3])
    search = ["index", "search", str(out), "--vectors", str(tmp_path / "q.npy"), "-k", "3"]
    good = (out / "index.ivfdata").read_bytes()
    rng = np.random.default_rng(0)
    zeroed, noise = bytes(len(good)), rng.integers(0, 256, len(good), dtype=np.uint8).tobytes()
    flips = []
    for pos in rng.integers(0, len(good), 40).tolist():
        bad = bytearray(good)
        bad[pos] ^= int(rng.integers(1, 256))
        flips.append(bytes(bad))
    # before: zeroed lists (what a crash can leave) answered every query with row 0 at score 0, exit 0; random
    # bytes crashed in the row-path lookup with an IndexError
    for bad in (zeroed, noise, *flips):
        _overwrite(out / "index.ivfdata", bad)
        with pytest.raises(FaissIndexError, match=r"index\.ivfdata: its content differs from .*; rebuild it"):
            load_index(out)
    _overwrite(out / "index.ivfdata", noise)
    _one_line_error(CliRunner().invoke(main.cli, search), "index.ivfdata", "rebuild it")
    # an index written before the lists' checksum: the ids its damaged lists give are refused at search
    meta = json.loads((out / "index.json").read_text())
    del meta["ivfdata_sha256"]
    (out / "index.json").write_text(json.dumps(meta))
    _one_line_error(CliRunner().invoke(main.cli, search), str(out), "outside the index's 1200 rows")
    _overwrite(out / "index.ivfdata", good)
    r = CliRunner().invoke(main.cli, search)
    assert r.exit_code == 0 and r.output.splitlines()[1].split()[2] == "img_0.jpg", r.output


def knn_ids(index, q):
    faiss.ParameterSpace().set_index_parameters(index, "nprobe=16")  # every list: exact
    return index.search(q, 1)[1].ravel().tolist()


def _damage_blocks(blocks, damage):
    if damage == "plan":
        (blocks / "plan.json").write_text("[]")
    elif damage == "swapped":  # another block's index (whole, valid for faiss) in block 0's place
        (blocks / "block_000000.index").write_bytes((blocks / "block_000002.index").read_bytes())
    else:
        name = {"trained": "trained.index", "truth": "block_000000.truth.npz", "block": "block_000000.index"}[damage]
        data = (blocks / name).read_bytes()
        (blocks / name).write_bytes(data[: len(data) // 2])  # cut short: a copy interrupted, a disk error


@pytest.mark.parametrize(
    "damage, names",
    [
        ("plan", ["plan.json", "remove the folder"]),
        ("trained", ["trained.index", "remove the folder"]),
        ("truth", ["block_000000.truth.npz", "delete block_000000.index and block_000000.truth.npz"]),
        ("block", ["block_000000.index", "does not match", "delete block_000000.index and"]),
        ("swapped", ["block_000000.index", "does not match", "delete block_000000.index and"]),
    ],
)
def test_a_damaged_blocks_folder_is_one_line_and_never_merged(tmp_path, damage, names):
    x, src, out = _ondisk_index(tmp_path, "--part", "0/2")
    _damage_blocks(tmp_path / "disk.blocks", damage)
    r = CliRunner().invoke(main.cli, ["index", "build", str(src), "-o", str(out), "--device", "cpu", *ONDISK])
    # before: AttributeError, RuntimeError and BadZipFile tracebacks; another block's index merged silently
    _one_line_error(r, *names, after_progress=True)
    assert not out.exists()
    if damage == "swapped":  # as the line says: that block's two files deleted, the next run rebuilds it
        for name in ("block_000000.index", "block_000000.truth.npz"):
            (tmp_path / "disk.blocks" / name).unlink()
        build(src, out, *ONDISK)
        index, meta = load_index(out)
        assert meta["paths"].lookup(knn_ids(index, x[[5, 1100]])) == ["img_5.jpg", "img_1100.jpg"]


def test_fuzzed_blocks_folder_files_are_read_whole_or_refused_in_one_line(tmp_path):
    from vggfeat.errors import InputError

    _ondisk_index(tmp_path, "--part", "0/2")
    blocks = tmp_path / "disk.blocks"
    scores, ids = ondisk.read_truth(blocks, 0, (50, 10))
    assert scores.shape == ids.shape == (50, 10) and ids.dtype == np.int64 and (ids >= 0).all()
    trained = ondisk.read_trained(blocks)
    assert (trained.d, trained.ntotal, faiss.extract_index_ivf(trained).nlist) == (16, 0, 16)
    rng = np.random.default_rng(1)
    for name in ("trained.index", "block_000000.truth.npz"):
        good = (blocks / name).read_bytes()
        for _ in range(100):
            bad = bytearray(good)
            for pos in rng.integers(0, len(bad), int(rng.integers(1, 4))).tolist():
                bad[pos : pos + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\0\0\0\0", rng.bytes(4)])
            (blocks / name).write_bytes(bytes(bad[: int(rng.integers(len(bad) // 2, len(bad) + 1))]))
            try:
                if name == "trained.index":
                    ondisk.read_trained(blocks)
                else:
                    got = ondisk.read_truth(blocks, 0, (50, 10))
                    assert np.array_equal(got[0], scores) and np.array_equal(got[1], ids)
            except InputError as e:
                assert name in str(e) and len(str(e).splitlines()) == 1, e
        (blocks / name).write_bytes(good)
