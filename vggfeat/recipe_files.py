"""Where the shipped recipes live and how a recipe is named (Sect. 3.1's training stages, the demo).

recipes/ at the top of the source tree is the source of truth; wheels carry it as vggfeat/recipes/ (setup.py),
so the same names work from a checkout, an editable install and a plain `pip install`.
"""

from __future__ import annotations

from pathlib import Path

from vggfeat.errors import VggfeatError

_PACKAGE = Path(__file__).resolve().parent


class RecipeNotFound(VggfeatError, FileNotFoundError):
    """A recipe given by a name that is not shipped, or by a path that does not exist."""


def recipes_dir() -> Path:
    """The installed vggfeat/recipes/ when present (wheel), else the checkout's recipes/ next to the package."""
    installed = _PACKAGE / "recipes"
    return installed if installed.is_dir() else _PACKAGE.parent / "recipes"


def recipe_names(kind: str = "train") -> list[str]:
    """Names of the shipped recipes of one kind (train, demo); files starting with '_' are bases, not recipes."""
    folder = recipes_dir() / kind
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.startswith("_"))


def recipe_description(path: str | Path) -> str:
    """The first comment line of a recipe file: its one-line description ('' when it has none)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(name_or_path: str | Path, kind: str = "train") -> Path:
    """A recipe file: an existing path as given, else a shipped recipe name ('smoke', 'vgg_d_s256', 'smoke.yaml')."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = recipes_dir() / kind / f"{stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = recipe_names(kind)
    raise RecipeNotFound(
        f"{name_or_path}: no such {kind} recipe file or name; shipped {kind} recipes: "
        f"{', '.join(names) or '(none found in ' + str(recipes_dir()) + ')'}"
    )
