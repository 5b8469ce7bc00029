"""@list inputs planned by streaming (features.list_plan): the same shards and inputs hash as the in-memory plan,
no path held while planning, one plan per job saved in the store for its parts and reruns, and a list changed
under a saved plan planned again or refused, never read as the old one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY, peak_rss_growth
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.images import find_images, find_input_images, is_image_file, iter_images
from vggfeat.errors import InputError
from vggfeat.features import list_plan
from vggfeat.features import store as fs
from vggfeat.features.list_plan import CACHE_DIR, ListChangedError
from vggfeat.features.shard_plan import plan_shards
from vggfeat.utils.inputs import paths_sha256


def _files(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        (folder / f"img{k:03d}.jpg").write_bytes(b"x")
    return [folder / f"img{k:03d}.jpg" for k in range(n)]


def _in_memory(inputs, shard_size):
    """The plan as it was made before lists were streamed: every path found, then cut into groups."""
    paths = [str(p) for p in find_input_images(inputs)]
    return [paths[i : i + shard_size] for i in range(0, len(paths), shard_size)], paths_sha256(paths)


def _write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return f"@{path}"


@pytest.mark.parametrize("shard_size", [1, 2, 3, 7, 100])
def test_streamed_plan_has_the_in_memory_plans_shards_and_inputs_hash(tmp_path, shard_size):
    files = _files(tmp_path / "imgs", 9)
    rel = [os.path.relpath(f, tmp_path) for f in files]
    a = _write(
        tmp_path / "a.txt",  # comments, blank lines, CRLF, a lone CR, padding, relative and absolute paths
        f"# header\n{rel[0]}\r\n\n  {rel[1]}  \n{files[2]}\r{rel[3]}\n#{rel[4]}\n{rel[4]}",
    )
    b = _write(tmp_path / "b.txt", f"{rel[5]}\n\u2028{rel[6]}\n{files[7]}\n\n{rel[8]}\n{rel[0]}\n")
    groups, sha = _in_memory([a, b], shard_size)
    plan = plan_shards([a, b], shard_size)
    assert all(s.span is not None and not s.paths for s in plan.shards)  # streamed: no path held
    assert [list(s.input_paths()) for s in plan.shards] == groups
    assert plan.n_inputs == sum(map(len, groups)) == 10 and plan.inputs_sha256 == sha
    assert [s.describe()["first"] for s in plan.shards] == [g[0] for g in groups]
    # saved in a store folder and read back: the same plan
    saved = plan_shards([a, b], shard_size, tmp_path / "store")
    again = plan_shards([a, b], shard_size, tmp_path / "store")
    assert [list(s.input_paths()) for s in again.shards] == groups and again.inputs_sha256 == sha
    assert [s.span for s in again.shards] == [s.span for s in saved.shards]


def test_a_list_naming_a_folder_is_planned_in_memory_as_before(tmp_path):
    files = _files(tmp_path / "imgs", 4)
    _files(tmp_path / "more", 3)
    lst = _write(tmp_path / "l.txt", f"{files[0]}\nmore\n{files[1]}\n")
    groups, sha = _in_memory([lst], 2)
    plan = plan_shards([lst], 2, tmp_path / "store")
    assert [list(s.input_paths()) for s in plan.shards] == groups and plan.inputs_sha256 == sha
    assert not (tmp_path / "store").exists()  # nothing saved for it


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_planning_a_list_holds_no_path_its_memory_does_not_grow_with_the_list(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    files = _files(deep, 100)
    growth = {}
    for n in (20_000, 80_000):
        lst = tmp_path / f"list{n}.txt"
        lst.write_text("".join(f"{files[i % 100]}\n" for i in range(n)))
        setup = "import sys\nfrom vggfeat.features.shard_plan import plan_shards"
        code = "p = plan_shards(['@' + sys.argv[1]], 1000)\nprint(p.n_inputs, len(p.shards))"
        growth[n], out = peak_rss_growth(setup, code, [str(lst)])
        assert out.split() == [str(n), str(n // 1000)]
    # before: every path was held (a str and a Path, about 500 bytes each for these ~200-character paths):
    # 60,000 more lines were 30 MB more. Now only one span per shard (60 more) is
    assert growth[80_000] - growth[20_000] < 3_000_000, growth


def test_a_saved_plan_serves_the_other_parts_without_walking_the_list_again(tmp_path, monkeypatch):
    files = _files(tmp_path / "imgs", 10)
    lst = _write(tmp_path / "l.txt", "".join(f"{f}\n" for f in files))
    first = plan_shards([lst], 3, tmp_path / "store")
    saved = list((tmp_path / "store" / CACHE_DIR).glob("*.json"))
    assert len(saved) == 1

    def walked(*a, **k):
        raise AssertionError("the list was planned again")

    monkeypatch.setattr(list_plan, "stream_plan", walked)
    monkeypatch.setattr(list_plan, "listed_kind", walked)
    part = plan_shards([lst], 3, tmp_path / "store")
    assert [s.input_paths() for s in part.shards] == [s.input_paths() for s in first.shards]
    assert part.inputs_sha256 == first.inputs_sha256
    # another shard size is another plan
    monkeypatch.undo()
    assert [s.n_inputs for s in plan_shards([lst], 4, tmp_path / "store").shards] == [4, 4, 2]


def test_a_changed_list_is_planned_again_and_a_damaged_saved_plan_is_ignored(tmp_path):
    files = _files(tmp_path / "imgs", 6)
    path = tmp_path / "l.txt"
    lst = _write(path, "".join(f"{f}\n" for f in files[:4]))
    store = tmp_path / "store"
    assert plan_shards([lst], 2, store).n_inputs == 4
    _write(path, "".join(f"{f}\n" for f in files))  # two more lines
    grown = plan_shards([lst], 2, store)
    assert [list(s.input_paths()) for s in grown.shards] == _in_memory([lst], 2)[0]
    for saved in (store / CACHE_DIR).glob("*.json"):  # damaged in every way a JSON file can be: planned again
        for damage in ("{", "[]", json.dumps({**json.loads(saved.read_text()), "spans": [{"file": -1}]})):
            saved.write_text(damage)
            again = plan_shards([lst], 2, store)
            assert [list(s.input_paths()) for s in again.shards] == _in_memory([lst], 2)[0]


def test_any_byte_of_a_saved_plan_changed_gives_the_true_plan_never_another(tmp_path):
    files = _files(tmp_path / "imgs", 9)
    lst = _write(tmp_path / "l.txt", "# list\n" + "".join(f"{f}\n" for f in files))
    store = tmp_path / "store"
    truth = plan_shards([lst], 2, store)
    want = ([s.input_paths() for s in truth.shards], truth.inputs_sha256, truth.n_inputs)
    (saved,) = (store / CACHE_DIR).glob("*.json")
    good = saved.read_bytes()
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(good), size=300, replace=False):
        damaged = bytearray(good)
        damaged[pos] = (damaged[pos] + int(rng.integers(1, 256))) % 256
        saved.write_bytes(bytes(damaged))
        plan = plan_shards([lst], 2, store)  # read back, or planned again where the damage shows
        assert ([s.input_paths() for s in plan.shards], plan.inputs_sha256, plan.n_inputs) == want, pos


def test_paths_that_differ_from_the_saved_plan_are_refused_naming_the_list_and_line(tmp_path):
    files = _files(tmp_path / "imgs", 4)
    path = tmp_path / "l.txt"
    lst = _write(path, "".join(f"{f}\n" for f in files))
    plan = plan_shards([lst], 2, tmp_path / "store")
    stat = os.stat(path)
    # another list of the same size written under the plan, its mtime set back: the span's hash catches it
    path.write_text("".join(f"{f}\n" for f in [files[0], files[1], files[3], files[2]]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan.shards[0].input_paths() == (str(files[0]), str(files[1]))
    with pytest.raises(ListChangedError, match=r"l\.txt, line 3: the listed paths changed since the plan"):
        plan.shards[1].input_paths()


def test_missing_and_unreadable_lines_are_named_as_before(tmp_path):
    files = _files(tmp_path / "imgs", 2)
    lst = _write(tmp_path / "l.txt", f"{files[0]}\n# x\nnot/there.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"l\.txt, line 3: no such file 'not/there.jpg'"):
        plan_shards([lst], 2, tmp_path / "store")
    assert not (tmp_path / "store").exists()  # no output folder is left behind for a plan that failed
    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "bad.txt").write_bytes(b"ok.jpg\n\xff\n")
    with pytest.raises(InputError, match=r"bad\.txt: not a text file \(byte 7 is not UTF-8\)"):
        plan_shards(["@" + str(tmp_path / "bad.txt")], 2)
    os.mkfifo(tmp_path / "fifo.jpg")
    lst = _write(tmp_path / "f.txt", f"{files[1]}\nfifo.jpg\n")
    with pytest.raises(InputError, match=r"f\.txt, line 2: .*fifo\.jpg is a FIFO"):
        plan_shards([lst], 2)
    with pytest.raises(InputError, match="no input images found"):
        plan_shards([_write(tmp_path / "empty.txt", "# nothing\n\n")], 2)


def _png(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_parts_of_a_listed_corpus_plan_once_and_equal_one_process(tmp_path):
    weights = str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY), tmp_path / "w.safetensors"))
    (tmp_path / "imgs").mkdir()
    paths = [_png(tmp_path / "imgs" / f"{k}.png", k) for k in range(7)]
    lst = _write(tmp_path / "corpus.txt", "".join(f"imgs/{p.name}\n" for p in paths))
    common = [lst, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet", "--shard-size", "2"]
    out = tmp_path / "parts"
    for i in range(3):
        r = CliRunner().invoke(cli, ["extract", *common, "-o", str(out), "--part", f"{i}/3"])
        assert r.exit_code == 0, r.output
    assert len(list((out / CACHE_DIR).glob("*.json"))) == 1  # one plan for the three parts
    r = CliRunner().invoke(cli, ["extract", *common, "-o", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    parts, one = fs.load_store(out), fs.load_store(tmp_path / "one")
    assert parts.paths == one.paths == [str(p) for p in paths]
    np.testing.assert_array_equal(np.asarray(parts.features), np.asarray(one.features))
    # the store's inputs hash is the one a store made before lists were streamed recorded: such a store goes on
    plan = json.loads((out / fs.PLAN_FILE).read_text())
    assert plan["settings"]["inputs_sha256"] == paths_sha256([str(p) for p in paths])
    r = CliRunner().invoke(cli, ["extract", *common, "-o", str(out)])
    assert r.exit_code == 0 and "already complete" in r.output, r.output


def _walked_as_before(folder):
    """The folder search before it streamed: os.walk, every image file collected, then all of them sorted."""
    seen, found = set(), []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        found.extend(p for n in filenames if is_image_file(p := Path(dirpath) / n) and p.is_file())
    return [str(p) for p in sorted(found)]


def test_a_folder_is_walked_in_the_order_of_sorting_all_its_paths(tmp_path):
    root = tmp_path / "photos"
    for name in ["x.jpg", "x/y.jpg", "x/b.PNG", "x-y/z.jpg", "xa.jpg", "a b/c.jpg", "é/ü.jpg", "z/notes.txt"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "x" / "deep" / "er").mkdir(parents=True)
    (root / "x" / "deep" / "er" / "0.jpg").write_bytes(b"x")
    (root / "dir.jpg").mkdir()  # a folder with an image's name: searched, not taken
    (root / "dir.jpg" / "in.jpg").write_bytes(b"x")
    os.symlink(root / "x", root / "linked")  # a symlinked folder: followed
    os.symlink(root, root / "x" / "deep" / "up")  # a link back up the tree: searched once
    os.symlink(root / "gone.jpg", root / "broken.jpg")  # a broken link: not a file
    os.mkfifo(root / "fifo.jpg")  # not a regular file: left out
    walked = list(iter_images([str(root)]))
    assert walked == _walked_as_before(root) and len(walked) == 9  # linked/ sorts first: x/ is not searched again
    assert [str(p) for p in find_images([root, root / "x.jpg"])] == [*walked, str(root / "x.jpg")]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_a_part_of_a_folder_holds_its_own_shards_paths_not_the_folders(tmp_path):
    growth = {}
    for n in (20_000, 80_000):
        for i in range(n):  # in folders of 1,000: a folder's listing is sorted in memory while it is walked
            folder = tmp_path / f"f{n}" / ("d" * 80) / f"{i // 1000:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"img_{i:07d}.jpg").touch()
        setup = "import sys\nfrom vggfeat.features.shard_plan import plan_shards"
        code = (
            "p = plan_shards([sys.argv[1]], 1000, part=(0, 40))\nprint(p.n_inputs, sum(len(s.paths) for s in p.shards))"
        )
        growth[n], out = peak_rss_growth(setup, code, [str(tmp_path / f"f{n}")])
        assert out.split() == [str(n), str(1000 * len(range(0, n // 1000, 40)))]
    # before: every part held every path (a Path and a str, about 600 bytes each here): 60,000 more files were
    # 36 MB more. Now a part holds its own shards' paths (here 1,000 more), one first path per shard and the
    # listing of the folder it is in
    assert growth[80_000] - growth[20_000] < 3_000_000, growth


def test_a_plan_holding_one_parts_paths_serves_that_part_only(tmp_path):
    files = _files(tmp_path / "imgs", 7)
    plan = plan_shards([str(tmp_path / "imgs")], 2, part=(1, 2))
    assert [s.n_inputs for s in plan.shards] == [2, 2, 2, 1] and plan.n_inputs == 7
    assert plan.shards[1].input_paths() == (str(files[2]), str(files[3])) and plan.shards[3].paths == (str(files[6]),)
    assert plan.shards[2].describe() == {"name": "000002", "first": str(files[4]), "inputs": 2}
    with pytest.raises(RuntimeError, match="belongs to another part"):
        plan.shards[0].input_paths()
    assert plan.inputs_sha256 == plan_shards([str(tmp_path / "imgs")], 2).inputs_sha256
