"""The CLI turns a VggfeatError into one `Error:` line with exit 1; bugs keep their traceback; usage errors exit 2."""

import click
import pytest
from click.testing import CliRunner

from vggfeat.cli import main
from vggfeat.errors import VggfeatError


@pytest.fixture
def boom(monkeypatch):
    @click.command()
    @click.option("--bug", is_flag=True)
    def boom(bug):
        if bug:
            raise KeyError("real bug")
        raise VggfeatError("bad input: x.jpg")

    monkeypatch.setattr(main, "_test_boom", boom, raising=False)
    monkeypatch.setitem(main.COMMANDS, "boom", "vggfeat.cli.main:_test_boom")
    return boom


def test_vggfeat_error_is_one_line_exit_1(boom):
    r = CliRunner().invoke(main.cli, ["boom"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: bad input: x.jpg"


def test_bug_keeps_traceback(boom):
    r = CliRunner().invoke(main.cli, ["boom", "--bug"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)


def test_usage_error_exits_2(boom):
    r = CliRunner().invoke(main.cli, ["boom", "--nope"])
    assert r.exit_code == 2


def _tiny_images(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (40, 40), (120, 30, 200)).save(d / "a.jpg")
    return d


def test_extract_bug_keeps_traceback(tmp_path, monkeypatch):
    # a ValueError from library code is a bug, not a user mistake: it must not be hidden as a one-liner
    import vggfeat.features.extract as fx

    def broken(*a, **k):
        raise ValueError("bug")

    monkeypatch.setattr(fx, "extract_part", broken)
    r = CliRunner().invoke(main.cli, ["extract", str(_tiny_images(tmp_path)), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ValueError) and str(r.exception) == "bug"
    assert "Error: bug" not in r.output


def test_extract_missing_weights_is_one_line(tmp_path):
    r = CliRunner().invoke(
        main.cli,
        [
            "extract",
            str(_tiny_images(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--weights",
            str(tmp_path / "nope.safetensors"),
        ],
    )
    assert r.exit_code == 1, r.output
    assert not isinstance(r.exception, ValueError) or isinstance(r.exception, VggfeatError)
    assert r.stderr.strip().startswith("Error:") and "nope.safetensors" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_non_finite_loss_is_a_vggfeat_error():
    from vggfeat.train.loop import NonFiniteLoss

    assert issubclass(NonFiniteLoss, VggfeatError)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda"])
def test_bad_device_is_one_error_line(tmp_path, device):
    """--device tpu (unknown) or cuda on a machine without one was a ValueError traceback."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 40), (120, 30, 200)).save(tmp_path / "imgs" / "a.png")
    args = ["extract", str(tmp_path / "imgs"), "-o", str(tmp_path / "out"), "--weights", "random", "--device", device]
    r = CliRunner().invoke(main.cli, args)
    assert r.exit_code == (1 if device == "cuda" else 2), r.output  # a misspelt device: a usage error as parsed
    last = r.stderr.strip().splitlines()[-1]  # a note about --weights random may come first
    assert last.startswith("Error: ") and f"{device!r}" in last
    assert "Traceback" not in r.stderr
