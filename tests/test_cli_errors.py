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
