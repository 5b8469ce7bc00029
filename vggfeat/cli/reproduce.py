"""`vggfeat reproduce`: Table 11 or Table 12 of the paper in one command (Sect. 4, Appendix B), our numbers
beside the paper's; the work is vggfeat.reproduce.tables, this module only parses and prints."""

from __future__ import annotations

import click

from vggfeat import defaults
from vggfeat.cli.params import SCALES, batch_size_option, device_option, fusion_option, svm_options, workers_option
from vggfeat.features.runtime import Runtime
from vggfeat.reproduce.report import table_lines
from vggfeat.reproduce.tables import Nets, ReproduceOptions, parse_net, reproduce_table


@click.command("reproduce", context_settings={"max_content_width": 100})
@click.argument("table", type=click.Choice(["table11", "table12"]))
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    help="Folder holding any of VOCdevkit/VOC2007, VOCdevkit/VOC2012, 101_ObjectCategories, "
    "256_ObjectCategories (Table 12: VOCdevkit/VOC2012 with ImageSets/Action). Default: $VGGFEAT_DATA.",
)
@click.option(
    "--net-d",
    "net_d",
    required=True,
    help="Net D's weights, as --weights takes them: a file (vggfeat .safetensors, torchvision .pth, Caffe "
    ".caffemodel; the architecture is read from it), torchvision:vgg16, timm:TAG, hf-hub:..., or random (smoke "
    "tests only); MODEL=WEIGHTS names the architecture.",
)
@click.option("--net-e", "net_e", required=True, help="Net E's weights, as --net-d (e.g. torchvision:vgg19).")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Output folder. Default: {defaults.OUT_ROOT}/TABLE.",
)
@click.option(
    "--scales",
    type=SCALES,
    default=None,
    help="Override every benchmark's scales Q (e.g. 64,96 for a quick run). Default: the paper's, per benchmark.",
)
@svm_options
@click.option(
    "--splits",
    "n_splits",
    default=defaults.SPLITS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Caltech's random splits (the paper's 3); their lists are written to OUT/<benchmark>/splits and reused.",
)
@click.option(
    "--seed", default=defaults.SEED, show_default=True, help="Seed of the splits, the held-out sets and random nets."
)
@device_option()
@batch_size_option(help="Images per forward pass when extracting (their flipped copies ride along).")
@workers_option(help="Loader processes decoding and rescaling images when extracting.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@fusion_option
def reproduce(
    table, root, net_d, net_e, out, scales, cs, holdout, n_splits, seed, device, batch_size, workers, quiet, fusion_l2
):
    """Reproduce TABLE with nets D and E: every benchmark found under --root, probed with the paper's settings
    for D, E and D & E (the D and E descriptors stacked: nothing extracted twice), printed and written to
    OUT/TABLE.{md,json,png} with the paper's numbers beside ours, labelled "paper".

    \b
    table11   VOC-2007 (11-point mAP), VOC-2012 val (all-point mAP), Caltech-101 and -256 (mean class
              recall over 3 splits); a dataset not found leaves its column empty with the reason
    table12   VOC-2012 action val (mAP over 10 actions): image only, and image + person box stacked

    A rerun reuses the extracted features and the finished rows, so an interrupted run continues.

    \b
    Example:
      vggfeat reproduce table11 --root /data --net-d vgg16.safetensors --net-e vgg19.safetensors -o runs/table11
    """
    from pathlib import Path

    nets = Nets(parse_net(net_d, "vgg_d"), parse_net(net_e, "vgg_e"))
    for name, (model, weights) in (("D", nets.d), ("E", nets.e)):
        if weights is None:
            click.secho(
                f"WARNING: net {name} ({model}) has no weights: it is RANDOMLY INITIALISED; its numbers mean nothing",
                fg="yellow",
                err=True,
            )
    options = ReproduceOptions(
        scales=scales,
        Cs=cs,
        holdout=holdout,
        seed=seed,
        splits=n_splits,
        runtime=Runtime(device=device, batch_size=batch_size, workers=workers),
        progress=not quiet,
        fusion_l2=fusion_l2 or defaults.FUSION_L2,
    )
    out_dir = Path(out) if out else defaults.out_dir(table)
    try:
        result = reproduce_table(table, root, out_dir, nets, options, echo=click.echo)
    except OSError as e:  # VggfeatError is shown by the group as one line; other exceptions are bugs
        raise click.ClickException(f"{e.filename or out_dir}: {e.strerror or e}") from None
    click.echo("")
    for line in table_lines(result):
        click.echo(line)
    files = result["files"]
    click.echo(f"\ntable: {files['markdown']}, {files['json']}, {files['plot']}")
