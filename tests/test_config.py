"""Strict YAML/dataclass loading: unknown keys name the nearest valid one, values are coerced."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vggfeat.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    steps: int = 3
    scale: tuple[int, int] = (1, 2)
    mean: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_yaml_strings_are_coerced(tmp_path):
    (tmp_path / "c.yaml").write_text("inner:\n  lr: 5e-4\n  steps: '7'\n  scale: [3, 4]\nflag: yes\n")
    cfg = load_config(Outer, tmp_path / "c.yaml")
    assert cfg == Outer(flag=True, inner=Inner(lr=5e-4, steps=7, scale=(3, 4)))
    assert isinstance(cfg.inner.lr, float)


def test_unknown_key_names_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown key inner\.lrr; did you mean 'inner\.lr'"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match="did you mean 'name'"):
        from_dict(Outer, {"nmae": "y"})


@pytest.mark.parametrize(
    "data, key",
    [
        ({"lr": 1}, "inner.lr"),  # a key of another section, by its name alone
        ({"inner": {"flag": True}}, "flag"),  # in the wrong section
        ({"inner": {"lrr": 1}}, "inner.lr"),  # a typo: the close name in the key's own section
        ({"flg": True}, "flag"),
    ],
)
def test_an_unknown_key_suggests_the_full_key_matched_across_sections(data, key):
    with pytest.raises(ConfigError, match=f"did you mean '{key}'\\?$"):
        from_dict(Outer, data)
    flat = next(f"{k}.{next(iter(v))}" if isinstance(v, dict) else k for k, v in data.items())
    with pytest.raises(ConfigError, match=f"did you mean '{key}'\\?$"):
        apply_overrides({}, [f"{flat}=1"], Outer)


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="inner.steps"):
        from_dict(Outer, {"inner": {"steps": 2.5}})
    with pytest.raises(ConfigError, match="expected 2 values"):
        from_dict(Outer, {"inner": {"scale": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="true or false"):
        from_dict(Outer, {"flag": "maybe"})


def test_overrides_and_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {lr: 0.5, steps: 9}\n")
    (tmp_path / "c.yaml").write_text("base: base.yaml\ninner: {lr: 0.25}\n")
    cfg = load_config(Outer, tmp_path / "c.yaml", ["inner.steps=11", "inner.mean=[1,2,3]", "name=over"])
    assert cfg == Outer(name="over", inner=Inner(lr=0.25, steps=11, mean=(1.0, 2.0, 3.0)))
    with pytest.raises(ConfigError, match="did you mean 'inner.steps'"):
        apply_overrides({}, ["inner.stpes=1"], Outer)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["inner.steps"], Outer)
    assert from_dict(Outer, to_dict(cfg)) == cfg  # round trip


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_recipe_that_is_a_fifo_is_named_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "r.yaml")  # every command checks is_file first; the reader itself is bounded too
    code = (
        "from vggfeat.config import ConfigError, read_yaml\n"
        f"try:\n    read_yaml({str(tmp_path / 'r.yaml')!r})\nexcept ConfigError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("read_yaml hung reading a FIFO")
    assert f"recipe {tmp_path / 'r.yaml'} is a FIFO, not a regular file" in done.stdout, done.stdout + done.stderr


def _alias_bomb(levels: int) -> str:
    """`name:` a list whose every level names the one before ten times: 10^levels strings from a few lines."""
    lines = ["name: [&l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  , &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return "\n".join([*lines, "  ]"]) + "\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    (tmp_path / "bomb.yaml").write_text(_alias_bomb(4))
    with pytest.raises(ConfigError) as e:
        load_config(Outer, tmp_path / "bomb.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'bomb.yaml'}, line 2, column 10: an alias (*l0)"), str(e.value)
    assert "base:" in str(e.value) and len(str(e.value)) < 300
    (tmp_path / "anchor.yaml").write_text("name: &n x\n")  # an anchor alone expands nothing: read as written
    assert load_config(Outer, tmp_path / "anchor.yaml").name == "x"


def test_every_shipped_recipe_reads_without_aliases():
    from vggfeat.config import read_yaml
    from vggfeat.recipe_files import recipes_dir

    recipes = sorted(recipes_dir().glob("*/*.yaml"))
    assert len(recipes) > 10 and all(isinstance(read_yaml(p), dict) for p in recipes)


def test_a_value_in_an_error_is_shortened_to_a_line():
    with pytest.raises(ConfigError, match=r"^name: expected a string, got \['x', 'x', 'x', .*\.\.\.\]$") as e:
        from_dict(Outer, {"name": ["x"] * 100_000})
    assert len(str(e.value)) < 200
    with pytest.raises(ConfigError, match=r"^inner\.steps: expected int, got 'yyyy.*\.\.\..*yyyy'$") as e:
        from_dict(Outer, {"inner": {"steps": "y" * 100_000}})
    assert len(str(e.value)) < 200


@pytest.mark.parametrize(
    "text, where",
    [
        # the 101st level (the top mapping is the first); PyYAML would recurse past Python's limit
        ("name: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column 106"),
        ("inner:\n  steps: 1" + ":0" * 5000 + "\n", "line 2, column 10"),  # base-60: an int of 30,000 bits
        ("inner:\n  steps: 0x" + "f" * 5000 + "\n", "line 2, column 10"),  # an int str() cannot show
    ],
)
def test_yaml_nesting_and_integers_beyond_any_recipe_are_one_error(tmp_path, text, where):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, tmp_path / "r.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'}, {where}: "), str(e.value)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("value", ["[1, 2", "[" * 5000, "[&a 1, *a]"])
def test_yaml_in_a_value_or_an_override_is_read_as_strictly_as_a_file(value):
    with pytest.raises(ConfigError, match=r"^inner\.scale: ") as e:
        from_dict(Outer, {"inner": {"scale": value}})  # a tuple given as text is parsed as YAML
    assert len(str(e.value)) < 300
    with pytest.raises(ConfigError, match=r"^--set inner\.scale: ") as e:
        apply_overrides({}, [f"inner.scale={value}"], Outer)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize(
    "base, says",
    [
        ("a" * 300, f"base: {'a' * 300} not found"),  # longer than a file name may be: the system refuses it
        ("'**'", "base: ** not found"),  # a glob pattern pathlib refuses
        ("[1, 2]", "base: expected the file name of a recipe, got [1, 2]"),
        ('"a\\nb"', "base: expected the file name of a recipe, got 'a\\nb'"),
    ],
)
def test_a_base_that_names_no_file_is_one_error(tmp_path, base, says):
    (tmp_path / "r.yaml").write_text(f"base: {base}\nname: x\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{tmp_path / 'r.yaml'}: {says}")):
        load_config(Outer, tmp_path / "r.yaml")


@pytest.mark.parametrize(
    "value, problem",
    [
        ("2001-02-31", "not a valid timestamp (day is out of range for month)"),
        ("!!float abc", "not a valid float (could not convert string to float: 'abc')"),
        ("!!int 1e5", "not a valid int (invalid literal for int() with base 10: '1e5')"),
        ("!!timestamp abc", "not a valid timestamp ("),
        ("!!bool abc", "not a valid bool ("),
    ],
)
def test_a_value_its_tag_cannot_build_is_a_yaml_error_at_its_line(tmp_path, value, problem):
    (tmp_path / "r.yaml").write_text(f"flag: false\nname: {value}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{tmp_path / 'r.yaml'}, line 2, column 7: not valid YAML")):
        load_config(Outer, tmp_path / "r.yaml")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(Outer, tmp_path / "r.yaml")


@pytest.mark.parametrize("key", ["a\nb", "x" * 300_000, 7])
def test_an_unknown_key_that_is_no_name_is_shown_shortened_on_one_line(key):
    with pytest.raises(ConfigError, match=r"^unknown key .* in inner: no setting is named so$") as e:
        from_dict(Outer, {"inner": {key: 1}})
    assert "\n" not in str(e.value) and len(str(e.value)) < 200
