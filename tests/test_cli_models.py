"""The command line: --help, --version, `vggfeat models`, and lazy heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

import vggfeat
from vggfeat.cli.main import cli


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "models" in result.output and "Simonyan" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and vggfeat.__version__ in result.output


def test_models_table():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["name", "aliases"]
    row = next(line for line in lines if line.startswith("vgg_d "))
    assert row.split()[1:] == ["vgg16", "D", "16", "138,357,544"]
    assert any(line.startswith("vgg_a_lrn") and "A-LRN" in line for line in lines)
    data = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert {r["name"]: r["parameters"] for r in data}["vgg_e"] == 143_667_240


def test_unknown_command_lists_choices():
    result = CliRunner().invoke(cli, ["extrct"])
    assert result.exit_code != 0 and "No such command" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from vggfeat.cli.main import cli; cli.get_command(None, 'models'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "vggfeat", "--version"], capture_output=True, text=True, check=True)
    assert vggfeat.__version__ in out.stdout
