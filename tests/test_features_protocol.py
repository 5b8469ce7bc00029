"""Appendix B's pure steps: isotropic rescale sizes, scale aggregation, per-sample L2, net stacking."""

from __future__ import annotations

import numpy as np
import pytest

from vggfeat.data.transforms import isotropic_size
from vggfeat.features.protocol import Protocol, combine, l2_normalize, scaled_size


def test_isotropic_size_keeps_aspect_and_sets_smallest_side():
    assert isotropic_size(375, 500, 256) == (256, 341)
    assert isotropic_size(500, 333, 384) == (577, 384)
    assert isotropic_size(10, 10, 256) == (256, 256)  # tiny images are scaled up
    with pytest.raises(ValueError):
        isotropic_size(0, 5, 256)


def test_snap_rounds_only_the_long_side():
    assert scaled_size(375, 500, 256) == (256, 341)
    assert scaled_size(375, 500, 256, snap=32) == (256, 352)
    assert scaled_size(500, 375, 384, snap=32) == (512, 384)


def test_l2_is_per_sample_not_per_batch():
    x = np.array([[3.0, 4.0], [300.0, 0.0]])
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0]])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0)


def test_combine_mean_and_stack():
    rng = np.random.default_rng(0)
    parts = rng.random((3, 2, 4)).astype(np.float32)  # (N, S, D)
    mean = combine([parts], Protocol(aggregate="mean", l2=False, scales=(1, 2)))
    np.testing.assert_allclose(mean, parts.mean(axis=1), rtol=1e-6)
    stack = combine([parts], Protocol(aggregate="stack", l2=False, scales=(1, 2)))
    np.testing.assert_allclose(stack, np.concatenate([parts[:, 0], parts[:, 1]], axis=1))
    normed = combine([parts], Protocol(aggregate="stack", scales=(1, 2)))
    np.testing.assert_allclose(normed, l2_normalize(stack), rtol=1e-6)


def test_combine_stacks_nets_and_l2_parts():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 4)), 100 * rng.random((2, 3, 5))
    p = Protocol(scales=(1, 2, 3), l2=True)
    np.testing.assert_allclose(combine([a, b], p), l2_normalize(np.hstack([a.mean(1), b.mean(1)])), rtol=1e-5)
    parts = Protocol(scales=(1, 2, 3), l2=True, l2_parts=True)
    expected = l2_normalize(np.hstack([l2_normalize(l2_normalize(a).mean(1)), l2_normalize(l2_normalize(b).mean(1))]))
    np.testing.assert_allclose(combine([a, b], parts), expected, rtol=1e-5)


def test_protocol_validates():
    with pytest.raises(ValueError, match="valid: mean, stack"):
        Protocol(aggregate="max")
    with pytest.raises(ValueError, match="distinct"):
        Protocol(scales=(256, 256))
