"""The one reader of stored rows (features.npy_rows, under features.store.ShardRows): rows by index, range and
block equal numpy's, across shards, in any order; a damaged .npy is one error naming the file; and streaming a
store never maps it into the process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import peak_rss_growth

from vggfeat.features.npy_rows import open_npy_rows
from vggfeat.features.store import ShardRows, StoreError, load_store


class Refused(ValueError):
    pass


def test_rows_by_index_range_and_block_equal_numpys_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    counts = [5, 0, 17, 1, 9]
    parts = [rng.standard_normal((n, 6)).astype(np.float32) for n in counts]
    files = []
    for i, x in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", x)
        files.append(tmp_path / f"{i}.npy")
    rows = ShardRows(files, counts, 6, "float32")
    want = np.concatenate(parts)
    assert rows.shape == want.shape and len(rows) == 32
    np.testing.assert_array_equal(np.asarray(rows), want)
    np.testing.assert_array_equal(rows[3:25], want[3:25])
    np.testing.assert_array_equal(rows[::3], want[::3])
    np.testing.assert_array_equal(rows[-1], want[-1])
    for index in ([31, 0, 5, 5, 6, 7, 8, 22, 21], rng.integers(0, 32, 100), np.arange(32)[::-1], []):
        np.testing.assert_array_equal(rows[np.asarray(index, dtype=np.int64)], want[np.asarray(index, dtype=int)])
    blocks = list(rows.blocks(4, 2, 30))
    assert [i for _, i in blocks] == [2, 5, 9, 13, 17, 21, 22, 23, 27] and max(len(b) for b, _ in blocks) <= 4
    np.testing.assert_array_equal(np.concatenate([b for b, _ in blocks]), want[2:30])
    with pytest.raises(IndexError):
        rows[np.array([32])]
    # a shard whose header disagrees with what is recorded for it is refused, naming it
    np.save(tmp_path / "2.npy", parts[2][:16])
    again = ShardRows(files, counts, 6, "float32")
    with pytest.raises(StoreError, match=r"2.npy: holds 16 x 6 float32 but 17 x 6 float32 are recorded"):
        again[10]


def test_a_damaged_npy_is_one_error_naming_it_never_a_crash_or_wrong_rows(tmp_path):
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    path = tmp_path / "x.npy"
    np.save(path, x)
    good = path.read_bytes()
    header = len(good) - x.nbytes
    rng = np.random.default_rng(1)
    outcomes = {"refused": 0, "same": 0}
    for trial in range(400):
        bad = bytearray(good)
        if trial % 4 == 0:
            bad = bad[: int(rng.integers(0, len(good)))]  # truncated anywhere
        else:
            pos = int(rng.integers(0, header + 8))  # the magic, the header, the first row
            bad[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(bad))
        try:
            rows = open_npy_rows(path, Refused, "rewrite it")
        except Refused as e:
            assert str(e).startswith(str(path)) and str(e).endswith("rewrite it"), e
            outcomes["refused"] += 1
            continue
        # a header numpy still reads as the same array (a changed padding space): the same rows, except where the
        # flipped byte was data
        got = rows.read()
        assert got.shape == (rows.rows, rows.dim) and rows.rows * rows.dim <= x.size
        if (rows.rows, rows.dim, rows.dtype) == (40, 3, np.dtype("<f4")):
            assert np.sum(got != x) <= 1
            outcomes["same"] += 1
    assert outcomes["refused"] > 200 and outcomes["same"] > 0, outcomes


def test_a_store_of_other_rows_than_its_manifest_lists_is_refused(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    np.save(root / "features.npy", np.zeros((3, 4), np.float32))
    (root / "manifest.json").write_text(json.dumps({"paths": ["a", "b"], "models": []}))
    with pytest.raises(StoreError, match=r"features.npy has shape \(3, 4\) but the manifest lists 2 images"):
        load_store(root)
    np.save(root / "features.npy", np.zeros((2, 4), np.int32))
    with pytest.raises(StoreError, match="holds a int32 array of shape"):
        load_store(root)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_streaming_a_store_keeps_one_block_in_memory_not_the_store(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    rows, dim = 50_000, 320  # 64 MB of float32
    np.save(root / "features.npy", np.ones((rows, dim), np.float32))
    (root / "manifest.json").write_text(json.dumps({"paths": [f"{i}.jpg" for i in range(rows)], "models": []}))
    setup = "import sys, numpy as np\nfrom vggfeat.features.store import load_store\nstore = load_store(sys.argv[1])"
    code = "print(sum(float(b.sum()) for b, _ in store.blocks(rows=2048)))"
    growth, total = peak_rss_growth(setup, code, [str(root)], timeout=120)
    assert float(total) == rows * dim
    # before: the file was memory-mapped, and every page read stayed in the process's RSS: 64 MB and more.
    # Now a 2,048-row block (2.6 MB) at a time
    assert int(growth) < rows * dim * 4 / 4, growth


def _header_only(path, shape):
    with open(path, "wb") as f:  # a 128-byte header, no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})


def test_vectors_of_dimension_zero_or_a_negative_length_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "0.npy"
    _header_only(path, (10**15, 0))
    # before: accepted, and `index build` died dividing by the row size (ZeroDivisionError)
    with pytest.raises(Refused, match=r"0.npy: holds 1000000000000000 rows of dimension 0; .*; rewrite it$"):
        open_npy_rows(path, Refused, "rewrite it")
    _header_only(path, (-5, 3))  # before: accepted as -5 rows, which the file "holds"
    with pytest.raises(Refused, match=r"0.npy: unreadable .npy \(ValueError: shape \(-5, 3\) has a negative length"):
        open_npy_rows(path, Refused, "rewrite it")
    np.save(path, np.zeros((0, 4), np.float32))  # no rows of a real dimension: an empty part, not an error
    assert (open_npy_rows(path, Refused, "rewrite it").rows, open_npy_rows(path, Refused, "rewrite it").dim) == (0, 4)
