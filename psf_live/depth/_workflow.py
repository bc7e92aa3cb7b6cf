"""Calibration and depth workflows over any PSF mapper (the ``psf-live`` depth commands).

Nothing here touches hardware: frames come in as arrays (from files or from a
``snap`` callable the caller builds on its microscope), maps from any object with
``map(frame) -> PSFMap`` (:class:`psf_live.estimate.Estimator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ..psf import TiltAxis
from ._calib import (
    MIN_R2,
    REACH_RATIO,
    SPREAD_QUANTILE,
    DepthCalibration,
    PlaneTilt,
    beyond_reach,
    beyond_spread,
    clean_depth,
    depth_full,
    depth_map,
    fit_calibration,
    sample_plane,
    smooth_depth,
)
from ._metric import DEFAULT_LENS_AXIS
from ._rescale import MIN_STEPS, focus_step_slope, rescale_calibration

__all__ = [
    "FrameDepth",
    "Mapper",
    "acquire_calibration_frames",
    "acquire_focus_steps",
    "assign_tilts",
    "calibrate_frames",
    "frame_depth",
    "map_depth",
    "parse_steps",
    "parse_tilts",
    "rescale_frames",
]


class Mapper(Protocol):
    """Anything that maps a frame to a PSF map (e.g. :class:`~psf_live.estimate.Estimator`)."""

    def map(self, frame: Any) -> Any:
        """Return the PSF map of one 2D frame."""
        ...


def _parse_floats(text: str, option: str, example: str) -> list[float]:
    """Comma-separated numbers of a command-line option; ValueError naming it."""
    try:
        values = [float(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated {example}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} {text!r}: values must be finite")
    return values


def parse_tilts(text: str) -> list[float]:
    """Parse ``"3,6,10"`` (degrees, comma separated) into floats; ValueError when malformed."""
    tilts = _parse_floats(text, "--tilt-deg", "degrees, e.g. 3,6,10")
    if not tilts:
        raise ValueError("--tilt-deg: no tilt given")
    bad = [t for t in tilts if not -45.0 < t < 45.0]
    if bad:
        raise ValueError(f"--tilt-deg: tilts must lie within (-45, 45) degrees, got {bad}")
    return tilts


def parse_steps(text: str) -> list[float]:
    """Parse focus steps ``"-10,-5,0,5,10"`` (um); ValueError unless 3 or more differ."""
    steps = _parse_floats(text, "--z-steps", "um, e.g. -10,-5,0,5,10")
    if len(set(steps)) < MIN_STEPS:
        raise ValueError(f"--z-steps {text!r}: give at least {MIN_STEPS} different focus steps")
    return steps


def assign_tilts(n_items: int, tilts: Sequence[float]) -> list[float]:
    """Tilt of each of ``n_items`` inputs (files) given the tilt list.

    One tilt per input when the counts match; otherwise, when ``n_items`` is a multiple
    of the number of tilts, consecutive groups: the first ``n_items / len(tilts)`` inputs
    have the first tilt, and so on. Anything else is a ValueError.
    """
    k = len(tilts)
    if k == 0 or n_items == 0:
        raise ValueError(f"{n_items} images and {k} tilts")
    if n_items == k:
        return [float(t) for t in tilts]
    if n_items % k == 0:
        g = n_items // k
        return [float(tilts[i // g]) for i in range(n_items)]
    raise ValueError(
        f"{n_items} images but {k} tilts: give one tilt per image, or a number of images "
        "that is a multiple of the number of tilts (consecutive groups share a tilt)"
    )


def calibrate_frames(
    mapper: Mapper,
    frames: Iterable[np.ndarray],
    tilts_deg: Sequence[float],
    *,
    axis: TiltAxis = "x",
    pixel_size_um: float = 0.64,
    features: str = "signed",
    lens_axis: float = DEFAULT_LENS_AXIS,
    min_r2: float = MIN_R2,
    fit: str = "forward",
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    spread_quantile: float | None = SPREAD_QUANTILE,
    deadzone: float | Literal["auto"] = "auto",
    reach_ratio: float = REACH_RATIO,
) -> DepthCalibration:
    """Map every calibration frame and fit a :class:`DepthCalibration` on the maps.

    Parameters
    ----------
    mapper : Mapper
        PSF mapper of the zernike3 network to calibrate.
    frames : iterable of numpy.ndarray
        2D frames of a tilted grid, in-focus line through the centre of the field.
    tilts_deg : sequence of float
        Tilt of each frame.
    axis, pixel_size_um, features, lens_axis, min_r2, fit, spread_quantile, deadzone,
    reach_ratio
        See :func:`~psf_live.depth.fit_calibration`.
    progress : callable, optional
        Wraps the frame iterable (e.g. ``tqdm``).

    Returns
    -------
    DepthCalibration
    """
    it: Iterable[Any] = frames if progress is None else progress(frames)
    maps = [mapper.map(f) for f in it]
    return fit_calibration(
        maps,
        tilts_deg,
        axis=axis,
        pixel_size_um=pixel_size_um,
        features=features,
        lens_axis=lens_axis,
        min_r2=min_r2,
        fit=fit,
        spread_quantile=spread_quantile,
        deadzone=deadzone,
        reach_ratio=reach_ratio,
    )


def acquire_calibration_frames(
    snap: Callable[[], np.ndarray],
    tilts_deg: Sequence[float],
    set_tilt: Callable[[float, int], None],
    frames_per_tilt: int = 1,
) -> tuple[list[np.ndarray], list[float]]:
    """Acquire ``frames_per_tilt`` frames at each tilt.

    ``set_tilt(tilt, k)`` is called before frame ``k`` of each tilt: on a simulated scope it
    sets the tilt (and, for ``k > 0``, a fresh grid offset); on a real scope it prompts the
    user to tilt the grid (``k == 0``) and waits.
    """
    frames: list[np.ndarray] = []
    tilts: list[float] = []
    for t in tilts_deg:
        for k in range(int(frames_per_tilt)):
            set_tilt(float(t), k)
            frames.append(np.asarray(snap()))
            tilts.append(float(t))
    return frames, tilts


def acquire_focus_steps(
    snap: Callable[[], np.ndarray],
    set_focus: Callable[[float], None],
    steps_um: Sequence[float],
) -> list[np.ndarray]:
    """One frame at each focus step: ``set_focus(step)``, then ``snap()``.

    ``set_focus`` moves the focal plane to ``step`` um from where it started (the
    caller's stage, and its putting the stage back afterwards).
    """
    frames: list[np.ndarray] = []
    for step in steps_um:
        set_focus(float(step))
        frames.append(np.asarray(snap()))
    return frames


def rescale_frames(
    mapper: Mapper,
    frames: Iterable[np.ndarray],
    steps_um: Sequence[float],
    calibration: DepthCalibration,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> DepthCalibration:
    """Rescale a grid calibration for a specimen from its frames at known focus steps.

    Each frame is mapped and read as the ``depth`` command reads it (:func:`map_depth`:
    neighbour check, then the calibration's limits), the depth change per micrometre of
    step is measured (:func:`~psf_live.depth.focus_step_slope`) and the calibration
    rescaled to it (:func:`~psf_live.depth.rescale_calibration`).

    Parameters
    ----------
    mapper : Mapper
        PSF mapper of the calibration's network (made the same way: test-time
        augmentation as the calibration's).
    frames : iterable of numpy.ndarray
        2D frames of one field of the specimen, one per step, nothing moved but focus.
    steps_um : sequence of float
        Focal-plane position of each frame (um, positive farther from the objective).
    calibration : DepthCalibration
        The tilted-grid calibration.
    progress : callable, optional
        Wraps the frame iterable (e.g. ``tqdm``).

    Returns
    -------
    DepthCalibration
        Rescaled, with what was measured in ``rescaled``.

    Raises
    ------
    CalibrationError
        See :func:`~psf_live.depth.focus_step_slope` and
        :func:`~psf_live.depth.rescale_calibration`; also the mapper's network not
        being the calibration's.
    """
    it: Iterable[Any] = frames if progress is None else progress(frames)
    depths = [map_depth(mapper.map(f), calibration, full=False).grid for f in it]
    slope, n = focus_step_slope(depths, steps_um)
    return rescale_calibration(calibration, slope, steps_um=steps_um, n_patches=n)


@dataclass(frozen=True)
class FrameDepth:
    """Depth of one frame: the patch grid, the full-resolution map and the plane tilt.

    ``n_valid``: patches the network called valid; ``n_cleaned``: of those, left out by
    :func:`clean_depth`; then ``n_beyond``: left out as beyond the network's reach
    (:func:`beyond_reach`), and ``n_spread``: because their test-time-augmentation views
    disagree (:func:`depth_spread`).
    """

    grid: np.ndarray
    full: np.ndarray | None
    centers_y: np.ndarray
    centers_x: np.ndarray
    plane: PlaneTilt | None
    n_valid: int = 0
    n_spread: int = 0
    n_cleaned: int = 0
    n_beyond: int = 0

    def line(self) -> str:
        """How many patches the depth rests on, and why the others were left out."""
        used = int(np.isfinite(self.grid).sum())
        why = []
        if self.n_cleaned:
            why.append(f"{self.n_cleaned} off their neighbours")
        if self.n_beyond:
            why.append(f"{self.n_beyond} beyond the network's reach")
        if self.n_spread:
            why.append(f"{self.n_spread} whose views disagree")
        out = f"depth on {used} of {self.grid.size} patches ({self.n_valid} valid"
        return out + (f"; left out: {', '.join(why)})" if why else ")")


def frame_depth(
    mapper: Mapper,
    frame: np.ndarray,
    calibration: DepthCalibration,
    full: bool = True,
    clean: bool = True,
    smooth: int = 0,
) -> FrameDepth:
    """Depth map (um) of one frame with a calibration, and the tilt of the sample plane.

    Maps the frame and applies :func:`map_depth` (see there for ``full``, ``clean`` and
    ``smooth``).

    Raises
    ------
    CalibrationError
        The mapper's network is not the calibration's.
    """
    return map_depth(mapper.map(frame), calibration, full=full, clean=clean, smooth=smooth)


def map_depth(
    m: Any,
    calibration: DepthCalibration,
    full: bool = True,
    clean: bool = True,
    smooth: int = 0,
) -> FrameDepth:
    """Depth (um) of a PSF map with a calibration, and the tilt of the sample plane.

    The one path from a map to depth: the ``depth`` command, the live panel and recording
    sessions all go through it, so they show and store the same numbers.

    Parameters
    ----------
    m : PSFMap
        A map made by the calibration's network (:class:`~psf_live.estimate.PSFMap`).
    calibration : DepthCalibration
        The calibration.
    full : bool
        Also interpolate the map to the frame's full resolution (``FrameDepth.full``).
    clean : bool
        Drop patches that disagree with their neighbours first
        (:func:`~psf_live.depth.clean_depth`).
    smooth : int
        When > 0, smooth the patch grid by local planes over ``smooth`` patches around
        each (:func:`~psf_live.depth.smooth_depth`: less noise, less lateral resolution).

    Returns
    -------
    FrameDepth

    Raises
    ------
    CalibrationError
        The map's network is not the calibration's.
    """
    # the calibration's limits (reach, view spread) apply after the neighbour check:
    # imprecise patches are still on the right side of focus, so a patch whose sign
    # flipped among them stands out (against a hole it would not)
    grid = depth_map(m, calibration, limits=False)
    n_valid = int(np.isfinite(grid).sum())
    if clean:
        grid = clean_depth(grid, m.centers_y, m.centers_x)
    kept = np.isfinite(grid)
    beyond = beyond_reach(m, calibration) & kept
    spread = beyond_spread(m, calibration) & kept & ~beyond
    grid = np.where(beyond | spread, np.nan, grid).astype(np.float32)
    n_cleaned = n_valid - int(kept.sum())
    n_beyond, n_spread = int(beyond.sum()), int(spread.sum())
    if smooth:
        grid = smooth_depth(grid, m.centers_y, m.centers_x, radius=smooth)
    plane = None
    if int(np.isfinite(grid).sum()) >= 3:
        plane = sample_plane(grid, m.centers_y, m.centers_x, calibration, tuple(m.frame_shape))
    fr = depth_full(grid, m.centers_y, m.centers_x, tuple(m.frame_shape)) if full else None
    return FrameDepth(
        grid,
        fr,
        np.asarray(m.centers_y),
        np.asarray(m.centers_x),
        plane,
        n_valid=n_valid,
        n_spread=n_spread,
        n_cleaned=n_cleaned,
        n_beyond=n_beyond,
    )
