"""`vggfeat index`: an index folder whose files do not belong together, or are broken, is refused with one
clear line - never searched with wrong row paths."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from vggfeat.cli import main
from vggfeat.index import folder as index_folder
from vggfeat.index.folder import FaissIndexError, load_index, save_index
from vggfeat.probes import knn
from vggfeat.probes.knn import build_index


def _rows(seed, n=6, d=8):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(folder, seed, tag):
    x = _rows(seed)
    save_index(build_index(x), folder, {"features": {}}, paths=[f"{tag}_{i}.jpg" for i in range(len(x))])
    return x


def test_build_dying_between_index_and_paths_leaves_the_old_index_searchable(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    old = _save(folder, 0, "old")

    def die(*a, **k):
        raise KeyboardInterrupt  # killed after index.faiss was written, before index.json

    monkeypatch.setattr(index_folder, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        _save(folder, 1, "new")
    # before: the new vectors were served with the old paths; then: the folder was refused. Now the new index
    # is built in a sibling folder that replaces the old one only when complete, so the old one still answers.
    index, meta = load_index(folder)
    scores, ids = knn.search(index, old[2:3], 1)
    assert meta["paths"][ids[0, 0]] == "old_2.jpg" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left behind


def test_rebuild_replaces_the_index_and_hand_mixed_files_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _save(a, 0, "a")
    new = _save(a, 1, "a2")  # a rebuild into an existing index folder
    index, meta = load_index(a)
    assert meta["paths"][knn.search(index, new[4:5], 1)[1][0, 0]] == "a2_4.jpg"
    _save(b, 2, "b")
    (a / "index.faiss").write_bytes((b / "index.faiss").read_bytes())
    with pytest.raises(FaissIndexError, match="does not belong to index.json"):
        load_index(a)


def test_build_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FaissIndexError, match="holds files that are not an index"):
        _save(photos, 0, "x")
    assert (photos / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_index", "index.faiss: unreadable"),
        ("bad_json", "index.json: not valid JSON"),
        ("no_paths", "no row paths recorded"),
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
        ("truncate", "features.npy: truncated (216 bytes for 4 x 8 float32)"),
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
        extra = ["--device", "cuda"]
    r = CliRunner().invoke(main.cli, ["index", "build", str(store), "-o", str(tmp_path / "idx"), *extra])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and message in r.output and len(r.output.strip().splitlines()) == 1


def test_second_index_build_into_a_locked_folder_is_one_line(tmp_path):
    import subprocess
    import sys

    store = _store(tmp_path / "s")
    hold = "import sys, time\nfrom vggfeat.utils.locks import folder_lock\n"
    hold += "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "idx")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(main.cli, ["index", "build", str(store), "-o", str(tmp_path / "idx")])
    finally:
        p.kill()
        p.wait()
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"idx is being written by process {p.pid}" in r.output
    assert not (tmp_path / "idx").exists()


def test_index_search_whose_queries_are_all_unusable_is_one_line(tmp_path):
    from helpers import TINY

    import vggfeat

    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY), tmp_path / "w.safetensors")
    model = {"model": "vgg_a", "weights": str(weights)}
    features = {"models": [model], "layer": "fc7", "scales": [48], "flip": True, "aggregate": "mean", "l2": True}
    x = _rows(0, d=32)
    save_index(build_index(x), tmp_path / "idx", {"features": features}, paths=[f"{i}.jpg" for i in range(len(x))])
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "q" / "empty.png").write_bytes(b"")
    r = CliRunner().invoke(main.cli, ["index", "search", str(tmp_path / "idx"), str(tmp_path / "q")])
    # before: a ValueError traceback from faiss's search on a 0-row query matrix
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"Error: no usable image in {tmp_path / 'q'}: all 2 inputs were skipped"), r.output
    assert "broken.jpg: not an image" in r.output and "empty.png: empty file" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_rebuild_where_folders_cannot_be_swapped_in_one_step(tmp_path, monkeypatch):
    from vggfeat.utils import files

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # no renameat2 (not Linux, or an old kernel)
    _save(tmp_path / "idx", 0, "old")
    new = _save(tmp_path / "idx", 1, "new")
    index, meta = load_index(tmp_path / "idx")
    assert meta["paths"][knn.search(index, new[3:4], 1)[1][0, 0]] == "new_3.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the old folder, set aside, is gone


def test_a_store_row_whose_file_name_is_not_utf8_is_indexed_and_printed_byte_for_byte(tmp_path):
    import io

    from helpers import TINY
    from PIL import Image

    import vggfeat
    from vggfeat.features.store import load_store

    net = vggfeat.create_model("vgg_a", seed=0, **{**TINY, "init": "glorot"})
    weights = str(vggfeat.save_weights(net, tmp_path / "tiny.safetensors"))
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [b"caf\xe9.png", b"plain.png"]  # latin-1: not UTF-8
    for k, name in enumerate(names):
        buf = io.BytesIO()
        pixels = np.random.default_rng(k).integers(0, 256, (64, 72, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        with open(os.path.join(os.fsencode(photos), name), "wb") as f:
            f.write(buf.getvalue())
    run = CliRunner().invoke
    args = ["--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    assert run(main.cli, ["extract", str(photos), "-o", str(tmp_path / "st"), *args]).exit_code == 0
    assert run(main.cli, ["index", "build", str(tmp_path / "st"), "-o", str(tmp_path / "ix")]).exit_code == 0
    store = load_store(tmp_path / "st")
    row = [os.fsencode(p) for p in store.paths].index(os.fsencode(photos) + b"/" + names[0])
    _, meta = load_index(tmp_path / "ix")
    assert os.fsencode(meta["paths"][row]) == os.path.join(os.fsencode(photos), names[0])
    np.save(tmp_path / "q.npy", np.asarray(store.features)[[row]])
    r = run(main.cli, ["index", "search", str(tmp_path / "ix"), "--vectors", str(tmp_path / "q.npy"), "-k", "1"])
    # before: UnicodeEncodeError under a UTF-8 locale (surrogates not allowed); now the name's own bytes
    assert r.exit_code == 0, r.output
    assert os.path.join(os.fsencode(photos), names[0]) in r.output_bytes


def test_an_index_whose_row_paths_are_in_index_json_still_searches(tmp_path):
    import json

    folder = tmp_path / "idx"
    x = _save(folder, 0, "old")
    meta = json.loads((folder / "index.json").read_text())
    meta["paths"] = [f"old_{i}.jpg" for i in range(len(x))]  # how indices were written before row_paths.bin
    del meta["row_paths"]
    (folder / "index.json").write_text(json.dumps(meta))
    (folder / "row_paths.bin").unlink()
    (folder / "row_offsets.npy").unlink()
    np.save(tmp_path / "q.npy", x[3:4])
    r = CliRunner().invoke(main.cli, ["index", "search", str(folder), "--vectors", str(tmp_path / "q.npy"), "-k", "1"])
    assert r.exit_code == 0 and "old_3.jpg" in r.output, r.output


def _pngs(folder, n):
    from PIL import Image

    folder.mkdir()
    for k in range(n):
        pixels = np.random.default_rng(k).integers(0, 256, (64, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k}.png")
    return folder


def test_image_queries_on_a_random_net_store_are_described_with_the_stores_seed(tmp_path):
    import json

    photos = _pngs(tmp_path / "photos", 3)
    run = CliRunner().invoke
    net = ["--model", "timm:test_resnet", "--weights", "random", "--seed", "3", "--scales", "64", "--workers", "0"]
    assert run(main.cli, ["extract", str(photos), "-o", str(tmp_path / "st"), *net, "--quiet"]).exit_code == 0
    assert run(main.cli, ["index", "build", str(tmp_path / "st"), "-o", str(tmp_path / "ix")]).exit_code == 0
    search = ["index", "search", str(tmp_path / "ix"), str(photos / "img1.png"), "-k", "1", "--workers", "0", "--json"]
    # before: described by the net of seed 0 (the option's default), another net than the indexed rows'
    for seed in ([], ["--seed", "3"]):
        r = run(main.cli, [*search, *seed])
        assert r.exit_code == 0, r.output
        hit = json.loads(r.output)["queries"][0]["results"][0]
        assert hit["path"] == str(photos / "img1.png") and hit["score"] == pytest.approx(1.0, abs=1e-4)
    r = run(main.cli, [*search, "--seed", "0"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "made with --seed 3" in r.output and "--seed 0" in r.output
    assert load_index(tmp_path / "ix")[1]["features"]["seed"] == 3


def test_image_queries_on_a_gpu_decoded_store_are_refused_on_the_cpu(tmp_path):
    import json

    from helpers import TINY

    import vggfeat

    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY), tmp_path / "w.safetensors")
    store = _store(tmp_path / "s")
    np.save(store / "features.npy", _rows(0, n=4, d=32))
    manifest = {
        "paths": [f"{i}.jpg" for i in range(4)],
        "models": [{"model": "vgg_a", "weights": str(weights)}],
        **{"layer": "fc7", "scales": [64], "flip": True, "aggregate": "mean", "l2": True},
        "settings": {"gpu_decode": True},  # JPEGs decoded on the GPU: other pixels than PIL's
    }
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert CliRunner().invoke(main.cli, ["index", "build", str(store), "-o", str(tmp_path / "ix")]).exit_code == 0
    _pngs(tmp_path / "q", 1)
    cmd = ["index", "search", str(tmp_path / "ix"), str(tmp_path / "q"), "--device", "cpu", "--workers", "0"]
    r = CliRunner().invoke(main.cli, cmd)
    # before: described from PIL's pixels on the CPU, not the GPU decoder's the rows were made from
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "--gpu-decode" in r.output and "--vectors" in r.output
    assert load_index(tmp_path / "ix")[1]["features"]["gpu_decode"] is True


def test_image_queries_are_described_in_the_precision_of_the_indexed_store(tmp_path):
    """A store computed in bf16 (--precision bfloat16, or auto on CUDA) records it, and `index search` describes
    query images the same way on any device: an indexed image finds itself with the similarity 1, as in a
    float32 store, instead of ~1 - 5e-5."""
    import json

    from helpers import TINY_GLOROT
    from PIL import Image

    import vggfeat

    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), tmp_path / "w.safetensors")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (64 + 8 * k, 72, 3), dtype=np.uint8)).save(images / f"i{k}.png")

    def invoke(*args):
        r = CliRunner().invoke(main.cli, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    fast = ["--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    invoke("extract", images, "-o", tmp_path / "store", *fast, "--precision", "bfloat16")
    invoke("index", "build", tmp_path / "store", "-o", tmp_path / "idx")
    found = json.loads(invoke("index", "search", tmp_path / "idx", images, "-k", "1", "--json", "--device", "cpu"))
    top = [(q["query"], q["results"][0]["path"], q["results"][0]["score"]) for q in found["queries"]]
    assert [query for query, path, _ in top] == [path for _, path, _ in top]
    np.testing.assert_allclose([score for *_, score in top], 1.0, atol=1e-6)  # before: 0.99995


@pytest.mark.parametrize(
    "shape, message",
    [
        ((10**10, 8), "declares a float32 array of shape (10000000000, 8): 320000000000 bytes, but the file holds 0"),
        ((3, 8), "declares a float32 array of shape (3, 8): 96 bytes, but the file holds 64"),
    ],
)
def test_query_vectors_larger_than_their_file_are_one_line(tmp_path, shape, message):
    _save(tmp_path / "idx", 0, "img")
    q = tmp_path / "q.npy"
    with open(q, "wb") as f:  # a 128-byte header; the second file also holds 2 of its 3 rows
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        if shape[0] == 3:
            f.write(_rows(1, n=2).tobytes())
    # before: np.load allocated what the header declared first: a MemoryError traceback for 298 GiB
    r = CliRunner().invoke(main.cli, ["index", "search", str(tmp_path / "idx"), "--vectors", str(q)])
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.output.startswith(f"Error: {q}: ") and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def _patch_meta(folder, **fields):
    import json

    meta = json.loads((folder / "index.json").read_text())
    meta.update(fields)
    for k in [k for k, v in fields.items() if v is None]:
        del meta[k]
    (folder / "index.json").write_text(json.dumps(meta))


def _size_field_bomb(folder, n):
    """index.faiss of a Flat index (237 bytes) whose codes-vector size field claims `n` entries, as an index
    written before index.json recorded the file's sha256."""
    import struct

    data = bytearray((folder / "index.faiss").read_bytes())
    assert struct.unpack_from("<Q", data, 0x25)[0] == 48  # 6 rows x 8 dims
    struct.pack_into("<Q", data, 0x25, n)
    (folder / "index.faiss").write_bytes(bytes(data))
    _patch_meta(folder, index_sha256=None)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the address space is read from Linux's /proc")
def test_an_index_file_claiming_huge_vectors_is_refused_before_allocating(tmp_path):
    import resource

    folder = tmp_path / "idx"
    _save(folder, 0, "img")
    _size_field_bomb(folder, 1 << 30)  # 4 GiB of floats claimed by a 237-byte file
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = int(next(line for line in f if line.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))  # 1 GiB more address space than now
    try:
        # before: faiss allocated what the file claims (1.2 GB of RSS for 2^28), here a MemoryError traceback
        with pytest.raises(FaissIndexError, match=r"index\.faiss: unreadable \(.*\); rebuild it"):
            load_index(folder)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_fuzzed_index_files_load_whole_or_are_refused_in_one_line(tmp_path, kind):
    """Damaged index.faiss of an index from before its checksum: faiss parses it bounded by the file's size, and
    what it accepts searches with rows of the index only."""
    x = _rows(0, n=40)
    folder = tmp_path / "idx"
    save_index(build_index(x, kind), folder, {}, paths=[f"{i}.jpg" for i in range(len(x))])
    _patch_meta(folder, index_sha256=None)
    good = (folder / "index.faiss").read_bytes()
    rng = np.random.default_rng(2)
    for _ in range(100):
        bad = bytearray(good)
        for pos in rng.integers(0, len(bad), int(rng.integers(1, 5))).tolist():
            bad[pos : pos + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\0\0\0\0", rng.bytes(4)])
        (folder / "index.faiss").write_bytes(bytes(bad))
        try:
            index, meta = load_index(folder)
            _, ids = knn.search(index, x[:3], 5)
        except FaissIndexError as e:
            assert "index.faiss" in str(e) or "outside the index" in str(e), e
            assert len(str(e).splitlines()) == 1, e
            continue
        assert ((ids >= -1) & (ids < len(x))).all()


MEASURED = {"recall@10": 0.9, "recall_k": 10, "ms_per_query": 0.1, "max_query_ms": 10.0, "queries": 6}
BUILD = {"seconds": 1.0, "peak_rss": 1 << 20, "max_memory": 1 << 30}
MODEL = {"model": "vgg_a", "weights": "w.safetensors"}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"measured": {}}, "'measured' lacks recall_k"),
        ({"measured": {**MEASURED, "recall_k": "ten"}}, "'measured.recall_k' is 'ten', not an integer"),
        ({"measured": {k: v for k, v in MEASURED.items() if k != "recall@10"}}, "'measured' lacks recall@10"),
        ({"measured": MEASURED, "build": {}}, "'build' lacks seconds"),
        ({"measured": 5}, "'measured' is 5, not an object"),
        ({"search_params": 3}, "'search_params' is 3, not a string"),
        ({"ondisk": "yes"}, "'ondisk' is 'yes', not true or false"),
        ({"features": {"models": 5}}, "'features.models' is 5, not a list"),
        ({"features": {"models": [{"weights": "w"}]}}, "'features.models[0]' lacks model"),
        ({"features": {"models": [MODEL], "scales": "abc"}}, "'features.scales' is 'abc', not a list"),
        ({"features": {"models": [MODEL], "scales": [0]}}, "scales must be positive integers"),
        ({"features": {"models": [MODEL], "flip": 1}}, "'features.flip' is 1, not true or false"),
        # before: any value but "bfloat16" described the queries in float32, silently
        ({"features": {"models": [MODEL], "precision": "bf16"}}, "'features.precision' is 'bf16', not float32 or"),
    ],
)
def test_index_json_fields_of_the_wrong_kind_are_one_line_naming_the_file(tmp_path, fields, message):
    folder = tmp_path / "idx"
    _save(folder, 0, "img")
    full = {"factory": "Flat", "reason": "given", "search_params": "", "measured": MEASURED, "build": BUILD}
    _patch_meta(folder, **{**full, **fields})
    # before: KeyError in `index info`, TypeError in `index search IMAGE` (the index.faiss itself intact)
    with pytest.raises(FaissIndexError, match="index.json: ") as e:
        load_index(folder)
    assert message in str(e.value) and "rebuild it" in str(e.value) and len(str(e.value).splitlines()) == 1
    (tmp_path / "q.jpg").write_bytes(b"")
    for cmd in (["info", str(folder)], ["search", str(folder), str(tmp_path / "q.jpg")]):
        r = CliRunner().invoke(main.cli, ["index", *cmd])
        assert r.exit_code == 1 and r.output.startswith("Error: ") and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_an_index_json_of_every_recorded_field_loads_and_reports(tmp_path):
    folder = tmp_path / "idx"
    _save(folder, 0, "img")
    features = {"models": [MODEL], "layer": "fc7", "scales": [48], "flip": True, "aggregate": "mean", "seed": 3}
    _patch_meta(folder, factory="Flat", reason="given", search_params="", measured=MEASURED, build=BUILD)
    features.update(l2=True, snap=1, fast_decode=None, gpu_decode=False, precision="bfloat16")
    _patch_meta(folder, features=features)
    _, meta = load_index(folder)
    assert meta["measured"] == MEASURED and meta["features"]["seed"] == 3
    r = CliRunner().invoke(main.cli, ["index", "info", str(folder)])
    assert r.exit_code == 0 and "recall@10 0.9000 against exact search on 6 held-out queries" in r.output
