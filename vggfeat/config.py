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
from vggfeat.utils.text import shorten

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a dataclass type: what from_dict builds


class ConfigError(VggfeatError, ValueError):
    """A recipe that cannot be read: unknown key, wrong type, bad override."""


MAX_YAML_DEPTH = 100  # nesting far beyond any recipe's (PyYAML composes by recursion: deeper would overflow it)
MAX_INT_CHARS = 100  # an integer written longer is no setting (and YAML's base 60, 1:0:0:..., costs quadratic time)
MAX_NAME_CHARS = 4096  # the longest path Linux takes: a longer `base:` names no file
MAX_KEY_CHARS = 100  # a longer key is no setting's, nor a typo of one: shown shortened, with no suggestion


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses, but as no recipe is written: an alias, nesting or an integer beyond any recipe's."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, in time and memory linear in the text. Aliases are refused: a list whose every level
    names the one before ten times makes a few lines stand for 10^levels values. A value that its tag's
    constructor cannot build (`!!float abc`, the date 2001-02-31) is a YAML error at its line, not a traceback."""

    depth = 0  # of the node being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        mark: Any = event.start_mark  # the pure-Python parser's Mark (the stubs also allow libyaml's)
        if isinstance(event, yaml.AliasEvent):
            problem = f"an alias (*{event.anchor}): recipes take no YAML aliases; write the value out, or inherit a "
            raise _Refused(None, None, problem + "recipe with base: FILE", mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels, as no recipe is", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_CHARS:
            problem = f"an integer of {len(node.value)} characters, as no setting is"
            raise _Refused(None, None, problem, node.start_mark)
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            tag = node.tag.rpartition(":")[2]
            raise yaml.constructor.ConstructorError(None, None, f"not a valid {tag} ({e})", node.start_mark) from None


def _parse_yaml(text: str, where: str, marks: bool = True) -> Any:
    """`text` read by _RecipeLoader; a problem is a ConfigError starting with `where` (a file, with the line and
    column when `marks`; a key or --set KEY for a value)."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader: plain data only)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if marks and mark is not None else ""
        problem = (getattr(e, "problem", None) or str(e).splitlines()[0])[:300]  # it may quote a huge value
        what = problem if isinstance(e, _Refused) else f"not valid YAML ({problem})"
        raise ConfigError(f"{where}{at}: {what}") from None


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
        raise ConfigError(errors[0] if errors else f"{where}: bad value {shorten(value)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass type, not an instance
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {shorten(value)}")
        return from_dict(tp, value, where, root)
    if origin is tuple:
        if isinstance(value, str):
            if value.strip().startswith("["):
                value = _parse_yaml(value, where, marks=False)
            else:
                value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{where}: expected {len(items)} values, got {len(value)} ({shorten(value)})")
        return tuple(_coerce(v, t, f"{where}[{i}]", root) for i, (v, t) in enumerate(zip(value, items, strict=False)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {shorten(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {shorten(value)}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {shorten(value)}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float's range
            raise ConfigError(f"{where}: expected {tp.__name__}, got {shorten(value)}") from None
        if not math.isfinite(number):  # NaN or inf: no setting means it (and int() of it raises OverflowError)
            raise ConfigError(f"{where}: expected a finite {tp.__name__}, got {shorten(value)}")
        if tp is int and number != int(number):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {shorten(value)}")
        return int(number) if tp is int else number
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {shorten(value)}")
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
            if not isinstance(key, str) or not key.isprintable() or len(key) > MAX_KEY_CHARS:
                raise ConfigError(f"unknown key {shorten(key)} in {where or 'the recipe'}: no setting is named so")
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
    data = _parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a recipe needs at least a name and its settings")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.isprintable() or len(base) > MAX_NAME_CHARS:
            raise ConfigError(f"{path}: base: expected the file name of a recipe, got {shorten(base)}")
        base_path = path.parent / base
        if not _is_file(base_path):
            base_path = _shipped_base(base) or base_path
        if not _is_file(base_path):
            raise ConfigError(
                f"{path}: base: {base} not found (looked for {base_path} and the shipped recipes: "
                f"{', '.join(_shipped_base_names())})"
            )
        data = _merge(read_yaml(base_path, (*_seen, path.resolve())), data)
    return data


def _is_file(path: Path) -> bool:
    """Path.is_file, False also for a name the system refuses outright (a part longer than a file name may be)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _shipped_base(name: str) -> Path | None:
    """A shipped recipe named by a plain name ('smoke', '_imagenet.yaml'): a recipe of one's own can build on
    it as `vggfeat train NAME` runs it, without copying the shipped file beside it."""
    if Path(name).name != name:
        return None
    stem = name[:-5] if name.endswith(".yaml") else name
    found = sorted(p for p in recipes_dir().glob("*/*.yaml") if p.stem == stem)  # a name is no glob pattern
    return found[0] if found else None


def _shipped_base_names() -> list[str]:
    return sorted({p.stem for p in recipes_dir().glob("*/*.yaml")})


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Apply `a.b=value` strings (value parsed as YAML); with `cls`, paths are checked against its fields."""
    data = _merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {shorten(item)}")
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
        node[parts[-1]] = _parse_yaml(raw, f"--set {key.strip()}", marks=False) if raw.strip() else ""
    return data


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file into dataclass `cls`, strictly, with `--set` overrides applied."""
    data = read_yaml(path)  # its errors already name the file (or the base file at fault)
    try:
        return from_dict(cls, apply_overrides(data, overrides, cls))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
