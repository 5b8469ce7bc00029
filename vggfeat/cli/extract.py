"""`vggfeat extract`: the paper's multi-scale, flip-averaged dense descriptors into a feature store."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import click

from vggfeat import defaults
from vggfeat.cli.params import SCALES, batch_size_option, device_option, workers_option
from vggfeat.cli.weights import net_pairs
from vggfeat.features.launch import submit_parts
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.features.shard_files import finish_command
from vggfeat.features.shard_plan import parse_part, plan_shards, this_part
from vggfeat.utils.distributed import env_info
from vggfeat.weight_sources import WEIGHTS_HELP


def default_out(images: tuple[str, ...], layer: str) -> Path:
    """The store folder when -o is not given: vggfeat-out/<inputs>-<layer>, named after the first input (a
    folder's name, a file's or @list's stem) and how many more there are, e.g. vggfeat-out/imgs-fc7."""
    names = []
    for item in images:
        path = Path(item[1:] if item.startswith("@") else item)
        name = path.name if path.is_dir() else path.stem
        names.append(name or path.resolve().name or "inputs")  # `.` names the current folder
    stem = names[0] if len(names) == 1 else f"{names[0]}-and-{len(names) - 1}-more"
    return defaults.OUT_ROOT / re.sub(r"[^\w.+-]+", "_", f"{stem}-{layer}")


# vggfeat.features.nets checks these names; written out here so --help does not import torch
LAYER_HELP = (
    "Layer to pool. VGG: conv1_1 ... conv5_4, pool1 ... pool5, fc6, fc7, fc8 (after its ReLU). timm:NAME: "
    "pre_logits (= fc7, the default: its pooled features before the classifier), or a forward_intermediates "
    "index 0..N-1 or its feature_info module name (e.g. features.14 for vgg11, layer3 for a ResNet), "
    "globally average-pooled; a wrong name lists the valid ones."
)


@click.command(context_settings={"max_content_width": 100})
@click.argument("images", nargs=-1, required=True)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    help="Feature store folder: shards emb/<i>.npy (N_i x D) + meta/<i>.parquet, and manifest.json. "
    "Default: vggfeat-out/<inputs>-<layer>, "
    "named after the first input (e.g. vggfeat-out/imgs-fc7 for imgs/), printed when the run starts.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Net name (vgg_d, vgg16, ... see `vggfeat models`) or timm:NAME. Repeat with --weights "
    "to stack several nets (the paper's D & E fusion). Default: read from the weights (net D by default).",
)
@click.option(
    "--weights",
    "weights",
    multiple=True,
    help=WEIGHTS_HELP + " One per --model.",
)
@click.option("--layer", default="fc7", show_default=True, help=LAYER_HELP)
@click.option(
    "--scales",
    type=SCALES,
    default="256,384,512",
    show_default=True,
    help="Smallest image side Q at each scale (Appendix B: VOC 256-768, Caltech 256,384,512).",
)
@click.option("--flip/--no-flip", default=True, show_default=True, help="Average with the mirrored image.")
@click.option(
    "--aggregate",
    type=click.Choice(["mean", "stack"]),
    default="mean",
    show_default=True,
    help="Over scales: mean (the paper's VOC setting) or stack (its Caltech setting).",
)
@click.option("--l2/--no-l2", default=True, show_default=True, help="L2-normalise each final descriptor.")
@click.option("--l2-parts", is_flag=True, help="Also L2-normalise per scale and per net before aggregating.")
@click.option(
    "--snap",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Round each image's long side to a multiple of SNAP px (e.g. 32) so varied images share "
    "batches; 1 keeps the exact isotropic rescale.",
)
@click.option(
    "--fast-decode",
    is_flag=True,
    help="Decode large JPEGs at 1/2..1/8 size before rescaling (PIL draft mode): faster on big photos, "
    "descriptors deviate slightly (docs/benchmarks.md). Default: the exact rescale of the full decode.",
)
@batch_size_option()
@device_option()
@workers_option()
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Storage type of the rows (emb/<i>.npy); float16 refuses descriptors beyond its range.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Compute precision: auto is bf16 autocast on CUDA, float32 on the CPU. bf16 is recorded in the store's "
    "settings: a float32 run never reuses its rows.",
)
@click.option(
    "--winograd/--no-winograd",
    default=True,
    show_default=True,
    help="On the CPU, run VGG's wide 3x3 convs (128 x 128 channels and more: conv2_2 on) as Winograd F(4x4,3x3) "
    "and fc6 as Winograd F(2x2,7x7), in float32: faster VGG-16 extraction (+512 MB for fc6's transformed "
    "weight); descriptors agree with direct convolution to ~1e-7.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the net once per recurring batch shape (the plan keeps at most 32 per scale): for "
    "long runs on a GPU; off by default until measured there (docs/benchmarks.md).",
)
@click.option(
    "--gpu-decode",
    is_flag=True,
    help="Decode JPEGs on the GPU in batches and rescale there (CUDA only): frees the CPU loader; antialiased "
    "bilinear instead of PIL's, so descriptors deviate slightly from the exact default (recorded in the store).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random init of --weights random.")
@click.option(
    "--chunk-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per resumable chunk (the most work an interruption can lose). Batches never span two chunks "
    "(a resumed run reproduces each bit for bit): on a GPU, chunks of a few thousand images fill more batches.",
)
@click.option(
    "--shard-size",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Loose images (files, folders, @lists) per output shard (each input tar is one shard).",
)
@click.option(
    "--part",
    default=None,
    metavar="I/N",
    help="Write only the I-th of N shares of the shards (0 <= I < N); parts may run at once on machines sharing "
    "OUT. Default: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else RANK/WORLD_SIZE, else all shards.",
)
@click.option(
    "--array",
    default=None,
    type=click.IntRange(min=1),
    help="Run the extraction as N parts through submitit: a SLURM job array (--launcher slurm) or N local "
    "processes (--launcher local).",
)
@click.option(
    "--launcher",
    type=click.Choice(["slurm", "local"]),
    default="slurm",
    show_default=True,
    help="Where --array runs its parts.",
)
@click.option("--slurm-partition", default=None, help="SLURM partition of the --array jobs.")
@click.option("--slurm-gpus-per-task", default=None, type=click.IntRange(min=0), help="GPUs per --array job.")
@click.option("--slurm-cpus-per-task", default=None, type=click.IntRange(min=1), help="CPUs per --array job.")
@click.option("--slurm-time", default=None, type=click.IntRange(min=1), help="Minutes per --array job.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a store in OUT that has other settings (or is broken); the old one stays until the new is done.",
)
@click.option(
    "--hash-inputs",
    is_flag=True,
    help="Also record each input's sha256 (reads every file once more): a rerun then re-extracts an image "
    "whose content changed even with the same size and time, and not one that was only touched. Size and "
    "modification time are always recorded.",
)
@click.option("--strict", is_flag=True, help="Stop at the first unusable image instead of skipping it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(
    images,
    out,
    models,
    weights,
    layer,
    scales,
    flip,
    aggregate,
    l2,
    l2_parts,
    snap,
    fast_decode,
    batch_size,
    device,
    workers,
    dtype,
    precision,
    winograd,
    compile_,
    gpu_decode,
    seed,
    chunk_size,
    shard_size,
    part,
    array,
    launcher,
    slurm_partition,
    slurm_gpus_per_task,
    slurm_cpus_per_task,
    slurm_time,
    overwrite,
    hash_inputs,
    strict,
    quiet,
) -> None:
    """Extract descriptors of IMAGES into a feature store (-o, default vggfeat-out/<inputs>-<layer>), the
    paper's way (Appendix B).

    IMAGES are image files, folders (searched recursively) or @list.txt files of paths (one per line,
    relative to the list's folder). Each image is rescaled so its smallest side is Q for every scale,
    the net runs densely over the whole image (its FC layers are convolutions), the layer's map is
    average-pooled and averaged with the mirrored image's; scales are averaged or stacked, nets stacked,
    and the result L2-normalised. Preprocessing follows the loaded weights' convention.

    IMAGES may instead be webdataset tar shards (shards/{000000..000099}.tar, shards/*.tar): each sample's
    image member is one input, read by streaming the tar; each input tar becomes one output shard.

    The store is a folder of shards (emb/<i>.npy rows + meta/<i>.parquet paths and keys, same order), each
    written whole or not at all. Interrupted runs continue with the shards not done when the same command is
    run again; a finished store is not recomputed, except for shards whose inputs changed since (size or
    modification time). Unusable files (corrupt, truncated, empty, not images) are skipped and listed; when
    no input is usable the command fails, naming why. Processes writing one store share its shards (each
    shard is locked while written); --part I/N or --array N split the work over machines;
    `vggfeat store status OUT` says what is done and what finishes the rest.

    \b
    Examples:
      vggfeat extract --layer fc7 imgs/       # -> vggfeat-out/imgs-fc7
      vggfeat extract photos/ -o feats --weights torchvision:vgg19
      vggfeat extract @trainval.txt -o voc --weights d.safetensors --weights e.safetensors \\
          --scales 256,384,512,640,768
      vggfeat extract 'shards/{000000..000099}.tar' -o feats --array 100 --slurm-partition gpu \\
          --slurm-gpus-per-task 1 --slurm-time 240
      torchrun --nproc-per-node 4 -m vggfeat extract imgs/ -o feats --weights d.safetensors
    """
    import sys

    if part is not None and array is not None:
        raise click.UsageError("--part and --array exclude each other: --array N runs parts 0/N ... N-1/N itself")
    main = env_info().is_main  # under torchrun, rank 0 speaks for the run: one summary, not one per process
    named_out, out = out is not None, out if out is not None else str(default_out(images, layer))
    try:  # before torch loads (seconds): a mistyped folder answers at once; @lists are planned once, in OUT
        which = parse_part(part) if part is not None else None
        # this process's part's paths held (with --array, part 0's: the check that the inputs hold images)
        held = (0, array) if array is not None else this_part(which)
        planned = plan_shards(images, shard_size, Path(out), hash_inputs, held)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if not named_out and main:
        click.echo(f"no -o given: the store goes to {out}", err=True)
    # what is computed and how, each built once here (a bad combination is one Error line)
    protocol = Protocol(
        layer=layer,
        scales=scales,
        flip=flip,
        aggregate=aggregate,
        l2=l2,
        l2_parts=l2_parts,
        snap=snap,
        fast_decode=fast_decode,
    )
    runtime = Runtime(
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        winograd=winograd,
        compile=compile_,
        gpu_decode=gpu_decode,
    )
    pairs = net_pairs(models, weights, seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = ["vggfeat", "extract", *sys.argv[sys.argv.index("extract") + 1 :]] if "extract" in sys.argv else None
    call = dict(
        images=list(images),
        out=out,
        protocol=protocol,
        runtime=runtime,
        models=pairs,
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
        strict=strict,
        progress=not quiet,
        shard_size=shard_size,
        chunk_size=chunk_size,
        hash_inputs=hash_inputs,
        command=finish_command(argv) if argv else None,
    )
    if array is not None:
        slurm = dict(partition=slurm_partition, gpus=slurm_gpus_per_task, cpus=slurm_cpus_per_task, minutes=slurm_time)
        submit_parts(call, array, launcher, slurm, echo=click.echo)
        return

    from vggfeat.features.extract import extract_part

    start = time.perf_counter()
    try:
        # the inputs as planned above, walked once (not in `call`: --array pickles that to every part, which
        # plans its inputs itself - an @list's plan is read from OUT/.listing, where the plan above saved it)
        result = extract_part(**call, part=which, planned=planned)
    except KeyboardInterrupt:
        if not main:
            raise SystemExit(130) from None
        click.secho(
            f"\ninterrupted: finished shards and chunks are kept in {out}; run the same command again to continue",
            fg="yellow",
            err=True,
        )
        raise SystemExit(130) from None
    except (FileNotFoundError, FileExistsError) as e:  # VggfeatError is shown by LazyGroup; others are bugs
        raise click.ClickException(str(e)) from None
    seconds = time.perf_counter() - start
    if not main:
        return
    store = result.store
    i, n = result.part
    if store is None:
        mine = f"part {i}/{n}: " if n > 1 else ""
        click.echo(f"{mine}{len(result.written)} shards written in {seconds:.1f} s -> {out}")
        if result.busy:
            click.echo(f"{len(result.busy)} shards were being written by other processes (e.g. {result.busy[0]})")
        click.echo(result.status.summary())
        click.echo(f"progress: vggfeat store status {out}")
        return
    what = f"({store.dim}-D {store.features.dtype}, layer {layer}, scales {','.join(map(str, scales))})"
    if store.already_complete:
        click.echo(f"{store.root} is already complete: {len(store)} images {what}; nothing recomputed")
    else:
        shards = len(store.shard_names)
        click.echo(f"{len(store)} images -> {store.root} {what}, {shards} shard(s), in {seconds:.1f} s")
    skipped = store.skipped
    if skipped:
        click.echo(f"skipped {len(skipped)} unusable inputs:")
        for item in skipped[:20]:
            click.echo(f"  {item['path']}: {item['reason']}")
        if len(skipped) > 20:
            click.echo(f"  ... and {len(skipped) - 20} more (all listed in {store.root}/shards/*.json)")
