"""Packaging beyond pyproject.toml: the top-level recipes/ (their source of truth) ship inside the wheel as
vggfeat/recipes/, so `vggfeat demo` and `vggfeat train NAME` work from a plain `pip install`."""

from setuptools import find_packages, setup

RECIPE_PACKAGES = {
    "vggfeat.recipes": "recipes",
    "vggfeat.recipes.train": "recipes/train",
    "vggfeat.recipes.demo": "recipes/demo",
}

setup(
    packages=find_packages(include=["vggfeat", "vggfeat.*"]) + list(RECIPE_PACKAGES),
    package_dir=RECIPE_PACKAGES,
    package_data={name: ["*.yaml"] for name in RECIPE_PACKAGES},
)
