"""A zoo of bad invocations across every command: each ends in exit code 1 with exactly one
`Error:` line (2 for usage errors, as click does), and never in a Python traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.features.store import load_store


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Files the bad invocations point at: tiny weights, images (good and broken), a store, an index."""
    d = tmp_path_factory.mktemp("zoo")
    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), d / "w.safetensors")
    (d / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "truncated.safetensors").write_bytes(weights.read_bytes()[:1000])
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (d / "bad").mkdir()
    (d / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (d / "bad" / "empty.png").write_bytes(b"")
    store = d / "store"
    run = CliRunner().invoke(
        cli, ["extract", str(imgs), "-o", str(store), "--weights", str(weights), "--scales", "64", "--workers", "0"]
    )
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(cli, ["index", "build", str(store), "-o", str(d / "index")])
    assert run.exit_code == 0, run.output
    (d / "notjson.json").write_text("{oops")
    (d / "empty_dir").mkdir()
    from vggfeat.recipe_files import find_recipe

    (d / "recipe_lr0.yaml").write_text(find_recipe("smoke").read_text().replace("lr: 0.005", "lr: 0"))
    (d / "folder1").mkdir()
    (d / "folder1" / "only_class").mkdir()
    for i in range(4):
        Image.open(imgs / "0.png").save(d / "folder1" / "only_class" / f"{i}.png")
    (d / "folder2").mkdir()
    for c in range(2):
        (d / "folder2" / f"class{c}").mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                d / "folder2" / f"class{c}" / f"{i}.png"
            )
    run = CliRunner().invoke(
        cli,
        ["extract", str(d / "folder2"), "-o", str(d / "store2"), "--weights", str(weights), "--scales", "64"]
        + ["--workers", "0", "--quiet"],
    )
    assert run.exit_code == 0, run.output
    _bad_weights(d, weights)
    _strip_datasets(d, imgs)
    return d


class _Payload:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_weights(d, weights) -> None:
    """Weight files with every problem a user meets: not a VGG, batch-norm VGG, no fc6, a malicious pickle,
    metadata options that are absurd, unknown or not JSON."""
    import torch

    net = vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT)
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc6")}, d / "nofc6.pth")
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.1.running_mean": torch.zeros(8)}, d / "bn.pth")
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.running_mean": torch.zeros(8)}
    torch.save(
        {**resnet, "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3), "fc.weight": torch.zeros(10, 8)}, d / "resnet.pth"
    )
    torch.save({"x": _Payload(str(d / "PWNED"))}, d / "evil.pth")
    for name, options in [
        ("huge", json.dumps({"num_classes": 10_000_000_000})),
        ("unknown", json.dumps({"num_classes": 10, "frobnicate": 3})),
        ("notjson", "{not json"),
    ]:
        vggfeat.models.weights.save_weights(net, d / f"{name}.safetensors", metadata={"options": options})
    pre = {"channel_order": "RGB", "value_range": 255.0, "mean": [123.68, 116.779, 103.939], "std": [1.0, 1.0, 1.0]}
    for name, value in [
        ("std0", {**pre, "std": [0, 0, 0]}),
        ("preset", "frobnicate"),
        ("mean2", {**pre, "mean": [1, 2]}),
    ]:
        vggfeat.models.weights.save_weights(
            net, d / f"pre_{name}.safetensors", metadata={"preprocessing": json.dumps(value)}
        )


def _strip_datasets(d, imgs) -> None:
    """A 2000 x 1 PNG (512 x 1,024,000 at Q = 512) beside ordinary images: in a folder, a val/ tree and a
    two-class folder benchmark."""
    strip = Image.fromarray(np.full((1, 2000, 3), 128, np.uint8))
    (d / "strip").mkdir()
    strip.save(d / "strip" / "strip.png")
    Image.open(imgs / "0.png").save(d / "strip" / "ok.png")
    for c in range(2):
        (d / "evalroot" / "val" / f"c{c}").mkdir(parents=True)
    strip.save(d / "evalroot" / "val" / "c0" / "strip.png")
    Image.open(imgs / "0.png").save(d / "evalroot" / "val" / "c1" / "ok.png")
    (d / "classes.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    for c in range(2):
        (d / "stripfolder" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.open(imgs / f"{i % 2}.png").save(d / "stripfolder" / f"class{c}" / f"{i}.png")
    strip.save(d / "stripfolder" / "class0" / "strip.png")


# (name, argv with {d} for the zoo folder, expected exit code); 2 is a click usage error
CASES = [
    ("extract: unknown layer", "extract {d}/imgs -o {d}/o1 --weights {d}/w.safetensors --layer fc9", 1),
    ("extract: missing weights", "extract {d}/imgs -o {d}/o2 --weights {d}/nope.safetensors", 1),
    ("extract: random-bytes weights", "extract {d}/imgs -o {d}/o3 --weights {d}/random.safetensors", 1),
    ("extract: truncated weights", "extract {d}/imgs -o {d}/o4 --weights {d}/truncated.safetensors", 1),
    ("extract: unknown model", "extract {d}/imgs -o {d}/o5 --model vgg_z", 1),
    ("extract: no images", "extract {d}/empty_dir -o {d}/o6 --weights {d}/w.safetensors", 1),
    ("extract: missing input", "extract {d}/nothere -o {d}/o7 --weights {d}/w.safetensors", 1),
    ("extract: scales abc", "extract {d}/imgs -o {d}/o8 --scales abc", 2),
    ("extract: bad dtype", "extract {d}/imgs -o {d}/o9 --dtype int8", 2),
    ("extract: -o is a file", "extract {d}/imgs -o {d}/notjson.json --weights {d}/w.safetensors", 2),
    ("extract: other settings", "extract {d}/imgs -o {d}/store --weights {d}/w.safetensors --scales 72", 1),
    ("extract: scale below the net", "extract {d}/imgs -o {d}/o11 --weights {d}/w.safetensors --scales 48", 1),
    ("extract: strict on broken", "extract {d}/bad -o {d}/o10 --weights {d}/w.safetensors --strict --workers 0", 1),
    ("index build: not a store", "index build {d}/empty_dir -o {d}/i1", 1),
    ("index build: missing store", "index build {d}/nothere -o {d}/i2", 2),
    ("index build: into a photo folder", "index build {d}/store -o {d}/imgs", 1),
    ("index search: not an index", "index search {d}/empty_dir {d}/imgs", 1),
    ("index search: all queries broken", "index search {d}/index {d}/bad", 1),
    ("index search: no queries found", "index search {d}/index {d}/empty_dir", 1),
    ("index search: k 0", "index search {d}/index {d}/imgs -k 0", 2),
    ("linear-probe: missing root", "linear-probe voc2007 --root {d}/nothere -o {d}/p1", 1),
    ("linear-probe: folder of one class", "linear-probe folder --root {d}/folder1 -o {d}/p2 --features {d}/store", 1),
    ("linear-probe: features not a store", "linear-probe folder --root {d}/imgs -o {d}/p3 --features {d}/empty_dir", 1),
    ("linear-probe: bad Cs", "linear-probe folder --root {d}/imgs --Cs abc", 2),
    ("knn-probe: folder of one class", "knn-probe folder --root {d}/folder1 -o {d}/p9 --weights {d}/w.safetensors", 1),
    (
        "knn-probe: --layer beside --features",
        "knn-probe folder --root {d}/folder2 --features {d}/store2 --layer fc6",
        1,
    ),
    ("knn-probe: missing root", "knn-probe caltech101 --root {d}/nothere -o {d}/p4", 1),
    ("train: unknown recipe", "train no_such_recipe --out {d}/t1", 1),
    ("train: zero lr", "train {d}/recipe_lr0.yaml --out {d}/t2", 2),  # train shows recipe errors as usage errors
    ("evaluate: random-bytes weights", "evaluate --data-root {d}/folder1 --weights {d}/random.safetensors", 1),
    ("evaluate: scales abc", "evaluate --data-root {d}/folder1 --weights {d}/w.safetensors --scales abc", 2),
    ("mean-rgb: missing folder", "mean-rgb {d}/nothere", 2),
    ("evaluate: scale below the crop", "evaluate --data-root {d}/folder1 --weights {d}/w.safetensors --scales 16", 2),
    ("index build: unknown type", "index build {d}/store -o {d}/i3 --type bogus", 2),
    ("knn-probe: k 0", "knn-probe folder --root {d}/folder2 --features {d}/store2 -o {d}/p5 -k 0", 2),
    ("linear-probe: store of other images", "linear-probe folder --root {d}/folder2 -o {d}/p6 --features {d}/store", 1),
    ("weights info: random bytes", "weights info {d}/random.safetensors", 1),
    ("weights info: truncated", "weights info {d}/truncated.safetensors", 1),
    ("weights convert: random bytes", "weights convert {d}/random.safetensors {d}/c1.safetensors", 1),
    ("weights convert: OUT exists", "weights convert {d}/w.safetensors {d}/truncated.safetensors", 1),
    ("mean-rgb: no train folder", "mean-rgb {d}/empty_dir", 1),
    ("reproduce: unknown table", "reproduce table13 --root {d}", 2),
    ("reproduce: missing root", "reproduce table11 --root {d}/nothere --net-d random --net-e random", 1),
    ("evaluate: truncated weights", "evaluate --data-root {d}/folder1 --weights {d}/truncated.safetensors", 1),
    ("evaluate: batch-norm weights", "evaluate --data-root {d}/folder1 --weights {d}/bn.pth", 1),
    ("evaluate: malicious pickle", "evaluate --data-root {d}/folder1 --weights {d}/evil.pth", 1),
    ("evaluate: weights without fc6", "evaluate --data-root {d}/folder1 --weights {d}/nofc6.pth", 1),
    ("evaluate: non-VGG weights", "evaluate --data-root {d}/folder1 --weights {d}/resnet.pth", 1),
    ("extract: malicious pickle", "extract {d}/imgs -o {d}/o12 --weights {d}/evil.pth", 1),
    ("extract: non-VGG weights", "extract {d}/imgs -o {d}/o13 --weights {d}/resnet.pth", 1),
    ("extract: weights without fc6", "extract {d}/imgs -o {d}/o14 --weights {d}/nofc6.pth", 1),
    ("extract: num_classes 1e10 in metadata", "extract {d}/imgs -o {d}/o15 --weights {d}/huge.safetensors", 1),
    ("extract: unknown option in metadata", "extract {d}/imgs -o {d}/o16 --weights {d}/unknown.safetensors", 1),
    ("extract: options not JSON", "extract {d}/imgs -o {d}/o17 --weights {d}/notjson.safetensors", 1),
    ("extract: preprocessing std 0", "extract {d}/imgs -o {d}/o18 --weights {d}/pre_std0.safetensors", 1),
    ("extract: unknown preprocessing", "extract {d}/imgs -o {d}/o19 --weights {d}/pre_preset.safetensors", 1),
    ("weights info: preprocessing with 2 means", "weights info {d}/pre_mean2.safetensors", 1),
    (
        "extract: --model other than the weights",
        "extract {d}/imgs -o {d}/o18 --model vgg_d --weights {d}/w.safetensors",
        1,
    ),
    ("weights info: malicious pickle", "weights info {d}/evil.pth", 1),
    ("weights info: non-VGG", "weights info {d}/resnet.pth", 1),
    (
        "evaluate: 2000x1 image at Q=512",
        "evaluate --data-root {d}/evalroot --classes {d}/classes.txt --weights {d}/w.safetensors --scales 512",
        1,
    ),
    (
        "linear-probe: 2000x1 image at Q=512",
        "linear-probe folder --root {d}/stripfolder -o {d}/p7 --weights {d}/w.safetensors --scales 64,512"
        " --splits 1 --Cs 1 --workers 0",
        1,
    ),
    (
        "knn-probe: 2000x1 image at Q=512",
        "knn-probe folder --root {d}/stripfolder -o {d}/p8 --weights {d}/w.safetensors --scales 64,512"
        " --splits 1 --workers 0",
        1,
    ),
    ("unknown command", "frobnicate", 2),
    ("unknown option", "models --frobnicate", 2),
]


@pytest.mark.parametrize("argv, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_error_line(zoo, argv, code):
    r = CliRunner().invoke(cli, argv.format(d=zoo).split())
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), f"a traceback: {r.exception!r}\n{r.output}"
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert r.output.rstrip().splitlines()[-1] == errors[0], r.output  # one line: nothing follows it
    if code == 1:  # a VggfeatError's line says what is wrong, and often where
        assert len(errors[0]) > 20
    assert not (zoo / "PWNED").exists()  # no weight file ran code


MESSAGES = {  # what the one line says, where the case is about what it names
    "knn-probe: folder of one class": "need at least 2 classes",
    "knn-probe: --layer beside --features": "--layer fc6 but the store holds fc7",
    "evaluate: batch-norm weights": "batch-norm VGG",
    "evaluate: non-VGG weights": "not a VGG",
    "extract: non-VGG weights": "not a VGG",
    "weights info: non-VGG": "not a VGG",
    "evaluate: weights without fc6": "fc6",
    "extract: weights without fc6": "fc6",
    "extract: --model other than the weights": "do not fit VGG config D with 10 classes - missing keys: conv1_2.bias",
    "extract: num_classes 1e10 in metadata": "num_classes=10000000000",
    "extract: unknown option in metadata": "unknown option 'frobnicate'",
    "extract: options not JSON": "not valid JSON",
    "extract: preprocessing std 0": "pre_std0.safetensors: metadata 'preprocessing' is not usable (std must",
    "extract: unknown preprocessing": "unknown preprocessing preset 'frobnicate'; valid: paper, caffe",
    "weights info: preprocessing with 2 means": "pre_mean2.safetensors: metadata 'preprocessing' is not usable (mean",
    "evaluate: malicious pickle": "never unpickled",
    "extract: malicious pickle": "never unpickled",
    "evaluate: 2000x1 image at Q=512": "strip.png: too large after rescaling",
    "linear-probe: 2000x1 image at Q=512": "too large after rescaling (2000x1 at Q = 512 would be 512x1,024,000",
    "knn-probe: 2000x1 image at Q=512": "; replace or remove that image (or choose other --scales) and rerun",
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_the_one_line_names_the_problem(zoo, name):
    argv = dict((c[0], c[1]) for c in CASES)[name]
    r = CliRunner().invoke(cli, argv.format(d=zoo).split())
    assert r.exit_code == 1 and MESSAGES[name] in r.output.rstrip().splitlines()[-1], r.output


def test_extract_skips_an_image_enormous_after_rescaling_with_its_reason(zoo, tmp_path):
    argv = f"extract {zoo}/strip -o {tmp_path}/s --weights {zoo}/w.safetensors --scales 64,512 --workers 0 --quiet"
    r = CliRunner().invoke(cli, argv.split())
    assert r.exit_code == 0, r.output
    assert "strip.png: too large after rescaling (2000x1 at Q = 512 would be 512x1,024,000" in r.output
    store = load_store(tmp_path / "s")
    assert [os.path.basename(p) for p in store.paths] == ["ok.png"]
    assert "too large after rescaling" in store.skipped[0]["reason"]


def test_index_search_works_from_any_folder(zoo, tmp_path, monkeypatch):
    """The store and index record their weights by absolute path: a search run elsewhere finds them."""
    monkeypatch.chdir(zoo)
    rel = CliRunner().invoke(
        cli,
        ["extract", "imgs", "-o", "store_rel", "--weights", "w.safetensors"]
        + ["--scales", "64", "--workers", "0", "--quiet"],
    )
    assert rel.exit_code == 0, rel.output
    assert CliRunner().invoke(cli, ["index", "build", "store_rel", "-o", "index_rel"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["index", "search", str(zoo / "index_rel"), str(zoo / "imgs" / "1.png"), "-k", "1"])
    assert r.exit_code == 0, r.output
    assert "1.0000" in r.output and "1.png" in r.output
    # the result paths open from here too: relative paths of the store were recorded with the folder they are in
    hits = [line.split()[-1] for line in r.output.splitlines() if "1.0000" in line]
    assert hits and all(Path(h).is_absolute() and Path(h).is_file() for h in hits), r.output
    assert load_store(zoo / "store_rel").manifest["cwd"] == str(zoo)


def test_zoo_left_the_good_store_intact(zoo):
    m = json.loads((zoo / "store" / "manifest.json").read_text())
    assert m["scales"] == [64] and m["rows"] == 2 and len(load_store(zoo / "store")) == 2


DISK_CASES = {
    "extract": "extract {d}/imgs -o {t}/out --weights {d}/w.safetensors --scales 64 --workers 0 --quiet",
    "index build": "index build {d}/store -o {t}/out",
    "linear-probe": "linear-probe folder --root {d}/folder2 --features {d}/store2 -o {t}/out --splits 1 --Cs 1",
    "knn-probe": "knn-probe folder --root {d}/folder2 --features {d}/store2 -o {t}/out --splits 1",
}


@pytest.mark.parametrize("code, text", [("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")])
@pytest.mark.parametrize("command", list(DISK_CASES))
def test_disk_full_or_read_only_is_one_line_and_a_rerun_finishes(zoo, tmp_path, monkeypatch, command, code, text):
    import errno

    from vggfeat.utils import files

    argv = DISK_CASES[command].format(d=zoo, t=tmp_path).split()

    def fail(fd):
        raise OSError(getattr(errno, code), text)

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", fail)  # every atomic write of results goes through fsync
        r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), repr(r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], r.output
    assert f"{tmp_path}/out" in errors[0], r.output  # names where it could not write
    assert not [p for p in tmp_path.rglob("*.tmp-*")]  # no half-written temporaries left behind
    r = CliRunner().invoke(cli, argv)  # space freed, disk writable again: the same command finishes
    assert r.exit_code == 0, r.output
    if command == "extract":  # ... with what an uninterrupted run writes (the zoo's store: same images, settings)
        assert np.array_equal(
            np.asarray(load_store(tmp_path / "out").features), np.asarray(load_store(zoo / "store").features)
        )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a 0555 folder")
@pytest.mark.parametrize("command", list(DISK_CASES))
def test_read_only_output_folder_is_one_line(zoo, tmp_path, command):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        r = CliRunner().invoke(cli, DISK_CASES[command].format(d=zoo, t=parent).split())
    finally:
        parent.chmod(0o755)
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), repr(r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "ermission denied" in errors[0], r.output


def test_results_get_the_permissions_a_plain_write_would(zoo, tmp_path):
    """Under umask 027 every file extract, index build, weights convert and a probe write is 0640 (atomic
    writes through a temporary file used to leave 0600, unreadable by a team's other users)."""
    commands = [
        f"extract {zoo}/imgs -o {tmp_path}/s --weights {zoo}/w.safetensors --scales 64 --workers 0 --quiet",
        f"index build {tmp_path}/s -o {tmp_path}/i",
        f"weights convert {zoo}/w.safetensors {tmp_path}/c.safetensors",
        f"knn-probe folder --root {zoo}/folder2 --features {zoo}/store2 -o {tmp_path}/p --splits 1",
    ]
    old = os.umask(0o027)
    try:
        for argv in commands:
            r = CliRunner().invoke(cli, argv.split())
            assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert {
        "s/emb/000000.npy",
        "s/meta/000000.parquet",
        "s/manifest.json",
        "i/index.faiss",
        "c.safetensors",
        "p/knn-probe.json",
    } <= set(modes)
    assert {k: v for k, v in modes.items() if v != 0o640 and not k.endswith(".lock")} == {}, modes
