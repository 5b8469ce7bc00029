"""`vggfeat index`: an index folder whose files do not belong together, or are broken, is refused with one
clear line - never searched with wrong row paths (issue 12.5 and the index bullets)."""

import numpy as np
import pytest
from click.testing import CliRunner

from vggfeat.cli import main
from vggfeat.probes import knn
from vggfeat.probes.knn import FaissIndexError, build_index, load_index, save_index


def _rows(seed, n=6, d=8):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(folder, seed, tag):
    x = _rows(seed)
    save_index(build_index(x), folder, {"paths": [f"{tag}_{i}.jpg" for i in range(len(x))], "features": {}})
    return x


def test_build_dying_between_index_and_paths_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    _save(folder, 0, "old")

    def die(*a, **k):
        raise KeyboardInterrupt  # killed after index.faiss was replaced, before index.json

    monkeypatch.setattr(knn, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        _save(folder, 1, "new")
    # before: the new vectors were served with the old paths (same size), similarity 1.0 to wrong images
    with pytest.raises(FaissIndexError, match="does not belong to index.json"):
        load_index(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_index", "index.faiss: unreadable"),
        ("bad_json", "index.json: not valid JSON"),
        ("no_paths", "no list of row paths"),
        ("missing", "not a saved index"),
    ],
)
def test_index_search_on_a_broken_index_is_one_line(tmp_path, damage, message):
    folder = tmp_path / "idx"
    _save(folder, 0, "img")
    if damage == "truncate_index":
        data = (folder / "index.faiss").read_bytes()
        (folder / "index.faiss").write_bytes(data[: len(data) // 2])
        meta = (folder / "index.json").read_text().replace('"index_sha256"', '"old_sha256"')
        (folder / "index.json").write_text(meta)  # an index from before the checksum: faiss itself must fail
    elif damage == "bad_json":
        (folder / "index.json").write_text("{not json")
    elif damage == "no_paths":
        (folder / "index.json").write_text('{"dim": 8}')
    else:
        (folder / "index.faiss").unlink()
    (tmp_path / "q.jpg").write_bytes(b"")
    r = CliRunner().invoke(main.cli, ["index", "search", str(folder), str(tmp_path / "q.jpg")])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    assert r.output.startswith("Error: ") and message in r.output and len(r.output.strip().splitlines()) == 1


def _store(folder, n=4):
    import json

    folder.mkdir()
    np.save(folder / "features.npy", _rows(0, n=n))
    (folder / "manifest.json").write_text(json.dumps({"paths": [f"{i}.jpg" for i in range(n)], "models": []}))
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "features.npy: unreadable"),
        ("bad_manifest", "manifest.json: not valid JSON"),
        ("empty", "holds no rows"),
        ("gpu", "faiss sees no GPU"),
    ],
)
def test_index_build_on_a_broken_store_is_one_line(tmp_path, damage, message):
    store = _store(tmp_path / "s", n=0 if damage == "empty" else 4)
    extra = []
    if damage == "truncate":
        data = (store / "features.npy").read_bytes()
        (store / "features.npy").write_bytes(data[: len(data) - 40])
    elif damage == "bad_manifest":
        (store / "manifest.json").write_text("{oops")
    elif damage == "gpu":
        if knn.faiss.get_num_gpus():
            pytest.skip("faiss sees a GPU here")
        extra = ["--gpu"]
    r = CliRunner().invoke(main.cli, ["index", "build", str(store), "-o", str(tmp_path / "idx"), *extra])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and message in r.output and len(r.output.strip().splitlines()) == 1
