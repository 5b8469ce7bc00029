"""Recipes ship inside the wheel (vggfeat/recipes/) and resolve by name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vggfeat import VggfeatError
from vggfeat.recipe_files import RecipeNotFound, find_recipe, recipe_description, recipe_names, recipes_dir

ROOT = Path(__file__).resolve().parents[1]


def test_find_recipe_by_name_path_and_unknown():
    assert find_recipe("smoke") == recipes_dir() / "train" / "smoke.yaml"
    assert find_recipe("smoke.yaml").read_text() == (ROOT / "recipes" / "train" / "smoke.yaml").read_text()
    assert find_recipe(ROOT / "recipes" / "demo" / "quick.yaml", "demo").name == "quick.yaml"
    assert find_recipe("quick", "demo").parent.name == "demo"
    with pytest.raises(RecipeNotFound, match="shipped train recipes: smoke, vgg_a_glorot") as e:
        find_recipe("nope")
    assert isinstance(e.value, VggfeatError)
    assert "_imagenet" not in recipe_names() and len(recipe_names()) >= 11
    assert recipe_description(find_recipe("vgg_a_s256")).startswith("Net A at S=256 from random init")


def test_wheel_ships_recipes(tmp_path):
    """Build the wheel (about 2 s, no network: --no-build-isolation) and check every recipe is inside."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("vggfeat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"vggfeat/recipes/{p.relative_to(ROOT / 'recipes').as_posix()}" for p in (ROOT / "recipes").rglob("*.yaml")}
    assert len(want) >= 18 and want <= names
