"""`vggfeat extract` as a user types it (issue 13.5, 13.6): a default store folder without -o, a finished store
reported as such, no usable image is an error, and a progress bar that moves batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import vggfeat
from vggfeat.features.extract import extract_to_store

TINY = dict(width_mult=1 / 16, fc_dim=32, fc6_kernel=2, num_classes=10, init="glorot")


@pytest.fixture
def weights(tmp_path):
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, **TINY), tmp_path / "tiny.safetensors"))


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
