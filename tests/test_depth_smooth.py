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


def _plane_at_centre(
    d: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: int, edges: str = "shift"
) -> np.ndarray:
    """Reference: one least-squares plane per finite patch (minimum norm if degenerate),
    on its window cut by the border or shifted inwards to its full size."""
    out = np.full(d.shape, np.nan)
    rows, cols = d.shape
    for i, j in zip(*np.nonzero(np.isfinite(d)), strict=True):
        if edges == "cut":
            sl = (slice(max(0, i - r), i + r + 1), slice(max(0, j - r), j + r + 1))
        else:
            i0 = min(max(i - r, 0), max(rows - 2 * r - 1, 0))
            j0 = min(max(j - r, 0), max(cols - 2 * r - 1, 0))
            sl = (slice(i0, i0 + 2 * r + 1), slice(j0, j0 + 2 * r + 1))
        yy, xx = np.meshgrid(cy[sl[0]] - cy[i], cx[sl[1]] - cx[j], indexing="ij")
        ok = np.isfinite(d[sl])
        A = np.stack([np.ones(int(ok.sum())), yy[ok], xx[ok]], axis=1)
        out[i, j] = np.linalg.lstsq(A, d[sl][ok], rcond=None)[0][0]
    return out


def test_matches_a_plane_fit_per_window_where_holes_make_windows_degenerate() -> None:
    """Sparse maps leave windows of one patch, two patches, or patches on one line
    (slopes undetermined): the plane's value at the patch is still the fit's."""
    rng = np.random.default_rng(2)
    for holes in (0.0, 0.5, 0.8):
        d = rng.normal(0.0, 5.0, (CY.size, CX.size)) + _grid(lambda y, x: 0.01 * x)
        d[rng.random(d.shape) < holes] = np.nan
        for r in (1, 2):
            for edges in ("shift", "cut"):
                np.testing.assert_allclose(
                    smooth_depth(d, CY, CX, radius=r, edges=edges),  # type: ignore[arg-type]
                    _plane_at_centre(d, CY, CX, r, edges),
                    atol=1e-4,
                )
    small = rng.normal(0.0, 1.0, (3, 4))  # fewer patches than a window: the whole map
    np.testing.assert_allclose(
        smooth_depth(small, CY[:3], CX[:4], radius=2),
        _plane_at_centre(small, CY[:3], CX[:4], 2),
        atol=1e-4,
    )


def test_border_windows_shift_inwards_and_average_more() -> None:
    """With radius 2 the plane is read 2 patches off the centre of a full 5 x 5 window
    on the edge row: SD sqrt(1/25 + 4/50) = 0.346 (a window cut by the border: 3 x 5,
    sqrt(1/15 + 1/10) = 0.408); in a corner sqrt(1/25 + 8/50) = 0.447 (cut: 3 x 3,
    0.667). Independent maps; the middle of each edge and each corner, far apart."""
    mid = [(0, 7), (14, 7), (7, 0), (7, 14)]
    corner = [(0, 0), (0, 14), (14, 0), (14, 14)]
    got: dict[str, list[float]] = {}
    for k in range(150):
        d = np.random.default_rng(100 + k).normal(0.0, 1.0, (15, 15))
        for edges in ("shift", "cut"):
            s = smooth_depth(d, CY, CY, radius=2, edges=edges)  # type: ignore[arg-type]
            got.setdefault(f"{edges} edge", []).extend(float(s[p]) for p in mid)
            got.setdefault(f"{edges} corner", []).extend(float(s[p]) for p in corner)
    expected = {"shift edge": 0.346, "cut edge": 0.408, "shift corner": 0.447, "cut corner": 0.667}
    for key, sd in expected.items():
        assert float(np.std(got[key])) == pytest.approx(sd, rel=0.08), key
    with pytest.raises(ValueError, match="edges"):
        smooth_depth(d, CY, CY, radius=1, edges="wrap")  # type: ignore[arg-type]
