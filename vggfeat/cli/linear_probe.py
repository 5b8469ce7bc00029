"""`vggfeat linear-probe`: the paper's transfer protocol (Appendix B) - linear SVMs on frozen descriptors,
scored with the benchmark's own metric, reported beside Table 11."""

from __future__ import annotations

import click

from vggfeat.cli.params import COST_GRID
from vggfeat.cli.probe_options import echo_split, probe_options, run_probe


@click.command("linear-probe", context_settings={"max_content_width": 100})
@probe_options
@click.option(
    "--Cs",
    "cs",
    type=COST_GRID,
    default="0.001,0.003,0.01,0.03,0.1,0.3,1,3,10,30,100",
    show_default=True,
    help="SVM cost grid; each class's C is chosen on held-out training images, then refit on all.",
)
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0.05, 0.5),
    help="Fraction of the training images held out to choose C (the paper's 20%).",
)
@click.option(
    "--classifier",
    type=click.Choice(["svm", "sklearn"]),
    default="svm",
    show_default=True,
    help="svm: all classes and C values solved together as batched tensor work (GPU when there is "
    "one); sklearn: the reference, one LinearSVC per class and C.",
)
def linear_probe(cs, holdout, classifier, **opts) -> None:
    """Train one-vs-rest linear SVMs on frozen descriptors and score BENCHMARK by its own protocol.

    \b
    BENCHMARK          data (under --root or $VGGFEAT_DATA)           train / test      metric
    voc2007            VOCdevkit/VOC2007                              trainval / test   11-point mAP
    voc2012            VOCdevkit/VOC2012                              train / val       all-point mAP
    caltech101         101_ObjectCategories (102 classes)             30 / <=50 per class, 3 splits
    caltech256         256_ObjectCategories (257 classes)             60 / rest, 3 splits
    folder             class-per-subfolder images                     seeded splits     mean class recall

    Descriptors come from --features STORE (made by `vggfeat extract`) or are extracted here from
    --model/--weights with the paper's settings for the benchmark and cached in OUT/features, so a
    second probe extracts nothing. The report (JSON, markdown, PNG) is written to OUT.

    \b
    Examples:
      vggfeat linear-probe voc2007 --root /data --weights vgg16.safetensors
      vggfeat linear-probe voc2007 --root /data --weights d.safetensors --weights e.safetensors
      vggfeat extract /data/VOCdevkit/VOC2007/JPEGImages -o voc07 --weights d.safetensors
      vggfeat linear-probe voc2007 --root /data --features voc07 --Cs 0.1,1,10
      vggfeat linear-probe caltech101 --root /data --weights d.safetensors    # stacks 3 scales
    """

    def probe(splits, store):
        # imported here: sklearn and torch take seconds, and a missing dataset is reported before them
        from vggfeat.probes.run import run_linear_probe
        from vggfeat.utils.device import resolve_device

        return run_linear_probe(
            splits,
            store,
            Cs=cs,
            classifier=classifier,
            holdout=holdout,
            seed=opts["seed"],
            device=resolve_device(opts["device"]),
            progress=echo_split,
        )

    run_probe(opts, stem="linear-probe", probe=probe)
