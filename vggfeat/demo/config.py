"""The demo's settings (recipes/demo/demo.yaml and quick.yaml), loaded strictly like training recipes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vggfeat import defaults
from vggfeat.config import ConfigError, load_config
from vggfeat.data.synthetic import KINDS
from vggfeat.recipe_files import RecipeNotFound, recipes_dir

RECIPES = recipes_dir() / "demo"  # installed vggfeat/recipes/demo in a wheel, else the checkout's recipes/demo

# how the demo describes its target images: its 64-96 px images batch well, and a loader process would cost more
# to start than it saves
DEMO_BATCH_SIZE = 32
DEMO_WORKERS = 0


@dataclass(frozen=True)
class SourceConfig:
    """The generated dataset nets A and D train on (vggfeat.data.synthetic), written before training."""

    kind: str = "shapes"  # "shapes" (drawn shapes and textures) or "pictograms" (single VOC pictograms)
    classes: int = 30  # net A's model.num_classes
    per_class: int = 40  # training images per class (val gets a quarter)
    seed: int = 0  # --seed S adds S

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"source.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 1 <= self.classes <= KINDS[self.kind].max_classes:
            raise ConfigError(
                f"source.classes must be 1..{KINDS[self.kind].max_classes} (the generated {self.kind}), "
                f"got {self.classes}"
            )
        if self.per_class < 1:
            raise ConfigError(f"source.per_class must be > 0, got {self.per_class}")


@dataclass(frozen=True)
class TargetConfig:
    n_trainval: int = 300  # generated VOC2007-layout scenes to train the SVMs on
    n_test: int = 300  # and to score them on
    seed: int = 1
    size: tuple[int, int] = (128, 96)  # (width, height) of a scene


@dataclass(frozen=True)
class FeatureConfig:
    layer: str = "fc7"
    scales: tuple[int, ...] = (64, 96, 128)  # Appendix B's 256, 384, 512 at the demo's crop size
    aggregate: str = "mean"


@dataclass(frozen=True)
class ProbeConfig:
    Cs: tuple[float, ...] = defaults.COARSE_COSTS  # a coarse grid: the demo's probes are small
    k: int = 10  # kNN neighbours


@dataclass(frozen=True)
class DemoConfig:
    name: str = "demo"
    net_a: str = "vgg_a.yaml"  # training recipe of net A, relative to the demo file
    net_d: str = "vgg_d.yaml"  # training recipe of net D (initialised from A)
    source: SourceConfig = field(default_factory=SourceConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    random_seed: int = 0  # seed of the randomly initialised baseline net
    # baseline nets averaged (init seeds random_seed + seed + 1000 i): one random net's own luck spans several
    # mAP points at quick size, as much as what training adds (scripts/demo_margins.py --random-draws)
    random_nets: int = 1
    probe_plots: bool = True  # each probe's own plot beside its report (the trained and first random net's)
    threads: int = 1  # torch CPU threads, fixed (a seed's numbers depend on it); quick.yaml measured 2 faster


def demo_file(quick: bool) -> Path:
    path = RECIPES / ("quick.yaml" if quick else "demo.yaml")
    if not path.is_file():
        raise RecipeNotFound(
            f"{path}: the demo's recipes are missing; reinstall vggfeat (its wheel ships them "
            "as vggfeat/recipes/) or run from a checkout with recipes/ next to the package"
        )
    return path


def load_demo_config(quick: bool) -> tuple[DemoConfig, Path]:
    path = demo_file(quick)
    return load_config(DemoConfig, path), path
