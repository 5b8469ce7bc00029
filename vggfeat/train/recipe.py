"""Training recipes (Sect. 3.1) as frozen dataclasses, read strictly from recipes/train/*.yaml.

Defaults are the paper's: SGD momentum 0.9, weight decay 5e-4, global batch 256, dropout 0.5, lr 1e-2
divided by 10 when validation top-1 stops improving (at most 3 times), at most 74 epochs, S=256, 224
crops, flips, PCA colour shift with sigma 0.1, mean-RGB subtraction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggfeat.config import ConfigError, from_dict, load_config, to_dict
from vggfeat.errors import InputError
from vggfeat.models.init import INIT_METHODS
from vggfeat.models.registry import check_model_size, resolve_name
from vggfeat.utils.device import DEVICE_CHOICES

# Krizhevsky et al. 2012's eigen-decomposition of ImageNet RGB pixel covariance (0-255 units), the usual
# fixed values when a recipe does not compute its own (`vggfeat mean-rgb`).
IMAGENET_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
IMAGENET_MEAN = (123.68, 116.779, 103.939)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vgg_a"  # a Table 1 net: vgg_a ... vgg_e or an alias
    num_classes: int = 1000
    width_mult: float = 1.0  # < 1 only for narrow nets (smoke, demo)
    fc_dim: int = 4096  # fc6/fc7 width
    fc6_kernel: int = 7  # 7 <=> 224 crops; crop must be 32 * fc6_kernel
    dropout: float = 0.5  # Sect. 3.1: after fc6 and fc7
    init: str = "normal"  # "normal" (std init_std) or "glorot"
    init_std: float = 0.01
    init_from: str | None = None  # weights or checkpoint to start from (relative to the recipe's folder or cwd)
    init_layers: str = "net_a"  # "net_a": the 7 layers of Sect. 3.1; "all": every layer (S=384 from S=256)


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # dataset folder (train/, val/); --data-root overrides
    scale: tuple[int, int] = (256, 256)  # (Smin, Smax): S fixed when equal, else uniform per image
    crop: int = 224
    flip: bool = True
    color_sigma: float = 0.1  # PCA colour shift, alpha ~ N(0, sigma)
    mean_rgb: tuple[float, float, float] | None = IMAGENET_MEAN  # None: computed on train/ and cached
    eigval: tuple[float, float, float] | None = IMAGENET_EIGVAL  # None: computed with the mean
    eigvec: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] | None = (
        IMAGENET_EIGVEC
    )
    val_labels: str | None = None  # flat val folder: file of "name label" lines (ImageNet devkit style)
    workers: int = 8  # DataLoader workers per process
    cache_decoded: bool = False  # keep decoded images in memory (a small dataset read with workers: 0; the demo)
    max_val: int = 0  # > 0: validate on the first N val images only
    # webdataset tars with integer .cls labels (brace patterns "s/{000000..000146}.tar" or globs), read as streams
    # instead of root's class folders; a list of patterns or one pattern
    train_shards: str | tuple[str, ...] | None = None
    val_shards: str | tuple[str, ...] | None = None
    shuffle_buffer: int = 1000  # tar shards: after a per-epoch shard order, each sample drawn from this many


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256  # global: per_device_batch x processes x accumulation steps
    per_device_batch: int = 64
    epochs: int = 74
    patience: int = 1  # epochs without val top-1 improvement before lr /= factor
    factor: float = 10.0
    max_drops: int = 3
    threshold: float = 1e-4  # an improvement smaller than this does not count


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000  # also one at the end of every epoch
    keep_last: int = 3
    log_every: int = 20  # steps between log lines


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # bf16 autocast on CUDA (off on CPU)
    channels_last: bool = True  # NHWC activations (CUDA and CPU)
    compile: bool = False  # torch.compile the model


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        # every mistake here would otherwise surface minutes later as a ZeroDivisionError or a silent no-op
        lo, hi = self.data.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale needs 0 < Smin <= Smax, got {self.data.scale}")
        if lo < self.data.crop:
            raise ConfigError(f"data.scale Smin={lo} is smaller than the crop {self.data.crop}")
        if self.data.crop != 32 * self.model.fc6_kernel:
            raise ConfigError(
                f"data.crop {self.data.crop} must be 32 x model.fc6_kernel ({32 * self.model.fc6_kernel})"
            )
        if self.model.init_layers not in ("net_a", "all"):
            raise ConfigError(f"model.init_layers must be net_a or all, got {self.model.init_layers!r}")
        positive = {
            "optim.lr": self.optim.lr,
            "optim.batch_size": self.optim.batch_size,
            "optim.per_device_batch": self.optim.per_device_batch,
            "optim.epochs": self.optim.epochs,
            "checkpoint.every_steps": self.checkpoint.every_steps,
            "checkpoint.log_every": self.checkpoint.log_every,
            "model.width_mult": self.model.width_mult,
            "model.fc_dim": self.model.fc_dim,
            "model.num_classes": self.model.num_classes,
        }
        for key, value in positive.items():
            if not value > 0:  # also catches NaN
                raise ConfigError(f"{key} must be > 0, got {value}")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.model.dropout}")
        self._check_shards()
        self._check_choices()

    def _check_shards(self) -> None:
        d = self.data
        if d.shuffle_buffer < 1:
            raise ConfigError(
                f"data.shuffle_buffer must be >= 1 (1: no shuffling past the shard order), got {d.shuffle_buffer}"
            )
        if d.train_shards is None and d.val_shards is None:
            return
        if d.train_shards is None or d.val_shards is None:
            missing = "data.train_shards" if d.train_shards is None else "data.val_shards"
            raise ConfigError(f"tar shards need both data.train_shards and data.val_shards; set {missing}")
        for key, patterns in (("data.train_shards", d.train_shards), ("data.val_shards", d.val_shards)):
            if not shard_patterns(patterns):
                raise ConfigError(f"{key} is empty; give brace patterns or globs of .tar files")
        clashes = {
            "data.root": d.root is not None,
            "data.val_labels": d.val_labels is not None,
            "data.cache_decoded": d.cache_decoded,
        }
        for key, clash in clashes.items():
            if clash:
                off = "false" if key == "data.cache_decoded" else "null"
                raise ConfigError(
                    f"{key} is for a folder dataset but data.train_shards reads tar shards; set {key}: {off} "
                    f"(--set {key}={off}) or unset data.train_shards and data.val_shards"
                )

    def _check_choices(self) -> None:
        try:
            resolve_name(self.model.name)
        except InputError as e:
            raise ConfigError(f"model.name: {e}") from None
        m = self.model
        try:  # counted on the meta device: a net of terabytes is refused here, not by the allocator
            check_model_size(
                m.name, num_classes=m.num_classes, width_mult=m.width_mult, fc_dim=m.fc_dim, fc6_kernel=m.fc6_kernel
            )
        except InputError as e:
            raise ConfigError(f"model.width_mult, model.fc_dim, model.fc6_kernel: {e}") from None
        if self.model.init not in INIT_METHODS:
            raise ConfigError(f"model.init: unknown init {self.model.init!r}; valid: {', '.join(INIT_METHODS)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.runtime.device):
            raise ConfigError(
                f"runtime.device: unknown device {self.runtime.device!r}; valid: {', '.join(DEVICE_CHOICES)}, cuda:N"
            )


def shard_patterns(value: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """data.train_shards / data.val_shards as a tuple of patterns (one pattern may be given as a string)."""
    if value is None:
        return ()
    return tuple(p for p in ((value,) if isinstance(value, str) else value) if p.strip())


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML strictly, `--set` overrides applied; relative paths resolve against the file."""
    path = Path(path)
    recipe = load_config(Recipe, path, overrides)
    return _resolve_paths(recipe, path.parent)


def recipe_from_dict(data: dict) -> Recipe:
    return from_dict(Recipe, data)


# What `--resume` lets differ from the recipe a checkpoint was written under: the keys no weight of the run depends
# on. Everything else (seed, model, lr and the whole schedule, batch split, augmentation, max_val, runtime.device,
# amp, channels_last and compile - these four change float rounding) must be the same for the resumed run to be
# the run its recipe describes.
#   name                                   a label
#   data.workers, data.cache_decoded       how images are loaded; augmentation is drawn from (seed, epoch, index)
#   checkpoint.*                           when checkpoints and log lines are written
#   data.root, data.val_labels             where a folder dataset is (--data-root overrides data.root): its images
#   data.train_shards, data.val_shards     and shards are compared by the digest a checkpoint keeps of them, so a
#                                          dataset moved to another disk still resumes
#   model.init_from                        a path: compared by the sha256 of its file, kept in the checkpoint
# optim.epochs may grow (nothing in a run depends on its total), or shrink to no less than the checkpoint's
# position; the training loop checks that.
RESUME_FREE = frozenset(
    {
        "name",
        "data.workers",
        "data.cache_decoded",
        "checkpoint.every_steps",
        "checkpoint.keep_last",
        "checkpoint.log_every",
        "data.root",
        "data.val_labels",
        "data.train_shards",
        "data.val_shards",
        "model.init_from",
    }
)


def recipe_changes(saved: dict[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, recipe's value)} of the keys outside RESUME_FREE where `saved` (a checkpoint's
    recipe) and `recipe` differ. `saved` is read as load_recipe reads a file, so a key added since it was
    written has its default."""
    try:
        saved = recipe_to_dict(recipe_from_dict(saved))
    except ConfigError:  # a key since removed: compared as written, where it shows as a difference
        pass
    old, new = _dotted(saved), _dotted(recipe_to_dict(recipe))
    keys = sorted((old.keys() | new.keys()) - RESUME_FREE)
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe dict's values by key as --set names them (optim.lr)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


def _resolve_paths(recipe: Recipe, folder: Path) -> Recipe:
    from dataclasses import replace

    def resolve(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute() or Path(p).exists():
            return p
        return str((folder / p).resolve()) if (folder / p).exists() else p

    return replace(recipe, model=replace(recipe.model, init_from=resolve(recipe.model.init_from)))
