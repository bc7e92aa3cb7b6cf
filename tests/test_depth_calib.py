"""Depth from astigmatism: Eq. 14, geometry, robust calibration, JSON, depth maps, plane tilt."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from psf_live.depth import (
    CalibrationError,
    DepthCalibration,
    dead_zone,
    depth_features,
    depth_full,
    depth_map,
    depth_metric,
    depth_spread,
    fit_calibration,
    fit_depth_plane,
    robust_lstsq,
    signed_focus,
    synthetic_psf_map,
    true_depth_grid,
)
from psf_live.estimate import patch_centers, patch_starts

NAMES = ("focus", "cylinder", "axis")
SHAPE = (1024, 1024)
CY = patch_centers(patch_starts(SHAPE[0]))
CX = patch_centers(patch_starts(SHAPE[1]))
PX = 0.64


def _maps(tilts, rng, meta=None, **kw):
    out = []
    for t in tilts:
        d = true_depth_grid(CY, CX, t, "x", PX, SHAPE)
        out.append(synthetic_psf_map(d, CY, CX, SHAPE, rng=rng, meta=meta, **kw))
    return out


def test_eq14_hand_values():
    p = np.array(
        [
            [0.4, 0.25, math.pi / 4],
            [0.4, 0.25, 3 * math.pi / 4],
            [0.3, 0.1, math.pi / 2],
            [0.0, 0.25, 0.1],
            [1.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(depth_metric(p, NAMES), [-0.2, 0.2, 0.0, 0.0, -1.0], atol=1e-6)
    # the periodic signed focus: + at the lens axis, - across it
    np.testing.assert_allclose(signed_focus(p[:2], NAMES), [0.4, -0.4], atol=1e-6)
    # column order is taken from the names
    np.testing.assert_allclose(
        depth_metric(p[:, [2, 0, 1]], ("axis", "focus", "cylinder")), depth_metric(p, NAMES)
    )
    with pytest.raises(ValueError, match="zernike3"):
        depth_metric(np.ones((2, 1)), ("width",))


def test_true_depth_geometry_and_sign():
    d = true_depth_grid(CY, CX, 6.0, "x", PX, SHAPE)
    assert d.shape == (CY.size, CX.size)
    # constant along y, increasing along +x (the +x side farther: positive depth)
    assert np.allclose(d, d[:1])
    assert np.all(np.diff(d[0]) > 0) and d[0, -1] > 0 > d[0, 0]
    # in-focus line through the centre; slope px * tan(tilt)
    expect = (CX - 511.5) * PX * math.tan(math.radians(6.0))
    np.testing.assert_allclose(d[0], expect)
    # full field of view 655 um -> depth range 655 tan(tilt) (pixel centres: 1023 px)
    full = true_depth_grid(np.arange(1024.0), np.array([0.0, 1023.0]), 10, "x", PX, SHAPE)
    assert full[0, 1] - full[0, 0] == pytest.approx(1023 * PX * math.tan(math.radians(10)))
    dy = true_depth_grid(CY, CX, -3.0, "y", PX, SHAPE)
    assert np.allclose(dy, dy[:, :1]) and dy[0, 0] > 0 > dy[-1, 0]


def test_diagonal_tilt_geometry_plane_and_calibration():
    """axis "xy": depth along (+x +y)/sqrt(2), as the simulator renders it; the fitted
    plane reports that tilt along the diagonal; a calibration fits on such images."""
    d = true_depth_grid(CY, CX, 6.0, "xy", PX, SHAPE)
    s = ((CY[:, None] - 511.5) + (CX[None, :] - 511.5)) / math.sqrt(2.0)
    np.testing.assert_allclose(d, s * PX * math.tan(math.radians(6.0)))
    sim = pytest.importorskip("psf_live.sim")
    truth = sim.depth_map(SHAPE, 0.0, sim.Scene(tilt_deg=6.0, tilt_axis="xy"), PX)
    np.testing.assert_allclose(
        d, truth[CY.round().astype(int)][:, CX.round().astype(int)], atol=0.1
    )
    plane = fit_depth_plane(d, CY, CX, PX, SHAPE)
    assert plane.along("xy") == pytest.approx(6.0, abs=1e-6)
    # 6 deg along the diagonal is atan(tan(6) / sqrt(2)) along each of x and y
    assert plane.tilt_x_deg == pytest.approx(plane.tilt_y_deg, abs=1e-9)
    assert plane.tilt_x_deg == pytest.approx(math.degrees(math.atan(0.1051 / 1.4142)), abs=1e-3)
    px = fit_depth_plane(true_depth_grid(CY, CX, -4.0, "x", PX, SHAPE), CY, CX, PX, SHAPE)
    assert px.along("x") == pytest.approx(-4.0) and px.along("y") == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="tilt axis"):
        true_depth_grid(CY, CX, 6.0, "z", PX, SHAPE)  # type: ignore[arg-type]
    rng = np.random.default_rng(4)
    maps = [
        synthetic_psf_map(true_depth_grid(CY, CX, t, "xy", PX, SHAPE), CY, CX, SHAPE, rng=rng)
        for t in (3, 6, 10)
    ]
    cal = fit_calibration(maps, [3, 6, 10], axis="xy", pixel_size_um=PX)
    assert cal.tilt_axis == "xy" and cal.report["r2"] > 0.99
    test = synthetic_psf_map(true_depth_grid(CY, CX, 8, "xy", PX, SHAPE), CY, CX, SHAPE, rng=rng)
    err = np.nanmean(np.abs(depth_map(test, cal) - true_depth_grid(CY, CX, 8, "xy", PX, SHAPE)))
    assert err < 1.0
    # the same maps read as tilted along x do not fit: the geometry matters
    with pytest.raises(CalibrationError):
        fit_calibration(maps, [3, 6, 10], axis="x", pixel_size_um=PX)


def test_synthetic_map_matches_sim_convention():
    """Beyond focus (d > 0) the map reads the lens axis, so Eq. 14 is negative there."""
    sim = pytest.importorskip("psf_live.sim")
    from psf_live.sim import Scene

    scene = Scene(tilt_deg=6.0, tilt_axis="x", cylinder=0.25)
    truth = sim.depth_map(SHAPE, 0.0, scene, PX)
    d = true_depth_grid(CY, CX, 6.0, "x", PX, SHAPE)
    np.testing.assert_allclose(
        d, truth[CY.round().astype(int)][:, CX.round().astype(int)], atol=0.1
    )
    m = synthetic_psf_map(d, CY, CX, SHAPE)
    z = depth_metric(m.params, m.param_names)
    assert np.all(z[:, CX > 600] < 0) and np.all(z[:, CX < 400] > 0)


def test_robust_lstsq_ignores_outliers():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 400)
    y = 3.0 - 7.0 * x + 0.01 * rng.standard_normal(400)
    y[:40] += rng.uniform(5, 20, 40)
    A = np.stack([np.ones_like(x), x], 1)
    ols = np.linalg.lstsq(A, y, rcond=None)[0]
    coef, w = robust_lstsq(A, y)
    assert abs(ols[0] - 3.0) > 0.5  # the outliers do bend plain least squares
    np.testing.assert_allclose(coef, [3.0, -7.0], atol=0.02)
    assert np.all(w[:40] < 0.2)


@pytest.mark.parametrize("features", ["eq14", "signed", "signed-cubic"])
def test_calibration_recovers_geometry_robustly(features):
    rng = np.random.default_rng(2)
    maps = _maps(
        [3, 6, 10, 3, 6, 10],
        rng,
        focus_noise=0.01,
        axis_noise=0.02,
        invalid_fraction=0.1,
        outlier_fraction=0.05,
    )
    cal = fit_calibration(
        maps,
        [3, 6, 10, 3, 6, 10],
        features=features,
        fit="forward" if features.endswith("-cubic") else "inverse",
    )
    # Eq. 14 is -f/2 beyond focus; defocus_um_to_waves is 1/60 wave per um at NA 0.25
    if features == "eq14":
        assert cal.coef[1] == pytest.approx(-120.0, rel=0.02)
        assert abs(cal.coef[0]) < 0.5
    rep = cal.report
    assert rep["r2_inliers"] > 0.99 and rep["r2"] < rep["r2_inliers"] and rep["n_outliers"] > 0
    # on clean maps of a new tilt the calibration is exact to noise
    test = _maps([8], np.random.default_rng(3), focus_noise=0.005)[0]
    est = depth_map(test, cal)
    truth = true_depth_grid(CY, CX, 8, "x", PX, SHAPE)
    err = np.abs(est - truth)[test.valid]
    assert np.median(err) < 0.6
    assert np.isnan(est[~test.valid]).all()


def test_cubic_helps_a_nonlinear_response():
    """A response that saturates is fitted better by the checked monotone cubic."""
    rng = np.random.default_rng(4)
    maps = _maps([3, 6, 10], rng, focus_noise=0.002)
    for m in maps:
        f = m.params[..., 0]
        m.params[..., 0] = f - 0.25 * f**3  # compressive, still monotone on [0, 1]
    lin = fit_calibration(maps, [3, 6, 10], features="signed", fit="forward")
    cub = fit_calibration(maps, [3, 6, 10], features="signed-cubic", fit="forward")
    assert cub.report["rms_um"] < 0.5 * lin.report["rms_um"]


def test_dead_zone_shrinks_towards_zero():
    m = np.array([-0.5, -0.1, -0.05, 0.0, 0.04, 0.1, 0.7])
    np.testing.assert_allclose(dead_zone(m, 0.1), [-0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6])
    np.testing.assert_array_equal(dead_zone(m, 0.0), m)


def test_dead_zone_undoes_a_biased_focus():
    """A focus output biased upwards near focus (it cannot go below zero) makes the
    signed metric jump across focus; the fitted dead zone finds the bias and removes
    most of the error, and an unbiased map gets (almost) no dead zone."""
    bias = 0.08
    maps = _maps([3, 6, 10], np.random.default_rng(11), focus_noise=0.004)
    for m in maps:
        m.params[..., 0] += bias
    plain = fit_calibration(maps, [3, 6, 10], deadzone=0.0)
    auto = fit_calibration(maps, [3, 6, 10])
    assert plain.deadzone == 0.0
    assert auto.deadzone == pytest.approx(bias, abs=0.015)
    assert auto.report["mae_um"] < 0.4 * plain.report["mae_um"]
    test = _maps([8], np.random.default_rng(12), focus_noise=0.004)[0]
    test.params[..., 0] += bias
    truth = true_depth_grid(CY, CX, 8, "x", PX, SHAPE)
    err_auto = np.nanmean(np.abs(depth_map(test, auto) - truth))
    err_plain = np.nanmean(np.abs(depth_map(test, plain) - truth))
    assert err_auto < 0.5 * err_plain
    clean = fit_calibration(
        _maps([3, 6, 10], np.random.default_rng(13), focus_noise=0.004), [3, 6, 10]
    )
    assert clean.deadzone < 0.01
    with pytest.raises(CalibrationError, match="deadzone"):
        fit_calibration(maps, [3, 6, 10], deadzone=-1.0)
    # the width is saved; files from before it existed read as no dead zone
    assert DepthCalibration.from_dict(auto.to_dict()).deadzone == auto.deadzone
    old = {k: v for k, v in auto.to_dict().items() if k != "deadzone"}
    assert DepthCalibration.from_dict(old).deadzone == 0.0
    with pytest.raises(ValueError, match="deadzone"):
        DepthCalibration.from_dict({**auto.to_dict(), "deadzone": -0.1})


def test_lens_axis_must_match_the_network():
    """A network trained for one lens axis (its card's axis interval) refuses another."""
    card = {"name": "lens45", "data_recipe": {"param_ranges": {"axis": [0.70, 0.87]}}}
    maps = _maps([3, 6, 10], np.random.default_rng(14), focus_noise=0.004, meta=card)
    assert fit_calibration(maps, [3, 6, 10], lens_axis=math.pi / 4).network["name"] == "lens45"
    # its mirror image (135 deg) is the same lens turned: allowed
    fit_calibration(maps, [3, 6, 10], lens_axis=3 * math.pi / 4)
    with pytest.raises(CalibrationError, match="trained for a cylindrical lens at 40-50 deg"):
        fit_calibration(maps, [3, 6, 10], lens_axis=0.0)


def test_json_round_trip(tmp_path):
    meta = {
        "name": "zernike3",
        "sha256": "ab" * 32,
        "psf_model": "zernike3",
        "optics": {"na": 0.25},
    }
    cal = fit_calibration(_maps([3, 10], np.random.default_rng(5), meta=meta), [3, 10])
    p = cal.save(tmp_path / "c.json")
    back = DepthCalibration.load(p)
    assert back == cal and back.source == str(p)
    d = json.loads(p.read_text())
    assert d["network"]["sha256"] == "ab" * 32 and d["tilt_axis"] == "x"
    assert d["optics"] == {"na": 0.25} and len(d["report"]["images"]) == 2
    assert "source" not in d


def test_wrong_network_is_an_error(tmp_path):
    meta = {"name": "zernike3", "sha256": "ab" * 32}
    cal = fit_calibration(_maps([3, 10], np.random.default_rng(6), meta=meta), [3, 10])
    p = cal.save(tmp_path / "c.json")
    cal = DepthCalibration.load(p)
    other = _maps([6], np.random.default_rng(7), meta={"name": "zernike3", "sha256": "cd" * 32})
    with pytest.raises(CalibrationError, match=r"c\.json: made with network 'zernike3'") as e:
        depth_map(other[0], cal)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(CalibrationError, match="no such calibration file"):
        DepthCalibration.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match=r"bad\.json: invalid depth calibration"):
        DepthCalibration.load(bad)
    bad.write_text(json.dumps({"features": "eq14", "coef": [1.0]}))
    with pytest.raises(CalibrationError, match="2 finite coefficients"):
        DepthCalibration.load(bad)


def test_refusals():
    rng = np.random.default_rng(8)
    maps = _maps([3, 6], rng)
    maps[1].valid[:] = False
    with pytest.raises(CalibrationError, match=r"image 1 .*no valid patch"):
        fit_calibration(maps, [3, 6])
    with pytest.raises(CalibrationError, match="no depth range"):
        fit_calibration(_maps([0.0], rng), [0.0])
    with pytest.raises(CalibrationError, match="2 images but 1 tilts"):
        fit_calibration(_maps([3, 6], rng), [3])
    with pytest.raises(CalibrationError, match="no calibration images"):
        fit_calibration([], [])
    # wrong tilt sign given for one image: the fit is poor and refused
    with pytest.raises(CalibrationError, match=r"R\^2 .* below"):
        fit_calibration(_maps([6, 6], rng, focus_noise=0.01), [6, -6])
    # pure noise carries no depth information
    noisy = _maps([6], rng, outlier_fraction=1.0)
    with pytest.raises(CalibrationError, match="R\\^2"):
        fit_calibration(noisy, [6])


def test_plane_fit_recovers_tilt():
    rng = np.random.default_rng(9)
    yy, xx = np.meshgrid(CY - 511.5, CX - 511.5, indexing="ij")
    d = 5.0 + math.tan(math.radians(4.0)) * xx * PX + math.tan(math.radians(-2.0)) * yy * PX
    d = d + 0.3 * rng.standard_normal(d.shape)
    d[2, 3] = 200.0
    d[5, 5] = np.nan
    t = fit_depth_plane(d, CY, CX, PX, SHAPE)
    assert t.tilt_x_deg == pytest.approx(4.0, abs=0.05)
    assert t.tilt_y_deg == pytest.approx(-2.0, abs=0.05)
    assert t.offset_um == pytest.approx(5.0, abs=0.2)
    assert 0.2 < t.residual_um < 0.45 and t.n_used <= d.size - 2
    with pytest.raises(ValueError, match="at least 3"):
        fit_depth_plane(np.full_like(d, np.nan), CY, CX, PX)


def test_full_resolution_depth():
    d = true_depth_grid(CY, CX, 6.0, "x", PX, SHAPE)
    full = depth_full(d, CY, CX, SHAPE)
    assert full.shape == SHAPE and full.dtype == np.float32
    # linear between centres: matches the analytic depth inside the centre hull
    x = np.arange(1024.0)
    inside = (x >= CX[0]) & (x <= CX[-1])
    exact = (x - 511.5) * PX * math.tan(math.radians(6.0))
    np.testing.assert_allclose(full[300, inside], exact[inside], atol=1e-3)
    # one invalid patch is filled from its neighbours: no hole, still the plane
    one = d.copy()
    one[4, 4] = np.nan
    np.testing.assert_allclose(depth_full(one, CY, CX, SHAPE), full, atol=1e-3)
    # a hole wider than one patch: NaN where no valid patch supports the pixel
    holes = d.copy()
    holes[:, :3] = np.nan
    f2 = depth_full(holes, CY, CX, SHAPE)
    assert np.isnan(f2[:, :100]).all() and np.isfinite(f2[:, 200:]).all()
    np.testing.assert_allclose(f2[:, 330:], full[:, 330:], atol=1e-3)


def test_features_shape():
    p = np.zeros((4, 5, 3))
    assert depth_features(p, NAMES, "eq14").shape == (4, 5, 2)
    assert depth_features(p, NAMES, "signed-cubic").shape == (4, 5, 3)
    with pytest.raises(ValueError, match="unknown depth features"):
        depth_features(p, NAMES, "quartic")


def test_clean_depth_removes_isolated_errors_only():
    from psf_live.depth import clean_depth

    rng = np.random.default_rng(10)
    d = true_depth_grid(CY, CX, 10.0, "x", PX, SHAPE) + 0.2 * rng.standard_normal((15, 15))
    bad = d.copy()
    bad[3, 4] += 25.0
    bad[10, 12] -= 40.0
    bad[7, 7] = np.nan
    c = clean_depth(bad, CY, CX)
    assert np.isnan(c[3, 4]) and np.isnan(c[10, 12]) and np.isnan(c[7, 7])
    assert np.isfinite(c).sum() == d.size - 3
    # a steep but smooth plane keeps every patch
    assert np.isfinite(clean_depth(d, CY, CX)).all()


def test_inverse_fit_keeps_the_tilt_under_metric_noise():
    """Noise in the metric shrinks a forward fit's slope; the inverse fit keeps it."""
    rng = np.random.default_rng(11)
    maps = _maps([6, 10, 6, 10], rng, focus_noise=0.12)
    fwd = fit_calibration(maps, [6, 10, 6, 10], fit="forward", min_r2=0.0)
    inv = fit_calibration(maps, [6, 10, 6, 10], fit="inverse", min_r2=0.0)
    test = _maps([8, 8, 8], np.random.default_rng(12), focus_noise=0.12)
    t_f = np.mean([fit_depth_plane(depth_map(m, fwd), CY, CX, PX, SHAPE).tilt_x_deg for m in test])
    t_i = np.mean([fit_depth_plane(depth_map(m, inv), CY, CX, PX, SHAPE).tilt_x_deg for m in test])
    assert t_f < 7.7  # shrunk by the noise
    assert t_i == pytest.approx(8.0, abs=0.25)
    assert inv.fit == "inverse" and DepthCalibration.from_dict(inv.to_dict()).fit == "inverse"
    # the default is the forward fit (measured better with the shipped networks), and a
    # calibration file written before the field existed reads as the inverse fit it was
    assert fit_calibration(maps, [6, 10, 6, 10], min_r2=0.0).fit == "forward"
    old = {k: v for k, v in fwd.to_dict().items() if k != "fit"}
    assert DepthCalibration.from_dict(old).fit == "inverse"
    with pytest.raises(CalibrationError, match="linear model"):
        fit_calibration(maps, [6, 10, 6, 10], features="signed-cubic", fit="inverse")


def test_sample_plane_undoes_the_forward_fits_shrinkage():
    """The forward fit pulls depths towards the middle by its response slope (noise in
    the metric); the sample's plane, through many patches, divides it out, and map_depth
    (the depth command, panel and recordings) reports that plane."""
    from psf_live.depth import map_depth, sample_plane

    rng = np.random.default_rng(11)
    maps = _maps([6, 10, 6, 10], rng, focus_noise=0.12)
    fwd = fit_calibration(maps, [6, 10, 6, 10], fit="forward", min_r2=0.0)
    assert fwd.response_slope is not None and fwd.response_slope < 0.97
    test = _maps([8, 8, 8], np.random.default_rng(12), focus_noise=0.12)
    plain = [fit_depth_plane(depth_map(m, fwd), CY, CX, PX, SHAPE).tilt_x_deg for m in test]
    fixed = [sample_plane(depth_map(m, fwd), CY, CX, fwd, SHAPE).tilt_x_deg for m in test]
    assert np.mean(plain) < 7.7
    assert np.mean(fixed) == pytest.approx(8.0, abs=0.25)
    via = [map_depth(m, fwd, full=False, clean=False).plane for m in test]
    assert all(p is not None for p in via)
    np.testing.assert_allclose([p.tilt_x_deg for p in via if p is not None], fixed, atol=1e-9)
    # a calibration from before the response slope was stored gives the plain plane
    old = DepthCalibration.from_dict({**fwd.to_dict(), "response_slope": None})
    assert sample_plane(depth_map(test[0], old), CY, CX, old, SHAPE).tilt_x_deg == pytest.approx(
        plain[0]
    )


def test_calibration_binds_the_tta_mode():
    """A calibration made on --tta maps refuses maps made without it, and vice versa."""
    meta = {"name": "zernike3", "sha256": "ab" * 32, "tta": True}
    cal = fit_calibration(_maps([3, 10], np.random.default_rng(8), meta=meta), [3, 10])
    assert cal.network["tta"] is True
    plain = _maps([6], np.random.default_rng(9), meta={**meta, "tta": False})
    with pytest.raises(CalibrationError, match="with test-time augmentation"):
        depth_map(plain[0], cal)
    same = _maps([6], np.random.default_rng(9), meta=meta)
    assert np.isfinite(depth_map(same[0], cal)).any()
    # with fewer views the count binds too; metadata without the count meant 8 views
    assert cal.network["tta_views"] == 8 and cal.tta_views == 8
    two = {**meta, "tta_views": 2}
    cal2 = fit_calibration(_maps([3, 10], np.random.default_rng(8), meta=two), [3, 10])
    assert cal2.tta_views == 2
    with pytest.raises(CalibrationError, match="2-view test-time augmentation"):
        depth_map(_maps([6], np.random.default_rng(9), meta={**meta, "tta_views": 8})[0], cal2)
    with pytest.raises(CalibrationError, match="with test-time augmentation"):
        depth_map(_maps([6], np.random.default_rng(9), meta=two)[0], cal)
    assert np.isfinite(depth_map(_maps([6], np.random.default_rng(9), meta=two)[0], cal2)).any()
    old = cal.to_dict()
    old["network"].pop("tta_views")
    assert DepthCalibration.from_dict(old).tta_views == 8


def _with_views(m, rng, noisy, spread_waves=0.2, base_waves=0.005):
    """Give a map 8 TTA views: agreeing ones everywhere, scattered ones where ``noisy``
    (whose mean estimate is also wrong, as with the real network)."""
    views = np.repeat(m.params[:, :, None, :], 8, axis=2).astype(np.float64)
    sd = np.where(noisy, spread_waves, base_waves)[:, :, None]
    views[..., 0] += sd * rng.standard_normal(views.shape[:3])
    views[..., 0] = np.abs(views[..., 0])
    m.view_params = views.astype(np.float32)
    m.params = m.params.copy()
    m.params[..., 0] = np.where(noisy, m.params[..., 0] + 0.3, m.params[..., 0])
    return m


def test_tta_spread_drops_the_patches_whose_views_disagree(tmp_path):
    """fit_calibration sets max_spread_um to a quantile of the views' depth spread;
    depth_map then leaves out the patches whose views disagree (and whose depth is
    wrong), keeping the others; maps without views and old files are unaffected."""
    rng = np.random.default_rng(21)
    meta = {"name": "zernike3", "sha256": "cd" * 32, "tta": True}
    cal_maps = [
        _with_views(m, rng, rng.random(m.valid.shape) < 0.05)
        for m in _maps([3, 6, 10], rng, meta=meta, focus_noise=0.005)
    ]
    cal = fit_calibration(cal_maps, [3, 6, 10], spread_quantile=0.9)
    assert cal.max_spread_um is not None and cal.max_spread_um > 0
    noisy = rng.random(cal_maps[0].valid.shape) < 0.1
    test = _with_views(_maps([6], rng, meta=meta, focus_noise=0.005)[0], rng, noisy)
    spread = depth_spread(test, cal)
    assert spread is not None and spread.shape == test.valid.shape
    assert np.nanmedian(spread[noisy]) > 10 * np.nanmedian(spread[~noisy])
    d = depth_map(test, cal)
    truth = true_depth_grid(CY, CX, 6, "x", PX, SHAPE)
    ok = test.valid & ~noisy
    assert np.isnan(d[noisy & test.valid]).mean() > 0.9  # the disagreeing patches go
    assert np.isfinite(d[ok]).mean() > 0.85  # most of the others stay
    kept = np.isfinite(d)
    loose = DepthCalibration.from_dict({**cal.to_dict(), "max_spread_um": None})
    d_all = depth_map(test, loose)
    assert np.abs(d[kept] - truth[kept]).mean() < 0.5 * np.nanmean(np.abs(d_all - truth))
    # the limit travels in the file; a file without it (before 2026-12-02) has none
    back = DepthCalibration.load(cal.save(tmp_path / "c.json"))
    assert back.max_spread_um == pytest.approx(cal.max_spread_um)
    old = cal.to_dict()
    old.pop("max_spread_um")
    assert DepthCalibration.from_dict(old).max_spread_um is None
    # no views: no spread, no rejection; calibrating on such maps sets no limit
    test.view_params = None
    assert depth_spread(test, cal) is None
    np.testing.assert_array_equal(np.isfinite(depth_map(test, cal)), test.valid)
    plain = fit_calibration(_maps([3, 10], rng, meta=meta), [3, 10])
    assert plain.max_spread_um is None
    with pytest.raises(CalibrationError, match="spread_quantile"):
        fit_calibration(cal_maps, [3, 6, 10], spread_quantile=1.5)


def _clean_reference(d: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """clean_depth's rule one patch at a time with robust_lstsq (k 4, floor 0.1, radius 2)."""
    from psf_live.depth import robust_lstsq

    dev = np.full(d.shape, np.nan)
    for i, j in zip(*np.nonzero(np.isfinite(d)), strict=True):
        pts = [
            (1.0, cy[a] - cy[i], cx[b] - cx[j], d[a, b])
            for a in range(max(0, i - 2), min(d.shape[0], i + 3))
            for b in range(max(0, j - 2), min(d.shape[1], j + 3))
            if (a, b) != (i, j) and np.isfinite(d[a, b])
        ]
        if len(pts) >= 4:
            m = np.array(pts)
            dev[i, j] = d[i, j] - robust_lstsq(m[:, :3], m[:, 3], n_iter=10)[0][0]
    fin = np.isfinite(dev)
    out = d.copy()
    if fin.any():
        scale = max(1.4826 * float(np.median(np.abs(dev[fin]))), 0.1)
        out[fin & (np.abs(dev) > 4 * scale)] = np.nan
    return out


def test_clean_depth_solves_every_patch_as_robust_lstsq_would():
    """The vectorised fits drop exactly the patches the one-by-one robust fits drop
    (outliers, holes, sparse and collinear leftovers, grids down to one row)."""
    from psf_live.depth import clean_depth

    rng = np.random.default_rng(11)
    for t in range(40):
        rows, cols = rng.integers(1, 16, 2)
        cy, cx = 64.0 + 64 * np.arange(rows), 64.0 + 64 * np.arange(cols)
        d = cx[None, :] * rng.normal(0, 0.1) + cy[:, None] * rng.normal(0, 0.1)
        d = d + rng.normal(0, 1, (rows, cols))
        wild = rng.random((rows, cols)) < 0.05
        d[wild] += rng.normal(0, 30, int(wild.sum()))
        d[rng.random((rows, cols)) < rng.uniform(0, 0.6)] = np.nan
        if t % 7 == 0 and rows > 2:  # one row of scattered patches left: collinear
            d[1:] = np.nan
            d[0, ::2] = np.nan
        got, want = clean_depth(d, cy, cx), _clean_reference(d, cy, cx)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)
