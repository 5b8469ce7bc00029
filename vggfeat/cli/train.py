"""`vggfeat train`: the paper's training recipe (Sect. 3.1) from a YAML recipe, one process or torchrun."""
from __future__ import annotations

import click


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set optim.lr=0.005 (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False), help="Dataset folder (train/, val/); overrides data.root.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run folder [runs/<recipe name>].")
@click.option("--resume", is_flag=True, help="Continue exactly from the run folder's last checkpoint.")
def train(recipe: str, overrides: tuple[str, ...], data_root: str | None, out: str | None, resume: bool) -> None:
    """Train a net with RECIPE (a recipes/train/*.yaml file).

    \b
    Several GPUs: torchrun --nproc-per-node 4 -m vggfeat train RECIPE ...
    The global batch stays optim.batch_size whatever the number of processes.
    Checkpoints, recipe.yaml, metrics.jsonl and model.safetensors go to the run folder.
    """
    import logging
    import os

    from vggfeat.config import ConfigError
    from vggfeat.train.loop import NonFiniteLoss, train as run_training
    from vggfeat.train.recipe import load_recipe

    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        r = load_recipe(recipe, overrides)
    except (ConfigError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    try:
        summary = run_training(r, out or f"runs/{r.name}", data_root=data_root, resume=resume)
    except NonFiniteLoss as e:
        raise click.ClickException(str(e)) from None
    if rank0 and summary["history"]:
        last = summary["history"][-1]
        click.echo(f"{summary['run']}: {summary['epochs']} epochs, {summary['global_step']} steps, "
                   f"val top-1 {last['val_top1']:.4f}, top-5 {last['val_top5']:.4f}")
