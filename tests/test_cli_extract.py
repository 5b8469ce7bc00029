"""`vggfeat extract` as a user types it: a default store folder without -o, a finished store
reported as such, no usable image is an error, and a progress bar that moves batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY_GLOROT
from PIL import Image

import vggfeat
from vggfeat.features.extract import extract_to_store


@pytest.fixture
def weights(tmp_path):
    return str(
        vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, **TINY_GLOROT), tmp_path / "tiny.safetensors")
    )


def make_images(folder, n, size=(64, 64), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img{k:03d}.png")
    return folder


class RecordingBar:
    """Stands in for tqdm: records every update."""

    made: list[RecordingBar] = []

    def __init__(self, total=None, initial=0, **kwargs):
        self.total, self.n, self.updates, self.kwargs = total, initial, [], kwargs
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def close(self):
        pass


def test_progress_advances_per_batch_not_per_chunk(tmp_path, weights, monkeypatch):
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    RecordingBar.made = []
    src = make_images(tmp_path / "imgs", 6)
    # one chunk of 6 images; batches of 2 at each of 2 scales: 6 forwards, each worth 2 / 2 = 1 image
    extract_to_store(
        [src], tmp_path / "out", models=[("auto", weights)], scales=(64, 80), batch_size=2, workers=0, progress=True
    )
    (bar,) = RecordingBar.made
    assert bar.total == 6 and bar.kwargs["unit"] == "img"
    assert bar.updates == [1, 1, 1, 1, 1, 1]


def test_progress_counts_whole_images_and_skipped_ones_at_the_chunk_end(tmp_path, weights, monkeypatch):
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    RecordingBar.made = []
    src = make_images(tmp_path / "imgs", 5)
    (src / "broken.png").write_bytes(b"\x00" * 50)
    # 3 scales, batches of 2: after each batch n/3 of an image per image run, shown in whole images
    extract_to_store(
        [src],
        tmp_path / "out",
        models=[("auto", weights)],
        scales=(64, 72, 80),
        batch_size=2,
        workers=0,
        progress=True,
        chunk_size=4,
    )
    (bar,) = RecordingBar.made
    assert bar.total == 6 and bar.n == 6
    # chunk 1 (4 images): 2 batches per scale, views 2,4,6,8,10,12 -> images 0,1,2,2,3,4; chunk 2: 1 good image
    # (3 one-image batches -> 0,0,1 -> 5) and the broken one counted when the chunk ends -> 6
    assert bar.updates == [1, 1, 1, 1, 1, 1]


def extract(*args, cwd=None):
    from click.testing import CliRunner

    from vggfeat.cli.main import cli

    return CliRunner().invoke(cli, ["extract", *map(str, args)], catch_exceptions=False)


FAST = ["--scales", "64,80", "--workers", "0", "--quiet"]


def test_without_out_the_store_goes_to_a_default_folder_named_after_inputs_and_layer(tmp_path, weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "imgs", 2)
    result = extract("--layer", "fc7", "imgs/", "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    store = vggfeat.load_store(tmp_path / "vggfeat-out" / "imgs-fc7")
    assert len(store) == 2 and store.manifest["layer"] == "fc7"
    assert "vggfeat-out/imgs-fc7" in result.output  # said where it went
    assert "2 images -> vggfeat-out/imgs-fc7" in result.output

    pool5 = extract("imgs", "--layer", "pool5", "--weights", weights, *FAST)
    assert pool5.exit_code == 0 and vggfeat.load_store(tmp_path / "vggfeat-out" / "imgs-pool5").dim == 32


@pytest.mark.parametrize(
    "inputs, expected",
    [
        (["imgs/"], "imgs-fc7"),
        (["imgs/img000.png"], "img000-fc7"),
        (["@train list.txt"], "train_list-fc7"),
        (["imgs", "more"], "imgs-and-1-more-fc7"),
        (["."], "work-fc7"),
    ],
)
def test_default_out_names(tmp_path, monkeypatch, inputs, expected):
    from vggfeat.cli.extract import default_out

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    make_images(tmp_path / "work" / "imgs", 1)
    assert str(default_out(tuple(inputs), "fc7")) == f"vggfeat-out/{expected}"


def test_default_out_folder_is_ignored_by_git():
    from pathlib import Path

    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "vggfeat-out/" in ignored


def test_rerun_of_a_finished_store_says_already_complete(tmp_path, weights):
    src = make_images(tmp_path / "imgs", 2)
    out = tmp_path / "store"
    first = extract(src, "-o", out, "--weights", weights, *FAST)
    assert first.exit_code == 0 and "already complete" not in first.output
    again = extract(src, "-o", out, "--weights", weights, *FAST)
    assert again.exit_code == 0, again.output
    assert f"{out} is already complete: 2 images (32-D float32, layer fc7, scales 64,80); nothing recomputed" in (
        again.output
    )
    assert " in 0.0 s" not in again.output


def test_zero_usable_images_is_an_error_naming_inputs_and_reasons(tmp_path, weights):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "empty.jpg").touch()
    (src / "garbage.png").write_bytes(b"\x00" * 100)
    out = tmp_path / "store"
    result = extract(src, "-o", out, "--weights", weights, *FAST)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1
    assert f"no usable image in {src}: all 2 inputs were skipped" in lines[0]
    assert f"{src / 'empty.jpg'}: empty file (0 bytes)" in lines[0] and str(src / "garbage.png") in lines[0]
    assert "0 images ->" not in result.output
    assert not out.exists()  # nothing half-made is left to be found 'complete' later
    # the files fixed, the same command works
    (src / "empty.jpg").unlink()
    (src / "garbage.png").unlink()
    make_images(src, 1)
    assert extract(src, "-o", out, "--weights", weights, *FAST).exit_code == 0
    assert len(vggfeat.load_store(out)) == 1


MISSION = ["--layer", "fc7", "imgs/"]  # the command users are told to type, exactly


@pytest.mark.parametrize("extra", [[], ["--weights", "torchvision:vgg16"]], ids=["exactly-as-typed", "named-weights"])
def test_the_mission_command_as_typed_runs_end_to_end(primed_torch_home, tmp_path, monkeypatch, recwarn, extra):
    """`vggfeat extract --layer fc7 imgs/`, nothing more: net D with the default weights torchvision:vgg16 (a
    primed, offline torch.hub cache holding a narrow stand-in), the paper's scales, into vggfeat-out/imgs-fc7."""
    from vggfeat.features.extract import extract_features
    from vggfeat.utils.files import sha256_file

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    images = sorted(str(p.relative_to(work)) for p in make_images(work / "imgs", 3, size=(72, 96)).iterdir())
    result = extract(*MISSION, *extra)
    assert result.exit_code == 0, result.output
    assert "RANDOMLY" not in result.output
    assert not [w for w in recwarn if "worker processes" in str(w.message)]  # 3 images: no 4 loader processes
    store = vggfeat.load_store("vggfeat-out/imgs-fc7")
    assert store.paths == images and store.manifest["layer"] == "fc7" and store.manifest["scales"] == [256, 384, 512]
    (net,) = store.manifest["models"]
    assert net["weights"] == "torchvision:vgg16" and net["weights_sha256"] == sha256_file(primed_torch_home)
    expected = extract_features(vggfeat.load_model(primed_torch_home), images, layer="fc7", scales=(256, 384, 512))
    np.testing.assert_allclose(store.features, expected, rtol=1e-5, atol=1e-6)
    again = extract(*MISSION, *extra)
    assert again.exit_code == 0 and "vggfeat-out/imgs-fc7 is already complete: 3 images" in again.output


def test_loader_workers_are_capped_at_the_cpus_and_the_work(monkeypatch):
    import os

    from vggfeat.features.loader import usable_workers
    from vggfeat.utils import cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda *a, **k: None)
    # the default 4 on a 2-core machine: both cores compute, images decode between batches (no worker)
    assert usable_workers(4, 1000) == 0
    assert usable_workers(0, 1000) == 0
    assert usable_workers(4, 1000, "cuda") == 1  # a GPU computes: a core decodes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert usable_workers(12, 1000, "cuda") == 12 and usable_workers(4, 1000, "cpu") == 2
    assert usable_workers(4, 3, "cpu") == 1  # one loader batch of 4 images
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda *a, **k: 4.0)  # a container's quota of 4 CPUs
    assert usable_workers(12, 1000, "cuda") == 3


def test_on_cuda_a_batch_is_reported_when_its_event_completes_not_when_queued(monkeypatch):
    """A CUDA forward returns once its kernels are queued: the bar must follow the GPU (events), keeping two
    batches in flight so the GPU never waits for the bar."""
    import torch

    from vggfeat.features.engine import BatchReporter

    log = []

    class FakeEvent:  # stands in for torch.cuda.Event: records when it is recorded and waited on
        count = 0

        def __init__(self):
            FakeEvent.count += 1
            self.id = FakeEvent.count

        def record(self):
            log.append(("record", self.id))

        def synchronize(self):
            log.append(("wait", self.id))

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    reporter = BatchReporter(lambda n: log.append(("report", n)), torch.device("cuda", 0), window=2)
    for n in (4, 4, 4, 2):
        reporter.queued(n)
    assert log == [("record", 1), ("record", 2), ("record", 3), ("wait", 1), ("report", 4), ("record", 4),
                   ("wait", 2), ("report", 4)]  # fmt: skip
    reporter.flush()
    assert log[-4:] == [("wait", 3), ("report", 4), ("wait", 4), ("report", 2)]

    cpu = []
    BatchReporter(cpu.append, torch.device("cpu")).queued(3)
    assert cpu == [3]  # the CPU computes as it goes: reported at once, no events
    BatchReporter(None, torch.device("cuda", 0)).queued(3)  # no bar: nothing recorded
    assert FakeEvent.count == 4


INPUTS_SCRIPT = """
import json, sys
from click.testing import CliRunner
from vggfeat.cli.main import cli
results = []
for inputs in sys.argv[1:]:
    r = CliRunner().invoke(cli, ["extract", "--layer", "fc7", inputs])
    results.append(dict(code=r.exit_code, output=r.output, torch="torch" in sys.modules))
print(json.dumps(results))
"""


def test_inputs_without_images_are_reported_before_torch_is_imported(tmp_path):
    """A mistyped or empty folder in the mission command answers at once: the inputs are checked before torch
    loads (seconds), and no default store folder is announced or made."""
    import json
    import subprocess
    import sys

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    done = subprocess.run(
        [sys.executable, "-c", INPUTS_SCRIPT, "nothere/", "empty/"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    missing, empty = json.loads(done.stdout)
    assert missing == {"code": 1, "output": "Error: no such image file or folder: nothere\n", "torch": False}
    assert empty["code"] == 1 and not empty["torch"], empty
    assert empty["output"].startswith("Error: no input images found in empty/ (image files: .bmp, .gif, .jpeg")
    assert empty["output"].count("\n") == 1
    assert not (tmp_path / "vggfeat-out").exists()


def test_gpu_decode_without_a_gpu_is_one_line_naming_the_fix(tmp_path, weights):
    src = make_images(tmp_path / "imgs", 1)
    result = extract(src, "-o", tmp_path / "store", "--weights", weights, "--gpu-decode", "--device", "cpu", *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: --gpu-decode decodes on a CUDA GPU, but the device is cpu; use --device cuda" in result.output
    assert not (tmp_path / "store").exists()


def test_the_extract_command_sizes_its_threads_to_the_usable_cpus(tmp_path, weights, monkeypatch):
    """A container quota of 1 CPU on a bigger machine: the command computes with one thread, not one per core."""
    import torch

    from vggfeat.utils import cpus

    monkeypatch.setattr(cpus, "usable_cpus", lambda *a, **k: 1)
    before = torch.get_num_threads()
    seen = []
    import vggfeat.features.extract as fx

    real = fx.extract_part  # what the command calls

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(fx, "extract_part", recording)
    try:
        result = extract(make_images(tmp_path / "imgs", 1), "-o", tmp_path / "store", "--weights", weights, *FAST)
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == [1]
