"""The network's reach: where its focus output stops growing, depth is not read."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from psf_live.depth import (
    CalibrationError,
    DepthCalibration,
    beyond_reach,
    clean_depth,
    depth_map,
    fit_calibration,
    frame_depth,
    metric_reach,
    synthetic_psf_map,
    true_depth_grid,
)
from psf_live.estimate import patch_centers, patch_starts
from psf_live.psf import Optics, defocus_um_to_waves

SHAPE = (1024, 1024)
CY = patch_centers(patch_starts(SHAPE[0]))
CX = patch_centers(patch_starts(SHAPE[1]))
PX = 0.64
WAVES_PER_UM = defocus_um_to_waves(1.0, Optics())


def _level_off(f: np.ndarray, knee: float) -> np.ndarray:
    """A network's focus response: faithful up to ``knee`` waves, nearly flat beyond."""
    return np.where(f <= knee, f, knee + 0.05 * (f - knee))


def _saturating_map(tilt: float, knee: float, rng: np.random.Generator):
    d = true_depth_grid(CY, CX, tilt, "xy", PX, SHAPE)
    m = synthetic_psf_map(d, CY, CX, SHAPE, focus_noise=0.01, rng=rng)
    m.params[..., 0] = _level_off(np.abs(d) * WAVES_PER_UM, knee) + 0.01 * rng.standard_normal(
        d.shape
    )
    return m, d


def test_metric_reach_finds_where_the_response_levels_off():
    rng = np.random.default_rng(0)
    d = rng.uniform(-70, 70, 6000)
    f = np.abs(d) * WAVES_PER_UM  # up to 1.17 waves
    noise = 0.01 * rng.standard_normal(d.size)
    assert metric_reach(np.sign(d) * (f + noise), d) is None  # tracks all the way
    reach = metric_reach(np.sign(d) * (_level_off(f, 0.6) + noise), d)
    assert reach is not None and 0.5 <= reach <= 0.62
    # it only looks at magnitudes, and refuses to guess from a handful of patches
    assert metric_reach(-(_level_off(f, 0.6) + noise), np.abs(d)) == pytest.approx(reach)
    assert metric_reach(f[:30], d[:30]) is None


def test_calibration_leaves_out_patches_beyond_the_reach():
    rng = np.random.default_rng(1)
    cal_maps = [_saturating_map(t, 0.6, rng)[0] for t in (3, 6, 10, 3, 6, 10)]
    tilts = [3, 6, 10, 3, 6, 10]
    auto = fit_calibration(cal_maps, tilts, axis="xy", pixel_size_um=PX)
    plain = fit_calibration(cal_maps, tilts, axis="xy", pixel_size_um=PX, max_metric=None)
    assert plain.max_metric is None and auto.max_metric is not None
    assert 0.5 <= auto.max_metric <= 0.62
    assert auto.reach_um() == pytest.approx(auto.max_metric / WAVES_PER_UM, rel=0.1)
    assert auto.report["r2"] > 0.99 > plain.report["r2"]  # over the patches each kept
    test, truth = _saturating_map(8.0, 0.6, rng)
    out = beyond_reach(test, auto)
    est = depth_map(test, auto)
    assert np.array_equal(np.isnan(est), out | ~test.valid)
    assert np.all(np.abs(truth[out]) > 0.5 / WAVES_PER_UM)  # only the deep patches
    err = np.abs(est - truth)
    # near the knee a deeper patch can still read just below the reach (the few
    # errors of ~10 um here), the rest are read as well as the noise allows
    assert np.nanmedian(err) < 0.5 and np.nanmean(err) < 1.0
    # kept, the levelled-off patches read far too shallow
    assert np.nanmean(np.abs(depth_map(test, plain) - truth)[out]) > 5.0
    assert not beyond_reach(test, plain).any()


def test_reach_survives_the_file_and_older_files_have_none(tmp_path):
    rng = np.random.default_rng(2)
    cal_maps = [_saturating_map(t, 0.6, rng)[0] for t in (3, 6, 10)]
    cal = fit_calibration(cal_maps, [3, 6, 10], axis="xy", pixel_size_um=PX)
    back = DepthCalibration.load(cal.save(tmp_path / "c.json"))
    assert back.max_metric == pytest.approx(cal.max_metric)
    d = json.loads((tmp_path / "c.json").read_text())
    d.pop("max_metric")
    assert DepthCalibration.from_dict(d).max_metric is None
    with pytest.raises(ValueError, match="max_metric"):
        DepthCalibration.from_dict({**d, "max_metric": -0.3})


class _Stub:
    def __init__(self, m):
        self.m = m

    def map(self, frame):
        return copy.deepcopy(self.m)


def test_frame_depth_checks_neighbours_before_leaving_out_the_deep_patches():
    """A patch whose sign flipped, deep in the region beyond the reach: its neighbours
    are still on the right side of focus when clean_depth compares it with them, so it
    goes; had they been left out first, it would have stood alone and stayed."""
    rng = np.random.default_rng(3)
    cal = fit_calibration(
        [_saturating_map(t, 0.4, rng)[0] for t in (3, 6, 10, 3, 6, 10)],
        [3, 6, 10, 3, 6, 10],
        axis="xy",
        pixel_size_um=PX,
    )
    m, truth = _saturating_map(10.0, 0.4, rng)
    m.valid[:] = True
    i = j = len(CY) - 1  # the far corner, 71 um beyond focus
    assert truth[i, j] > 60 and beyond_reach(m, cal)[i - 2 :, j - 2 :].all()
    m.params[i, j, 0] = 0.3  # within the reach ...
    m.params[i, j, 2] = (m.params[i, j, 2] + math.pi / 2) % math.pi  # ... on the wrong side
    assert not beyond_reach(m, cal)[i, j] and depth_map(m, cal)[i, j] < 0
    lone = clean_depth(depth_map(m, cal), m.centers_y, m.centers_x)
    assert np.isfinite(lone[i, j])  # the other order keeps it
    fd = frame_depth(_Stub(m), np.zeros(SHAPE, np.uint16), cal, full=False)
    assert np.isnan(fd.grid[i, j])
    assert 0 < fd.n_beyond <= int(beyond_reach(m, cal).sum())
    assert "beyond the network's reach" in fd.line()
    assert np.nanmedian(np.abs(fd.grid - truth)) < 1.0


def test_frame_depth_checks_neighbours_before_the_spread_limit():
    """The same for the TTA spread limit: a flipped patch whose neighbours' views all
    disagree (imprecise, but on the right side of focus) goes."""
    rng = np.random.default_rng(5)
    meta = {"name": "zernike3", "sha256": "ef" * 32, "tta": True}

    def with_views(m, noisy):
        views = np.repeat(m.params[:, :, None, :], 8, axis=2).astype(np.float64)
        sd = np.where(noisy, 0.2, 0.005)[:, :, None]
        views[..., 0] = np.abs(views[..., 0] + sd * rng.standard_normal(views.shape[:3]))
        m.view_params = views.astype(np.float32)
        return m

    def plain(t):
        d = true_depth_grid(CY, CX, t, "x", PX, SHAPE)
        return synthetic_psf_map(d, CY, CX, SHAPE, focus_noise=0.005, rng=rng, meta=meta), d

    cal_maps = [with_views(plain(t)[0], rng.random((15, 15)) < 0.05) for t in (3, 6, 10)]
    cal = fit_calibration(cal_maps, [3, 6, 10], max_metric=None)
    assert cal.max_spread_um is not None
    m, truth = plain(6.0)
    m.valid[:] = True
    block = np.zeros((15, 15), dtype=bool)
    block[5:10, 10:15] = True  # patches 36-64 um beyond focus, views all over the place
    i, j = 7, 12
    block[i, j] = False
    m.params[i, j, 2] = (m.params[i, j, 2] + math.pi / 2) % math.pi  # this one flipped
    m = with_views(m, block)
    assert np.isnan(depth_map(m, cal)[block]).all() and depth_map(m, cal)[i, j] < 0 < truth[i, j]
    assert np.isfinite(clean_depth(depth_map(m, cal), m.centers_y, m.centers_x)[i, j])
    fd = frame_depth(_Stub(m), np.zeros(SHAPE, np.uint16), cal, full=False)
    assert np.isnan(fd.grid[i, j]) and np.isnan(fd.grid[block]).all()
    assert fd.n_spread >= int(block.sum()) - 2 and fd.n_beyond == 0
    assert "whose views disagree" in fd.line()


def _two_bends(f: np.ndarray, k1: float = 0.7, k2: float = 1.0) -> np.ndarray:
    """A response that first bends (slope 0.6 beyond ``k1`` waves), then turns flat at ``k2``."""
    top = k1 + 0.6 * (k2 - k1)
    return np.where(f <= k1, f, np.where(f <= k2, k1 + 0.6 * (f - k1), top + 0.03 * (f - k2)))


def test_reach_ratio_picks_the_first_bend_or_the_flat():
    """The default ratio 0.5 ends the reach where the response turns flat, 0.85 where it
    first bends: the linear range a linear calibration needs (README, "Depth")."""
    rng = np.random.default_rng(5)
    d = rng.uniform(-75, 75, 6000)
    m = np.sign(d) * (_two_bends(np.abs(d) * WAVES_PER_UM) + 0.01 * rng.standard_normal(d.size))
    flat = metric_reach(m, d)
    bend = metric_reach(m, d, ratio=0.85)
    assert flat is not None and 0.84 <= flat <= 0.88  # flat beyond 0.88
    assert bend is not None and 0.64 <= bend <= 0.70  # bends at 0.70
    # through fit_calibration, on maps of tilted planes (few patches reach the flat part)
    maps = []
    for t in (3, 6, 10, 3, 6, 10):
        truth = true_depth_grid(CY, CX, t, "xy", PX, SHAPE)
        mp = synthetic_psf_map(truth, CY, CX, SHAPE, focus_noise=0.01, rng=rng)
        f = _two_bends(np.abs(truth) * WAVES_PER_UM)
        mp.params[..., 0] = f + 0.01 * rng.standard_normal(truth.shape)
        maps.append(mp)
    tilts = [3, 6, 10, 3, 6, 10]
    loose = fit_calibration(maps, tilts, axis="xy", pixel_size_um=PX)
    strict = fit_calibration(maps, tilts, axis="xy", pixel_size_um=PX, reach_ratio=0.85)
    assert loose.max_metric is None or loose.max_metric > 0.8
    assert strict.max_metric is not None and strict.max_metric < 0.7
    # only the linear range is fitted: the slope is the response's near focus, 1/W um/wave
    assert strict.coef[1] == pytest.approx(1 / WAVES_PER_UM, rel=0.01)
    assert abs(loose.coef[1] * WAVES_PER_UM - 1) > abs(strict.coef[1] * WAVES_PER_UM - 1)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(CalibrationError, match="reach_ratio"):
            fit_calibration(maps, tilts, axis="xy", pixel_size_um=PX, reach_ratio=bad)
