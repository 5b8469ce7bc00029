"""Rules about the source text itself: the tiny test net is declared once, in tests/helpers.py, and other test
modules take it from there (with overrides where they need another size) instead of spelling it out again; and
no comment or docstring cites an issue number, which means nothing to a reader of the code (the commit message is
the place for it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import TINY

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# the word issue (or issues) then a number, '#' allowed between: an issue tracker's number. The examples below
# are built from pieces, so this file passes its own check.
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d", re.IGNORECASE)


def _constant(node: ast.expr) -> object:
    """The value of a literal expression such as `1 / 16`; None when it names anything."""
    literal = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop)
    if not all(isinstance(n, literal) for n in ast.walk(node)):
        return None
    return eval(compile(ast.Expression(node), "<literal>", "eval"), {"__builtins__": {}})


def tiny_redeclarations(source: str) -> list[int]:
    """Lines where `source` spells out TINY's width multiplier as a literal option (a dict entry or a keyword)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)]
        elif isinstance(node, ast.Call):
            pairs = [(k.arg, k.value) for k in node.keywords if k.arg]
        else:
            continue
        if any(key == "width_mult" and _constant(value) == TINY["width_mult"] for key, value in pairs):
            found.append(node.lineno)
    return sorted(found)


def test_tiny_redeclarations_are_found():
    spelled = 'TINY = dict(width_mult=1 / 16, fc_dim=32)\nnet = make(width_mult=0.0625)\nx = {"width_mult": 1/16}'
    assert tiny_redeclarations(spelled) == [1, 2, 3]
    taken = 'make(**{**TINY, "width_mult": 1 / 32}, fc_dim=32)\nmake(width_mult=m.width_mult)\nx = "width_mult=0.0625"'
    assert tiny_redeclarations(taken) == []


def test_no_test_module_redeclares_the_tiny_net():
    found = [
        f"{path.name}:{line}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name != "helpers.py"
        for line in tiny_redeclarations(path.read_text())
    ]
    assert found == [], "take the tiny net from tests/helpers.py (TINY, TINY_GLOROT, the tiny_model fixture):\n" + (
        "\n".join(found)
    )


def issue_citations(text: str) -> list[int]:
    """Line numbers of `text` that cite an issue by number."""
    return [n for n, line in enumerate(text.splitlines(), 1) if ISSUE_NUMBER.search(line)]


def test_issue_citations_are_found():
    word = "issue"
    cited = f'# see {word} 12.3\n"""Checkpoints ({word.title()} #5)."""\nx = 1  # {word}s 4 and 5\n'
    assert issue_citations(cited) == [1, 2, 3]
    assert issue_citations("# a known issue with PIL's draft mode\n# tissue 3\n") == []


def test_no_source_file_cites_an_issue_number():
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in ("vggfeat", "scripts", "tests", "recipes")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".yaml", ".yml", ".md", ".txt", ".toml") and "__pycache__" not in path.parts
        for line in issue_citations(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "say why in the comment instead of citing an issue number:\n" + "\n".join(found)


def test_torchruns_environment_is_read_in_one_place():
    """RANK, WORLD_SIZE and LOCAL_RANK were read in three places; utils.distributed.env_info reads them for all."""
    package = ROOT / "vggfeat"
    reads = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "utils" / "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                reads.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert reads == [], "use vggfeat.utils.distributed.env_info():\n" + "\n".join(reads)
