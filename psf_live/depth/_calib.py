"""Tilted-grid depth calibration (Section III-E): geometry, robust fit, JSON file, depth maps."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .._atomic import atomic_output
from ..psf import TiltAxis, plane_depth, tilt_direction
from ._metric import (
    DEFAULT_LENS_AXIS,
    FEATURE_SETS,
    base_metric,
    dead_zone,
    depth_features,
    design_matrix,
)

__all__ = [
    "CalibrationError",
    "DepthCalibration",
    "FitReport",
    "ImageFit",
    "PlaneTilt",
    "beyond_reach",
    "beyond_spread",
    "clean_depth",
    "depth_full",
    "depth_map",
    "depth_spread",
    "fit_calibration",
    "fit_depth_plane",
    "metric_reach",
    "robust_lstsq",
    "sample_plane",
    "smooth_depth",
    "true_depth_grid",
]

MIN_R2 = 0.9
"""Default minimum R^2 of a calibration fit (below it the calibration is refused)."""
MIN_RANGE_UM = 1.0
"""Smallest depth range (um) an image must span to count as a calibration image."""
CALIBRATION_VERSION = 1
SPREAD_QUANTILE = 0.9
"""Default share of calibration patches whose test-time-augmentation spread is accepted."""
REACH_RATIO = 0.5
"""Default share of the near-focus slope below which a response counts as levelled off."""


class CalibrationError(ValueError):
    """A calibration cannot be made, read or applied; the message says why."""


def true_depth_grid(
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    tilt_deg: float,
    axis: TiltAxis,
    pixel_size_um: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Known depth of each patch of a tilted plane (in-focus line through the centre).

    :func:`psf_live.psf.plane_depth` at the patch centres ``centers_y`` x ``centers_x``
    (parameters, convention and units there; the simulator's, kept in every calibration
    file): ``axis="x"`` puts the +x side *farther* from the objective for a positive
    tilt, ``"y"`` the +y side, ``"xy"`` the +x +y corner (the depth ranges of the paper's
    Section III-E). Returns the (rows, cols) float64 depth in micrometres.
    """
    return plane_depth(centers_y, centers_x, tilt_deg, axis, pixel_size_um, shape)


def robust_lstsq(
    a: npt.ArrayLike, b: npt.ArrayLike, c: float = 1.345, n_iter: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Huber-weighted least squares by iteratively reweighted least squares.

    The scale is 1.4826 x the median absolute residual, re-estimated each iteration;
    residuals beyond ``c`` scales get weight ``c / |r|`` (Huber's M-estimator), so
    outliers pull linearly rather than quadratically.

    Parameters
    ----------
    a : array_like
        (M, K) design matrix.
    b : array_like
        (M,) targets.
    c : float
        Huber threshold in scale units (1.345: 95 % efficiency for Gaussian noise).
    n_iter : int
        Maximum iterations.

    Returns
    -------
    coef : numpy.ndarray
        (K,) float64 coefficients.
    weights : numpy.ndarray
        (M,) final weights in (0, 1].

    References
    ----------
    .. [1] P. J. Huber, "Robust estimation of a location parameter", Ann. Math.
       Statist. 35 (1964).
    """
    A = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    w = np.ones_like(y)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    for _ in range(n_iter):
        r = y - A @ coef
        s = 1.4826 * float(np.median(np.abs(r)))
        if s <= 1e-12:
            break
        u = np.abs(r) / (c * s)
        w = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        sw = np.sqrt(w)
        new = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)[0]
        done = np.allclose(new, coef, rtol=1e-8, atol=1e-10)
        coef = new
        if done:
            break
    return coef, w


def _r2(truth: np.ndarray, est: np.ndarray) -> float:
    ss = float(np.sum((truth - truth.mean()) ** 2))
    if ss <= 0:
        return float("nan")
    return 1.0 - float(np.sum((truth - est) ** 2)) / ss


@dataclass(frozen=True)
class ImageFit:
    """Calibration quality on one image.

    ``r2``, ``rms_um``, ``mae_um`` over all valid patches; ``r2_inliers`` without the
    patches the robust fit down-weighted below one half (outliers).
    """

    index: int
    tilt_deg: float
    n_valid: int
    depth_range_um: float
    r2: float
    r2_inliers: float
    rms_um: float
    mae_um: float


@dataclass(frozen=True)
class FitReport:
    """Overall calibration quality and the per-image figures (see :class:`ImageFit`)."""

    r2: float
    r2_inliers: float
    rms_um: float
    mae_um: float
    n_patches: int
    n_outliers: int
    images: tuple[ImageFit, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (lists, not tuples)."""
        d: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return d


@dataclass
class DepthCalibration:
    """A fitted mapping from zernike3 PSF maps to depth in micrometres (JSON on disk).

    ``depth = coef . depth_features(params, features, lens_axis)``; the depth is
    ``sample - focal plane`` (positive farther from the objective), with the tilt
    convention of :func:`true_depth_grid` recorded in ``tilt_axis``.

    Attributes
    ----------
    features : str
        Calibration model, a key of :data:`psf_live.depth.FEATURE_SETS`.
    coef : list of float
        Coefficients, intercept first (um per feature unit).
    lens_axis : float
        Cylindrical lens axis (radians) used by the ``signed`` features.
    tilt_axis : str
        Axis along which the calibration grid was tilted (``x``, ``y`` or ``xy``).
    pixel_size_um : float
        Object-space pixel size of the calibration images.
    network : dict
        ``name``, ``sha256`` and ``psf_model`` of the network that produced the maps,
        ``tta`` (whether they were mapped with test-time augmentation) and
        ``tta_views`` (with how many views: 8, 4 or 2; 1 without).
    param_names : list of str
        Parameter names of that network's maps.
    optics : dict
        Optics (:class:`psf_live.psf.Optics` as a dict) of the network.
    feature_range : list of float
        [min, max] of the base metric over the calibration patches.
    depth_range_um : list of float
        [min, max] true depth seen during calibration.
    report : dict
        :class:`FitReport` of the fit.
    tilts_deg : list of float
        Tilt of each calibration image.
    fit : str
        How the coefficients were fitted (files without the field: ``inverse``, the
        default before 2026-12-02): ``inverse`` (metric regressed on the true depth,
        then inverted: pure noise in the metric does not shrink the tilt) or
        ``forward`` (true depth regressed on the features: least per-patch error).
    max_spread_um : float or None
        With test-time augmentation: patches whose views disagree by more than this
        (:func:`depth_spread`, SD of the views' depths in um) are left out of depth
        maps. Set by :func:`fit_calibration` to a quantile of the calibration patches'
        spread; None (no such rejection) without TTA and in older files.
    deadzone : float
        Width of the :func:`~psf_live.depth.dead_zone` applied to the base metric
        before the model (its unit; 0, no dead zone, in older files).
    max_metric : float or None
        The network's reach (:func:`metric_reach`): depth maps leave out the patches
        whose ``|base metric|`` exceeds it, where the network's focus output no longer
        grows with the defocus, so that their depth cannot be read; None (no limit)
        when the calibration images did not go beyond the reach, and in older files.
    response_slope : float or None
        How the fitted depth follows the true depth on the calibration patches (robust
        slope of the one against the other; below 1 where the forward fit shrinks it),
        the reference :func:`~psf_live.depth.rescale_calibration` compares a specimen's
        focus steps with. None in files from before 2026-12-04.
    rescaled : dict
        Empty for a calibration as fitted; after
        :func:`~psf_live.depth.rescale_calibration`, its ``factor`` (this rescale),
        ``total_factor`` (since the fit), the specimen's ``slope``, the ``steps_um``
        and ``n_patches``.
    """

    features: str
    coef: list[float]
    lens_axis: float = DEFAULT_LENS_AXIS
    tilt_axis: str = "x"
    pixel_size_um: float = 0.64
    network: dict[str, Any] = field(default_factory=dict)
    param_names: list[str] = field(default_factory=lambda: ["focus", "cylinder", "axis"])
    optics: dict[str, Any] = field(default_factory=dict)
    feature_range: list[float] = field(default_factory=lambda: [0.0, 0.0])
    depth_range_um: list[float] = field(default_factory=lambda: [0.0, 0.0])
    report: dict[str, Any] = field(default_factory=dict)
    tilts_deg: list[float] = field(default_factory=list)
    fit: str = "inverse"
    max_spread_um: float | None = None
    deadzone: float = 0.0
    max_metric: float | None = None
    response_slope: float | None = None
    rescaled: dict[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION
    source: str = field(default="", compare=False)
    """File the calibration was read from (not saved; used in error messages)."""

    # -- applying ----------------------------------------------------------------

    def check_network(self, meta: dict[str, Any], where: str | None = None) -> None:
        """Raise :class:`CalibrationError` unless ``meta`` is the calibrated network."""
        where = where or self.source or "depth calibration"
        want = self.network.get("sha256", "")
        got = str(meta.get("sha256", ""))
        if want and got != want:
            raise CalibrationError(
                f"{where}: made with network {self.network.get('name', '?')!r} "
                f"(sha256 {want[:12]}), not {meta.get('name', '?')!r} "
                f"(sha256 {got[:12] or 'none'})"
            )
        if not want and self.network.get("name") and meta.get("name") != self.network["name"]:
            raise CalibrationError(
                f"{where}: made with network {self.network['name']!r}, "
                f"not {meta.get('name', '?')!r}"
            )
        # test-time augmentation shifts the outputs: the mode must match (older
        # calibrations without the key were made without it, and with it meant 8 views)
        want_views, got_views = self.tta_views, _tta_views(meta)
        if want_views != got_views:
            if want_views == 1:
                mode = "without test-time augmentation"
            elif want_views == 8:
                mode = "with test-time augmentation (--tta)"
            else:
                mode = f"with {want_views}-view test-time augmentation (--tta-views {want_views})"
            raise CalibrationError(f"{where}: made {mode}; map the images the same way")

    @property
    def tta_views(self) -> int:
        """Views of test-time augmentation the calibration's maps were made with (1: none)."""
        return _tta_views(self.network)

    def predict(self, params: npt.ArrayLike, names: Sequence[str] | None = None) -> np.ndarray:
        """Depth (um, float32) of (..., N) parameters, no validity handling."""
        x = depth_features(
            params, names or self.param_names, self.features, self.lens_axis, self.deadzone
        )
        return (x @ np.asarray(self.coef, dtype=np.float64)).astype(np.float32)

    def depth_um(self, psf_map: Any) -> np.ndarray:
        """(rows, cols) depth of a :class:`~psf_live.estimate.PSFMap`, NaN where invalid."""
        return depth_map(psf_map, self)

    # -- files -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d.pop("source", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthCalibration:
        """Build from a dict, checking the model."""
        names = set(cls.__dataclass_fields__) - {"source"}
        if "features" not in d or "coef" not in d:
            raise KeyError("lacks 'features' or 'coef'")
        cal = cls(**{k: v for k, v in d.items() if k in names})
        if cal.features not in FEATURE_SETS:
            raise ValueError(f"unknown features {cal.features!r}")
        n = 3 if cal.features.endswith("-cubic") else 2
        if len(cal.coef) != n or not all(math.isfinite(float(c)) for c in cal.coef):
            raise ValueError(f"expected {n} finite coefficients, got {cal.coef}")
        if not (math.isfinite(float(cal.deadzone)) and float(cal.deadzone) >= 0):
            raise ValueError(f"deadzone must be a finite width >= 0, got {cal.deadzone}")
        if cal.max_metric is not None and not float(cal.max_metric) > 0:
            raise ValueError(f"max_metric must be > 0 or null, got {cal.max_metric}")
        if cal.response_slope is not None and not float(cal.response_slope) > 0:
            raise ValueError(f"response_slope must be > 0 or null, got {cal.response_slope}")
        if not isinstance(cal.rescaled, dict):
            raise ValueError(f"rescaled must be an object, got {cal.rescaled!r}")
        return cal

    def reach_um(self) -> float | None:
        """Distance from focus (um) at the network's reach ``max_metric``; None without one."""
        if self.max_metric is None:
            return None
        m = float(self.max_metric)
        x = design_matrix(dead_zone(np.array([m, -m]), self.deadzone), self.features)
        d = x @ np.asarray(self.coef, dtype=np.float64)
        return float(abs(d[0] - d[1]) / 2.0)

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON, atomically (no half-written file); return the path."""
        p = Path(path)
        with atomic_output(p) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> DepthCalibration:
        """Read a calibration file; :class:`CalibrationError` names the file and problem."""
        p = Path(path)
        if not p.is_file():
            raise CalibrationError(f"{p}: no such calibration file")
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            cal = cls.from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise CalibrationError(f"{p}: invalid depth calibration ({e})") from None
        cal.source = str(p)
        return cal


def _tta_views(meta: dict[str, Any]) -> int:
    """Return the views of test-time augmentation in network metadata (1: none).

    Metadata from before ``tta_views`` existed has only ``tta``, which meant 8 views.
    """
    if "tta_views" in meta:
        return int(meta["tta_views"])
    return 8 if meta.get("tta") else 1


def _map_parts(psf_map: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict[str, Any]]:
    params = np.asarray(psf_map.params, dtype=np.float64)
    valid = np.asarray(psf_map.valid, dtype=bool)
    return params, valid, tuple(psf_map.param_names), dict(getattr(psf_map, "meta", {}) or {})


def depth_map(psf_map: Any, calibration: DepthCalibration, *, limits: bool = True) -> np.ndarray:
    """Depth per patch in micrometres from a zernike3 PSF map.

    Parameters
    ----------
    psf_map : PSFMap
        Map from :meth:`psf_live.estimate.Estimator.map` (``params``, ``valid``,
        ``param_names``, ``meta`` with the network's name and sha256).
    calibration : DepthCalibration
        Calibration made with the same network.
    limits : bool
        Apply the calibration's limits (the default): leave out the patches beyond the
        network's reach (:func:`beyond_reach`) and those whose TTA views disagree
        (:func:`depth_spread`). With False every valid patch gets its depth:
        :func:`~psf_live.depth.frame_depth` keeps them until :func:`clean_depth` has
        compared every patch with its neighbours (a patch whose sign flipped stands out
        against them, not against a hole) and applies the limits after.

    Returns
    -------
    numpy.ndarray
        (rows, cols) float32 depth (sample minus focal plane), NaN where invalid and,
        with ``limits``, where the patch lies beyond the network's reach
        (``max_metric``) and, when the calibration has a ``max_spread_um`` and the map
        its TTA views, where the views disagree by more than it (:func:`depth_spread`).

    Raises
    ------
    CalibrationError
        The map comes from another network than the calibration's.
    """
    params, valid, names, meta = _map_parts(psf_map)
    calibration.check_network(meta)
    d = calibration.predict(params, names)
    keep = valid
    if limits:
        keep = keep & ~beyond_reach(psf_map, calibration) & ~beyond_spread(psf_map, calibration)
    return np.where(keep, d, np.nan).astype(np.float32)


def beyond_reach(psf_map: Any, calibration: DepthCalibration) -> np.ndarray:
    """Return the valid patches beyond the network's reach, whose depth cannot be read.

    Parameters
    ----------
    psf_map : PSFMap
        Map from the calibration's network.
    calibration : DepthCalibration
        Its ``max_metric`` (:func:`metric_reach`) bounds the readable ``|base metric|``.

    Returns
    -------
    numpy.ndarray
        (rows, cols) bool; all False when the calibration has no reach.
    """
    params, valid, names, _ = _map_parts(psf_map)
    if calibration.max_metric is None:
        return np.zeros(valid.shape, dtype=bool)
    base = base_metric(params, names, calibration.features, calibration.lens_axis)
    return np.asarray(valid & (np.abs(base) > float(calibration.max_metric)), dtype=bool)


def beyond_spread(psf_map: Any, calibration: DepthCalibration) -> np.ndarray:
    """Return the valid patches whose TTA views disagree more than the calibration allows.

    Parameters
    ----------
    psf_map : PSFMap
        Map from the calibration's network.
    calibration : DepthCalibration
        Its ``max_spread_um`` bounds the :func:`depth_spread` of a kept patch.

    Returns
    -------
    numpy.ndarray
        (rows, cols) bool; all False without a limit or without the map's views.
    """
    valid = np.asarray(psf_map.valid, dtype=bool)
    limit = calibration.max_spread_um
    spread = None if limit is None else depth_spread(psf_map, calibration)
    if limit is None or spread is None:
        return np.zeros(valid.shape, dtype=bool)
    return np.asarray(valid & ~(spread <= float(limit)), dtype=bool)


def depth_spread(psf_map: Any, calibration: DepthCalibration) -> np.ndarray | None:
    """Disagreement of the test-time-augmentation views: SD of their depths (um).

    Each rotated/transposed view of a patch (``PSFMap.view_params``: 8, 4 or 2) gives
    its own depth through the calibration; their standard deviation says how far
    the patch's depth can be trusted. On the depth benchmark
    (``benchmarks/depth_table6.py --model zernike3-lens --tta``) the errors come from
    the patches the views disagree on: leaving out the 10 % of largest spread lowered
    the mean relative error from 4.24 to 3.55 % (10 deg: 5.97 -> 2.96 %; 3.46 % with
    the calibration refitted on the kept patches), while dropping the same share of
    patches at random left it at 4.29 %.

    Parameters
    ----------
    psf_map : PSFMap
        Map made with test-time augmentation.
    calibration : DepthCalibration
        The depth calibration.

    Returns
    -------
    numpy.ndarray or None
        (rows, cols) float32 spread, NaN where invalid; None when the map has no views.
    """
    views = getattr(psf_map, "view_params", None)
    if views is None:
        return None
    v = np.asarray(views, dtype=np.float64)
    d = calibration.predict(v, tuple(psf_map.param_names)).astype(np.float64)
    valid = np.asarray(psf_map.valid, dtype=bool)
    return np.where(valid, d.std(axis=-1), np.nan).astype(np.float32)


def _fill_holes(d: np.ndarray) -> np.ndarray:
    """Replace each NaN patch by the weighted mean of its finite 8-neighbours (if any)."""
    ok = np.isfinite(d)
    if ok.all():
        return d
    pad = np.pad(np.where(ok, d, 0.0), 1)
    okp = np.pad(ok.astype(np.float64), 1)
    num = np.zeros_like(d)
    den = np.zeros_like(d)
    r, c = d.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            w = 1.0 if dy == 0 or dx == 0 else 1.0 / math.sqrt(2.0)
            num += w * pad[1 + dy : 1 + dy + r, 1 + dx : 1 + dx + c]
            den += w * okp[1 + dy : 1 + dy + r, 1 + dx : 1 + dx + c]
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.where(ok, d, fill)


def clean_depth(
    depth: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    k: float = 4.0,
    floor_um: float = 0.1,
    radius: int = 2,
) -> np.ndarray:
    """Mark patches that disagree with their neighbourhood as invalid (NaN).

    Each finite patch is compared with a Huber-robust plane (:func:`robust_lstsq`)
    through its finite neighbours within ``radius`` patches (itself excluded, at least
    four); patches whose deviation exceeds ``k`` robust scales (1.4826 x the median
    absolute deviation over the map, at least ``floor_um``) become NaN. Any locally
    planar surface, however steep, keeps all its patches (also at the border); isolated
    wrong estimates (e.g. a textureless patch the network still called valid) go.

    Parameters
    ----------
    depth : array_like
        (rows, cols) depth per patch, NaN where invalid.
    centers_y, centers_x : array_like
        Patch centres (pixels).
    k : float
        Threshold in robust scales.
    floor_um : float
        Smallest scale (um), so that a perfectly smooth map does not reject noise.
    radius : int
        Neighbourhood half-width in patches.

    Returns
    -------
    numpy.ndarray
        (rows, cols) float32 copy with the outliers set to NaN.
    """
    d = np.asarray(depth, dtype=np.float64)
    dev = np.full_like(d, np.nan)
    ii, jj, A, v, ok = _neighbour_stack(d, centers_y, centers_x, radius)
    enough = ok.sum(axis=1) >= 4
    if enough.any():
        ii, jj, A, v, ok = ii[enough], jj[enough], A[enough], v[enough], ok[enough]
        coef = _robust_planes(A, v, ok, n_iter=10)
        dev[ii, jj] = d[ii, jj] - coef[:, 0]
    fin = np.isfinite(dev)
    out = d.copy()
    if fin.any():
        scale = max(1.4826 * float(np.median(np.abs(dev[fin]))), floor_um)
        out[fin & (np.abs(dev) > k * scale)] = np.nan
    return out.astype(np.float32)


def smooth_depth(
    depth: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    radius: int = 1,
    edges: Literal["shift", "cut"] = "shift",
) -> np.ndarray:
    """Local-plane smoothing of a depth map: precision for lateral resolution.

    Each finite patch gets the value at its centre of the least-squares plane through
    the finite patches of its window, ``(2 radius + 1)`` patches on a side around it
    (itself included); NaN patches stay NaN (where the neighbours are too few to fix a
    plane, the least-squares solution of smallest norm is used: a patch alone keeps its
    value). Near the map's border the window is shifted inwards to keep its size
    (``edges="shift"``, the default) rather than cut by the border (``"cut"``): the
    plane is then read off-centre, which for independent errors of SD 1 and
    ``radius=2`` gives SD 0.35 on the edge row instead of 0.41 and 0.45 in a corner
    instead of 0.67 (the border ring of a 15 x 15 map is 46 % of its patches with
    ``radius=2``; on the depth benchmark the 3 deg error fell from 0.97 to 0.89 %). The
    curvature bias there is at most the interior's, of the other sign. The network's depth
    errors are nearly independent from patch to patch (neighbour correlation 0.16
    along x, -0.06 along y on the depth benchmark), so averaging
    ``(2 radius + 1)^2`` patches divides them by up to ``2 radius + 1``; a plane is kept
    exactly, whatever its tilt. The price is curvature: on a surface with curvature
    ``kappa`` (1/um) the window's plane misses the centre by ``kappa / 2`` times the
    mean squared distance of the window's patches from it (um^2), e.g. 1.1 um for a
    1 mm radius of curvature with ``radius=1`` at a 64 px stride of 0.64 um pixels.

    Parameters
    ----------
    depth : array_like
        (rows, cols) depth per patch, NaN where invalid.
    centers_y, centers_x : array_like
        Patch centres (pixels).
    radius : int
        Neighbourhood half-width in patches (0 returns a float32 copy).
    edges : {"shift", "cut"}
        Windows at the border: shifted inwards to their full size, or cut by it.

    Returns
    -------
    numpy.ndarray
        (rows, cols) float32 smoothed depth.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if edges not in ("shift", "cut"):
        raise ValueError(f"edges must be 'shift' or 'cut', got {edges!r}")
    d = np.asarray(depth, dtype=np.float64)
    if radius == 0:
        return d.astype(np.float32)
    # All windows at once (1.4 / 3.6 ms for a 15 x 15 map with radius 1 / 2, against
    # 10 ms for a plane fit per patch): the normal equations of every window, summed over
    # the shifts of the grid that reach a patch of some window, in offsets from the
    # window's own patch (exact zeros where the window is collinear), then one batched
    # pseudo-inverse. The window always holds its own patch, so the plane's value there
    # is unique even where the slopes are not.
    cy = np.asarray(centers_y, dtype=np.float64)
    cx = np.asarray(centers_x, dtype=np.float64)
    rows, cols = d.shape
    steps = np.concatenate([np.diff(cy), np.diff(cx)])
    unit = float(np.median(steps)) if steps.size else 1.0  # offsets in patch spacings
    fin = np.isfinite(d)
    z = np.where(fin, d, 0.0)
    lo_r, hi_r = _window_span(rows, radius, edges)
    lo_c, hi_c = _window_span(cols, radius, edges)
    reach = 2 * radius if edges == "shift" else radius
    normal = np.zeros((rows, cols, 3, 3))
    rhs = np.zeros((rows, cols, 3))
    for a in range(-reach, reach + 1):
        for b in range(-reach, reach + 1):
            i0, i1 = max(0, -a), min(rows, rows - a)  # patches whose neighbour (+a, +b)
            j0, j1 = max(0, -b), min(cols, cols - b)  # lies on the grid
            if i0 >= i1 or j0 >= j1:
                continue
            ni, nj = np.arange(i0, i1) + a, np.arange(j0, j1) + b
            in_r = (ni >= lo_r[i0:i1]) & (ni <= hi_r[i0:i1])  # ... and in their window
            in_c = (nj >= lo_c[j0:j1]) & (nj <= hi_c[j0:j1])
            w = fin[i0 + a : i1 + a, j0 + b : j1 + b] & in_r[:, None] & in_c[None, :]
            u = (cy[i0 + a : i1 + a] - cy[i0:i1])[:, None] / unit
            v = (cx[j0 + b : j1 + b] - cx[j0:j1])[None, :] / unit
            f = np.stack(np.broadcast_arrays(np.ones_like(u * v), u, v), -1) * w[..., None]
            normal[i0:i1, j0:j1] += f[..., :, None] * f[..., None, :]
            rhs[i0:i1, j0:j1] += f * z[i0 + a : i1 + a, j0 + b : j1 + b, None]
    U, S, Vt = np.linalg.svd(normal)
    inv = np.where(S > 1e-10 * S[..., :1], 1.0 / np.where(S > 0, S, 1.0), 0.0)
    coef = np.einsum("...ji,...j,...kj,...k->...i", Vt, inv, U, rhs)
    return np.where(fin, coef[..., 0], d).astype(np.float32)  # NaN (or inf) patches stay


def _window_span(n: int, radius: int, edges: str) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each of ``n`` patches' windows along one axis."""
    idx = np.arange(n)
    if edges == "cut":
        return np.maximum(idx - radius, 0), np.minimum(idx + radius, n - 1)
    lo = np.clip(idx - radius, 0, max(n - 2 * radius - 1, 0))
    return lo, np.minimum(lo + 2 * radius, n - 1)


def _neighbour_stack(
    d: np.ndarray, centers_y: npt.ArrayLike, centers_x: npt.ArrayLike, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack the windows of :func:`_neighbour_windows` (without the patch itself).

    Returns the rows and columns of the finite patches, (P,) each; the design matrices
    ``[1, dy, dx]`` and values of their neighbours, (P, W, 3) and (P, W) with
    ``W = (2 radius + 1)^2 - 1`` slots; and which slots hold a finite neighbour, (P, W).
    """
    cy = np.asarray(centers_y, dtype=np.float64)
    cx = np.asarray(centers_x, dtype=np.float64)
    rows, cols = d.shape
    off = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    keep = (dy != 0) | (dx != 0)
    dy, dx = dy[keep], dx[keep]
    ii, jj = np.nonzero(np.isfinite(d))
    ni, nj = ii[:, None] + dy[None], jj[:, None] + dx[None]
    inside = (ni >= 0) & (ni < rows) & (nj >= 0) & (nj < cols)
    ni_c, nj_c = np.clip(ni, 0, rows - 1), np.clip(nj, 0, cols - 1)
    v = d[ni_c, nj_c]
    ok = inside & np.isfinite(v)
    A = np.stack(
        [np.ones(ni.shape), cy[ni_c] - cy[ii][:, None], cx[nj_c] - cx[jj][:, None]], axis=-1
    )
    return ii, jj, A, np.where(ok, v, 0.0), ok


def _robust_planes(
    A: np.ndarray, v: np.ndarray, ok: np.ndarray, c: float = 1.345, n_iter: int = 30
) -> np.ndarray:
    """:func:`robust_lstsq` for a stack of small problems at once (masked slots).

    The same iterations, scale and stopping rule per problem, through the weighted normal
    equations with a vanishing ridge (1e-12 of their trace), whose solution is the
    minimum-norm least-squares one that ``numpy.linalg.lstsq`` gives, also where the
    neighbours are collinear.
    """
    n = ok.sum(axis=1)
    lo, hi = (n - 1) // 2, n // 2
    rows = np.arange(len(v))
    eye = np.eye(A.shape[-1])

    def solve(w: np.ndarray) -> np.ndarray:
        aw = A * w[..., None]
        m = np.matmul(aw.transpose(0, 2, 1), A)
        ridge = 1e-12 * np.trace(m, axis1=1, axis2=2)[:, None, None] * eye
        rhs = np.matmul(aw.transpose(0, 2, 1), v[..., None])
        return np.linalg.solve(m + ridge, rhs)[..., 0]

    def median(r: np.ndarray) -> np.ndarray:  # over the valid slots of each row
        srt = np.sort(np.where(ok, r, np.inf), axis=1)
        return 0.5 * (srt[rows, lo] + srt[rows, hi])

    w = ok.astype(np.float64)
    coef = solve(w)
    active = np.ones(len(v), dtype=bool)
    for _ in range(n_iter):
        r = np.abs(v - np.matmul(A, coef[..., None])[..., 0])
        s = 1.4826 * median(r)
        active &= s > 1e-12
        if not active.any():
            break
        u = r / (c * np.maximum(s, 1e-300)[:, None])
        w = np.where(ok, np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12)), 0.0)
        new = solve(w)
        done = np.all(np.isclose(new, coef, rtol=1e-8, atol=1e-10), axis=1)
        coef[active] = new[active]
        active &= ~done
    return coef


def _neighbour_windows(
    d: np.ndarray,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    radius: int,
    include_self: bool,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Local windows for plane fits around each finite patch.

    Yields ``(i, j, A, v)`` for each finite patch ``(i, j)`` of ``d``: the design matrix
    ``[1, dy, dx]`` (offsets in pixels from that patch) and the values of the finite
    patches within ``radius`` patches of it (itself only with ``include_self``).
    """
    cy = np.asarray(centers_y, dtype=np.float64)
    cx = np.asarray(centers_x, dtype=np.float64)
    rows, cols = d.shape
    for i in range(rows):
        for j in range(cols):
            if not np.isfinite(d[i, j]):
                continue
            i0, i1 = max(0, i - radius), min(rows, i + radius + 1)
            j0, j1 = max(0, j - radius), min(cols, j + radius + 1)
            win = d[i0:i1, j0:j1]
            yy, xx = np.meshgrid(cy[i0:i1] - cy[i], cx[j0:j1] - cx[j], indexing="ij")
            ok = np.isfinite(win)
            ok[i - i0, j - j0] = include_self
            A = np.stack([np.ones(int(ok.sum())), yy[ok], xx[ok]], axis=1)
            yield i, j, A, win[ok]


def depth_full(
    depth: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    shape: tuple[int, int],
) -> np.ndarray:
    """Interpolate a patch depth grid to full resolution, NaN where unsupported.

    An invalid (NaN) patch with valid neighbours first takes the weighted mean of its
    finite 8-neighbours (so one bad patch leaves no hole); the grid is then interpolated
    with the hat weights of :func:`psf_live.psf.bilinear_weights` (those of the
    overlap-add model, Eq. 12; constant beyond the outer centres), restricted to the
    finite patches and renormalised. Pixels whose supporting patches (up to four) are
    all NaN after the fill, i.e. inside holes wider than one patch, stay NaN.

    Parameters
    ----------
    depth : array_like
        (rows, cols) depth per patch, NaN where invalid.
    centers_y, centers_x : array_like
        Patch centres in pixels.
    shape : (int, int)
        Output (height, width).

    Returns
    -------
    numpy.ndarray
        (height, width) float32.
    """
    from psf_live.psf import bilinear_weights

    d = _fill_holes(np.asarray(depth, dtype=np.float64))
    ok = np.isfinite(d)
    h, w = int(shape[0]), int(shape[1])
    wy = np.asarray(bilinear_weights(h, np.asarray(centers_y)), dtype=np.float64)
    wx = np.asarray(bilinear_weights(w, np.asarray(centers_x)), dtype=np.float64)
    num = wy.T @ np.where(ok, d, 0.0) @ wx
    den = wy.T @ ok.astype(np.float64) @ wx
    good = den > 1e-3
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(good, num / np.where(good, den, 1.0), np.nan)
    return out.astype(np.float32)


@dataclass(frozen=True)
class PlaneTilt:
    """Plane fitted to a depth map.

    ``tilt_x_deg``: slope of the depth along x in degrees (positive: the +x side is
    farther from the objective, the convention of ``--axis x``); ``tilt_y_deg`` likewise
    along y. ``offset_um``: depth at the frame centre; ``residual_um``: RMS deviation of
    the inliers from the plane (flatness); ``n_used``: inliers.
    """

    tilt_x_deg: float
    tilt_y_deg: float
    offset_um: float
    residual_um: float
    n_used: int

    def along(self, axis: TiltAxis) -> float:
        """Tilt in degrees along a tilt axis (``"xy"``: the field diagonal).

        The slope of the plane in the direction ``(dy, dx)`` of
        :func:`psf_live.psf.tilt_direction`, ``atan(dy tan(tilt_y) + dx tan(tilt_x))``:
        the tilt a grid tilted along ``axis`` was given.
        """
        dy, dx = tilt_direction(axis)
        slope = dy * math.tan(math.radians(self.tilt_y_deg))
        slope += dx * math.tan(math.radians(self.tilt_x_deg))
        return math.degrees(math.atan(slope))

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"tilt x {self.tilt_x_deg:+.2f} deg, tilt y {self.tilt_y_deg:+.2f} deg, "
            f"centre depth {self.offset_um:+.2f} um, flatness {self.residual_um:.2f} um RMS "
            f"({self.n_used} patches)"
        )


def fit_depth_plane(
    depth_um: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    pixel_size_um: float,
    shape: tuple[int, int] | None = None,
) -> PlaneTilt:
    """Robust plane through a depth map: tilt about both axes and flatness.

    Huber IRLS (:func:`robust_lstsq`) of ``depth = offset + sx X + sy Y`` over the finite
    patches, X, Y in micrometres from the frame centre; the tilts are ``atan(s)``.

    Parameters
    ----------
    depth_um : array_like
        (rows, cols) depth per patch (NaN where invalid).
    centers_y, centers_x : array_like
        Patch centres in pixels.
    pixel_size_um : float
        Object-space pixel size.
    shape : (int, int), optional
        Frame shape; the centre defaults to the middle of the patch centres.

    Returns
    -------
    PlaneTilt

    Raises
    ------
    ValueError
        Fewer than three finite patches.
    """
    d = np.asarray(depth_um, dtype=np.float64)
    cy = np.asarray(centers_y, dtype=np.float64)
    cx = np.asarray(centers_x, dtype=np.float64)
    if shape is None:
        yc, xc = 0.5 * (cy.min() + cy.max()), 0.5 * (cx.min() + cx.max())
    else:
        yc, xc = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    Y, X = np.meshgrid((cy - yc) * pixel_size_um, (cx - xc) * pixel_size_um, indexing="ij")
    ok = np.isfinite(d)
    if int(ok.sum()) < 3:
        raise ValueError(f"a plane needs at least 3 valid patches, got {int(ok.sum())}")
    A = np.stack([np.ones(int(ok.sum())), X[ok], Y[ok]], axis=1)
    coef, w = robust_lstsq(A, d[ok])
    r = d[ok] - A @ coef
    inl = w >= 0.5
    res = float(np.sqrt(np.mean(r[inl] ** 2))) if inl.any() else float("nan")
    return PlaneTilt(
        tilt_x_deg=math.degrees(math.atan(coef[1])),
        tilt_y_deg=math.degrees(math.atan(coef[2])),
        offset_um=float(coef[0]),
        residual_um=res,
        n_used=int(inl.sum()),
    )


def sample_plane(
    depth_um: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    calibration: DepthCalibration,
    shape: tuple[int, int] | None = None,
) -> PlaneTilt:
    """Plane of the sample through a depth map made with ``calibration``.

    :func:`fit_depth_plane` of the map divided by the calibration's ``response_slope``.
    A forward fit (the default) pulls every depth towards the middle by that factor,
    the price of its least error per patch (regression dilution: the noise of the
    metric is in the regressor); a plane through many patches averages that noise and
    need not pay it. On the depth benchmark (the paper's geometry, ``--smooth 2
    --reach-ratio 0.85``, four image sets) the plane tilt read 0.965-0.993 of the truth
    per tilt on average, divided 0.987-1.015. A calibration without a response slope
    (files from before 2026-12-04) gives the plain fit.

    Parameters
    ----------
    depth_um : array_like
        (rows, cols) depth per patch from ``calibration`` (NaN where invalid).
    centers_y, centers_x : array_like
        Patch centres in pixels.
    calibration : DepthCalibration
        The calibration the depths were read with (its pixel size and response slope).
    shape : (int, int), optional
        Frame shape, as :func:`fit_depth_plane`.

    Returns
    -------
    PlaneTilt
    """
    d = np.asarray(depth_um, dtype=np.float64)
    if calibration.response_slope is not None:
        d = d / float(calibration.response_slope)
    return fit_depth_plane(d, centers_y, centers_x, calibration.pixel_size_um, shape)


def fit_calibration(
    maps: Sequence[Any],
    tilts_deg: Sequence[float],
    *,
    axis: TiltAxis = "x",
    pixel_size_um: float = 0.64,
    features: str = "signed",
    lens_axis: float = DEFAULT_LENS_AXIS,
    min_r2: float = MIN_R2,
    fit: str = "forward",
    spread_quantile: float | None = SPREAD_QUANTILE,
    deadzone: float | Literal["auto"] = "auto",
    max_metric: float | Literal["auto"] | None = "auto",
    reach_ratio: float = REACH_RATIO,
) -> DepthCalibration:
    """Fit a depth calibration on PSF maps of a tilted grid of known geometry.

    Every valid patch of every image is one sample: its features
    (:func:`~psf_live.depth.depth_features`) against its true depth
    (:func:`true_depth_grid`). The fit is Huber-robust (:func:`robust_lstsq`), so a few
    wrong patches do not bend it. All maps must come from one network.

    Parameters
    ----------
    maps : sequence of PSFMap
        zernike3 maps of the calibration images (in-focus line through the centre).
    tilts_deg : sequence of float
        Tilt of each image (same length as ``maps``).
    axis : {"x", "y", "xy"}
        Direction along which the depth varies (see :func:`true_depth_grid`).
    pixel_size_um : float
        Object-space pixel size.
    features : str
        Calibration model (:data:`~psf_live.depth.FEATURE_SETS`).
    lens_axis : float
        Cylindrical lens axis (radians).
    fit : {"forward", "inverse"}
        ``forward`` (default): fit ``depth = coef . features`` (least error per patch;
        needed for the cubic models). ``inverse`` (linear models only): fit
        ``metric = a + b depth`` and invert it, ``depth = (metric - a) / b`` (classical
        calibration: pure noise in the metric does not shrink the slope). With the
        shipped networks the forward fit measured better on both counts
        (``benchmarks/depth_table6.py``: mean relative error 7.7 vs 9.1 % for the compact
        zernike3, 5.4 vs 5.9 % for zernike3-spectral; estimated/true tilt 0.96 / 0.98 vs
        1.11 / 1.05): their metric is compressed at large defocus, which the inverse
        fit amplifies, more than it is noisy.
    min_r2 : float
        Refuse fits whose R^2 over the inliers (patches the robust fit keeps with weight
        >= 1/2) is below this; the report also gives the R^2 over all valid patches.
    spread_quantile : float or None
        For maps made with test-time augmentation: the calibration's ``max_spread_um``
        is this quantile of the calibration patches' :func:`depth_spread`, so that
        depth maps keep about this share of the valid patches, those whose views agree
        best (0.9 by default; None or 1 keeps every patch). The coefficients are then
        fitted again on those patches only (the report describes that fit).
    deadzone : float or "auto"
        Width of the :func:`~psf_live.depth.dead_zone` taken off the base metric
        (its unit). ``"auto"`` (default) tries no dead zone and the 1st to 30th
        percentiles of ``|metric|`` over the calibration patches and keeps the width
        with the least mean absolute depth error; 0 switches it off.
    max_metric : float, "auto" or None
        The network's reach: patches whose ``|base metric|`` exceeds it are left out of
        the fit and of depth maps. ``"auto"`` (default) measures it on the calibration
        patches (:func:`metric_reach`: where the metric stops growing with the true
        depth); None keeps every patch.
    reach_ratio : float
        With ``max_metric="auto"``: :func:`metric_reach`'s ``ratio``, the share of its
        slope near focus below which the response counts as levelled off, in (0, 1].
        The default 0.5 finds where it turns flat; a stricter 0.85 stops where it
        first bends, and gives a linear calibration only its linear range (measured
        on the depth benchmark in the paper's geometry: README, "Depth").

    Returns
    -------
    DepthCalibration
        With the :class:`FitReport` (overall and per image) in ``report``.

    Raises
    ------
    CalibrationError
        No maps, mismatched tilts, an image without valid patches or without depth
        range, maps from different networks, a non-monotone curve, or R^2 < ``min_r2``.
    """
    if len(maps) == 0:
        raise CalibrationError("no calibration images")
    if len(tilts_deg) != len(maps):
        raise CalibrationError(f"{len(maps)} images but {len(tilts_deg)} tilts")
    if features not in FEATURE_SETS:
        raise CalibrationError(f"unknown features {features!r}; known: {', '.join(FEATURE_SETS)}")
    if spread_quantile is not None and not 0.0 < spread_quantile <= 1.0:
        raise CalibrationError(f"spread_quantile must be in (0, 1], got {spread_quantile}")
    xs, ys, idx = [], [], []
    meta0: dict[str, Any] | None = None
    names0: tuple[str, ...] = ()
    for i, (m, t) in enumerate(zip(maps, tilts_deg, strict=True)):
        params, valid, names, meta = _map_parts(m)
        if meta0 is None:
            meta0, names0 = meta, names
        elif meta.get("sha256") != meta0.get("sha256") or meta.get("name") != meta0.get("name"):
            raise CalibrationError(f"image {i}: map from another network than image 0")
        if "focus" not in names or "axis" not in names:
            raise CalibrationError(
                f"image {i}: depth needs a zernike3 network (focus, axis), got {names}"
            )
        if not valid.any():
            raise CalibrationError(f"image {i} (tilt {t} deg): no valid patch")
        truth = true_depth_grid(
            m.centers_y, m.centers_x, float(t), axis, pixel_size_um, tuple(m.frame_shape)
        )
        tv = truth[valid]
        if float(tv.max() - tv.min()) < MIN_RANGE_UM:
            raise CalibrationError(
                f"image {i} (tilt {t} deg): valid patches span {float(tv.max() - tv.min()):.2f} um"
                f" of depth (< {MIN_RANGE_UM} um): no depth range to calibrate on"
            )
        xs.append(base_metric(params[valid], names, features, lens_axis))
        ys.append(tv)
        idx.append(np.full(tv.size, i))
    assert meta0 is not None
    check_lens_axis(meta0, lens_axis)
    base = np.concatenate(xs)
    y = np.concatenate(ys)
    ii = np.concatenate(idx)
    if not 0.0 < reach_ratio <= 1.0:
        raise CalibrationError(f"reach_ratio must be in (0, 1], got {reach_ratio}")
    reach = metric_reach(base, y, ratio=reach_ratio) if max_metric == "auto" else max_metric
    if reach is not None:
        if not (isinstance(reach, (int, float)) and float(reach) > 0):
            raise CalibrationError(f"max_metric must be 'auto', None or > 0, got {reach!r}")
        inside = np.abs(base) <= float(reach)
        if all(inside[ii == i].any() for i in range(len(maps))):
            base, y, ii = base[inside], y[inside], ii[inside]
        else:  # an image entirely beyond it: no limit rather than an image without data
            reach = None
    if fit not in ("inverse", "forward"):
        raise CalibrationError(f"unknown fit {fit!r} (inverse or forward)")
    if fit == "inverse" and features.endswith("-cubic"):
        raise CalibrationError(f"the inverse fit needs a linear model, not {features}")
    if deadzone == "auto":
        widths = [0.0, *np.quantile(np.abs(base), np.linspace(0.01, 0.30, 30)).tolist()]
    elif isinstance(deadzone, (int, float)) and math.isfinite(deadzone) and deadzone >= 0:
        widths = [float(deadzone)]
    else:
        raise CalibrationError(f"deadzone must be 'auto' or a width >= 0, got {deadzone!r}")
    lo, hi = float(base.min()), float(base.max())
    # (mae, width, design matrix, coef, weights) of the best width so far
    best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
    problem = ""
    for width in widths:
        X = design_matrix(dead_zone(base, width), features)
        try:
            coef, w = _fit_coef(X, y, fit, features)
        except CalibrationError as e:
            problem = str(e)
            continue
        mae = float(np.mean(np.abs(y - X @ coef)))
        if best is None or mae < best[0]:
            best = (mae, width, X, coef, w)
    if best is None:
        raise CalibrationError(problem)
    _, width, X, coef, w = best
    pred = X @ coef
    inl = w >= 0.5
    images = []
    for i, t in enumerate(tilts_deg):
        s = ii == i
        images.append(
            ImageFit(
                index=i,
                tilt_deg=float(t),
                n_valid=int(s.sum()),
                depth_range_um=float(y[s].max() - y[s].min()),
                r2=_r2(y[s], pred[s]),
                r2_inliers=_r2(y[s & inl], pred[s & inl]) if (s & inl).any() else float("nan"),
                rms_um=float(np.sqrt(np.mean((y[s] - pred[s]) ** 2))),
                mae_um=float(np.mean(np.abs(y[s] - pred[s]))),
            )
        )
    # how the fitted depth follows the truth here: the reference of a specimen's focus
    # steps (rescale_calibration)
    response = robust_lstsq(np.stack([np.ones_like(y), y], axis=1), pred)[0][1]
    report = FitReport(
        r2=_r2(y, pred),
        r2_inliers=_r2(y[inl], pred[inl]),
        rms_um=float(np.sqrt(np.mean((y - pred) ** 2))),
        mae_um=float(np.mean(np.abs(y - pred))),
        n_patches=int(y.size),
        n_outliers=int((w < 0.5).sum()),
        images=tuple(images),
    )
    if not report.r2_inliers >= min_r2:
        raise CalibrationError(
            f"calibration fit R^2 {report.r2_inliers:.3f} (inliers) is below {min_r2} "
            f"(features {features}); "
            "check the tilts, the axis and the in-focus line"
        )
    cal = DepthCalibration(
        features=features,
        coef=[float(c) for c in coef],
        lens_axis=float(lens_axis),
        tilt_axis=axis,
        pixel_size_um=float(pixel_size_um),
        network={
            "name": str(meta0.get("name", "")),
            "sha256": str(meta0.get("sha256", "")),
            "psf_model": str(meta0.get("psf_model", "")),
            "tta": bool(meta0.get("tta", False)),
            "tta_views": _tta_views(meta0),
        },
        param_names=list(names0),
        optics=dict(meta0.get("optics", {}) or {}),
        feature_range=[lo, hi],
        depth_range_um=[float(y.min()), float(y.max())],
        report=report.to_dict(),
        tilts_deg=[float(t) for t in tilts_deg],
        fit=fit,
        deadzone=float(width),
        max_metric=None if reach is None else float(reach),
        response_slope=float(response),
    )
    if spread_quantile is None or spread_quantile >= 1.0:
        return cal
    spreads = [sp for sp in (depth_spread(m, cal) for m in maps) if sp is not None]
    if len(spreads) < len(maps):  # some maps without TTA views
        return cal
    limit = _spread_limit(spreads, spread_quantile)
    # Refit on the patches depth maps will keep (their views agree): on the depth
    # benchmark 3.55 -> 3.46 % mean relative error; the limit is then taken again
    # with the refitted coefficients. Should the refit be refused (an image left
    # without patches), the first fit stands.
    kept = []
    for m, sp in zip(maps, spreads, strict=True):
        km = copy.copy(m)
        km.valid = np.asarray(m.valid, dtype=bool) & (sp <= limit)
        kept.append(km)
    try:
        refit = fit_calibration(
            kept,
            tilts_deg,
            axis=axis,
            pixel_size_um=pixel_size_um,
            features=features,
            lens_axis=lens_axis,
            min_r2=min_r2,
            fit=fit,
            spread_quantile=None,
            deadzone=deadzone,
            max_metric=cal.max_metric,
        )
    except CalibrationError:
        refit = cal
    refit.max_spread_um = _spread_limit([depth_spread(m, refit) for m in maps], spread_quantile)
    return refit


def check_lens_axis(meta: dict[str, Any], lens_axis: float, tol: float = 0.02) -> None:
    """Refuse a lens axis the network never saw (its card's ``axis`` draw interval).

    A network trained with a narrowed axis interval (one cylindrical lens) also saw
    that interval's mirror images and quarter turns (the data's flips and transposes:
    ``a -> +-a + k pi/2``, mod pi); the lens axis, or one of those images of it, must
    fall inside the interval (``tol`` radians of slack). :func:`fit_calibration` calls
    it; a caller that acquires the calibration frames calls it first, so that a wrong
    axis is refused before the acquisition rather than after it.

    Parameters
    ----------
    meta : dict
        The network's card as :class:`psf_live.estimate.Estimator` keeps it (``meta``).
    lens_axis : float
        Axis of the cylindrical lens in radians.
    tol : float
        Slack in radians.

    Raises
    ------
    CalibrationError
        The axis (and each of its images) lies outside the card's axis interval.
    """
    recipe = meta.get("data_recipe") or {}
    rng = (recipe.get("param_ranges") or {}).get("axis") if isinstance(recipe, dict) else None
    if not rng:
        return
    lo, hi = float(rng[0]), float(rng[1])
    for sign in (1.0, -1.0):
        for k in range(4):
            a = (sign * lens_axis + k * math.pi / 2) % math.pi
            if lo - tol <= a <= hi + tol:
                return
    raise CalibrationError(
        f"network {meta.get('name', '?')!r} was trained for a cylindrical lens at "
        f"{math.degrees(lo):.0f}-{math.degrees(hi):.0f} deg (and its mirror images), not "
        f"at {math.degrees(lens_axis):.0f} deg: set the lens axis, or use a network "
        "trained for this lens"
    )


def _fit_coef(
    X: np.ndarray, y: np.ndarray, fit: str, features: str
) -> tuple[np.ndarray, np.ndarray]:
    """Robust coefficients of ``depth = X coef`` (forward or inverted) and their weights.

    Raises :class:`CalibrationError` for a metric without slope or a cubic curve that
    is not monotone over the metric's range.
    """
    if fit == "inverse":
        ab, w = robust_lstsq(np.stack([np.ones_like(y), y], axis=1), X[:, 1])
        if abs(ab[1]) < 1e-12:
            raise CalibrationError("the depth metric does not change with depth (slope 0)")
        return np.array([-ab[0] / ab[1], 1.0 / ab[1]]), w
    coef, w = robust_lstsq(X, y)
    if X.shape[1] == 3:
        grid = np.linspace(float(X[:, 1].min()), float(X[:, 1].max()), 201)
        deriv = coef[1] + 3.0 * coef[2] * grid**2
        if not (np.all(deriv > 0) or np.all(deriv < 0)):
            raise CalibrationError(
                f"the {features} curve is not monotone over the calibrated range; use a "
                "linear model (eq14 or signed)"
            )
    return coef, w


def metric_reach(
    metric: npt.ArrayLike,
    depth_um: npt.ArrayLike,
    *,
    bins: int = 12,
    min_count: int = 20,
    ratio: float = REACH_RATIO,
) -> float | None:
    """Return the ``|metric|`` beyond which a network stops telling depths apart.

    A network's focus output follows the defocus up to some blur and then levels off
    (on the simulated grid with ``zernike3-lens45``: true 0.6-0.7 waves read 0.63, true
    0.7-1.2 waves all read 0.68-0.74), so a depth read there is a guess. The patches
    are binned by ``|true depth|`` (``bins`` equal bins up to the deepest); the
    medians of ``|metric|`` per bin (bins with ``min_count`` patches or more) form the
    response curve, and its slope over the first half of the bins is the reference.
    The reach is the median ``|metric|`` of the last bin before the first step, in the
    upper half, whose slope falls below ``ratio`` x the reference.

    Parameters
    ----------
    metric : array_like
        Base metric of the calibration patches (signed; its magnitude is used).
    depth_um : array_like
        Their true depth (signed; its magnitude is used).
    bins, min_count, ratio : int, int, float
        Binning and the flatness threshold (see above).

    Returns
    -------
    float or None
        The reach, or None when the response never levels off (every depth readable)
        or too few bins are filled to tell.
    """
    m = np.abs(np.asarray(metric, dtype=np.float64)).ravel()
    d = np.abs(np.asarray(depth_um, dtype=np.float64)).ravel()
    ok = np.isfinite(m) & np.isfinite(d)
    m, d = m[ok], d[ok]
    if d.size == 0 or not float(d.max()) > 0:
        return None
    k = np.minimum((d / float(d.max()) * bins).astype(np.int64), bins - 1)
    med_d, med_m = [], []
    for b in range(bins):
        s = k == b
        if int(s.sum()) >= min_count:
            med_d.append(float(np.median(d[s])))
            med_m.append(float(np.median(m[s])))
    if len(med_d) < 4:
        return None
    slopes = np.diff(med_m) / np.diff(med_d)
    half = len(slopes) // 2
    ref = float(np.median(slopes[:half]))
    if not ref > 0:
        return None
    for i in range(half, len(slopes)):
        if slopes[i] < ratio * ref:
            return med_m[i]
    return None


def _spread_limit(spreads: Sequence[np.ndarray | None], quantile: float) -> float:
    """Return the ``quantile`` of the finite spreads of all maps (um)."""
    pooled = np.concatenate([sp[np.isfinite(sp)] for sp in spreads if sp is not None])
    return float(np.quantile(pooled, quantile))
