"""Finding a benchmark's rows in a sharded store (FeatureStore.rows_for): the store's paths are streamed a shard
at a time, so probing a corpus store holds one shard's paths, not the corpus's; and the rows found are the ones
a whole-store lookup finds, links of another name included."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import peak_rss_growth

from vggfeat.features import shard_files
from vggfeat.features import store as fs
from vggfeat.features.store import StoreError, load_store
from vggfeat.utils.files import sha256_json
from vggfeat.utils.inputs import input_identities

MISSING = [None, None]  # the identity columns of a row whose file is not on this machine


def _store(root, shards, rows, real, cwd=None):
    """A finished store of `shards` x `rows` rows, 4-D; the files `real` are its first rows (with identities),
    the rest are paths of a corpus that is not here."""
    settings = {"models": [{"model": "vgg_a", "weights": None}], "layer": "fc7", "dtype": "float32", "seed": 0}
    names = [shard_files.shard_name(i, shards) for i in range(shards)]
    store = {"dim": 4, "dtype": "float32", "models": settings["models"], "layer": "fc7", "input": "files"}
    plan = {
        "format": fs.FORMAT,
        "settings": settings,
        "settings_sha256": sha256_json(settings),
        "store": {**store, "cwd": cwd, "n_inputs": shards * rows},
        "shards": [{"name": n, "first": "x", "inputs": rows} for n in names],
    }
    root.mkdir(parents=True)
    (root / fs.PLAN_FILE).write_text(json.dumps(plan))
    ids = input_identities([str(p) for p in real])
    for k, name in enumerate(names):
        paths, sizes, mtimes = [], [], []
        for i in range(k * rows, (k + 1) * rows):
            if i < len(real):
                paths.append(str(real[i]))
                sizes.append(ids[i][0])
                mtimes.append(ids[i][1])
            else:
                paths.append(f"corpus/part_{i // 1000:04d}/{'long_directory_name_' * 4}/img_{i:09d}.jpg")
                sizes.append(None)
                mtimes.append(None)
        cols = {"path": paths, "key": paths, "size": sizes, "mtime_ns": mtimes, "sha256": [None] * rows}
        record = {"settings_sha256": plan["settings_sha256"], "inputs_sha256": "0" * 64, "skipped": []}
        feats = np.arange(k * rows * 4, (k + 1) * rows * 4, dtype=np.float32).reshape(rows, 4)
        shard_files.write_shard(root, name, feats, cols, record)
    shard_files.store_status(root, rebuild=True)
    return load_store(root)


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.jpg").write_bytes(bytes([i]) * (i + 1))
    return [folder / f"{i:03d}.jpg" for i in range(n)]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_probing_a_corpus_store_holds_one_shards_paths_not_the_stores(tmp_path):
    real = _images(tmp_path / "bench", 50)
    growth = {}
    for shards in (20, 80):  # 20,000 and 80,000 rows of 1,000 per shard
        root = tmp_path / f"store{shards}"
        _store(root, shards, 1000, real)
        setup = "import sys\nfrom vggfeat.features.store import load_store\nstore = load_store(sys.argv[1])"
        code = "print(store.rows_for(sys.argv[2:]).tolist())"
        growth[shards], out = peak_rss_growth(setup, code, [str(root), *map(str, real[::-1])])
        assert json.loads(out) == list(range(49, -1, -1))
    # before: every row's path, absolute path and resolved path were held (about 900 bytes a row here): 60,000
    # more rows were 54 MB more. Now one shard's paths at a time
    assert growth[80] - growth[20] < 4_000_000, growth


def test_rows_found_by_streaming_are_the_whole_store_lookups(tmp_path, monkeypatch):
    real = _images(tmp_path / "bench" / "JPEGImages", 6)
    pool = tmp_path / "pool"
    pool.mkdir()
    linked = pool / "other-name.jpg"  # the store's row 5 was extracted through a link of another name
    os.replace(real[5], linked)
    os.symlink(linked, real[5])
    store = _store(tmp_path / "s", 3, 4, real)
    assert store.rows_for([str(p) for p in real]).tolist() == [0, 1, 2, 3, 4, 5]
    # the link's target has no row of its own name: found by resolving every row, as before
    assert store.rows_for([str(linked)]).tolist() == [5]
    # a moved benchmark is found by its unique last two components, and its files' identities are checked
    moved = tmp_path / "moved" / "JPEGImages"
    moved.mkdir(parents=True)
    for p in real[:2]:
        os.link(p, moved / p.name)
    assert store.rows_for([str(moved / "001.jpg"), str(moved / "000.jpg")]).tolist() == [1, 0]
    (moved / "000.jpg").unlink()
    (moved / "000.jpg").write_bytes(b"another image")
    with pytest.raises(StoreError, match=r"not the files the store's rows were extracted from, e\.g\. .*000\.jpg"):
        store.rows_for([str(moved / "000.jpg")])
    with pytest.raises(StoreError, match="1 of the 1 images asked for have no row"):
        store.rows_for([str(tmp_path / "nowhere" / "x.jpg")])


def test_a_parquet_file_with_other_rows_than_recorded_is_refused_naming_it(tmp_path):
    real = _images(tmp_path / "bench", 4)
    store = _store(tmp_path / "s", 2, 2, real)
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = fs.meta_file(store.root, store.shard_names[1])
    table = pq.read_table(meta)
    pq.write_table(pa.concat_tables([table, table]), meta)
    with pytest.raises(StoreError, match=r"meta/000001\.parquet: holds 4 paths but shard 000001 has 2 rows"):
        load_store(store.root).rows_for([str(real[3])])
