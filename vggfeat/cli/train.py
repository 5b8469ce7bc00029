"""`vggfeat train`: the paper's training recipe (Sect. 3.1) from a YAML recipe, one process or torchrun."""

from __future__ import annotations

import click
import yaml

from vggfeat.cli.params import FiniteRange, batch_size_option, device_option, workers_option
from vggfeat.config import ConfigError
from vggfeat.recipe_files import find_recipe, recipe_description, recipe_names, recipes_dir
from vggfeat.utils.distributed import env_info

# shorthand option -> the recipe key it sets, as --set KEY=VALUE would
SHORTHANDS = {
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "runtime.device",
    "workers": "data.workers",
}


@click.command(context_settings={"max_content_width": 100})
@click.argument("recipe", required=False, metavar="[RECIPE]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any recipe key, e.g. --set optim.momentum=0.95 (repeatable); --print-recipe lists the keys.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="At most this many epochs (optim.epochs).")
@batch_size_option(
    default=None,
    help="Global batch (optim.batch_size): per-device batch x processes x accumulation steps; a multiple of "
    "optim.per_device_batch.",
)
@click.option("--lr", type=FiniteRange(0, min_open=True), help="Initial learning rate (optim.lr).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of initialisation, data order and augmentation (seed).")
@device_option(default=None, more="Default: the recipe's runtime.device.")
@workers_option(default=None, help="Loader processes per training process (data.workers).")
@click.option(
    "--data-root", type=click.Path(file_okay=False), help="Dataset folder (train/, val/); overrides data.root."
)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run folder [runs/<recipe name>].")
@click.option("--resume", is_flag=True, help="Continue exactly from the run folder's last checkpoint.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start over in a run folder that already holds a run (removes its checkpoints and weights).",
)
@click.option("--quiet", is_flag=True, help="No progress bar (the per-step log lines stay).")
@click.option(
    "--print-recipe", is_flag=True, help="Print the resolved recipe (every key, overrides applied) as YAML and exit."
)
def train(
    recipe: str | None,
    overrides: tuple[str, ...],
    data_root: str | None,
    out: str | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    print_recipe: bool,
    **shorthands: object,
) -> None:
    """Train a net with RECIPE: a shipped recipe name (smoke, vgg_a_s256, vgg_d_s256, ...) or a YAML file.

    Without RECIPE, list the shipped training recipes with one line each.

    Recipe keys: `vggfeat train RECIPE --print-recipe` prints them all with their values (their meaning:
    the dataclasses of vggfeat/train/recipe.py). --set KEY=VALUE overrides any of them; --epochs, --batch-size,
    --lr, --seed, --device and --workers are shorthands of --set optim.epochs, optim.batch_size, optim.lr,
    seed, runtime.device and data.workers.

    \b
    Several GPUs: torchrun --nproc-per-node 4 -m vggfeat train RECIPE ...
    The global batch stays optim.batch_size whatever the number of processes.
    Checkpoints, recipe.yaml, metrics.jsonl and model.safetensors go to the run folder.
    """
    import logging

    if recipe is None:  # a first look: what can be trained, and how
        click.echo(f"Shipped training recipes ({recipes_dir() / 'train'}):")
        for name in recipe_names("train"):
            click.echo(f"  {name:<14} {recipe_description(recipes_dir() / 'train' / f'{name}.yaml')}")
        click.echo(
            "\nStart one with: vggfeat train NAME [--out RUN] (e.g. vggfeat train smoke --out runs/smoke); "
            "ImageNet recipes also need --data-root."
        )
        return
    recipe = str(find_recipe(recipe, "train"))  # a name or a path; unknown -> one line listing the names

    from vggfeat.train.loop import train as run_training
    from vggfeat.train.recipe import load_recipe, recipe_to_dict

    rank0 = env_info().is_main
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        r = load_recipe(recipe, (*overrides, *shorthand_overrides(shorthands, overrides)))
    except ConfigError as e:  # a bad recipe or override is a usage error (exit 2)
        raise click.UsageError(str(e)) from None
    if print_recipe:
        resolved = recipe_to_dict(r)
        if data_root is not None:
            resolved["data"]["root"] = data_root
        click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)
        return
    summary = run_training(
        r, out or f"runs/{r.name}", data_root=data_root, resume=resume, overwrite=overwrite, progress=not quiet
    )
    if rank0 and summary["history"]:
        last = summary["history"][-1]
        click.echo(
            f"{summary['run']}: {summary['epochs']} epochs, {summary['global_step']} steps, "
            f"val top-1 {last['val_top1']:.4f}, top-5 {last['val_top5']:.4f}"
        )


def shorthand_overrides(shorthands: dict[str, object], overrides: tuple[str, ...]) -> list[str]:
    """`KEY=VALUE` of each shorthand option given; one that --set also sets is a usage error, as one of the
    two would silently lose."""
    set_keys = {item.split("=", 1)[0].strip(): item for item in overrides}
    out = []
    for name, value in shorthands.items():
        if value is None:
            continue
        key, option = SHORTHANDS[name], "--" + name.replace("_", "-")
        if key in set_keys:
            raise click.UsageError(f"{option} {value} and --set {set_keys[key]} both set {key}; give one of them")
        out.append(f"{key}={value}")
    return out
