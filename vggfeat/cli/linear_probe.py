"""`vggfeat linear-probe`: the paper's transfer protocol (Appendix B) - linear SVMs on frozen descriptors,
scored with the benchmark's own metric, reported beside Table 11."""

from __future__ import annotations

import click

from vggfeat import defaults
from vggfeat.cli.params import svm_options
from vggfeat.cli.probe_options import option_given, probe_options, run_probe
from vggfeat.probes.benchmark import LinearProbe, LowShotProbe


def parse_ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise click.BadParameter(f"{value!r}: give distinct comma-separated positive integers, e.g. 1,2,4,8")
    return tuple(sorted(ks))


@click.command("linear-probe", context_settings={"max_content_width": 100})
@probe_options
@svm_options
@click.option(
    "--classifier",
    type=click.Choice(["svm", "sklearn"]),
    default="svm",
    show_default=True,
    help="svm: all classes and C values solved together as batched tensor work (GPU when there is "
    "one); sklearn: the reference, one LinearSVC per class and C.",
)
@click.option(
    "--no-box",
    is_flag=True,
    help="voc2012-action: the whole image's descriptor only (Table 12's 79.2 for D & E); by default the person "
    "box's descriptor is stacked with it (the paper's best, 84.0).",
)
@click.option(
    "--low-shot",
    is_flag=True,
    help="voc2007 only, beyond the paper: low-shot VOC-2007 scored as the self-supervised suites (VISSL, "
    "fair_self_supervision_benchmark) score it - per class k positives and 19k negatives from trainval, 5 "
    "seeded samples per k, features scaled by 1/(|x|+1e-5), one SVM per class with class weight {1: 2, -1: 1}, "
    "all-point AP on test, mAP mean +- std per k (OUT/low-shot.json, .md, .png). C is picked per k on test, as "
    "those suites do, from their grid 0.01..1000. A k that some class cannot meet is refused.",
)
@click.option(
    "--low-shot-ks",
    "low_shot_ks",
    default=",".join(map(str, defaults.LOW_SHOT_KS)),
    show_default=True,
    help="The k values of --low-shot.",
)
@click.option(
    "--low-shot-samples",
    default=defaults.LOW_SHOT_SAMPLES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seeded samples per k for --low-shot.",
)
@click.option(
    "--low-shot-scoring",
    type=click.Choice(["suites", "11point-unweighted"]),
    default="suites",
    show_default=True,
    help="suites: as above, comparable with the suites' low-shot VOC07 tables; 11point-unweighted: vggfeat's "
    "first scoring (the paper's 11-point AP, no class weight, features as given, grid 0.01..100), to reproduce "
    "older numbers.",
)
def linear_probe(
    cs, holdout, classifier, no_box, low_shot, low_shot_ks, low_shot_samples, low_shot_scoring, **opts
) -> None:
    """Train one-vs-rest linear SVMs on frozen descriptors and score BENCHMARK by its own protocol.

    \b
    BENCHMARK          data (under --root or $VGGFEAT_DATA)           train / test      metric
    voc2007            VOCdevkit/VOC2007                              trainval / test   11-point mAP
    voc2012            VOCdevkit/VOC2012                              train / val       all-point mAP
    voc2012-action     VOCdevkit/VOC2012 (ImageSets/Action), one      train / val       all-point mAP,
                       sample per person box (image + box stacked)                      10 actions
    caltech101         101_ObjectCategories (102 classes)             30 / <=50 per class, 3 splits
    caltech256         256_ObjectCategories (257 classes)             60 / rest, 3 splits
    folder             class-per-subfolder images                     seeded splits     mean class recall

    Descriptors come from --features STORE (made by `vggfeat extract`) or are extracted here from
    --model/--weights with the paper's settings for the benchmark and cached in OUT/features, so a
    second probe extracts nothing. The report is OUT/linear-probe.{json,md,png}; a report of another probe
    there (other settings, data or features) is not replaced without --overwrite.

    \b
    Examples:
      vggfeat linear-probe voc2007 --root /data --weights vgg16.safetensors
      vggfeat linear-probe voc2007 --root /data --weights d.safetensors --weights e.safetensors
      vggfeat extract /data/VOCdevkit/VOC2007/JPEGImages -o voc07 --weights d.safetensors
      vggfeat linear-probe voc2007 --root /data --features voc07 --Cs 0.1,1,10
      vggfeat linear-probe caltech101 --root /data --weights d.safetensors    # stacks 3 scales
      vggfeat linear-probe voc2007 --root /data --weights d.safetensors --low-shot
      vggfeat linear-probe voc2012-action --root /data --weights d.safetensors --weights e.safetensors
    """
    given = {p.name for p in click.get_current_context().command.params if option_given(p.name)}
    if low_shot:
        apart, why = {"holdout", "classifier", "no_box"}, "do not apply to --low-shot (C is chosen per k on test)"
    else:
        apart, why = {"low_shot_ks", "low_shot_samples", "low_shot_scoring"}, "apply to --low-shot only"
    if given & apart:  # an option the run would ignore is refused before anything is read or written
        raise click.UsageError(f"{', '.join('--' + n.replace('_', '-') for n in sorted(given & apart))} {why}")
    if low_shot and opts["benchmark"] != "voc2007":
        raise click.UsageError(
            f"--low-shot is a VOC-2007 protocol (k positives per class): use it with voc2007, not {opts['benchmark']}"
        )
    if low_shot:
        # same VOC-2007 descriptors (and cache) as the full probe; the scoring's own grid unless --Cs is given
        Cs = cs if "cs" in given else None
        probe = LowShotProbe(ks=parse_ks(low_shot_ks), samples=low_shot_samples, Cs=Cs, scoring=low_shot_scoring)
        run_probe(opts, probe)
        return
    opts["box"] = not no_box
    run_probe(opts, LinearProbe(Cs=tuple(cs), holdout=holdout, classifier=classifier))
