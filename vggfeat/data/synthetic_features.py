"""Generated descriptors shaped like a VOC-2007 probe (for benchmarks and tests: the dataset is not here).

Rows look like fc7 descriptors: non-negative (after a ReLU), L2-normalised, mostly shared structure plus a
weaker class-specific part. Labels are multi-label in {1, -1, 0} with VOC-2007's class frequencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

# Images per class in VOC-2007 trainval (5,011 images), from the dataset's published statistics.
VOC07_TRAINVAL_IMAGES = (
    238,
    243,
    330,
    181,
    244,
    186,
    713,
    337,
    445,
    141,
    200,
    421,
    287,
    245,
    2008,
    245,
    96,
    229,
    261,
    256,
)
VOC07_TRAINVAL, VOC07_TEST = 5011, 4952


def make_voc_like_features(
    n_train: int = VOC07_TRAINVAL,
    n_test: int = VOC07_TEST,
    dim: int = 4096,
    *,
    seed: int = 0,
    signal: float = 0.25,
    difficult: float = 0.05,
    dtype: DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (X_train (n_train, dim), Y_train (n_train, 20), X_test, Y_test); labels in {1, -1, 0}."""
    rng = np.random.default_rng(seed)
    freq = np.array(VOC07_TRAINVAL_IMAGES) / VOC07_TRAINVAL
    k = len(freq)
    shared = np.abs(rng.standard_normal(dim))  # what every image has in common
    protos = rng.standard_normal((k, dim)) * (rng.random((k, dim)) < 0.1)  # sparse class directions

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = rng.random((n, k)) < freq
        empty = ~pos.any(1)
        pos[empty, rng.choice(k, size=int(empty.sum()), p=freq / freq.sum())] = True
        strength = rng.uniform(0.3, 1.0, size=(n, k)) * pos  # some objects are small or occluded
        # a class's evidence is spread over more dimensions as dim grows: keep the task as hard as at 512
        x = shared + 1.2 * rng.standard_normal((n, dim)) + signal * 6 * np.sqrt(512 / dim) * (strength @ protos)
        x = np.maximum(x, 0)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = np.where(pos, 1, -1).astype(np.int8)
        y[pos & (strength < 0.3 + 0.7 * difficult)] = 0  # the faintest positives: 'difficult'
        return x.astype(dtype), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test
