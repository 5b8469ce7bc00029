"""`vggfeat weights info|convert`: what a weight file or name holds, and its conversion to vggfeat's
safetensors with the preprocessing it needs (the released weights)."""

from __future__ import annotations

import json

import click

from vggfeat.weight_sources import RANDOM, TIMM_PREFIX, WEIGHTS_HELP, default_weights

GROUP_HELP = (
    "Inspect weights and convert them to vggfeat's safetensors.\n\n"
    "SOURCE is a weight file or a name. " + WEIGHTS_HELP.removeprefix("Weights: ") + "\n\n"
    "\b\nExamples:\n"
    "  vggfeat weights info torchvision:vgg16\n"
    "  vggfeat weights convert VGG_ILSVRC_16_layers.caffemodel vgg16-caffe.safetensors\n"
    "  vggfeat weights convert torchvision:vgg16 vgg16.safetensors   (on a machine with network)\n"
)


def net_pairs(
    models: tuple[str, ...], weights: tuple[str, ...], seed: int, *, announce: bool = True
) -> list[tuple[str, str]]:
    """(model, weights) of each net of a feature command: one --weights per --model, else each net's default
    pretrained weights (random init only with --weights random, said on stderr). `announce=False` leaves naming
    the default weights (`say_default`, which imports torch) to the caller, after its own input checks."""
    if weights and models and len(models) != len(weights):
        raise click.UsageError(
            f"{len(models)} --model but {len(weights)} --weights: give one --weights (a file, a name or random) "
            "per --model, or none for each net's default pretrained weights"
        )
    if weights:
        # a random net has no file to read its architecture from: "auto" is net D
        pairs = [
            ("vgg_d" if m == "auto" and w == RANDOM else m, w)
            for m, w in zip(models or ["auto"] * len(weights), weights, strict=True)
        ]
    else:
        pairs = [(m, default_weights(m)) for m in models or ["auto"]]
        if announce:
            say_default([w for _, w in pairs])
    for name, w in pairs:
        if w == RANDOM:
            init = "timm's own init" if name.startswith(TIMM_PREFIX) else "Glorot"
            click.secho(
                f"note: --weights random: {name} is randomly initialised ({init}, seed {seed}); its descriptors "
                "carry no learned information",
                fg="yellow",
                err=True,
            )
    return pairs


def say_default(names: list[str]) -> None:
    """Name the default weights on stderr when they are at hand; when they are not, say nothing here: the
    command stops later with the one line naming the missing file (after its own input checks), or downloads."""
    from vggfeat.models.resolve import resolve_weights
    from vggfeat.models.weights import WeightsError

    try:
        for name in names:
            resolve_weights(name, download=False)
    except WeightsError:
        return
    click.echo(f"weights: {', '.join(names)} (the default; --weights to choose)", err=True)


@click.group("weights", help=GROUP_HELP, context_settings={"max_content_width": 100})
def weights() -> None:
    pass


@weights.command("info")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(source, as_json) -> None:
    """Layout, net (Table 1 config, options), preprocessing, parameter count and sha256 of SOURCE."""
    from vggfeat.models.convert import weights_info

    d = weights_info(source)
    if as_json:
        click.echo(json.dumps(d, indent=2, allow_nan=False))  # strict JSON: a NaN here is a bug, not a result
        return
    pre = d["preprocessing"]
    options = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d["options"].items())
    rows = [
        ("source", f"{d['source']} ({d['kind']})"),
        ("file", d["file"] or "none (random initialisation)"),
        ("sha256", d["sha256"] or "-"),
        ("layout", d["layout"] or "-"),
        ("net", f"{d['arch']} (config {d['config']}, {d['num_classes']} classes)"),
        ("options", options or "defaults"),
        ("parameters", f"{d['parameters']:,}"),
        (
            "preprocessing",
            f"{pre['channel_order']} in [0, {pre['value_range']:g}], mean {tuple(pre['mean'])}, std "
            f"{tuple(pre['std'])} (from {d['preprocessing_from']})",
        ),
    ]
    rows += [(f"meta.{k}", v) for k, v in d["metadata"].items() if k not in ("arch", "config", "num_classes")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@weights.command("convert")
@click.argument("source")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def convert(source, out, overwrite) -> None:
    """Write SOURCE as vggfeat safetensors OUT: vggfeat's layout (fc6 as its 7x7 conv) with the net's
    architecture, preprocessing and source as metadata, so it loads anywhere with `--weights OUT`."""
    from vggfeat.models.convert import convert_weights, weights_info

    path = convert_weights(source, out, overwrite=overwrite)
    d = weights_info(path)
    click.echo(f"{source} -> {path} ({d['arch']}, {d['parameters']:,} parameters, sha256 {d['sha256'][:16]}...)")
