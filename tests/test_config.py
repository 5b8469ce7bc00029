"""Strict YAML/dataclass loading: unknown keys name the nearest valid one, values are coerced."""

from __future__ import annotations

import os
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
