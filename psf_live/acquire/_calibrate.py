"""Depth calibration frames from a scope: the simulator tilts its grid in software."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEMO_DEPTH_MODEL",
    "calibrate_demo_scope",
    "calibrate_sim",
    "is_sim_with_tilt",
    "sim_lens_axis",
    "sim_tilt_setter",
    "snapper",
]

DEMO_TILTS = (3.0, 6.0, 10.0)
"""Tilts (degrees) of the demo's calibration, those of the paper's Table VI."""
DEMO_DEPTH_MODEL = "zernike3-lens45"
"""The shipped zernike3 trained for the simulator's cylindrical lens (0.25 waves at 45 deg)."""


def is_sim_with_tilt(core: Any) -> bool:
    """Return True when the camera is the simulated one, whose sample tilt is a property."""
    cam = core.getCameraDevice()
    return bool(cam) and bool(core.hasProperty(cam, "TiltDeg"))


def snapper(core: Any) -> Callable[[], np.ndarray]:
    """``snap()`` for the acquisition helpers of :mod:`psf_live.depth`: one frame of ``core``.

    Snaps and returns the camera's image (the frames of a calibration or of focus
    steps are taken one by one, each after the scope was set for it).
    """

    def snap() -> np.ndarray:
        core.snapImage()
        return np.asarray(core.getImage())

    return snap


def sim_lens_axis(core: Any) -> float:
    """Axis (radians) of the camera's cylindrical lens, the paper's pi/4 when it has none."""
    from psf_live.depth import DEFAULT_LENS_AXIS

    try:
        cam = core.getCameraDevice()
        if cam and core.hasProperty(cam, "CylinderAxisDeg"):
            return math.radians(float(core.getProperty(cam, "CylinderAxisDeg")))
    except Exception:  # best effort: a camera that cannot say has no known lens
        pass
    return DEFAULT_LENS_AXIS


def sim_tilt_setter(
    core: Any, axis: str = "x", rng: np.random.Generator | None = None
) -> Callable[[float, int], None]:
    """``set_tilt(tilt, k)`` for :func:`psf_live.depth.acquire_calibration_frames` on the sim.

    Puts the focal plane at the sample's height (the in-focus line through the centre of
    the field), sets the tilt along ``axis`` and moves the printed grid to a fresh random
    offset for every frame, so that no two calibration frames show the same pattern.
    """
    cam = core.getCameraDevice()
    rng = rng if rng is not None else np.random.default_rng()

    def set_tilt(tilt: float, k: int) -> None:
        core.setPosition(float(core.getProperty(cam, "SampleZUm")))
        core.setProperty(cam, "TiltAxis", axis)
        core.setProperty(cam, "TiltDeg", float(tilt))
        core.setProperty(cam, "SampleOffsetXUm", float(rng.uniform(0, 200)))
        core.setProperty(cam, "SampleOffsetYUm", float(rng.uniform(0, 200)))

    return set_tilt


def calibrate_sim(
    core: Any,
    estimator: Any,
    tilts_deg: Sequence[float] = DEMO_TILTS,
    frames_per_tilt: int = 2,
    min_r2: float = 0.5,
    seed: int | None = None,
) -> Any:
    """Fit a depth calibration on the simulated scope, as a user would on a tilted grid.

    Acquires ``frames_per_tilt`` frames of the printed grid at each tilt along x (set in
    software), maps them with ``estimator`` and fits
    :func:`psf_live.depth.calibrate_frames` (signed focus, forward fit). The camera's
    tilt, axis, grid offset and the stage position are restored afterwards, so the scope
    shows what it showed before.

    Parameters
    ----------
    core : CMMCorePlus
        A core whose camera is the simulated one (:func:`is_sim_with_tilt`).
    estimator : Estimator
        The zernike3 network to calibrate.
    tilts_deg : sequence of float
        Calibration tilts.
    frames_per_tilt : int
        Frames at each tilt, each with a fresh grid offset.
    min_r2 : float
        Refuse a fit with a lower R^2 (:class:`psf_live.depth.CalibrationError`).
    seed : int, optional
        Seed of the grid offsets.

    Returns
    -------
    DepthCalibration
        With the network's name and hash, and the per-image report.
    """
    from psf_live.depth import acquire_calibration_frames, calibrate_frames

    if not is_sim_with_tilt(core):
        raise ValueError("calibrate_sim needs the simulated camera (a 'TiltDeg' property)")
    cam = core.getCameraDevice()
    names = ("TiltDeg", "TiltAxis", "SampleOffsetXUm", "SampleOffsetYUm")
    keep = {p: core.getProperty(cam, p) for p in names}
    z = core.getPosition()
    px = float(core.getPixelSizeUm() or 0.64)

    snap = snapper(core)
    try:
        set_tilt = sim_tilt_setter(core, "x", np.random.default_rng(seed))
        frames, tilts = acquire_calibration_frames(snap, tilts_deg, set_tilt, frames_per_tilt)
    finally:
        for p, v in keep.items():
            core.setProperty(cam, p, v)
        core.setPosition(z)
    return calibrate_frames(
        estimator,
        frames,
        tilts,
        axis="x",
        pixel_size_um=px,
        lens_axis=sim_lens_axis(core),
        min_r2=min_r2,
    )


def calibrate_demo_scope(
    path: str | Path,
    echo: Callable[[str], Any] = print,
    model: str = DEMO_DEPTH_MODEL,
    config: str | Path | None = None,
) -> Path | None:
    """Calibrate depth on the simulated scope for the demo and save it to ``path``.

    Opens the simulated microscope, fits :func:`calibrate_sim` with the shipped ``model``
    and writes the calibration JSON, saying what it did in one line. Returns None (and says
    why) when the model is not shipped, the scope has no tilt, or the fit is refused, so
    that the demo still runs without depth.
    """
    from psf_live.depth import CalibrationError
    from psf_live.estimate import Estimator
    from psf_live.models import available_models

    from ._core import open_core

    if model not in available_models():
        echo(f"depth: no calibration ({model!r} is not shipped in this install)")
        return None
    core = open_core(config, headless=True)
    try:
        if not is_sim_with_tilt(core):
            echo("depth: no calibration (the scope is not the simulator; see calibrate-depth)")
            return None
        cal = calibrate_sim(core, Estimator.load(model))
    except CalibrationError as exc:
        echo(f"depth: calibration on the simulated scope refused ({exc})")
        return None
    finally:
        core.unloadAllDevices()
    out = cal.save(path)
    r = cal.report
    echo(
        f"depth: calibrated on the simulated scope with {model!r} from "
        f"{len(r['images'])} tilted-grid frames ({'/'.join(f'{t:g}' for t in DEMO_TILTS)} deg): "
        f"R^2 {r['r2']:.3f}, residual "
        f"{r['rms_um']:.1f} um RMS -> {out}"
    )
    return Path(out)
