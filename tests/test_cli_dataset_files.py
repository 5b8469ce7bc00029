"""Files of a dataset root that are not what they claim, through the CLI: a FIFO where a list or an annotation
should be (read in bounded time: refused, never waited on), numbers that overflow, bytes that are not UTF-8,
person boxes outside the decoded image, and non-UTF-8 file names (which work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.features.store import load_store

FAST = ["--scales", "64", "--workers", "0", "--quiet"]
LATIN1 = sys.platform != "darwin"  # macOS file systems refuse names that are not UTF-8


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, init="glorot", **TINY), path))


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def one_error_line(text: str) -> str:
    assert text.startswith("Error: ") and len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    return text


def _action(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    make_voc2012_action(root, n_train=6, n_val=4, seed=1, size=(96, 72))
    return root, root / "VOCdevkit" / "VOC2012"


def _first_person(voc: Path) -> tuple[str, int]:
    """(image id, object index) of the first line of jumping_train.txt."""
    image_id, obj, _ = (voc / "ImageSets" / "Action" / "jumping_train.txt").read_text().split("\n")[0].split()
    return image_id, int(obj)


def _set_box(xml: Path, obj: int, box: tuple, size: tuple[int, int] | None) -> None:
    import xml.etree.ElementTree as ET

    tree = ET.parse(xml)
    root = tree.getroot()
    node = list(root.iter("object"))[obj - 1].find("bndbox")
    for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
        node.find(tag).text = str(v)
    if size is None:
        root.remove(root.find("size"))
    else:
        root.find("size").find("width").text, root.find("size").find("height").text = map(str, size)
    tree.write(xml)


def _fifo_case(tmp_path: Path, what: str, weights: str) -> tuple[list[str], Path]:
    """(command line, the dataset file to turn into a FIFO) of one case; only its own dataset is written."""
    probe = ["linear-probe", "--weights", weights, "--Cs", "1", "--quiet", "-o", str(tmp_path / "out")]
    if what in ("annotation", "action list", "reproduce table12"):
        root, voc = _action(tmp_path)
        image_id, _ = _first_person(voc)
        target = voc / "Annotations" / f"{image_id}.xml"
        if what == "action list":
            target = voc / "ImageSets" / "Action" / "reading_val.txt"
        if what == "reproduce table12":
            nets = ["--net-d", weights, "--net-e", weights, "--scales", "64", "--quiet"]
            return ["reproduce", "table12", "--root", str(root), *nets, "-o", str(tmp_path / "t")], target
        return [*probe, "voc2012-action", "--root", str(root)], target
    if what.startswith("VOC"):
        voc = make_voc2007(tmp_path / "v", n_trainval=4, n_test=4, seed=0)
        target = voc / "ImageSets" / "Main" / ("test.txt" if what == "VOC list" else "cat_test.txt")
        return [*probe, "voc2007", "--root", str(tmp_path / "v")], target
    _classes(tmp_path / "f", {"a": [f"{k}.jpg" for k in range(4)], "b": [f"{k}.jpg" for k in range(4)]})
    splits = tmp_path / "out" / "splits"
    splits.mkdir(parents=True)
    (splits / "folder_split0_train.txt").write_text("a/0.jpg 0\nb/0.jpg 1\n")
    return [*probe, "folder", "--root", str(tmp_path / "f"), "--splits", "1"], splits / "folder_split0_test.txt"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize(
    "what", ["annotation", "action list", "reproduce table12", "VOC list", "VOC class list", "split file"]
)
def test_a_fifo_in_a_dataset_is_refused_not_waited_on(tmp_path, weights, what):
    args, target = _fifo_case(tmp_path, what, weights)
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    env = {**os.environ, "PYTHONPATH": str(Path(vggfeat.__file__).parent.parent)}
    try:  # a reader that opens the FIFO blocks until a writer comes: the timeout turns that hang into a failure
        cmd = [sys.executable, "-m", "vggfeat", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} hung reading the FIFO {target}")
    assert done.returncode == 1, done.stderr
    err = one_error_line(done.stderr)
    assert str(target) in err and "not a regular file" in err


@pytest.mark.parametrize("value", ["inf", "1e400", "-inf"])
def test_an_annotation_number_that_overflows_is_one_error_line(tmp_path, weights, value):
    root, voc = _action(tmp_path)
    image_id, obj = _first_person(voc)
    xml = voc / "Annotations" / f"{image_id}.xml"
    _set_box(xml, obj, (1, 1, value, 20), (96, 72))
    err = one_error_line(invoke("linear-probe", "voc2012-action", "--root", root, "--weights", weights, code=1))
    assert str(xml) in err and "<xmax>" in err and "finite" in err


def test_a_latin1_byte_in_an_action_list_names_the_file_and_line(tmp_path, weights):
    root, voc = _action(tmp_path)
    f = voc / "ImageSets" / "Action" / "running_train.txt"
    lines = f.read_bytes().split(b"\n")
    lines[2] = lines[2] + b" caf\xe9"
    f.write_bytes(b"\n".join(lines))
    err = one_error_line(invoke("linear-probe", "voc2012-action", "--root", root, "--weights", weights, code=1))
    assert f"{f}, line 3" in err and "UTF-8" in err


@pytest.mark.parametrize("size", [None, (500, 400)], ids=["no size", "size disagrees with the JPEG"])
def test_a_person_box_outside_the_decoded_image_is_refused(tmp_path, weights, size):
    root, voc = _action(tmp_path)
    image_id, obj = _first_person(voc)
    xml = voc / "Annotations" / f"{image_id}.xml"
    _set_box(xml, obj, (120, 10, 300, 60), size)  # the JPEG is 96 x 72: the box starts right of it
    out = tmp_path / "o"
    err = one_error_line(
        invoke("linear-probe", "voc2012-action", "--root", root, "-o", out, "--weights", weights, *FAST, code=1)
    )
    assert f"{image_id}.xml" in err and f"object {obj}" in err and "96x72" in err and "(120, 10, 300, 60)" in err
    assert not list(out.glob("boxes/crops/*/*.png")) or all(
        Image.open(p).size != (1, 1) for p in out.glob("boxes/crops/*/*.png")
    )
    assert not (out / "linear-probe.json").exists()


def _classes(root: Path, names: dict[str, list[str]]) -> Path:
    rng = np.random.default_rng(0)
    for cls, files in names.items():
        (root / cls).mkdir(parents=True)
        for name in files:
            img = Image.fromarray(rng.integers(0, 255, (64, 72, 3), dtype=np.uint8))
            img.save(root / cls / name, format="JPEG")
    return root


@pytest.mark.skipif(not LATIN1, reason="the file system refuses names that are not UTF-8")
@pytest.mark.parametrize("command", ["linear-probe", "knn-probe"])
def test_caltech_file_and_class_names_that_are_not_utf8_work(tmp_path, weights, command):
    bee = os.fsdecode(b"b\xe9e")
    cal = _classes(
        tmp_path / "data" / "101_ObjectCategories",
        {
            "ant": [os.fsdecode(b"caf\xe9.jpg"), *(f"{k}.jpg" for k in range(4))],
            bee: [f"{k}.jpg" for k in range(5)],
            "cat": [f"{k}.jpg" for k in range(5)],
        },
    )
    out = tmp_path / "o"
    args = [command, "caltech101", "--root", cal.parent, "-o", out, "--weights", weights, *FAST, "--splits", "1"]
    text = invoke(*args)
    report = json.loads((out / f"{command}.json").read_text())
    assert [r["class"] for r in report["per_class"]] == ["ant", bee, "cat"]  # recorded as the file system has it
    assert all(r["value"] is not None for r in report["per_class"])
    md = (out / f"{command}.md").read_bytes().decode("utf-8")  # valid UTF-8, the name shown with its byte escaped
    assert "| b\\xe9e |" in md and "b\\xe9e" in text
    split = (out / "splits" / "caltech101_split0_train.txt").read_text() + (
        out / "splits" / "caltech101_split0_test.txt"
    ).read_text()
    assert '["ant/caf\\udce9.jpg", 0]' in split
    invoke(*args)  # a rerun reads the split files and the cached store back
    assert json.loads((out / f"{command}.json").read_text())["headline"] == report["headline"]


@pytest.mark.skipif(not LATIN1, reason="the file system refuses names that are not UTF-8")
def test_extract_of_a_folder_with_a_non_utf8_file_name_works_and_resumes(tmp_path, weights):
    name = os.fsdecode(b"caf\xe9.jpg")
    data = _classes(tmp_path / "data", {"a": [name, "b.jpg"]})
    store = tmp_path / "store"
    invoke("extract", data, "-o", store, "--weights", weights, *FAST)
    s = load_store(store)
    assert sorted(os.path.basename(p) for p in s.paths) == sorted([name, "b.jpg"])
    assert np.isfinite(np.asarray(s.features)).all()
    again = invoke("extract", data, "-o", store, "--weights", weights, *FAST)
    assert "complete" in again or "nothing to do" in again.lower(), again


def test_a_clipped_crop_left_by_an_older_version_is_not_reused(tmp_path, weights):
    import hashlib

    root, voc = _action(tmp_path)
    image_id, obj = _first_person(voc)
    _set_box(voc / "Annotations" / f"{image_id}.xml", obj, (120, 10, 300, 60), None)
    out = tmp_path / "o"
    source = str(voc.resolve())  # the crops' folder is keyed by the VOC folder of the images
    crops = out / "boxes" / "crops" / hashlib.sha256(source.encode()).hexdigest()[:12]
    crops.mkdir(parents=True)
    Image.new("RGB", (1, 1)).save(crops / f"{image_id}_{obj}_120_10_300_60.png")  # what the clipping cut
    err = one_error_line(
        invoke("linear-probe", "voc2012-action", "--root", root, "-o", out, "--weights", weights, *FAST, code=1)
    )
    assert f"object {obj}'s box (120, 10, 300, 60)" in err and "96x72" in err
    assert [p.name for p in crops.iterdir()] == [f"{image_id}_{obj}_120_10_300_60.png"]  # the stale crop was seen


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_in_a_class_folder_is_refused(tmp_path, weights):
    data = _classes(tmp_path / "data", {"a": [f"{k}.jpg" for k in range(3)], "b": [f"{k}.jpg" for k in range(3)]})
    os.mkfifo(data / "b" / "pipe.jpg")
    args = ["linear-probe", "folder", "--root", data, "-o", tmp_path / "o", "--weights", weights, *FAST]
    err = one_error_line(invoke(*args, code=1))
    assert f"{data / 'b' / 'pipe.jpg'} is a FIFO, not a regular file" in err
