"""smooth_depth: a local-plane fit that keeps planes exactly, averages independent errors
and misses curved surfaces by the analytic amount."""

from __future__ import annotations

import numpy as np
import pytest

from psf_live.depth import smooth_depth
from psf_live.estimate import patch_centers, patch_starts

CY = patch_centers(patch_starts(1024))  # 15 centres, the last one aligned to the edge
CX = patch_centers(patch_starts(768))


def _grid(f):  # type: ignore[no-untyped-def]
    yy, xx = np.meshgrid(CY, CX, indexing="ij")
    return f(yy.astype(np.float64), xx.astype(np.float64))


def test_a_tilted_plane_is_kept_exactly_with_holes() -> None:
    plane = _grid(lambda y, x: 3.0 + 0.05 * x - 0.02 * y)
    d = plane.copy()
    rng = np.random.default_rng(0)
    d[rng.random(d.shape) < 0.3] = np.nan
    d[0, 0], d[0, 1], d[1, 0], d[1, 1] = plane[0, 0], np.nan, np.nan, np.nan  # corner island
    for r in (1, 2):
        s = smooth_depth(d, CY, CX, radius=r)
        assert s.dtype == np.float32 and s.shape == d.shape
        assert np.array_equal(np.isnan(s), np.isnan(d))
        ok = np.isfinite(d)
        np.testing.assert_allclose(s[ok], plane[ok], atol=1e-4)


def test_isolated_patch_keeps_its_value_and_radius_zero_copies() -> None:
    d = np.full((5, 5), np.nan)
    d[2, 2] = 4.5
    assert smooth_depth(d, CY[:5], CX[:5], radius=2)[2, 2] == pytest.approx(4.5)
    n = np.arange(25.0).reshape(5, 5)
    s = smooth_depth(n, CY[:5], CX[:5], radius=0)
    assert np.array_equal(s, n) and s is not n
    with pytest.raises(ValueError, match="radius"):
        smooth_depth(n, CY[:5], CX[:5], radius=-1)


def test_independent_errors_shrink_by_the_window_side() -> None:
    """Interior patches of a 3 x 3 window: SD / 3 for the intercept of a plane fit on a
    symmetric window (the slopes are orthogonal to the constant), 5 x 5: / 5."""
    rng = np.random.default_rng(1)
    cy = np.arange(60) * 64.0 + 64
    cx = np.arange(60) * 64.0 + 64
    noise = rng.normal(0.0, 1.0, (60, 60))
    for r in (1, 2):
        s = smooth_depth(noise, cy, cx, radius=r)[r:-r, r:-r]
        assert float(s.std()) == pytest.approx(1.0 / (2 * r + 1), rel=0.08)


def test_curvature_costs_the_analytic_bias() -> None:
    """z = k/2 (x^2 + y^2): a plane fitted on a symmetric window misses the centre by
    k/2 times the mean squared distance of the window's patches (the docstring's
    1.1 um for a 1 mm radius at a 64 px stride of 0.64 um pixels, radius 1)."""
    px, k = 0.64, 1.0 / 1000.0  # um per pixel, 1/um
    cy = np.arange(9) * 64.0 + 64
    cx = np.arange(9) * 64.0 + 64
    yy, xx = np.meshgrid(cy * px, cx * px, indexing="ij")
    z = 0.5 * k * ((yy - yy[4, 4]) ** 2 + (xx - xx[4, 4]) ** 2)
    s = smooth_depth(z, cy, cx, radius=1)
    o = np.arange(-1, 2) * 64.0 * px
    mean_r2 = float(np.mean(o[:, None] ** 2 + o[None, :] ** 2))
    assert s[4, 4] - z[4, 4] == pytest.approx(0.5 * k * mean_r2, rel=1e-4)
    assert s[4, 4] - z[4, 4] == pytest.approx(1.12, abs=0.01)
