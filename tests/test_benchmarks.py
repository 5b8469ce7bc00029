"""The benchmark registry and each benchmark's defaults (Appendix B): one module per
benchmark, every module registered, and the on-the-fly extraction of linear-probe/knn-probe resolving to the
paper's scales and aggregate when --scales is not given."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import vggfeat.benchmarks
from vggfeat.benchmarks.base import Benchmark, DatasetError
from vggfeat.benchmarks.registry import BENCHMARKS, get_benchmark
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007, make_voc2012
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.errors import VggfeatError

VOC_Q = (256, 384, 512, 640, 768)  # Appendix B: VOC averages over five scales
CALTECH_Q = (256, 384, 512)  # Appendix B: Caltech stacks three


def test_every_benchmark_module_is_registered_under_its_name():
    modules = {
        info.name: __import__(f"vggfeat.benchmarks.{info.name}", fromlist=["BENCHMARK"])
        for info in pkgutil.iter_modules(vggfeat.benchmarks.__path__)
    }
    defined = {name: m.BENCHMARK for name, m in modules.items() if isinstance(getattr(m, "BENCHMARK", None), Benchmark)}
    assert {b.name for b in defined.values()} == set(BENCHMARKS)
    assert all(BENCHMARKS[b.name] is b for b in defined.values())
    assert list(BENCHMARKS) == ["voc2007", "voc2012", "voc2012-action", "caltech101", "caltech256", "folder"]


def test_paper_settings_live_in_each_benchmark():
    expected = {
        "voc2007": (VOC_Q, "mean", "voc07_ap", True, 89.7),
        "voc2012": (VOC_Q, "mean", "voc12_ap", True, 89.3),
        "voc2012-action": (VOC_Q, "mean", "voc12_ap", True, None),  # Table 12 rows: image only, image + box
        "caltech101": (CALTECH_Q, "stack", "mean_class_recall", False, 92.7),
        "caltech256": (CALTECH_Q, "stack", "mean_class_recall", False, 86.2),
        "folder": (CALTECH_Q, "mean", "mean_class_recall", False, None),
    }
    got = {}
    for name, b in BENCHMARKS.items():
        fusion = {r.method: r.mean for r in b.paper_rows}.get("VGG Net-D & Net-E")
        got[name] = (b.scales, b.aggregate, b.metric, b.multilabel, fusion)
    assert got == expected


def test_unknown_benchmark_lists_the_valid_names():
    with pytest.raises(
        DatasetError, match="unknown benchmark .voc2008.; choose one of voc2007, voc2012, voc2012-action, caltech101"
    ):
        get_benchmark("voc2008")


def _caltech(root: Path, folder: str, classes: tuple[str, ...]) -> Path:
    for c in classes:
        for i in range(3):
            (root / folder / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(root / folder / c / f"{i}.jpg")
    return root


LAYOUTS = {
    "voc2007": lambda root: make_voc2007(root, n_trainval=4, n_test=4, seed=0) and root,
    "voc2012": lambda root: make_voc2012(root, n_train=4, n_val=4, seed=0) and root,
    "voc2012-action": lambda root: make_voc2012_action(root, n_train=3, n_val=3, seed=0) and root,
    "caltech101": lambda root: _caltech(root, "101_ObjectCategories", ("BACKGROUND_Google", "ant")),
    "caltech256": lambda root: _caltech(root, "256_ObjectCategories", ("001.ak47", "257.clutter")),
    "folder": lambda root: _caltech(root, "photos", ("a", "b")) / "photos",
}


class _Stop(VggfeatError):
    pass


@pytest.mark.parametrize("command", ["linear-probe", "knn-probe"])
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_probe_extracts_at_the_papers_scales_unless_told(name, command, tmp_path, monkeypatch):
    """Nothing is extracted: the cached-store step records the settings the command resolved and stops."""
    import vggfeat.probes.action as probe_action
    import vggfeat.probes.features as probe_features

    seen = []

    def record(images, out, settings, *args, **kwargs):
        seen.append((settings.protocol.scales, settings.protocol.aggregate))
        raise _Stop("stop before extracting")

    for module in (probe_features, probe_action):  # every module that names cached_store
        monkeypatch.setattr(module, "cached_store", record)
    root = LAYOUTS[name](tmp_path / "data")
    b = BENCHMARKS[name]
    for extra, scales in (([], b.scales), (["--scales", "256"], (256,))):
        args = [command, name, "--root", str(root), "-o", str(tmp_path / "out"), "--quiet", *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "stop before extracting" in result.output, result.output
        assert seen.pop() == (scales, b.aggregate)
    assert seen == []


def test_probe_help_names_the_papers_setting():
    text = CliRunner().invoke(cli, ["linear-probe", "--help"], terminal_width=200).output
    assert "the paper's setting (Appendix B)" in text
    assert "voc2007, voc2012, voc2012-action: mean over 256,384,512,640,768" in " ".join(text.split())
    assert "caltech101, caltech256: stack over 256,384,512" in " ".join(text.split())
