"""Rescaling a grid calibration for a specimen from focus steps (psf_live.depth._rescale)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from psf_live.depth import (
    CalibrationError,
    DepthCalibration,
    depth_map,
    fit_calibration,
    focus_step_slope,
    rescale_calibration,
    synthetic_psf_map,
    true_depth_grid,
)
from psf_live.estimate import patch_centers, patch_starts

SHAPE = (1024, 1024)
PX = 0.64
GridCal = tuple[DepthCalibration, list[Any]]
STEPS = [-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0]


def _step_maps(
    slope: float,
    rng: np.random.Generator,
    steps: list[float] = STEPS,
    noise: float = 0.5,
    holes: float = 0.2,
) -> list[np.ndarray]:
    """Depth maps of one surface read with ``slope`` um per um of focus step, plus noise,
    missing patches and a few wild ones."""
    surface = rng.uniform(-30, 30, size=(15, 15))
    out = []
    for s in steps:
        d = surface - slope * s + rng.normal(0, noise, surface.shape)
        d[rng.random(surface.shape) < holes] = np.nan
        wild = rng.random(surface.shape) < 0.02
        d[wild] += rng.choice([-40.0, 40.0], size=int(wild.sum()))
        out.append(d)
    return out


@pytest.mark.parametrize("slope", [0.8, 1.0, 1.25, -0.9])
def test_focus_step_slope_recovers_the_slope_of_any_surface(slope: float) -> None:
    maps = _step_maps(slope, np.random.default_rng(1))
    b, n = focus_step_slope(maps, STEPS)
    assert b == pytest.approx(slope, abs=0.02)
    assert 200 <= n <= 225  # patches read at >= 3 of the 7 steps


def test_focus_step_slope_ignores_where_the_steps_start() -> None:
    maps = _step_maps(0.9, np.random.default_rng(2))
    b0, _ = focus_step_slope(maps, STEPS)
    b1, _ = focus_step_slope(maps, [s + 1234.5 for s in STEPS])  # stage positions
    assert b1 == pytest.approx(b0, abs=1e-9)


@pytest.mark.parametrize(
    ("maps", "steps", "match"),
    [
        ([np.zeros((3, 3))] * 3, [0.0, 0.0, 5.0], "at least 3 different"),
        ([np.zeros((3, 3))] * 3, [0.0, 5.0], "3 depth maps but 2"),
        ([np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((4, 3))], [0.0, 5.0, 10.0], "shapes"),
        ([np.full((15, 15), np.nan)] * 3, [0.0, 5.0, 10.0], "0 patches read"),
        ([np.zeros((3, 3))] * 3, [0.0, 5.0, np.nan], "finite"),
    ],
)
def test_focus_step_slope_refuses(maps: list[np.ndarray], steps: list[float], match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        focus_step_slope(maps, steps)


@pytest.fixture(scope="module")
def grid_cal() -> tuple[DepthCalibration, list[Any]]:
    """A calibration on ideal zernike3 maps of tilted planes (with TTA-like spread off)."""
    rng = np.random.default_rng(0)
    cy = patch_centers(patch_starts(SHAPE[0]))
    cx = patch_centers(patch_starts(SHAPE[1]))
    maps, tilts = [], [3.0, 6.0, 10.0, -6.0]
    for t in tilts:
        d = true_depth_grid(cy, cx, t, "xy", PX, SHAPE)
        maps.append(synthetic_psf_map(d, cy, cx, SHAPE, rng=rng))
    cal = fit_calibration(maps, tilts, axis="xy", pixel_size_um=PX, min_r2=0.5)
    return cal, maps


def test_fit_records_how_its_depth_follows_the_truth(grid_cal: GridCal) -> None:
    cal, maps = grid_cal
    assert cal.response_slope is not None
    # the slope of fitted against true depth on the calibration patches
    est, tru = [], []
    for m, t in zip(maps, cal.tilts_deg, strict=True):
        e = depth_map(m, cal, limits=False)
        ok = np.isfinite(e)
        est.append(e[ok])
        tru.append(true_depth_grid(m.centers_y, m.centers_x, t, "xy", PX, SHAPE)[ok])
    direct = np.polyfit(np.concatenate(tru), np.concatenate(est), 1)[0]
    assert cal.response_slope == pytest.approx(direct, abs=0.03)
    assert 0.8 < cal.response_slope <= 1.02  # the forward fit shrinks, never stretches


def test_rescale_multiplies_the_depth_and_compounds(grid_cal: GridCal, tmp_path: Path) -> None:
    cal, maps = grid_cal
    cal = dataclasses.replace(cal, max_spread_um=3.0)
    assert cal.response_slope is not None
    resp = float(cal.response_slope)
    r1 = rescale_calibration(cal, resp / 1.25, steps_um=STEPS, n_patches=200)
    assert r1.rescaled["factor"] == pytest.approx(1.25)
    assert r1.coef == pytest.approx([1.25 * c for c in cal.coef])
    assert r1.max_spread_um == pytest.approx(3.75)
    assert (r1.deadzone, r1.max_metric, r1.response_slope) == (
        cal.deadzone,
        cal.max_metric,
        cal.response_slope,
    )
    d0, d1 = depth_map(maps[0], cal), depth_map(maps[0], r1)
    np.testing.assert_allclose(d1, 1.25 * d0, rtol=1e-5, atol=1e-4)
    # a second specimen measured with the rescaled file: the factor is relative to it
    r2 = rescale_calibration(r1, resp * 1.25 / 0.8)
    assert r2.rescaled["total_factor"] == pytest.approx(0.8)
    assert r2.coef == pytest.approx([0.8 * c for c in cal.coef])
    back = DepthCalibration.load(r2.save(tmp_path / "spec.json"))
    assert back.rescaled == r2.rescaled
    assert back.response_slope == pytest.approx(resp)
    assert cal.rescaled == {}  # the original is untouched


def test_rescale_refusals(grid_cal: GridCal) -> None:
    cal, _ = grid_cal
    assert cal.response_slope is not None
    with pytest.raises(CalibrationError, match="opposite sign"):
        rescale_calibration(cal, -0.9)
    with pytest.raises(CalibrationError, match="outside"):
        rescale_calibration(cal, float(cal.response_slope) * 3)
    old = DepthCalibration(features="signed", coef=[0.0, 60.0])  # a file from before
    with pytest.raises(CalibrationError, match="calibrate-depth again"):
        rescale_calibration(old, 1.0)
    with pytest.raises(ValueError, match="response_slope"):
        DepthCalibration.from_dict({**cal.to_dict(), "response_slope": -1.0})


def test_rescale_on_the_simulated_scope_fixes_a_sparse_specimens_scale() -> None:
    """Physics: the shipped lens network reads the defocus of sparse points smaller than
    that of the printed grid it is calibrated on, so a tilted field of points reads too
    flat; focus steps of another, flat field of points measure that and the rescaled
    calibration reads the tilt closer to the truth (benchmarks/depth_table6.py
    --other-samples ... --rescale-steps for the figures)."""
    models = pytest.importorskip("psf_live.models")
    if "zernike3-lens45" not in models.available_models():
        pytest.skip("zernike3-lens45 not shipped")
    from psf_live.depth import fit_depth_plane, map_depth, rescale_frames
    from psf_live.estimate import Estimator
    from psf_live.sim import SimMicroscope, SimSettings

    shape = (512, 512)
    est = Estimator.load("zernike3-lens45", device="cpu")

    def scope(kind: str) -> SimMicroscope:
        s = SimMicroscope(SimSettings(shape=shape, sample=kind), seed=0, device="cpu")
        s.update(cylinder=0.25, cylinder_axis=math.pi / 4, tilt_axis="x")
        return s

    grid = scope("grid")
    maps, tilts = [], [10.0, -10.0, 6.0, -6.0]
    for k, t in enumerate(tilts):
        grid.update(tilt_deg=t, sample_offset_um=(37.0 * k, 53.0 * k))
        maps.append(est.map(grid.snap(0.0, 10.0)))
    cal = fit_calibration(maps, tilts, pixel_size_um=PX, min_r2=0.0)

    pts = scope("points")
    pts.update(tilt_deg=0.0, sample_seed=1, sample_offset_um=(11.0, 29.0))
    steps = [-15.0, -7.5, 0.0, 7.5, 15.0]
    spec = rescale_frames(est, [pts.snap(z, 10.0) for z in steps], steps, cal)
    assert spec.rescaled["factor"] > 1.08
    for k, t in enumerate((8.0, -8.0)):
        pts.update(tilt_deg=t, sample_seed=2 + k, sample_offset_um=(0.0, 40.0 * k))
        m = est.map(pts.snap(0.0, 10.0))
        ratio = [
            fit_depth_plane(
                map_depth(m, c, full=False).grid, m.centers_y, m.centers_x, PX, shape
            ).tilt_x_deg
            / t
            for c in (cal, spec)
        ]
        assert abs(ratio[1] - 1) < abs(ratio[0] - 1) - 0.05


def test_parse_steps() -> None:
    from psf_live.depth import parse_steps

    assert parse_steps("-10, -5,0,5,10") == [-10.0, -5.0, 0.0, 5.0, 10.0]
    for bad, match in [("0,0,5", "at least 3"), ("a,1", "comma-separated"), ("1,nan,3", "finite")]:
        with pytest.raises(ValueError, match=match):
            parse_steps(bad)
