"""`vggfeat models`: the nets of Table 1 with aliases, weight layers and parameter counts."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON (one object per net).")
def models(as_json: bool) -> None:
    """List the paper's nets (Table 1): name, aliases, weight layers and parameters at 1000 classes.

    Use a name or alias wherever a command takes --model, e.g. `--model vgg_d` or `--model vgg16`.
    Parameters are counted on torch's meta device: nothing is allocated.
    """
    from vggfeat.models import model_table

    rows = model_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=False))  # strict JSON: a NaN here is a bug, not a result
        return
    header = ("name", "aliases", "config", "weight layers", "parameters")
    cells = [
        (r["name"], ", ".join(r["aliases"]) or "-", r["config"], str(r["weight_layers"]), f"{r['parameters']:,}")
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i >= 3 else '<'}{w}}}" for i, w in enumerate(widths))
    click.echo(fmt.format(*header))
    click.echo("  ".join("-" * w for w in widths))
    for c in cells:
        click.echo(fmt.format(*c))
