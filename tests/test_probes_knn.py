"""faiss indexes against exact numpy top-k, approximate recall, save/load, and kNN votes worked by hand."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from vggfeat.features.protocol import l2_normalize
from vggfeat.index.folder import load_index, save_index
from vggfeat.probes.knn import (
    build_index,
    default_nlist,
    default_pq_m,
    knn_scores,
    search,
)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # tiny k-means runs spend seconds in OpenMP waits on a busy 2-core machine; one thread takes milliseconds
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n=1200, d=32, centres=12, seed=0, noise=0.15):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    labels = rng.integers(0, centres, n)
    return l2_normalize(c[labels] + noise * rng.standard_normal((n, d))), labels


def exact_topk(X, Q, k, metric):
    s = Q @ X.T if metric == "ip" else -((Q[:, None, :] - X[None]) ** 2).sum(-1)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, ids, 1)
    return (scores if metric == "ip" else -scores), ids


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force(metric):
    rng = np.random.default_rng(1)
    X, Q = rng.standard_normal((300, 24)).astype(np.float32), rng.standard_normal((40, 24)).astype(np.float32)
    scores, ids = search(build_index(X, "flat", metric=metric), Q, 7)
    want_scores, want_ids = exact_topk(X.astype(np.float64), Q.astype(np.float64), 7, metric)
    assert scores.shape == ids.shape == (40, 7)
    assert np.array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert search(build_index(X[:5]), Q, 50)[1].shape == (40, 5)  # k capped at the index size


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_on_clustered_data(kind):
    X, _ = clustered()
    Q = l2_normalize(X[:100] + 0.05 * np.random.default_rng(5).standard_normal((100, X.shape[1])))
    _, exact = exact_topk(X.astype(np.float64), Q.astype(np.float64), 10, "ip")
    _, ids = search(build_index(X, kind), Q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=False)])
    assert recall >= 0.9, recall


def test_ivfpq_finds_the_right_cluster():
    # 4-bit, 4-byte codes cannot order near-duplicates, but the neighbours must come from the query's cluster
    X, y = clustered(n=800)
    Q = l2_normalize(X[:100] + 0.05 * np.random.default_rng(5).standard_normal((100, X.shape[1])))
    _, ids = search(build_index(X, "ivfpq"), Q, 10)
    assert ids.min() >= 0 and np.mean(y[ids] == y[:100, None]) > 0.95


def test_defaults_clamp_for_small_inputs():
    assert default_nlist(10) == 1 and default_nlist(39 * 50) == 50 and default_nlist(10**6) == 4000
    assert default_pq_m(4096) == 64 and default_pq_m(24) == 3 and default_pq_m(7) == 1
    X, _ = clustered(n=60, d=16)
    for kind in ("ivf", "ivfpq"):  # tiny N: one list, few PQ bits, still searchable
        assert search(build_index(X, kind), X[:3], 2)[1].shape == (3, 2)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(X, "lsh")
    with pytest.raises(ValueError, match="must divide"):
        build_index(X, "ivfpq", m=5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip(tmp_path, kind):
    X, _ = clustered(n=500)
    index = build_index(X, kind)
    paths = [f"/data/img_{i}.jpg" for i in range(len(X))]
    save_index(index, tmp_path / "idx", {"store": {"layer": "fc7", "dim": 32}}, paths=iter(paths))
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["kind"], meta["metric"], meta["dim"], meta["ntotal"]) == (kind, "ip", 32, 500)
    loaded, meta2 = load_index(tmp_path / "idx")
    assert {k: v for k, v in meta2.items() if k != "paths"} == meta and meta2["store"]["layer"] == "fc7"
    assert list(meta2["paths"]) == paths and meta2["paths"][7] == paths[7] and meta2["paths"][-1] == paths[-1]
    a, b = search(index, X[:20], 5), search(loaded, X[:20], 5)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    for few in (["a", "b"], paths + ["extra"]):
        with pytest.raises(ValueError, match="row paths for 500 rows|more than 500 row paths"):
            save_index(index, tmp_path / "bad", {}, paths=few)
    with pytest.raises(ValueError, match="not in it"):
        save_index(index, tmp_path / "bad", {"paths": paths}, paths=paths)
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        load_index(tmp_path / "bad")


def test_an_l2_ivfpq_index_loads_with_its_precomputed_table_and_searches_the_same(tmp_path):
    # the table is not stored: load_index reads the file bounded by its size, then rebuilds it as faiss would
    X, _ = clustered(n=1000)
    index = build_index(X, "ivfpq", metric="l2")
    save_index(index, tmp_path / "idx", {}, paths=[f"{i}.jpg" for i in range(len(X))])
    loaded, _ = load_index(tmp_path / "idx")
    inner = faiss.downcast_index(faiss.extract_index_ivf(loaded))
    assert inner.use_precomputed_table == 1 and inner.precomputed_table.size() > 0
    a, b = search(index, X[:20], 5), search(loaded, X[:20], 5)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])


def test_knn_scores_multiclass_by_hand():
    train = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)  # unit rows
    labels = np.array([0, 1, 1, 2])
    test = np.array([[2, 0], [0, 3]], dtype=np.float32)  # normalised inside: (1, 0) and (0, 1)
    T = 0.5
    got = knn_scores(train, labels, test, k=2, temperature=T)
    # test 0: neighbours row 0 (cos 1, class 0) and row 1 (cos 0.8, class 1)
    w = np.exp(np.array([1.0, 0.8]) / T)
    # test 1: row 2 (cos 1, class 1) and row 1 (cos 0.6, class 1): all the vote to class 1
    want = np.array([[w[0], w[1], 0], [0, 1, 0]]) / np.array([[w.sum()], [1]])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.shape == (2, 3) and got.argmax(1).tolist() == [0, 1]
    assert knn_scores(train, labels, test, k=2, temperature=T, num_classes=5).shape == (2, 5)


def test_knn_scores_multilabel_difficult_not_positive():
    train = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    labels = np.array([[1, -1], [1, 0], [-1, 1]], dtype=np.int8)  # row 1: 'difficult' for class 1
    test = np.array([[0.8, 0.6]], dtype=np.float32)
    T = 0.1
    got = knn_scores(train, labels, test, k=3, temperature=T)  # multilabel inferred from 2-D labels
    w = np.exp(np.array([0.8, 0.96, 0.6]) / T)  # cos to rows 0, 1, 2
    want = np.array([[w[0] + w[1], w[2]]]) / w.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.dtype == np.float32


@pytest.mark.parametrize("T", [0.0013, 1e-6])
def test_knn_vote_at_a_tiny_temperature_is_the_softmax_without_overflow(T):
    # cos 1 and 0.999: exp(1 / T) is inf in float64, so the naive vote is inf / inf = NaN
    train = np.array([[1, 0], [0.999, np.sqrt(1 - 0.999**2)], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is the right weight
        got = knn_scores(train, labels, np.array([[1, 0]], dtype=np.float32), k=3, temperature=T)
    share = 1 / (1 + np.exp((0.999 - 1) / T) + np.exp(-1 / T))  # the nearest row's share, shifted by its cos
    np.testing.assert_allclose(got, [[share, 1 - share]], rtol=1e-4)
    assert np.isfinite(got).all()


def test_knn_classifies_clusters():
    X, y = clustered(n=600, noise=0.3)
    Xt, yt = X[500:], y[500:]
    for kind in ("flat", "hnsw"):
        pred = knn_scores(X[:500], y[:500], Xt, k=10, kind=kind, num_classes=12).argmax(1)
        assert np.mean(pred == yt) > 0.95


def test_row_paths_of_any_count_round_trip_byte_for_byte(tmp_path):
    import os

    from vggfeat.index.row_paths import RowPaths, write_row_paths

    odd = [os.fsdecode(b"caf\xe9.jpg"), "line\nbreak.jpg", "", "plain.jpg", "é/ü.png"]
    for n in (0, 1, 5):
        folder = tmp_path / str(n)
        folder.mkdir()
        size = write_row_paths(folder, iter(odd[:n]), n)
        paths = RowPaths(folder, n, size, "rebuild")
        # before: an empty index's row paths failed to open (a ValueError unpacking a missing offset)
        assert len(paths) == n and list(paths) == odd[:n] and paths[:] == odd[:n]
        assert [os.fsencode(p) for p in paths.lookup(range(n)[::-1])] == [os.fsencode(p) for p in odd[:n][::-1]]
        paths.close()
