"""`vggfeat train`: the paper's training recipe (Sect. 3.1) from a YAML recipe, one process or torchrun."""

from __future__ import annotations

import click

from vggfeat.config import ConfigError
from vggfeat.recipe_files import find_recipe, recipe_description, recipe_names, recipes_dir
from vggfeat.utils.distributed import env_info


@click.command()
@click.argument("recipe", required=False, metavar="[RECIPE]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe field, e.g. --set optim.lr=0.005 (repeatable).",
)
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
def train(
    recipe: str | None,
    overrides: tuple[str, ...],
    data_root: str | None,
    out: str | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Train a net with RECIPE: a shipped recipe name (smoke, vgg_a_s256, vgg_d_s256, ...) or a YAML file.

    Without RECIPE, list the shipped training recipes with one line each.

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
    from vggfeat.train.recipe import load_recipe

    rank0 = env_info().is_main
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        r = load_recipe(recipe, overrides)
    except ConfigError as e:  # a bad recipe or override is a usage error (exit 2)
        raise click.UsageError(str(e)) from None
    summary = run_training(
        r, out or f"runs/{r.name}", data_root=data_root, resume=resume, overwrite=overwrite, progress=not quiet
    )
    if rank0 and summary["history"]:
        last = summary["history"][-1]
        click.echo(
            f"{summary['run']}: {summary['epochs']} epochs, {summary['global_step']} steps, "
            f"val top-1 {last['val_top1']:.4f}, top-5 {last['val_top5']:.4f}"
        )
