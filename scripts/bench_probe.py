"""Benchmark: the batched SVM probe against scikit-learn's LinearSVC on VOC-2007-shaped features.

Both run the whole protocol on the same generated features (5,011 train / 4,952 test rows, 4,096-D, 20 classes
with VOC-2007's label frequencies, 'difficult' labels included):
  vggfeat     - every class and C in one batch on 80% of trainval, C per class by held-out AP, batched refit;
  sklearn     - the same protocol (same split, same choice of C) with one LinearSVC per class and per C;
  suite       - the approach of self-supervised benchmark suites: LinearSVC per class, per C and per fold of a
                k-fold cross-validation on trainval, then a refit at the chosen C.
Prints each one's time and test mAP (VOC07 11-point), the time ratios and the mAP differences.

    python scripts/bench_probe.py                       # the full benchmark (CPU: about 20 minutes)
    python scripts/bench_probe.py --n-train 1000 --n-test 1000 --dim 512 --Cs 0.01,1,100   # a quick look
"""

from __future__ import annotations

import platform
import time

import click
import numpy as np

DEFAULT_CS = "0.001,0.003,0.01,0.03,0.1,0.3,1,3,10,30,100"


def suite_probe(x, y, x_test, Cs, folds, seed):
    """LinearSVC per class, per C, per cross-validation fold; the best mean fold AP picks C; refit."""
    from vggfeat import metrics
    from vggfeat.probes.sklearn_ref import fit_linear_svc

    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(x)) % folds
    scores = np.empty((len(x_test), y.shape[1]))
    chosen = []
    for k in range(y.shape[1]):
        rows = y[:, k] != 0
        xk, yk, fk = x[rows], y[rows, k], fold_of[rows]
        cv = [
            np.mean(
                [
                    metrics.voc07_ap(
                        fit_linear_svc(xk[fk != f], yk[fk != f], c).decision_function(xk[fk == f]), yk[fk == f]
                    )
                    for f in range(folds)
                ]
            )
            for c in Cs
        ]
        chosen.append(Cs[int(np.nanargmax(cv))])
        scores[:, k] = fit_linear_svc(xk, yk, chosen[-1]).decision_function(x_test)
    return scores, np.array(chosen)


@click.command()
@click.option("--n-train", default=5011, show_default=True)
@click.option("--n-test", default=4952, show_default=True)
@click.option("--dim", default=4096, show_default=True)
@click.option("--Cs", "cs", default=DEFAULT_CS, show_default=True, help="The C grid, comma-separated.")
@click.option("--folds", default=3, show_default=True, help="Cross-validation folds of the suite baseline.")
@click.option("--device", default="auto", show_default=True, help="Where the batched solver runs.")
@click.option("--threads", default=0, help="torch threads (0: torch's default).")
@click.option("--skip-suite", is_flag=True, help="Leave out the k-fold baseline (the slowest).")
@click.option("--skip-sklearn", is_flag=True, help="Leave out the same-protocol LinearSVC run.")
@click.option("--seed", default=0, show_default=True)
def main(n_train, n_test, dim, cs, folds, device, threads, skip_suite, skip_sklearn, seed):
    import torch

    from vggfeat import metrics
    from vggfeat.data.synthetic_features import make_voc_like_features
    from vggfeat.probes.selection import fit_probe
    from vggfeat.probes.sklearn_ref import fit_sklearn_probe
    from vggfeat.utils.device import resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    Cs = [float(c) for c in cs.split(",")]
    x, y, x_test, y_test = make_voc_like_features(n_train, n_test, dim, seed=seed)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    click.echo(
        f"features: train {x.shape}, test {x_test.shape}, {y.shape[1]} classes, {int((y == 0).sum())} "
        f"difficult labels; {len(Cs)} values of C; solver on {dev} ({name}, {torch.get_num_threads()} "
        f"threads)"
    )

    def mean_ap(scores):
        return 100 * float(np.nanmean(metrics.voc07_ap(scores, y_test)))

    rows = []
    fit_probe(x[:256], y[:256], Cs[:2], metric="voc07_ap", device=dev)  # warm-up (kernels, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    probe, sel = fit_probe(x, y, Cs, metric="voc07_ap", seed=seed, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ours = probe.decision_function(x_test)
    rows.append(("vggfeat batched SVM (held-out C, refit)", time.perf_counter() - start, mean_ap(ours), sel.chosen))
    if not skip_sklearn:
        start = time.perf_counter()
        ref, ref_sel = fit_sklearn_probe(x, y, Cs, metric="voc07_ap", seed=seed)
        rows.append(
            (
                "sklearn LinearSVC, same protocol",
                time.perf_counter() - start,
                mean_ap(ref.decision_function(x_test)),
                ref_sel.chosen,
            )
        )
    if not skip_suite:
        start = time.perf_counter()
        scores, chosen = suite_probe(x, y, x_test, Cs, folds, seed)
        rows.append(
            (
                f"sklearn LinearSVC, {folds}-fold CV per class and C",
                time.perf_counter() - start,
                mean_ap(scores),
                chosen,
            )
        )

    base_t, base_map = rows[0][1], rows[0][2]
    click.echo(f"\n{'method':<46} {'seconds':>9} {'mAP %':>7} {'time / ours':>12} {'mAP - ours':>11}")
    for label, seconds, m, _ in rows:
        click.echo(f"{label:<46} {seconds:9.1f} {m:7.2f} {seconds / base_t:11.1f}x {m - base_map:+11.2f}")
    for label, _, _, chosen in rows[1:]:
        same = int(np.sum(np.isclose(chosen, rows[0][3])))
        click.echo(f"classes where '{label}' chose the same C as ours: {same}/{len(chosen)}")
    # the solvers themselves, at identical C per class: AP agreement on the same features
    if not skip_sklearn:
        from vggfeat.probes.sklearn_ref import SklearnSVMProbe

        same_c = metrics.voc07_ap(SklearnSVMProbe(C=sel.chosen).fit(x, y).decision_function(x_test), y_test)
        gap = 100 * np.nanmax(np.abs(same_c - metrics.voc07_ap(ours, y_test)))
        click.echo(f"at our chosen C per class, largest per-class AP gap to LinearSVC: {gap:.3f} points")


if __name__ == "__main__":
    main()
