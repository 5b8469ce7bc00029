"""Progress bars when stderr is not a terminal (a log file, CI, `2>log`): a few whole lines, never a
carriage-return redraw per batch; on a terminal the bar still redraws in place; --quiet prints none."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.utils import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_start_and_an_end_line_not_a_redraw_per_update():
    log = io.StringIO()
    bar = progress.progress_bar(40, desc="extract", unit="img", file=log)
    for _ in range(40):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text, repr(text)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("extract:   0% 0/40 img"), lines
    assert lines[-1].startswith("extract: 100% 40/40 img ["), lines


def test_a_log_gets_a_line_per_interval(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # every update is "30 s later"
    bar = progress.progress_bar(5, desc="evaluate", unit="img", leave=False, file=log)
    for _ in range(5):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [ln.split()[2] for ln in lines][:6] == ["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"], lines
    assert lines[-1].startswith("evaluate: 100% 5/5 img"), lines  # leave=False still ends the log with the total


def test_a_terminal_still_gets_the_redrawn_bar():
    tty = _Terminal()
    bar = progress.progress_bar(3, desc="epoch 1/2", unit="step", leave=False, file=tty)
    bar.update(3)
    bar.close()
    assert tty.getvalue().count("\r") >= 2  # drawn and redrawn in place


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY), d / "w.safetensors")
    rng = np.random.default_rng(0)
    (d / "imgs").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "imgs" / f"{i:02d}.png")
    return d


@pytest.mark.parametrize("quiet", [False, True])
def test_extract_into_a_log_prints_a_few_progress_lines(images, tmp_path, quiet):
    argv = ["extract", str(images / "imgs"), "-o", str(tmp_path / "s"), "--weights", str(images / "w.safetensors")]
    argv += ["--scales", "64", "--batch-size", "1", "--workers", "0"] + (["--quiet"] if quiet else [])
    r = CliRunner().invoke(cli, argv)  # stderr is captured: not a terminal
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stderr, repr(r.stderr[:300])  # was one redraw per batch: 40 on a line-less stream
    bars = [ln for ln in r.stderr.splitlines() if ln.startswith("extract:")]
    if quiet:
        assert bars == [], r.stderr
    else:
        assert 1 <= len(bars) <= 3 and bars[-1].startswith("extract: 100% 40/40 img"), r.stderr


def test_train_into_a_log_prints_a_few_progress_lines_and_quiet_none(tmp_path):
    from vggfeat.data.synthetic import generate_synthetic

    data = generate_synthetic(tmp_path / "d", classes=10, per_class=8, seed=0)
    sets = ["optim.epochs=1", "optim.batch_size=4", "optim.per_device_batch=4"]
    argv = ["train", "smoke", "--data-root", str(data), "--set", "checkpoint.log_every=100"]
    for s in sets:
        argv += ["--set", s]
    r = CliRunner().invoke(cli, [*argv, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "\r" not in r.stderr, repr(r.stderr[:300])  # 20 steps: was 20 redraws
    bars = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch 1/1:")]
    assert 1 <= len(bars) <= 3 and bars[-1].startswith("epoch 1/1: 100% 20/20 step"), r.stderr
    q = CliRunner().invoke(cli, [*argv, "--out", str(tmp_path / "run_q"), "--quiet"])
    assert q.exit_code == 0, q.output
    assert not [ln for ln in q.stderr.splitlines() if ln.startswith("epoch 1/1:")], q.stderr
