"""The finished chunks of a shard being written (features.chunk_files): a chunk file reads back exactly as
written, and one that is not a chunk this shard could have written - a FIFO, cut short, damaged anywhere, an
array bigger than its file, rows of another shape - is named in a warning, removed and computed again, in time
and memory bounded by its size, never a hang, a crash or rows that are not the chunk's."""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile

import numpy as np
import pytest

from vggfeat.features.chunk_files import ChunkCache

ROWS, DIM = 5, 3  # a chunk of 5 images, descriptors of 3 numbers


def _cache(tmp_path):
    return ChunkCache(tmp_path / "out", "000000", {"settings_sha256": "x", "chunk_size": ROWS})


def _written(cache):
    index = np.array([0, 2, 3, 4])
    feats = np.arange(len(index) * DIM, dtype=np.float32).reshape(-1, DIM) / 7
    bad = [(1, "cannot decode")]
    cache.write(0, index, feats, bad)
    return index, feats, bad


def _npy(array=None, header=None):
    buf = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.save(buf, array)
    return buf.getvalue()


def _chunk_file(path, **members):
    arrays = {
        "index": np.array([0, 1, 2, 3, 4]),
        "features": np.zeros((ROWS, DIM), np.float32),
        "skipped_index": np.zeros(0, np.int64),
        "skipped_reason": np.zeros(0, "<U1"),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, array in {**arrays, **members}.items():
            z.writestr(f"{name}.npy", array if isinstance(array, bytes) else _npy(array))


def _same(got, want):
    (index, feats, bad), (w_index, w_feats, w_bad) = got, want
    return np.array_equal(index, w_index) and np.array_equal(feats, w_feats) and bad == w_bad


def test_a_chunk_reads_back_as_written(tmp_path):
    cache = _cache(tmp_path)
    want = _written(cache)
    got = cache.read(0, ROWS, DIM)
    assert got is not None and _same(got, want) and got[0].dtype == np.int64 and got[1].dtype == np.float32
    assert cache.read(1, ROWS, DIM) is None  # never written


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_chunk_is_computed_again_not_waited_on(tmp_path, caplog):
    cache = _cache(tmp_path)
    os.mkfifo(cache.path(0))
    result: list = []
    reader = threading.Thread(target=lambda: result.append(cache.read(0, ROWS, DIM)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # before: np.load opened the FIFO and waited for a writer; release it and fail
        os.close(os.open(cache.path(0), os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"ChunkCache.read hung on the FIFO {cache.path(0)}")
    assert result == [None] and not os.path.lexists(cache.path(0))
    assert any(f"{cache.path(0)}: unreadable" in m and "FIFO" in m for m in caplog.messages), caplog.messages


@pytest.mark.parametrize(
    "member, array, why",
    [
        # 600 bytes declaring 16 PB: before, a MemoryError out of ChunkCache.read
        ("features", {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4096)}, "declares"),
        ("features", np.zeros((ROWS, DIM + 1), np.float32), "features"),  # descriptors of another net
        ("features", np.zeros((ROWS, DIM), np.float64), "features"),
        ("index", np.array([0, 1, 2, 3, 3]), "index"),  # an image twice, one missing
        ("index", np.array([0, 1, 2, 3, 9]), "index"),  # an image outside the chunk
        ("index", np.array([[0, 1, 2, 3, 4]]), "index"),
        ("skipped_reason", np.array(["a"]), "skipped"),  # a reason without its image
        ("skipped_index", np.zeros(0, np.int32), "skipped"),
    ],
)
def test_a_chunk_of_another_shape_is_computed_again(tmp_path, caplog, member, array, why):
    cache = _cache(tmp_path)
    _chunk_file(cache.path(0), **{member: _npy(header=array) if isinstance(array, dict) else _npy(array)})
    assert cache.read(0, ROWS, DIM) is None and not cache.path(0).exists()
    assert any(f"{cache.path(0)}: unreadable" in m and why in m for m in caplog.messages), caplog.messages
    _chunk_file(cache.path(0))  # the same file, undamaged, reads
    got = cache.read(0, ROWS, DIM)
    assert got is not None and np.array_equal(got[0], np.arange(ROWS)) and got[1].shape == (ROWS, DIM)


def test_fuzz_a_damaged_chunk_reads_as_written_or_is_computed_again(tmp_path):
    """300 seeded damages (a byte changed anywhere, cut short anywhere): read either returns the chunk exactly
    as written (a byte no reader looks at) or None with the file removed - never an exception or other rows."""
    cache = _cache(tmp_path)
    want = _written(cache)
    good = cache.path(0).read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"same": 0, "redone": 0}
    start = time.perf_counter()
    for trial in range(300):
        bad = bytearray(good)
        if trial % 5 == 0:
            bad = bad[: int(rng.integers(0, len(good)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                bad[int(rng.integers(0, len(good)))] ^= int(rng.integers(1, 256))
        cache.path(0).write_bytes(bytes(bad))
        got = cache.read(0, ROWS, DIM)
        if got is None:
            assert not cache.path(0).exists(), trial
            outcomes["redone"] += 1
        else:
            assert _same(got, want), trial
            outcomes["same"] += 1
    assert outcomes["redone"] > 200 and time.perf_counter() - start < 10, outcomes
