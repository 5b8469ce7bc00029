"""Bad image folders and list files (vggfeat.data.folder, the @list reader of vggfeat.data.images) reach the user
as one `Error:` line naming the path and the fix, exit 1, never a traceback: a val/ folder without class folders
or without images, a --val-labels file that is not text, holds no lines, a line without a label, an unknown class
or a missing image, and an @list that is not text."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.errors import VggfeatError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("folders")
    vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **{**TINY, "num_classes": 2}), d / "w.safetensors")
    rng = np.random.default_rng(0)
    (d / "noclasses" / "val").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(d / "noclasses" / "val" / "loose.png")
    for c in "ab":
        (d / "noimages" / "val" / c).mkdir(parents=True)
        (d / "noimages" / "val" / c / "notes.txt").write_text("not an image")
    (d / "flat" / "val").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(d / "flat" / "val" / "a0.png")
    labels = {
        "nolabel": "a0.png\n",
        "unknown": "a0.png zebra\n",
        "missing": "zz.png 0\n",
        "empty": "# no images listed\n\n",
        "superscript": "a0.png \u00b2\n",  # str.isdigit() is True, int() refuses it
        "longindex": "a0.png " + "1" * 5000 + "\n",  # digits beyond int()'s limit
    }
    for name, text in labels.items():
        (d / f"{name}.txt").write_text(text)
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    return d


def _one_error_line(argv: list[str]) -> str:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), f"a traceback: {r.exception!r}\n{r.output}"
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert r.output.rstrip().splitlines()[-1] == errors[0], r.output  # nothing follows the one line
    return errors[0]


EVALUATE_CASES = {  # case -> (data root, labels file or None, what the line must say)
    "val without class folders": ("noclasses", None, ["noclasses/val: no class folders", "<class>/<image>"]),
    "class folders without images": ("noimages", None, ["noimages/val: no images", ".jpg", "<class>/"]),
    "labels line without a label": ("flat", "nolabel", ["nolabel.txt, line 1: expected 'file label'", "'a0.png'"]),
    "labels with an unknown class": ("flat", "unknown", ["unknown.txt, line 1: unknown class 'zebra'", "0..1"]),
    "labels with a superscript digit": ("flat", "superscript", ["superscript.txt, line 1: unknown class '\u00b2'"]),
    "labels with a huge index": ("flat", "longindex", ["longindex.txt, line 1: unknown class '1111", "0..1"]),
    "labels naming a missing image": ("flat", "missing", ["missing.txt, line 1: no such image", "flat/val/zz.png"]),
    "labels file with no lines": ("flat", "empty", ["empty.txt: no 'file label' lines"]),
    "labels file not text": ("flat", "binary", ["binary.txt, line 1: byte 0xff is not UTF-8", "labels file"]),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_bad_folder_or_labels_is_one_line(data, case):
    root, labels, says = EVALUATE_CASES[case]
    argv = ["evaluate", "--weights", str(data / "w.safetensors"), "--data-root", str(data / root), "--scales", "64"]
    argv += ["--quiet", "--device", "cpu"] + (["--val-labels", str(data / f"{labels}.txt")] if labels else [])
    line = _one_error_line(argv)
    assert all(s in line for s in says), line


@pytest.mark.parametrize("command", ["extract", "index search"])
def test_image_list_not_text_is_one_line(data, tmp_path, command):
    if command == "extract":
        argv = [
            "extract",
            f"@{data / 'binary.txt'}",
            "-o",
            str(tmp_path / "s"),
            "--weights",
            str(data / "w.safetensors"),
        ]
    else:  # an index to search: a store of the one image
        store, index = tmp_path / "s", tmp_path / "i"
        built = CliRunner().invoke(
            cli,
            ["extract", str(data / "flat" / "val"), "-o", str(store), "--weights", str(data / "w.safetensors")]
            + ["--scales", "64", "--workers", "0", "--quiet"],
        )
        assert built.exit_code == 0, built.output
        assert CliRunner().invoke(cli, ["index", "build", str(store), "-o", str(index)]).exit_code == 0
        argv = ["index", "search", str(index), f"@{data / 'binary.txt'}"]
    line = _one_error_line(argv)
    assert f"{data / 'binary.txt'}: not a text file" in line and "one image path per line" in line, line


def test_folder_errors_are_vggfeat_errors_and_still_value_errors(data):
    from vggfeat.data.folder import scan_flat, scan_folder

    for call in (
        lambda: scan_folder(data / "noimages" / "val"),
        lambda: scan_flat(data / "flat" / "val", data / "unknown.txt", ("a", "b")),
        lambda: scan_flat(data / "flat" / "val", data / "missing.txt", ("a", "b")),
    ):
        with pytest.raises(VggfeatError) as e:
            call()
        assert isinstance(e.value, ValueError)  # callers that caught ValueError keep working
