"""`vggfeat demo --quick` end to end through the CLI: the report's files, and its numbers against the probes'
own outputs and against a probe refitted by hand from the cached features."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import voc_labels

from vggfeat import metrics
from vggfeat.config import ConfigError, load_config
from vggfeat.demo.config import RECIPES, DemoConfig, SourceConfig, load_demo_config
from vggfeat.demo.report import demo_dict, markdown, summary_lines
from vggfeat.features.store import load_store
from vggfeat.probes import LinearSVMProbe
from vggfeat.train.recipe import load_recipe

# on every seed tried, trained net D beats the random baseline clearly; MARGIN mAP points on both
# probes, a little under the smallest margin measured on seeds 0-9 (docs/benchmarks.md, "Quick demo margins")
MARGIN = 4.0


def run_demo_cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vggfeat", "demo", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run_demo_cli(out, "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_quick_demo_writes_the_report(quick_demo):
    out, stdout = quick_demo
    report = out / "report"
    for name in ("demo.md", "demo.json", "training_curve.png", "per_class_ap.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 200, name
    data = json.loads((report / "demo.json").read_text())
    assert data["quick"] is True
    cfg, path = load_demo_config(quick=True)
    for net, recipe in (("net_a", cfg.net_a), ("net_d", cfg.net_d)):  # one point per epoch of the recipe
        assert len(data["training"][net]["curve"]) == load_recipe(path.parent / recipe).optim.epochs
    for tag in ("trained", "random"):
        for key in ("linear_map", "knn_map"):
            assert 0 < data["results"][tag][key] <= 100
            assert f"{data['results'][tag][key]:.1f}" in stdout  # the terminal table shows the same numbers
    assert data["margin"]["linear_map"] == pytest.approx(
        data["results"]["trained"]["linear_map"] - data["results"]["random"]["linear_map"], abs=0.011
    )
    # what the demo exists to show: training beats a random net of the same architecture
    assert data["seed"] == 0
    assert cfg.random_nets == 1 and "draws" not in data["results"]["random"]
    assert data["margin"]["linear_map"] >= MARGIN and data["margin"]["knn_map"] >= MARGIN, data["margin"]
    # its source: single VOC pictograms, generated for this run's settings (SYNTHETIC_DONE records them)
    assert "kind=pictograms seed=0 classes=10" in (out / "source" / "SYNTHETIC_DONE").read_text()
    assert (
        data["source"] == "10 classes of generated single VOC pictograms"
        and "10 of them the source's" in data["target"]
    )
    md = (report / "demo.md").read_text()
    assert f"{data['results']['trained']['linear_map']:.1f}" in md
    # the source's 10 classes apart from the 10 it never saw: the means of their per-class APs, shown in both
    split, ap = data["by_source_class"], data["results"]["trained"]["per_class_ap"]
    seen = [
        c for c in ap if c in {"aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow"}
    ]
    assert split["source"]["classes"] == len(seen) == 10 and split["other"]["classes"] == 10
    aps = [ap[c] for c in seen if ap[c] is not None]
    assert split["source"]["trained"] == pytest.approx(sum(aps) / len(aps), abs=0.006)
    for part, n in (("source", 10), ("other", 10)):
        row = f"linear SVMs, the {'source' + chr(39) + 's' if part == 'source' else 'other'} {n}"
        assert row in stdout and row in md


def test_quick_demo_numbers_are_the_probes_numbers(quick_demo):
    out, _ = quick_demo
    data = json.loads((out / "report" / "demo.json").read_text())
    nets = [data["results"]["trained"], data["results"]["random"]]
    for net in nets:
        probe = json.loads(Path(net["linear_report"]).read_text())
        knn = json.loads(Path(net["knn_report"]).read_text())
        assert probe["headline"] == net["linear_map"]
        assert knn["headline"] == net["knn_map"]
        assert {r["class"]: r["value"] for r in probe["per_class"]} == net["per_class_ap"]
    assert len({net["features"]["store"] for net in nets}) == len(nets)  # the random net has its own descriptors
    for net in nets:  # quick.yaml's probe_plots: false - the report's own plots only
        for report in (net["linear_report"], net["knn_report"]):
            assert Path(report).is_file() and not Path(report).with_suffix(".png").exists(), report

    # refit the trained net's SVMs by hand from its cached descriptors at the chosen C: same per-class AP
    voc = out / "target"
    store = load_store(data["results"]["trained"]["features"]["store"])
    train_paths, train_y = voc_labels(voc, "trainval")
    test_paths, test_y = voc_labels(voc, "test")
    x_train = np.asarray(store.features[store.rows_for(train_paths)], np.float32)
    x_test = np.asarray(store.features[store.rows_for(test_paths)], np.float32)
    chosen = np.array(list(data["results"]["trained"]["chosen_C"].values()))
    ap = metrics.voc07_ap(LinearSVMProbe(C=chosen).fit(x_train, train_y).decision_function(x_test), test_y)
    ours = np.array([np.nan if v is None else v for v in data["results"]["trained"]["per_class_ap"].values()])
    np.testing.assert_allclose(ours, np.round(100 * ap, 2), atol=0.011)


def test_demo_rerun_resumes_without_retraining(quick_demo):
    out, _ = quick_demo
    weights = next((out / "runs").glob("demo_vgg_d*/model.safetensors"))
    mtime = weights.stat().st_mtime_ns
    proc = run_demo_cli(out, "--quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert weights.stat().st_mtime_ns == mtime  # the finished training runs are reused, not repeated


@pytest.mark.slow  # ~20-40 s: a second demo run over a copied folder
def test_demo_rerun_retrains_a_truncated_net(quick_demo, tmp_path):
    src, _ = quick_demo
    out = tmp_path / "out"
    shutil.copytree(src, out)
    weights = next((out / "runs").glob("demo_vgg_d*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short, a full disk
    proc = run_demo_cli(out, "--quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{weights}: not a valid safetensors file" in proc.stderr and "training it again" in proc.stderr
    assert "Traceback" not in proc.stderr
    # restored from the run's last checkpoint: the same net, so the same results as the first run
    before = json.loads((src / "report" / "demo.json").read_text())["results"]["trained"]
    after = json.loads((out / "report" / "demo.json").read_text())["results"]["trained"]
    assert after["linear_map"] == before["linear_map"] and after["knn_map"] == before["knn_map"]


def test_demo_refuses_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_demo_cli(blocker / "out", "--quick")
    assert proc.returncode != 0
    assert "cannot write to" in proc.stderr and str(blocker) in proc.stderr


def test_random_baseline_is_the_mean_of_its_nets(tmp_path):
    # several random nets: results["random"] is their mean (per class too) and keeps each one's own results
    def probe(net, headline, ap):
        linear = {
            "headline": headline,
            "per_class": [{"class": c, "value": v, "chosen_C": [1.0]} for c, v in ap.items()],
            "features": {"store": f"{net}-store"},
        }
        return {"linear": (linear, tmp_path / f"{net}.json"), "knn": ({"headline": headline / 2}, tmp_path / "k")}

    probes = {
        "trained": probe("trained", 30.0, {"cat": 40.0, "dog": None}),
        "random": probe("random", 20.0, {"cat": 10.0, "dog": None}),
        "random2": probe("random2", 14.0, {"cat": 21.0, "dog": None}),
        "random3": probe("random3", 11.0, {"cat": 12.5, "dog": None}),
    }
    summary = {"history": [{"epoch": 1, "val_top1": 0.5, "val_top5": 0.9}]}
    parts = dict(
        cfg=DemoConfig(random_nets=3),
        quick=True,
        runs={"net_a": tmp_path, "net_d": tmp_path},
        summaries={"net_a": summary, "net_d": summary},
        timings={"total": 1.0},
    )
    report = demo_dict(probes=probes, **parts)
    random = report["results"]["random"]
    assert (random["linear_map"], random["knn_map"]) == (15.0, 7.5)
    assert random["per_class_ap"] == {"cat": 14.5, "dog": None}
    assert [d["linear_map"] for d in random["draws"]] == [20.0, 14.0, 11.0]
    assert report["margin"] == {"linear_map": 15.0, "knn_map": 7.5}
    assert "random D, mean of 3" in summary_lines(report)[0] and "random D, mean of 3" in markdown(report)
    # the target classes the source had, apart from the others (pictogram sources share the VOC classes)
    split = demo_dict(probes=probes, shared_classes=("cat",), **parts)["by_source_class"]
    assert split["source"] == {"trained": 40.0, "random": 14.5, "classes": 1}
    assert split["other"] == {"trained": None, "random": None, "classes": 1}  # dog: no positives, no AP
    assert "by_source_class" not in report  # a shapes source shares no class with the target
    # one random net: its own results, as before
    one = demo_dict(probes={k: probes[k] for k in ("trained", "random")}, **parts)["results"]["random"]
    assert one["linear_map"] == 20.0 and "draws" not in one and one["linear_report"].endswith("random.json")


def test_demo_files_load_strictly():
    for quick in (False, True):
        cfg, path = load_demo_config(quick)
        assert (
            isinstance(cfg, DemoConfig) and (path.parent / cfg.net_a).is_file() and (path.parent / cfg.net_d).is_file()
        )
    with pytest.raises(ValueError, match="probe"):
        load_config(DemoConfig, RECIPES / "quick.yaml", ["probes.k=3"])
    # the source dataset's settings live in the demo's files, not in the training recipes
    assert load_demo_config(True)[0].source == SourceConfig(kind="pictograms", classes=10, per_class=32, seed=0)
    assert load_demo_config(False)[0].source == SourceConfig(kind="shapes", classes=30, per_class=40, seed=0)
    for setting, words in (
        ("source.kind=faces", "source.kind must be one of shapes, pictograms, got 'faces'"),
        ("source.classes=21", "source.classes must be 1..20 (the generated pictograms), got 21"),
        ("source.per_class=0", "source.per_class must be > 0, got 0"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(DemoConfig, RECIPES / "quick.yaml", [setting])


def test_demo_makes_its_source_then_trains_on_it_like_any_dataset(tmp_path, monkeypatch):
    import vggfeat.demo.pipeline as pipeline

    class Stop(Exception):
        pass

    seen = []

    def train(recipe, run, *, data_root, **kwargs):
        seen.append((run.name, (Path(data_root) / "SYNTHETIC_DONE").read_text()))
        raise Stop

    monkeypatch.setattr(pipeline, "train", train)
    with pytest.raises(Stop):
        pipeline.run_demo(tmp_path / "out", quick=True, seed=3, progress=False, echo=lambda _: None)
    assert seen == [("demo_vgg_a_quick-seed3", "kind=pictograms seed=3 classes=10 per_class=32 size=72x96\n")]
    # a folder of the user's own where the source would go is never written into
    (tmp_path / "mine" / "source" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(pipeline.DemoError, match="holds train/ or val/ not generated by vggfeat"):
        pipeline.run_demo(tmp_path / "mine", quick=True, progress=False, echo=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "mine" / "source").iterdir()) == ["train"]


def test_demo_reuses_a_finished_run_of_the_same_recipe_and_source_only(tmp_path, monkeypatch, tiny_model):
    import vggfeat
    import vggfeat.demo.pipeline as pipeline

    trained = []

    def train(recipe, run, **kwargs):
        trained.append(run)
        vggfeat.save_weights(tiny_model("vgg_a"), run / "model.safetensors")
        return {"history": [], "run": str(run)}

    monkeypatch.setattr(pipeline, "train", train)
    recipe = load_recipe(RECIPES / "vgg_a_quick.yaml")
    (tmp_path / "run").mkdir()
    source = {"kind": "pictograms", "classes": 10, "per_class": 32, "seed": 0}
    for settings in (source, source, {**source, "per_class": 16}):
        pipeline._train(recipe, tmp_path / "run", tmp_path / "source", settings, progress=False)
    assert len(trained) == 2  # the rerun reused the first; other source data is another run


@pytest.mark.slow  # ~2.5 min: nine more quick demos
@pytest.mark.parametrize("seed", range(1, 10))
def test_quick_demo_trained_features_beat_random_on_other_seeds(tmp_path, seed):
    # the same claim on the seeds beside the default run's 0: every one of them, by the same margin
    proc = run_demo_cli(tmp_path / "out", "--quick", "--seed", str(seed))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "out" / f"report-seed{seed}" / "demo.json").read_text())
    assert data["seed"] == seed
    assert data["margin"]["linear_map"] >= MARGIN and data["margin"]["knn_map"] >= MARGIN, data["margin"]


@pytest.mark.slow
def test_full_demo_trained_features_beat_random(tmp_path):
    proc = run_demo_cli(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "report" / "demo.json").read_text())
    assert data["results"]["trained"]["linear_map"] > data["results"]["random"]["linear_map"]


@pytest.mark.slow  # ~15 s: a quick demo whose baseline is the mean of 3 random nets (quick.yaml's random_nets: 3)
def test_several_random_nets_are_each_probed_and_averaged(tmp_path, monkeypatch):
    import vggfeat.demo.config as demo_config
    from vggfeat.demo.pipeline import run_demo

    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES.parent, recipes)
    quick = recipes / "demo" / "quick.yaml"
    text = quick.read_text()
    assert "\nrandom_nets: 1\n" in text and "\nprobe_plots: false\n" in text
    text = text.replace("\nrandom_nets: 1\n", "\nrandom_nets: 3\n")
    quick.write_text(text.replace("\nprobe_plots: false\n", "\nprobe_plots: true\n"))
    monkeypatch.setattr(demo_config, "RECIPES", recipes / "demo")
    data = run_demo(tmp_path / "out", quick=True, progress=False, echo=lambda _: None)
    random, draws = data["results"]["random"], data["results"]["random"]["draws"]
    assert data["config"]["random_nets"] == len(draws) == 3
    assert len({d["features"]["store"] for d in draws}) == 3  # each random net has its own descriptors
    for key in ("linear_map", "knn_map"):  # the baseline is the random nets' mean, per class too
        assert random[key] == pytest.approx(np.mean([d[key] for d in draws]), abs=0.006)
    for c, v in random["per_class_ap"].items():
        assert v is None or v == pytest.approx(np.mean([d["per_class_ap"][c] for d in draws]), abs=0.006)
    for net, plotted in zip(draws, (True, False, False), strict=True):  # probe plots: the first random net's only
        for key, report in (("linear_map", net["linear_report"]), ("knn_map", net["knn_report"])):
            assert Path(report).with_suffix(".png").is_file() == plotted, report
            assert json.loads(Path(report).read_text())["headline"] == net[key]


def test_demo_rebuilds_a_target_of_other_settings(tmp_path, monkeypatch, tiny_model):
    """`vggfeat demo` after `vggfeat demo --quick` in one OUT: the target's DONE marker records its settings, so
    a target of other settings is generated again rather than reused."""
    import vggfeat
    import vggfeat.demo.config as demo_config
    import vggfeat.demo.pipeline as pipeline

    class Stop(Exception):
        pass

    def train(recipe, run, **kwargs):
        run.mkdir(parents=True, exist_ok=True)
        vggfeat.save_weights(tiny_model(recipe.model.name), run / "model.safetensors")
        return {"history": [], "run": str(run)}

    def stop(name, root):
        raise Stop

    recipes = tmp_path / "recipes"
    shutil.copytree(RECIPES.parent, recipes)
    monkeypatch.setattr(demo_config, "RECIPES", recipes / "demo")
    monkeypatch.setattr(pipeline, "train", train)
    monkeypatch.setattr(pipeline, "load_benchmark", stop)  # right after the target is made
    quick = recipes / "demo" / "quick.yaml"
    text = quick.read_text()
    assert "  n_trainval: 100\n  n_test: 100\n" in text and "  per_class: 32\n" in text
    text = text.replace("  per_class: 32\n", "  per_class: 2\n")  # a small source: it is never trained on here
    trainval = tmp_path / "out" / "target" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    for n in (6, 4, 4):
        quick.write_text(text.replace("  n_trainval: 100\n  n_test: 100\n", f"  n_trainval: {n}\n  n_test: 3\n"))
        before = trainval.stat().st_mtime_ns if trainval.exists() else None
        with pytest.raises(Stop):
            pipeline.run_demo(tmp_path / "out", quick=True, progress=False, echo=lambda _: None)
        assert len(trainval.read_text().split()) == n
    assert trainval.stat().st_mtime_ns == before  # the same settings: reused
    images = sorted(p.name for p in (trainval.parents[2] / "JPEGImages").iterdir())
    assert images == [f"{k:06d}.jpg" for k in range(7)]  # nothing left of the 9 scenes before


def _fake_train(calls: list, weights):
    def train(recipe, run, **kwargs):
        calls.append((run.name, kwargs["resume"], kwargs["overwrite"]))
        (run / "ckpt-e001-s00000002.pt").parent.mkdir(parents=True, exist_ok=True)
        (run / "ckpt-e001-s00000002.pt").write_bytes(b"a checkpoint")
        weights(recipe, run / "model.safetensors")
        return {"history": [], "run": str(run)}

    return train


def test_demo_net_d_is_retrained_when_net_a_weights_change(tmp_path, monkeypatch, tiny_model):
    """Net D's model.init_from is a path: the run is keyed by the sha256 of the weights there, so D trained from
    an earlier net A is not reused once A is retrained to other weights."""
    import vggfeat
    import vggfeat.demo.pipeline as pipeline

    calls: list = []
    save = lambda recipe, path: vggfeat.save_weights(tiny_model(recipe.model.name), path)  # noqa: E731
    monkeypatch.setattr(pipeline, "train", _fake_train(calls, save))
    net_a = tmp_path / "a.safetensors"
    vggfeat.save_weights(tiny_model("vgg_a", seed=0), net_a)
    recipe = load_recipe(RECIPES / "vgg_d_quick.yaml", [f"model.init_from={net_a}"])
    source = {"kind": "pictograms", "classes": 10, "per_class": 32, "seed": 0}
    for retrained in (False, False, True):
        if retrained:  # net A trained again to other weights, at the same path
            vggfeat.save_weights(tiny_model("vgg_a", seed=1), net_a)
        pipeline._train(recipe, tmp_path / "d", tmp_path / "source", source, progress=False)
    # reused once; then trained afresh over the stale run (not resumed from its checkpoint)
    assert calls == [("d", False, True), ("d", False, True)]


def test_demo_trains_a_changed_recipe_afresh_and_resumes_only_its_own_run(tmp_path, monkeypatch, tiny_model):
    import vggfeat
    import vggfeat.demo.pipeline as pipeline

    class Killed(Exception):
        pass

    calls: list = []
    kill = []

    def save(recipe, path):
        if kill:
            raise Killed  # after its checkpoint, before its weights
        vggfeat.save_weights(tiny_model(recipe.model.name), path)

    monkeypatch.setattr(pipeline, "train", _fake_train(calls, save))
    source = {"kind": "pictograms", "classes": 10, "per_class": 32, "seed": 0}
    run = tmp_path / "a"

    def demo(lr: str) -> None:
        recipe = load_recipe(RECIPES / "vgg_a_quick.yaml", [f"optim.lr={lr}"])
        pipeline._train(recipe, run, tmp_path / "source", source, progress=False)

    demo("0.0015")
    demo("0.003")  # a finished run of the old lr is there, with its checkpoint: not continued
    kill.append(1)
    with pytest.raises(Killed):
        demo("0.006")
    kill.clear()
    demo("0.006")  # an interrupted run of this recipe: continued
    assert calls == [("a", False, True), ("a", False, True), ("a", False, True), ("a", True, True)]


@pytest.mark.slow  # ~12 s: three short trainings of the quick net A
def test_demo_retrained_net_a_equals_a_fresh_one(tmp_path):
    """End to end, real training: net A's recipe changed after a finished run in the same folder gives the
    weights a fresh run of the new recipe gives (it used to resume the old run and keep its weights)."""
    from safetensors.torch import load_file

    from vggfeat.data.synthetic import ensure_synthetic
    from vggfeat.demo.pipeline import _train

    source = {"kind": "pictograms", "classes": 10, "per_class": 8, "seed": 0}
    data = ensure_synthetic(tmp_path / "source", kind="pictograms", classes=10, per_class=8, seed=0)
    fast = ["optim.epochs=1", "optim.batch_size=16", "optim.per_device_batch=16"]

    def run(folder: str, lr: str) -> dict:
        _train(
            load_recipe(RECIPES / "vgg_a_quick.yaml", [*fast, f"optim.lr={lr}"]), tmp_path / folder, data, source, False
        )
        return load_file(tmp_path / folder / "model.safetensors")

    old = run("x", "0.0015")
    again, fresh = run("x", "0.003"), run("y", "0.003")
    assert all(torch.equal(again[k], fresh[k]) for k in fresh) and not torch.equal(
        again["conv1_1.weight"], old["conv1_1.weight"]
    )
