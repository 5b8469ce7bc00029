"""Atomic writes give the permissions a plain write would (0666 & ~umask), not safetensors' 0600; JSON results
refuse NaN."""

import os
import stat

from helpers import TINY

from vggfeat.models import create_model
from vggfeat.models.weights import save_weights
from vggfeat.utils.files import atomic_write_json


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_and_weight_files_get_plain_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_weights(create_model("vgg_a", **TINY), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "model.safetensors") == 0o644


def test_figures_are_written_whole_with_plain_permissions(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vggfeat.utils.files import atomic_write_figure

    old = os.umask(0o027)
    try:
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        path = atomic_write_figure(fig, tmp_path / "plot.png")
    finally:
        os.umask(old)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no temporary left
    assert not plt.get_fignums()  # the figure is closed


def test_json_results_refuse_nan_rather_than_write_invalid_json(tmp_path):
    import math

    import pytest

    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            atomic_write_json(tmp_path / "r.json", {"headline": bad})
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())  # nothing half-written either
