"""Headless live monitoring and the ``psf-live demo`` job on the simulated microscope."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psf_live.estimate import (
    DEFAULT_LENS_AXIS,
    DepthCalibration,
    FrameSummary,
    PSFMap,
    optics_tilt_deg,
)

from ._calibrate import sim_lens_axis
from ._live import LiveMapper, LiveStats, MapTimings

__all__ = ["MonitorResult", "format_line", "monitor", "run_demo"]

Echo = Callable[[str], Any]


@dataclass
class MonitorResult:
    """What :func:`monitor` saw: per-frame summaries and the final statistics."""

    indices: list[int] = field(default_factory=list)
    summaries: list[FrameSummary] = field(default_factory=list)
    timings: list[MapTimings] = field(default_factory=list)
    stats: LiveStats | None = None
    last_map: PSFMap | None = None


def format_line(index: int, s: FrameSummary, stats: LiveStats, t: MapTimings) -> str:
    """One text line per mapped frame: focus, tilt, rate, latency, drops."""
    if s.tilt_x_deg is not None and s.tilt_y_deg is not None:
        tilt = f"tilt x {s.tilt_x_deg:+6.2f} y {s.tilt_y_deg:+6.2f} deg"
    else:
        # slopes of the (signed) defocus map, per mm for readable numbers
        tilt = (
            f"slope x {s.slope_x * 1e3:+7.3f} y {s.slope_y * 1e3:+7.3f} "
            f"{s.plane_unit}/mm ({s.plane_quantity})"
        )
    return (
        f"frame {index:5d}  {s.focus_name} {s.focus:6.3f} {s.focus_unit}  {tilt}  "
        f"valid {s.n_valid:3d}/{s.n_patches:<3d}  fps {stats.map_rate:5.1f}  "
        f"latency {t.latency * 1e3:6.1f} ms  dropped {stats.frames_dropped}"
    )


def monitor(
    core: Any,
    estimator: Any,
    frames: int = 20,
    echo: Echo | None = print,
    timeout: float = 120.0,
    calibration: DepthCalibration | None = None,
    lens_axis: float = DEFAULT_LENS_AXIS,
) -> MonitorResult:
    """Stream continuous acquisition through a :class:`LiveMapper` and report each map.

    Parameters
    ----------
    core : CMMCorePlus
        A configured core (camera set).
    estimator : FrameMapper
        The estimator.
    frames : int
        Stop after this many mapped frames.
    echo : callable, optional
        Receives one line per mapped frame (from the worker thread).
    timeout : float
        Give up after this many seconds.
    calibration : DepthCalibration, optional
        For tilts in degrees.
    lens_axis : float
        Cylindrical lens axis (radians) for the signed defocus.

    Returns
    -------
    MonitorResult

    Raises
    ------
    psf_live.depth.CalibrationError
        The calibration was made with another network (before acquisition starts).
    RuntimeError
        ``frames`` maps in a row failed (the message has the last error).
    TimeoutError
        Fewer than ``frames`` frames were mapped within ``timeout``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    result = MonitorResult()
    done = threading.Event()
    mapper = LiveMapper(
        core, estimator, mode="latest", calibration=calibration, lens_axis=lens_axis
    )
    failed: list[BaseException] = []  # consecutive mapping failures

    def on_fail(index: int, exc: BaseException) -> None:
        if done.is_set():  # the worker goes on until the mapper stops: count what stopped us
            return
        failed.append(exc)
        if len(failed) >= frames:
            done.set()

    def on_map(index: int, frame: np.ndarray, m: PSFMap, t: MapTimings) -> None:
        if done.is_set():
            return
        failed.clear()
        result.indices.append(index)
        result.summaries.append(m.summary)
        result.timings.append(t)
        result.last_map = m
        if echo is not None:
            echo(format_line(index, m.summary, mapper.stats(), t))
        if len(result.indices) >= frames:
            done.set()

    mapper.events.mapReady.connect(on_map)
    mapper.events.mapFailed.connect(on_fail)
    with mapper:
        core.startContinuousSequenceAcquisition(0)
        try:
            finished = done.wait(timeout)
        finally:
            core.stopSequenceAcquisition()
    result.stats = mapper.stats()
    if len(result.indices) < frames:
        last = f"; last error: {failed[-1]}" if failed else ""
        if finished:
            raise RuntimeError(f"mapping failed on {len(failed)} frames in a row{last}")
        raise TimeoutError(
            f"only {len(result.indices)} of {frames} frames mapped in {timeout} s{last}"
        )
    return result


def _median(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.median(v)) if v else math.nan


def run_demo(
    frames: int = 30,
    model: str | None = None,
    stride: int | None = None,
    echo: Echo = print,
    calibration: DepthCalibration | None = None,
    record_path: str | Path | None = None,
    record_frames: int = 5,
    estimator: Any = None,
) -> MonitorResult:
    """Run the first-contact job: the simulated scope streams, the live mapper maps, text out.

    Opens the simulated microscope (tilted grid seen through a cylindrical lens), loads
    the shipped model (or, when no weights are shipped yet, an untrained network so
    that the pipeline still runs, saying so), maps ``frames`` frames live and prints
    focus and tilt per frame (in degrees with a depth ``calibration``), a summary, and
    what is still missing. With ``record_path`` it then records ``record_frames``
    frames (raw, PSF map, validity) to an OME-Zarr store there and says so. An
    ``estimator`` given here is used instead of loading ``model``.
    """
    from psf_live.acquire import open_core
    from psf_live.estimate import Estimator

    missing: list[str] = []
    kwargs: dict[str, Any] = {} if stride is None else {"stride": stride}
    trained = True
    try:
        if estimator is None:
            estimator = Estimator.load(model, **kwargs)
    except Exception as exc:  # no shipped weights yet, or a bad name
        if model is not None:
            raise
        estimator = _untrained_estimator(**kwargs)
        trained = False
        missing.append(
            f"no shipped weights ({exc}); this runs an UNTRAINED network: its numbers only "
            "show that the pipeline runs, they are not estimates"
        )
    core = open_core(headless=True)
    recorded = None
    cam = core.getCameraDevice()
    h, w = core.getImageHeight(), core.getImageWidth()
    echo(f"psf-live demo: simulated microscope, camera {cam!r} {w}x{h}, {frames} frames")
    echo(f"estimator: {estimator!r}")
    r2 = (getattr(estimator, "meta", {}).get("metrics") or {}).get("r2")
    if trained and r2 is not None:
        echo(f"model test R^2 {float(r2):.2f} (from its model card)")
    truth, lens_axis = _scene_truth(core)
    if truth:
        echo(f"ground truth: {truth}")
    if not trained:
        echo(f"NOTE: {missing[0]}")
    try:
        result = monitor(
            core, estimator, frames=frames, echo=echo, lens_axis=lens_axis, calibration=calibration
        )
        if record_path is not None:
            from psf_live.record import record

            recorded = record(
                core, record_path, estimator, frames=record_frames, calibration=calibration
            )
    finally:
        _close(core)
    st = result.stats
    assert st is not None
    s = result.summaries
    echo("summary:")
    if s:
        echo(
            f"  median {s[-1].focus_name} {_median([x.focus for x in s]):.3f} {s[-1].focus_unit}; "
            f"median slope x {_median([x.slope_x for x in s]) * 1e3:+.3f} "
            f"y {_median([x.slope_y for x in s]) * 1e3:+.3f} {s[-1].plane_unit}/mm "
            f"({s[-1].plane_quantity}); median plane residual "
            f"{_median([x.residual for x in s]):.3f} {s[-1].plane_unit}"
        )
        tilts_x = [x.tilt_x_deg for x in s if x.tilt_x_deg is not None]
        tilts_y = [x.tilt_y_deg for x in s if x.tilt_y_deg is not None]
        if tilts_x and tilts_y:
            echo(
                f"  tilt (depth calibration): x {_median(tilts_x):+.2f} deg, "
                f"y {_median(tilts_y):+.2f} deg"
            )
        est = [t for t in (optics_tilt_deg(x) for x in s) if t is not None]
        if est and calibration is None:
            tx, ty = _median([t[0] for t in est]), _median([t[1] for t in est])
            echo(f"  uncalibrated tilt (optics estimate): x {tx:+.2f} deg, y {ty:+.2f} deg")
    echo(
        f"  frames in {st.frames_in}, mapped {st.frames_mapped}, dropped {st.frames_dropped}; "
        f"map rate {st.map_rate:.1f}/s; median latency {st.latency_median * 1e3:.1f} ms"
    )
    if recorded is not None:
        echo(
            f"recording: {recorded.path} (frames written {recorded.written}, mapped "
            f"{recorded.mapped}); check it with `psf-live verify {recorded.path}`"
        )
    if calibration is None:
        missing.append(
            "no depth calibration loaded: tilt is the slope of the signed defocus (waves per "
            "mm), not degrees; `psf-live demo` calibrates the simulated scope itself (unless "
            "--no-calibrate); on any scope: `psf-live calibrate-depth --config CFG --tilt-deg "
            "3,6,10 --model zernike3-lens -o cal.json` (pass --min-r2 0.5 to accept a rough "
            "fit), then `--calibration cal.json` here, in monitor, gui or record"
        )
    missing.append(
        "this was the text demo: with a display, `psf-live demo` (or `psf-live gui`) opens the "
        "live panel"
    )
    if not trained:
        missing.append("train/ship weights (python -m training.train), then rerun")
    echo("still missing:")
    for m in missing:
        echo(f"  - {m}")
    return result


def _untrained_estimator(**kwargs: Any) -> Any:
    from psf_live.estimate import Estimator
    from psf_live.models import DEFAULT_MODEL, ModelCard
    from psf_live.nets import build_net

    card = ModelCard.for_psf_model("untrained-tiny", DEFAULT_MODEL, "tiny")
    net = build_net("tiny", card.n_outputs)
    return Estimator(net, card, **kwargs)


def _scene_truth(core: Any) -> tuple[str, float]:
    """Describe the simulated scene from the camera's properties (best effort).

    Returns the text and the cylindrical lens axis in radians (default pi/4).
    """
    cam = core.getCameraDevice()

    def prop(name: str) -> str | None:
        try:
            return str(core.getProperty(cam, name)) if core.hasProperty(cam, name) else None
        except Exception:
            return None

    tilt, axis = prop("TiltDeg"), prop("TiltAxis")
    cyl, cyl_axis = prop("CylinderWaves"), prop("CylinderAxisDeg")
    lens_axis = sim_lens_axis(core)
    if tilt is None:
        return "", lens_axis
    from psf_live.psf import Optics, defocus_um_to_waves

    px = prop("PixelSizeUm")
    optics = Optics(pixel_size_um=float(px)) if px is not None else Optics()
    per_um = defocus_um_to_waves(1.0, optics)
    slope = math.tan(math.radians(float(tilt))) * per_um * 1e3
    text = (
        f"sample {prop('Sample')} tilted {tilt} deg along {axis}, cylindrical lens "
        f"{cyl} waves at {cyl_axis} deg; expected signed-defocus slope along {axis}: "
        f"{slope:+.3f} waves/mm"
    )
    return text, lens_axis


def _close(core: Any) -> None:
    try:
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        core.unloadAllDevices()
    except Exception:
        pass
