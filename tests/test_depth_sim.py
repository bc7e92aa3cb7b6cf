"""End to end on simulated frames with the shipped zernike3 network (skipped until it ships)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psf_live.depth import depth_map, fit_calibration, fit_depth_plane, true_depth_grid

models = pytest.importorskip("psf_live.models")
if "zernike3" not in models.available_models():
    pytest.skip("shipped zernike3 weights not available yet", allow_module_level=True)

SHAPE = (512, 512)
PX = 0.64


# network -> (minimum correlation with the true depth, largest tilt error in degrees): the
# networks trained for the lens's cylinder range (and axis) are held to a much tighter standard
BOUNDS = {"zernike3": (0.3, 4.0), "zernike3-lens": (0.9, 1.5), "zernike3-lens45": (0.9, 1.5)}


def _shipped(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(name not in models.available_models(), reason=f"{name} not shipped")


@pytest.fixture(
    scope="module",
    params=["zernike3"]
    + [pytest.param(n, marks=_shipped(n)) for n in ("zernike3-lens", "zernike3-lens45")],
)
def maps(request: pytest.FixtureRequest) -> tuple[str, dict[float, list]]:
    from psf_live.estimate import Estimator
    from psf_live.sim import SimMicroscope, SimSettings

    name = request.param
    scope = SimMicroscope(SimSettings(shape=SHAPE), seed=0, device="cpu")
    scope.update(cylinder=0.25, cylinder_axis=math.pi / 4, tilt_axis="x")
    est = Estimator.load(name, device="cpu")
    out: dict[float, list] = {}
    for k, t in enumerate((10.0, -10.0, 10.0, 6.0, -6.0)):
        scope.update(tilt_deg=t, sample_offset_um=(37.0 * k, 53.0 * k))
        out.setdefault(t, []).append(est.map(scope.snap(0.0, 10.0)))
    return name, out


def test_calibrated_depth_on_sim_frames(maps: tuple[str, dict[float, list]]) -> None:
    """Physics with the shipped networks: positive signed focus means beyond the focal
    plane, the tilt sign is right on unseen frames, and depth correlates with the truth.
    (Accuracy targets belong to benchmarks/depth_table6.py.)"""
    name, by_tilt = maps
    min_corr, max_tilt_err = BOUNDS[name]
    cal_maps = by_tilt[10.0] + by_tilt[-10.0]
    cal = fit_calibration(cal_maps, [10.0, 10.0, -10.0], pixel_size_um=PX, min_r2=0.0)
    assert cal.coef[1] > 0  # signed focus grows with depth (the sim's sign convention)
    for t in (6.0, -6.0):
        m = by_tilt[t][0]
        d = depth_map(m, cal)
        truth = true_depth_grid(m.centers_y, m.centers_x, t, "x", PX, SHAPE)
        ok = np.isfinite(d)
        assert ok.mean() > 0.5
        assert np.corrcoef(d[ok], truth[ok])[0, 1] > min_corr
        plane = fit_depth_plane(d, m.centers_y, m.centers_x, PX, SHAPE)
        assert np.sign(plane.tilt_x_deg) == np.sign(t)
        assert abs(plane.tilt_x_deg - t) < max_tilt_err
        assert abs(plane.tilt_y_deg) < abs(plane.tilt_x_deg)
