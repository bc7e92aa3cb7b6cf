"""Per-frame summaries of a PSF map: global focus, signed defocus, robust plane fit, tilt."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ._map import PSFMap

__all__ = [
    "DEFAULT_LENS_AXIS",
    "DepthCalibration",
    "FrameSummary",
    "PlaneFit",
    "fit_plane",
    "focus_map",
    "signed_defocus",
    "summarize",
]

DEFAULT_LENS_AXIS = math.pi / 4
"""Axis (radians) of the cylindrical lens of the simulated scope and the paper's setup."""


@runtime_checkable
class DepthCalibration(Protocol):
    """Anything that turns a PSF map into a depth map in micrometres (the depth issue)."""

    def depth_um(self, psf_map: PSFMap) -> np.ndarray:
        """Return the (rows, cols) signed depth of every patch in micrometres."""
        ...


def focus_map(psf_map: PSFMap) -> tuple[np.ndarray, str, str] | None:
    """Return the focus-like (unsigned) parameter map, its name and unit.

    ``focus`` for Zernike models that have it, ``width`` for ``gaussian1`` and the mean
    of ``width_x`` and ``width_y`` for ``gaussian2``; None for ``zernike2`` (no focus).
    """
    names = psf_map.param_names
    units = psf_map.units
    if "focus" in names:
        return psf_map.param("focus"), "focus", units[names.index("focus")]
    if "width" in names:
        return psf_map.param("width"), "width", units[names.index("width")]
    if "width_x" in names and "width_y" in names:
        w = 0.5 * (psf_map.param("width_x") + psf_map.param("width_y"))
        return w, "width", units[names.index("width_x")]
    return None


def signed_defocus(
    focus: npt.ArrayLike, axis: npt.ArrayLike, lens_axis: float = DEFAULT_LENS_AXIS
) -> np.ndarray:
    """Signed defocus from the unsigned focus and the astigmatism axis.

    A cylindrical lens at axis ``t0`` adds a fixed astigmatism; a PSF with signed
    defocus ``f`` then equals the one with ``(|f|, C, t0)`` for ``f > 0`` and
    ``(|f|, C, t0 + pi/2)`` for ``f < 0`` (see :func:`psf_live.psf.zernike_psf`). We
    return ``focus * cos(2 (axis - t0))``: ``+focus`` at the lens axis, ``-focus``
    perpendicular to it, and a smooth transition (towards 0) in between, where the axis
    is ill-defined because the defocus is small. The sign follows the ``focus`` argument
    of :func:`psf_live.psf.zernike_psf`.

    The paper's Eq. 14, ``z = a1 (2 a3 / pi - 1)``, is the piecewise-linear form of the
    same idea for a lens at pi/4 (with the opposite sign convention and half the slope);
    it is not periodic in the axis, so we use the cosine.

    Parameters
    ----------
    focus, axis : array_like
        Unsigned defocus (waves RMS) and astigmatism axis (radians), same shape.
    lens_axis : float
        Axis of the cylindrical lens, radians.

    Returns
    -------
    numpy.ndarray
        Signed defocus, float32, same shape, in the unit of ``focus``.

    References
    ----------
    .. [1] Shajkofci and Liebling, IEEE TIP 29 (2020), Section II-H, Eq. 14.
    """
    f = np.asarray(focus, dtype=np.float64)
    a = np.asarray(axis, dtype=np.float64)
    return (f * np.cos(2.0 * (a - lens_axis))).astype(np.float32)


@dataclass(frozen=True)
class PlaneFit:
    """A plane ``z = offset + slope_x * x + slope_y * y`` (x, y in micrometres).

    ``offset`` is the value at the frame centre; ``residual`` the RMS deviation of the
    inliers from the plane; ``n_used`` the number of inliers.
    """

    offset: float
    slope_x: float
    slope_y: float
    residual: float
    n_used: int


def fit_plane(
    values: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    mask: npt.ArrayLike | None = None,
    pixel_size_um: float = 1.0,
    robust: bool = True,
    n_iter: int = 10,
) -> PlaneFit:
    """Robust least-squares plane through a map.

    Iteratively reweighted least squares with Tukey's biweight (c = 4.685 times the
    MAD-based scale), starting from ordinary least squares, so that a few wrong patches
    do not tilt the plane.

    Parameters
    ----------
    values : array_like
        (rows, cols) map.
    centers_y, centers_x : array_like
        Patch centres in pixels.
    mask : array_like of bool, optional
        Patches to use (e.g. the valid ones); all by default.
    pixel_size_um : float
        Pixel size in the sample, so that slopes are per micrometre.
    robust : bool
        Use the biweight IRLS (else plain least squares).
    n_iter : int
        IRLS iterations.

    Returns
    -------
    PlaneFit
        NaN slopes when fewer than 3 patches (or collinear ones) are usable.
    """
    z = np.asarray(values, dtype=np.float64)
    cy = np.asarray(centers_y, dtype=np.float64)
    cx = np.asarray(centers_x, dtype=np.float64)
    m = np.ones(z.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    m = m & np.isfinite(z)
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    ym = 0.5 * (cy[0] + cy[-1])
    xm = 0.5 * (cx[0] + cx[-1])
    x = (xx[m] - xm) * pixel_size_um
    y = (yy[m] - ym) * pixel_size_um
    zz = z[m]
    nan = PlaneFit(math.nan, math.nan, math.nan, math.nan, int(zz.size))
    if zz.size < 3:
        return nan
    a = np.stack([np.ones_like(x), x, y], axis=1)
    if np.linalg.matrix_rank(a) < 3:
        return nan
    w = np.ones_like(zz)
    coef = np.zeros(3)
    for it in range(n_iter if robust else 1):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], zz * sw, rcond=None)
        if not robust:
            break
        r = zz - a @ coef
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if scale <= 1e-12:
            break
        u = r / (4.685 * scale)
        w_new = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if (w_new > 0).sum() < 3 or it == n_iter - 1:
            break
        w = w_new
    r = zz - a @ coef
    used = w > 0
    residual = float(np.sqrt(np.mean(r[used] ** 2))) if used.any() else math.nan
    return PlaneFit(float(coef[0]), float(coef[1]), float(coef[2]), residual, int(used.sum()))


@dataclass(frozen=True)
class FrameSummary:
    """What a user reads per frame.

    Attributes
    ----------
    focus : float
        Median of the focus-like parameter over valid patches (NaN when none is valid).
    focus_name, focus_unit : str
        Which parameter (``focus`` in waves RMS, ``width`` in px) and its unit.
    plane_quantity : str
        What the plane was fitted to: ``"depth"`` (calibrated, um), ``"signed_defocus"``
        (zernike3: focus signed by the astigmatism axis) or ``"focus"`` / ``"width"``
        (unsigned: on a tilted sample crossing focus this is V-shaped and the slope is
        not a tilt).
    plane_unit : str
        Unit of the fitted quantity.
    slope_x, slope_y : float
        Plane slopes in ``plane_unit`` per micrometre along x (columns) and y (rows).
    tilt_x_deg, tilt_y_deg : float or None
        Sample tilt in degrees, only when a depth calibration turned the map into
        micrometres; None otherwise.
    residual : float
        RMS of the plane-fit inliers, in ``plane_unit``.
    n_valid, n_patches : int
        Valid and total patches.
    """

    focus: float
    focus_name: str
    focus_unit: str
    plane_quantity: str
    plane_unit: str
    slope_x: float
    slope_y: float
    tilt_x_deg: float | None
    tilt_y_deg: float | None
    residual: float
    n_valid: int
    n_patches: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (NaN kept as float NaN)."""
        return asdict(self)

    def line(self) -> str:
        """Return a compact one-line text rendering."""
        if self.tilt_x_deg is not None and self.tilt_y_deg is not None:
            tilt = f"tilt x {self.tilt_x_deg:+.2f} deg y {self.tilt_y_deg:+.2f} deg"
        else:
            tilt = (
                f"d{self.plane_quantity}/dx {self.slope_x:+.2e} /dy {self.slope_y:+.2e} "
                f"{self.plane_unit}/um"
            )
        return (
            f"{self.focus_name} {self.focus:.3f} {self.focus_unit}  {tilt}  "
            f"resid {self.residual:.3f}  valid {self.n_valid}/{self.n_patches}"
        )


def optics_tilt_deg(summary: FrameSummary, optics: Any = None) -> tuple[float, float] | None:
    """Uncalibrated tilt in degrees from the signed-defocus plane and the optics.

    Converts the slopes of the signed defocus (waves RMS per um) to depth slopes with
    the defocus scale of :func:`psf_live.psf.defocus_waves_to_um` (um of sample
    defocus per wave RMS of Noll Z4) and returns ``(tilt_x, tilt_y)`` in degrees.
    This trusts the network's focus scale and the nominal optics; a depth
    calibration (:mod:`psf_live.depth`) replaces it with a fitted mapping.

    Parameters
    ----------
    summary : FrameSummary
        A summary whose plane was fitted to ``"signed_defocus"``.
    optics : Optics, optional
        Microscope optics; defaults to :class:`psf_live.psf.Optics()`.

    Returns
    -------
    (float, float) or None
        Tilt along x and along y in degrees, or None when the plane is not a
        signed defocus (unsigned focus cannot give a tilt).
    """
    from psf_live.psf import Optics, defocus_waves_to_um

    if summary.plane_quantity != "signed_defocus":
        return None
    um_per_wave = defocus_waves_to_um(1.0, optics if optics is not None else Optics())
    return (
        math.degrees(math.atan(summary.slope_x * um_per_wave)),
        math.degrees(math.atan(summary.slope_y * um_per_wave)),
    )


def _pixel_size(psf_map: PSFMap) -> float:
    od = psf_map.meta.get("optics")
    if isinstance(od, dict) and "pixel_size_um" in od:
        return float(od["pixel_size_um"])
    from psf_live.psf import Optics

    return Optics().pixel_size_um


def summarize(
    psf_map: PSFMap,
    calibration: DepthCalibration | None = None,
    lens_axis: float = DEFAULT_LENS_AXIS,
    pixel_size_um: float | None = None,
) -> FrameSummary:
    """Global focus and a robust plane fit (tilt) of one PSF map.

    The plane is fitted over valid patches to, in order of preference: the calibrated
    depth in micrometres (``calibration`` given; tilts in degrees,
    ``atan(slope)``), the signed defocus of :func:`signed_defocus` (models with focus
    and astigmatism axis, i.e. zernike3 with the cylindrical lens at ``lens_axis``), or
    the unsigned focus-like parameter.

    Parameters
    ----------
    psf_map : PSFMap
        The map.
    calibration : DepthCalibration, optional
        Converts the map to micrometres of depth.
    lens_axis : float
        Cylindrical lens axis in radians (for the signed defocus).
    pixel_size_um : float, optional
        Pixel size in the sample; defaults to the model's optics.

    Returns
    -------
    FrameSummary
    """
    px = pixel_size_um if pixel_size_um is not None else _pixel_size(psf_map)
    fm = focus_map(psf_map)
    valid = psf_map.valid
    n_valid = int(valid.sum())
    if fm is None:
        fvals, fname, funit = np.full(psf_map.shape, np.nan, np.float32), "focus", ""
    else:
        fvals, fname, funit = fm
    focus = float(np.median(fvals[valid])) if n_valid else math.nan
    tilt_x: float | None = None
    tilt_y: float | None = None
    z: np.ndarray
    if calibration is not None:
        z = np.asarray(calibration.depth_um(psf_map), dtype=np.float64)
        quantity, unit = "depth", "um"
    elif "focus" in psf_map.param_names and "axis" in psf_map.param_names:
        z = signed_defocus(psf_map.param("focus"), psf_map.param("axis"), lens_axis)
        quantity, unit = "signed_defocus", funit
    else:
        z, quantity, unit = fvals, fname, funit
    fit = fit_plane(z, psf_map.centers_y, psf_map.centers_x, valid, px)
    if calibration is not None:
        tilt_x = math.degrees(math.atan(fit.slope_x))
        tilt_y = math.degrees(math.atan(fit.slope_y))
    return FrameSummary(
        focus=focus,
        focus_name=fname,
        focus_unit=funit,
        plane_quantity=quantity,
        plane_unit=unit,
        slope_x=fit.slope_x,
        slope_y=fit.slope_y,
        tilt_x_deg=tilt_x,
        tilt_y_deg=tilt_y,
        residual=fit.residual,
        n_valid=n_valid,
        n_patches=int(valid.size),
    )
