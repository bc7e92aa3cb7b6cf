"""The depth scale of a specimen from focus steps: carry a grid calibration over to it.

A depth calibration is fitted on a printed grid, but the network's reading of one and the
same defocus depends on what it looks through: on the simulated scope, a grid calibration
reads depth on synthetic cells about 12 % too deep and on sparse points about 16 % too
shallow (``benchmarks/depth_table6.py --other-samples``). The stage knows how far it moves
the focal plane, so a few frames of the specimen itself at known focus steps measure the
scale on that specimen: every patch's depth must change by exactly the step. The ratio of
that slope to the one the calibration showed on its own grid patches
(``DepthCalibration.response_slope``) rescales the calibration for the specimen.
Pure numpy; no hardware.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._calib import CalibrationError, DepthCalibration, robust_lstsq

__all__ = ["MAX_RESCALE", "focus_step_slope", "rescale_calibration"]

MAX_RESCALE = 2.0
"""Largest factor (or smallest, as its inverse) a specimen may rescale a calibration by."""
MIN_STEPS = 3
"""Steps a patch must be read at to count towards the slope."""


def focus_step_slope(
    depths: Sequence[npt.ArrayLike],
    steps_um: Sequence[float],
    *,
    min_patches: int = 10,
) -> tuple[float, int]:
    """Depth change per micrometre of focus step, pooled over the patches of a field.

    Each patch ``p`` at step ``k`` reads ``d[k, p] = e[p] - b s[k] + noise``: its own
    depth ``e[p]`` (unknown, any surface) less the focal plane's displacement ``s[k]``
    scaled by the slope ``b`` (1 for a calibration that reads this specimen as it read
    its calibration target's). ``b`` is the Huber-robust (:func:`robust_lstsq`) fit of
    the depths centred per patch against the centred steps, over the patches read at
    :data:`MIN_STEPS` or more steps.

    Parameters
    ----------
    depths : sequence of array_like
        One depth map (um, NaN where not read; any shape, all alike) per step, of one
        field of the specimen that does not move laterally between the steps.
    steps_um : sequence of float
        Focal-plane position of each map (um, any origin), positive farther from the
        objective, the direction in which depth (sample minus focal plane) decreases.

    Returns
    -------
    slope : float
        ``b``; negative when the depths grew with the steps (a stage whose positive
        direction moves the focal plane towards the objective).
    n_patches : int
        Patches the slope rests on.

    Raises
    ------
    CalibrationError
        Fewer than :data:`MIN_STEPS` distinct steps, maps of different shapes, or fewer
        than ``min_patches`` patches read at enough steps.
    """
    s = np.asarray(steps_um, dtype=np.float64)
    if s.ndim != 1 or len(depths) != s.size:
        raise CalibrationError(f"{len(depths)} depth maps but {s.size} focus steps")
    if not np.isfinite(s).all():
        raise CalibrationError("focus steps must be finite")
    if np.unique(s).size < MIN_STEPS:
        raise CalibrationError(
            f"need at least {MIN_STEPS} different focus steps, got {s.tolist()}"
        )
    shapes = {np.shape(d) for d in depths}
    if len(shapes) != 1:
        raise CalibrationError(f"depth maps of different shapes: {sorted(shapes)}")
    d = np.stack([np.asarray(m, dtype=np.float64).ravel() for m in depths])  # (steps, patches)
    read = np.isfinite(d)
    use = read.sum(axis=0) >= MIN_STEPS
    n = int(use.sum())
    if n < min_patches:
        raise CalibrationError(
            f"{n} patches read at {MIN_STEPS} or more focus steps (need {min_patches}): "
            "too few valid patches, or steps that take the specimen beyond the network's reach"
        )
    d, read = d[:, use], read[:, use]
    x = np.where(read, -s[:, None], np.nan)  # depth falls as the focal plane goes deeper
    dc = d - np.nanmean(np.where(read, d, np.nan), axis=0)
    xc = x - np.nanmean(x, axis=0)
    ok = read & (np.abs(xc) > 0)
    if not ok.any():
        raise CalibrationError("no patch was read at two different focus steps")
    coef, _ = robust_lstsq(xc[ok][:, None], dc[ok])
    return float(coef[0]), n


def rescale_calibration(
    calibration: DepthCalibration,
    slope: float,
    *,
    steps_um: Sequence[float] = (),
    n_patches: int = 0,
    max_factor: float = MAX_RESCALE,
) -> DepthCalibration:
    """Rescale a calibration so that it reads the measured specimen as it read its grid.

    The depth (coefficients) and the view-spread limit (``max_spread_um``) are multiplied
    by ``calibration.response_slope / slope``; the network's reach and dead zone, in the
    metric's own unit, stay. ``rescaled`` records the factor, the slope and the steps.
    Applied to an already rescaled calibration (whose maps measured ``slope``), the factor
    compounds, and the result is the same as rescaling the original.

    Parameters
    ----------
    calibration : DepthCalibration
        A tilted-grid calibration with its ``response_slope`` (files since 2026-12-04).
    slope : float
        :func:`focus_step_slope` of depth maps made with ``calibration``.
    steps_um, n_patches
        Recorded with the factor.
    max_factor : float
        Refuse factors beyond ``[1 / max_factor, max_factor]``: the specimen reads so
        differently from the grid that a linear rescale should not be trusted.

    Raises
    ------
    CalibrationError
        No response slope in the calibration, a slope <= 0 (the depth grew with the
        focus steps: their sign is the other way round on this stage) or a factor out
        of bounds.
    """
    if calibration.response_slope is None:
        raise CalibrationError(
            "the calibration has no response slope (made before 2026-12-04): run "
            "calibrate-depth again to rescale it"
        )
    if not math.isfinite(slope) or slope <= 0:
        raise CalibrationError(
            f"the depth grew as the focal plane moved away from the objective (slope "
            f"{slope:.3g}): on this stage a positive step moves it towards the objective; "
            "give the steps with the opposite sign"
        )
    factor = float(calibration.response_slope) / float(slope)
    if not 1.0 / max_factor <= factor <= max_factor:
        raise CalibrationError(
            f"the specimen reads {1 / factor:.2f} x as deep as the calibration grid "
            f"(rescale factor {factor:.2f} outside [{1 / max_factor:.2f}, {max_factor:.2f}]): "
            "check the steps, or calibrate on a sample closer to this one"
        )
    before = float(calibration.rescaled.get("total_factor", 1.0))
    spread = calibration.max_spread_um
    return dataclasses.replace(
        calibration,
        coef=[float(c) * factor for c in calibration.coef],
        max_spread_um=None if spread is None else float(spread) * factor,
        rescaled={
            "factor": factor,
            "total_factor": before * factor,
            "slope": float(slope),
            "steps_um": [float(v) for v in steps_um],
            "n_patches": int(n_patches),
        },
        source="",
    )
