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


@pytest.mark.parametrize("damage, message", [
    ("truncate_index", "index.faiss: unreadable"),
    ("bad_json", "index.json: not valid JSON"),
    ("no_paths", "no list of row paths"),
    ("missing", "not a saved index"),
])
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
