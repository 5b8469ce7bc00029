"""Strict YAML/dataclass configs: recipes are frozen dataclasses read from YAML.

An unknown key is an error naming the nearest valid one; values are coerced to the field's type (PyYAML
reads `5e-4` as a string); `--set a.b=value` overrides any field; `base: other.yaml` inherits a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from vggfeat.errors import VggfeatError
from vggfeat.recipe_files import recipes_dir
from vggfeat.utils.files import read_dataset_text

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a dataclass type: what from_dict builds


class ConfigError(VggfeatError, ValueError):
    """A recipe that cannot be read: unknown key, wrong type, bad override."""


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of dataclass `cls` as --set names it: a nested dataclass's fields as section.field."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _nearest(key: str, valid: Sequence[str]) -> str:
    """'; did you mean X?' naming the full key: one of the same name in another section first (device ->
    runtime.device), then a close name, in the key's own section first (optim.lrr -> optim.lr), then the
    nearest key."""
    section, _, name = key.rpartition(".")
    ratio = {k: difflib.SequenceMatcher(None, name, k.rpartition(".")[2]).ratio() for k in valid}
    close = [k for k in valid if ratio[k] >= 0.6]
    if close:
        best = max(close, key=lambda k: (ratio[k] == 1, k.rpartition(".")[0] == section, ratio[k]))
        return f"; did you mean {best!r}?"
    nearest = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {nearest[0]!r}?" if nearest else ""


def _coerce(value: Any, tp: Any, where: str, root: tuple[type, str] | None = None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, root)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass type, not an instance
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where, root)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{where}: expected {len(items)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, t, f"{where}[{i}]", root) for i, (v, t) in enumerate(zip(value, items, strict=False)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float's range
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if not math.isfinite(number):  # NaN or inf: no setting means it (and int() of it raises OverflowError)
            raise ConfigError(f"{where}: expected a finite {tp.__name__}, got {value!r}")
        if tp is int and number != int(number):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return int(number) if tp is int else number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "", root: tuple[type, str] | None = None) -> T:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are errors. `root`, the
    outermost (dataclass, where) of a nested build, is what an unknown key's suggestion is drawn from."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    root = root or (cls, where)
    for key in data:
        if key not in fields:
            full = f"{where + '.' if where else ''}{key}"
            keys = dotted_keys(root[0], f"{root[1]}." if root[1] else "")
            raise ConfigError(f"unknown key {full}{_nearest(full, keys)}")
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}", root) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain dicts, lists and scalars (YAML- and torch.load(weights_only)-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a `base: FILE` key (relative to this file) is read first and overridden."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: 'base:' makes a loop ({chain}); point it at another recipe")
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    text = read_dataset_text(path, "recipe", ConfigError)  # a FIFO or a folder is refused, never waited on
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a recipe needs at least a name and its settings")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        base_path = path.parent / str(base)
        if not base_path.is_file():
            base_path = _shipped_base(str(base)) or base_path
        if not base_path.is_file():
            raise ConfigError(
                f"{path}: base: {base} not found (looked for {base_path} and the shipped recipes: "
                f"{', '.join(_shipped_base_names())})"
            )
        data = _merge(read_yaml(base_path, (*_seen, path.resolve())), data)
    return data


def _shipped_base(name: str) -> Path | None:
    """A shipped recipe named by a plain name ('smoke', '_imagenet.yaml'): a recipe of one's own can build on
    it as `vggfeat train NAME` runs it, without copying the shipped file beside it."""
    if Path(name).name != name:
        return None
    stem = name[:-5] if name.endswith(".yaml") else name
    found = sorted(recipes_dir().glob(f"*/{stem}.yaml"))
    return found[0] if found else None


def _shipped_base_names() -> list[str]:
    return sorted({p.stem for p in recipes_dir().glob("*/*.yaml")})


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Apply `a.b=value` strings (value parsed as YAML); with `cls`, paths are checked against its fields."""
    data = _merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node, tp = data, cls
        root = cls  # the recipe's class, whose dotted keys an unknown key is matched against
        for i, part in enumerate(parts):
            if tp is not None and dataclasses.is_dataclass(tp):
                names = [f.name for f in dataclasses.fields(tp)]
                if part not in names:
                    bad = ".".join(parts[: i + 1])
                    assert root is not None  # tp is a dataclass only when cls is given
                    raise ConfigError(f"--set: unknown key {bad}{_nearest(bad, dotted_keys(root))}")
                tp = typing.get_type_hints(tp)[part]
            else:
                tp = None
            if i < len(parts) - 1:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set: {'.'.join(parts[: i + 1])} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file into dataclass `cls`, strictly, with `--set` overrides applied."""
    data = read_yaml(path)  # its errors already name the file (or the base file at fault)
    try:
        return from_dict(cls, apply_overrides(data, overrides, cls))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
