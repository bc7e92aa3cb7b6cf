"""The shipped zernike3 model on the simulated scope: physics the maps must get right.

Skipped until trained zernike3 weights are shipped (psf_live.models.available_models()).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from psf_live.estimate import Estimator, fit_plane, signed_defocus

models = pytest.importorskip("psf_live.models")
sim = pytest.importorskip("psf_live.sim")

if "zernike3" not in getattr(models, "available_models", list)():
    pytest.skip("no shipped zernike3 weights yet", allow_module_level=True)

SHAPE = (512, 512)


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator.load("zernike3", device="cpu")


def _frame(tilt_deg: float, z_um: float, cylinder: float = 0.25, axis: str = "x") -> np.ndarray:
    scope = sim.SimMicroscope(sim.SimSettings(shape=SHAPE, margin=64), seed=0, device="cpu")
    scope.update(tilt_deg=tilt_deg, tilt_axis=axis, cylinder=cylinder)
    return scope.snap(z_um, 10.0)


@pytest.mark.parametrize("tilt", [8.0, -8.0])
def test_tilt_along_x_sign_recovered(est: Estimator, tilt: float) -> None:
    m = est.map(_frame(tilt, 0.0))
    assert m.n_valid >= 0.6 * m.valid.size
    s = signed_defocus(m.param("focus"), m.param("axis"))
    # the signed defocus grows along x with the sign of the tilt ...
    fit = fit_plane(s, m.centers_y, m.centers_x, m.valid, 0.64)
    assert np.sign(fit.slope_x) == np.sign(tilt)
    from psf_live.psf import Optics, defocus_um_to_waves

    expected = math.tan(math.radians(tilt)) * defocus_um_to_waves(1.0, Optics())  # waves/um
    assert 0.5 < fit.slope_x / expected < 2.0
    # ... and does not change along y
    assert abs(fit.slope_y) < 0.25 * abs(fit.slope_x)
    # the unsigned focus is smallest near the in-focus line (the centre column)
    f = m.param("focus")
    col = np.nanmedian(np.where(m.valid, f, np.nan), axis=0)
    mid = len(col) // 2
    assert col[mid - 1 : mid + 1].min() < min(col[0], col[-1])


def test_black_frame_all_invalid(est: Estimator) -> None:
    m = est.map(np.zeros(SHAPE, np.uint16))
    assert m.n_valid == 0


def test_uniform_blur_within_tolerance(est: Estimator) -> None:
    from psf_live.psf import Optics, defocus_um_to_waves

    z = -15.0  # focal plane below the sample: sample 15 um beyond focus
    truth = defocus_um_to_waves(15.0, Optics())
    m = est.map(_frame(0.0, z))
    assert m.n_valid >= 0.6 * m.valid.size
    f = float(np.median(m.param("focus")[m.valid]))
    c = float(np.median(m.param("cylinder")[m.valid]))
    s = float(np.median(signed_defocus(m.param("focus"), m.param("axis"))[m.valid]))
    assert f == pytest.approx(abs(truth), abs=0.1)
    assert c == pytest.approx(0.25, abs=0.1)
    assert math.copysign(1.0, s) == math.copysign(1.0, truth)


def test_int8_maps_match_float32(est: Estimator) -> None:
    """The shipped int8 weights (the CPU default) map a tilted frame as float32 does."""
    from psf_live.nets import int8_unavailable

    if int8_unavailable() is not None:
        pytest.skip(str(int8_unavailable()))
    assert est.precision == "int8", est.precision_check
    fp32 = Estimator.load("zernike3", device="cpu", precision="fp32")
    frame = _frame(8.0, 0.0)
    a, b = est.map(frame, fill=False), fp32.map(frame, fill=False)
    both = a.valid & b.valid
    assert both.sum() >= 0.9 * max(a.valid.sum(), b.valid.sum()) > 0
    focus = np.abs(a.param("focus") - b.param("focus"))[both]
    assert np.median(focus) < 0.01 and focus.max() < 0.06  # waves; the net's own RMSE ~0.13
    sa = signed_defocus(a.param("focus"), a.param("axis"))[both]
    sb = signed_defocus(b.param("focus"), b.param("axis"))[both]
    assert np.median(np.abs(sa - sb)) < 0.02
