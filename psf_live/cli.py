"""The ``psf-live`` command line (one typer app; each command delegates to its module)."""

from __future__ import annotations

from typing import Any, Literal

import typer

app = typer.Typer(
    name="psf-live",
    help="Live PSF maps, deblurring and depth from astigmatism for wide-field microscopes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown help: the docstrings' paragraphs are reflowed to the terminal width (in
    # the default mode their hard line breaks were kept, and wrapped again mid-line)
    rich_markup_mode="markdown",
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load_calibration(path: str | None) -> Any:
    """Load a depth calibration JSON (None passes through); one-line error naming the file."""
    if path is None:
        return None
    from psf_live.depth import DepthCalibration

    try:
        return DepthCalibration.load(path)
    except Exception as exc:
        raise fail(str(exc) if path in str(exc) else f"{path}: {exc}") from None


def _calibrated_estimator(
    model: str | None, cal: Any, calibration: str | None, **kwargs: Any
) -> Any:
    """Load the network a depth calibration was made with (``--model`` overrides), checked.

    Without ``--model`` the calibration's own network is used, mapped the way it was
    (with or without ``--tta``); a calibration made with another network is refused here
    with one line, before any camera starts.
    """
    from psf_live.estimate import Estimator

    name = model or (cal.network.get("name") if cal is not None else None)
    tta = cal.tta_views if cal is not None else 1
    try:
        est = Estimator.load(name, tta=tta, **kwargs)
    except Exception as exc:
        raise fail(f"cannot load model {name or 'zernike3'!r}: {exc}") from None
    if cal is not None:
        try:
            cal.check_network(dict(getattr(est, "meta", {}) or {}), where=calibration)
        except Exception as exc:
            raise fail(str(exc).splitlines()[0]) from None
    return est


def _load_frames(path: str) -> tuple[Any, bool]:
    """Read a 2D image or a T x H x W stack as ((T, H, W) frames, was it a stack).

    Bad input (missing file, wrong dimensions, NaN, smaller than a patch) exits with a
    one-line error naming the file.
    """
    from psf_live.estimate import check_frame
    from psf_live.estimate._io import load_image

    try:
        data = load_image(path)
        frames = data[None] if data.ndim == 2 else data
        for f in frames:
            check_frame(f)
    except ValueError as exc:
        msg = str(exc)
        raise fail(msg if msg.startswith(path) else f"{path}: {msg}") from None
    return frames, data.ndim == 3


def _ranges(indices: list[int]) -> str:
    """Compact list of sorted frame indices: ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _has_display() -> bool:
    """Tell whether a Qt window can be shown (a display and a Qt binding)."""
    import importlib.util
    import os
    import sys

    if os.environ.get("QT_QPA_PLATFORM", "") in {"offscreen", "minimal"}:
        return False
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    return any(importlib.util.find_spec(m) for m in ("PySide6", "PyQt6", "PyQt5"))


_MODEL_HELP = "Shipped model name or weights path (default: the calibration's, else zernike3)."
_TTA_OPTION = typer.Option(
    False, "--tta", help="Average each patch over its 8 rotations/flips (8x slower, finer)."
)


@app.command()
def demo(
    frames: int = typer.Option(30, "--frames", "-n", min=1, help="Frames to map."),
    calibration: str = typer.Option(
        None, "--calibration", help="Depth calibration JSON: tilt in degrees."
    ),
    gui: bool | None = typer.Option(
        None,
        "--gui/--no-gui",
        help="Open the live panel (default: when a display exists), else print text.",
        show_default=False,
    ),
    record_to: str = typer.Option(
        None,
        "--record",
        help="Where the short demo recording goes (default: a new temporary folder).",
    ),
    calibrate: bool = typer.Option(
        True,
        "--calibrate/--no-calibrate",
        help="Without --calibration: first calibrate depth on the simulated scope (tilted "
        "grid at 3/6/10 deg, zernike3-lens45), so depth and tilt come in um and degrees.",
    ),
) -> None:
    """Run the whole product on the built-in simulated microscope (no hardware needed).

    First (unless --calibration or --no-calibrate) it calibrates depth on the simulated
    scope as a user would on a tilted grid, so depth and tilt come in um and degrees. With
    a display it then opens the live panel (focus, astigmatism, depth, tilt). Without one
    it streams frames through the live mapper, prints focus and tilt per frame, and
    records a few frames (raw, PSF map, validity, depth) to an OME-Zarr store it names.
    """
    import functools
    import tempfile
    from pathlib import Path

    from psf_live.acquire._monitor import run_demo

    if record_to is not None and Path(record_to).exists():
        raise fail(f"{record_to}: already exists; choose a new path for the recording")

    @functools.cache
    def workdir() -> Path:  # made only when something is written there
        return Path(tempfile.mkdtemp(prefix="psf-live-demo-"))

    cal_path: str | None = calibration
    if cal_path is None and calibrate:
        from psf_live.acquire import calibrate_demo_scope

        made = calibrate_demo_scope(workdir() / "depth_calibration.json", echo=typer.echo)
        cal_path = str(made) if made is not None else None
    cal = _load_calibration(cal_path)
    model = cal.network.get("name") if cal is not None else None  # the calibration's network
    if gui is None:
        gui = _has_display()
    if gui:
        from psf_live.gui import run_gui

        raise typer.Exit(run_gui(model=model, calibration=cal_path))
    est = _calibrated_estimator(None, cal, cal_path) if cal is not None else None
    target = Path(record_to) if record_to else workdir() / "demo.zarr"
    try:
        run_demo(
            frames=frames, echo=typer.echo, calibration=cal, record_path=target, estimator=est
        )
    except (TimeoutError, RuntimeError) as exc:
        raise fail(str(exc)) from None


@app.command()
def estimate(
    image: str = typer.Argument(..., help="TIFF (2D image or T x H x W stack)."),
    output: str = typer.Option(..., "--output", "-o", help="Output .npz with the PSF map(s)."),
    model: str = typer.Option(None, "--model", "-m", help="Shipped model name or weights path."),
    stride: int = typer.Option(64, "--stride", "-s", min=1, help="Patch stride in pixels."),
    json_: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    tta: bool = _TTA_OPTION,
) -> None:
    """Map the PSF of an image (per 128x128 patch) and save it as .npz."""
    import json

    import numpy as np

    from psf_live._atomic import atomic_output
    from psf_live.estimate import Estimator
    from psf_live.estimate._io import maps_to_npz, summaries_json

    frames, is_stack = _load_frames(image)
    try:
        est = Estimator.load(model, stride=stride, tta=tta)
    except Exception as exc:
        raise fail(f"cannot load model {model or 'default'!r}: {exc}") from None
    from tqdm import tqdm

    bar = tqdm(frames, desc="map", unit="frame", disable=len(frames) < 2)
    maps = [est.map(f) for f in bar]
    if not output.endswith(".npz"):  # as numpy.savez names it
        output += ".npz"
    with atomic_output(output) as tmp:
        np.savez(tmp, **maps_to_npz(maps, stack=is_stack))
    if json_:
        typer.echo(json.dumps(summaries_json(maps, image, str(est.meta.get("name", model)))))
    else:
        n_valid = sum(int(np.count_nonzero(m.valid)) for m in maps)
        n_all = sum(int(np.size(m.valid)) for m in maps)
        typer.echo(
            f"{image}: {len(maps)} frame(s), grid {maps[0].shape}, valid patches "
            f"{n_valid}/{n_all} -> {output}"
        )
    blank = [t for t, m in enumerate(maps) if not np.any(m.valid)]
    if blank:
        which = "every frame" if len(blank) == len(maps) else f"frame(s) {_ranges(blank)}"
        typer.echo(
            f"warning: no valid patch in {which} (blank, flat or textureless, or too noisy: "
            "nothing there shows the PSF)",
            err=True,
        )


@app.command()
def monitor(
    config: str = typer.Option(None, "--config", "-c", help="Micro-Manager .cfg (default: sim)."),
    frames: int = typer.Option(20, "--frames", "-n", min=1, help="Frames to map."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    stride: int = typer.Option(64, "--stride", "-s", min=1, help="Patch stride in pixels."),
    calibration: str = typer.Option(
        None, "--calibration", help="Depth calibration JSON: tilt in degrees."
    ),
) -> None:
    """Headless live monitoring: one line per mapped frame (focus, tilt, fps, latency)."""
    from psf_live.acquire import open_core
    from psf_live.acquire._monitor import monitor as run_monitor

    cal = _load_calibration(calibration)
    est = _calibrated_estimator(model, cal, calibration, stride=stride)
    try:
        core = open_core(config, headless=True)
    except Exception as exc:
        raise fail(str(exc)) from None
    try:
        result = run_monitor(core, est, frames=frames, echo=typer.echo, calibration=cal)
    except (TimeoutError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    finally:
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        core.unloadAllDevices()
    st = result.stats
    if st is not None:
        typer.echo(
            f"done: {len(result.indices)} frames reported ({st.frames_in} in, "
            f"{st.frames_mapped} mapped, {st.frames_dropped} dropped), "
            f"{st.map_rate:.1f} maps/s, median latency {st.latency_median * 1e3:.1f} ms"
        )


@app.command("calibrate-depth")
def calibrate_depth(
    images: list[str] = typer.Argument(  # noqa: B008
        None, help="TIFFs of the tilted grid (2D or stacks); omit with --config."
    ),
    tilt_deg: str = typer.Option(
        ...,
        "--tilt-deg",
        "-t",
        help="Tilts in degrees, e.g. 3,6,10: one per image, or per consecutive group of "
        "images (a stack's frames share its file's tilt).",
    ),
    output: str = typer.Option(..., "--output", "-o", help="Calibration JSON to write."),
    axis: str = typer.Option(
        "x",
        "--axis",
        help="x: depth varies along x, positive tilt = +x side farther from the objective; "
        "y likewise along y; xy along the field diagonal (+x +y corner farther).",
    ),
    pixel_size_um: float = typer.Option(
        None, "--pixel-size-um", help="Object pixel size (default 0.64, or the scope's)."
    ),
    model: str = typer.Option(None, "--model", "-m", help="zernike3 model name or path."),
    features: str = typer.Option(
        "signed", "--features", help="signed (default), eq14 (paper), signed-cubic, eq14-cubic."
    ),
    lens_axis_deg: float = typer.Option(45.0, "--lens-axis-deg", help="Cylindrical lens axis."),
    fit: str = typer.Option(
        "forward",
        "--fit",
        help="forward (default: least per-patch error, measured closest tilts) or inverse "
        "(unbiased under pure metric noise; linear models only).",
    ),
    min_r2: float = typer.Option(0.9, "--min-r2", help="Refuse fits with a lower R^2."),
    tta: bool = _TTA_OPTION,
    tta_views: int = typer.Option(
        8,
        "--tta-views",
        help="With --tta: views per patch, 8 (all rotations and flips), 4 (quarter turns) "
        "or 2 (the patch and its transpose): fewer are faster, for live depth.",
    ),
    spread_quantile: float = typer.Option(
        0.9,
        "--spread-quantile",
        min=0.0,
        max=1.0,
        help="With --tta: depth maps keep the patches whose views agree as well as this "
        "share of the calibration patches did (1 keeps all).",
    ),
    deadzone: str = typer.Option(
        "auto",
        "--deadzone",
        help="Width taken off the signed metric near focus, where a network's focus "
        "output cannot go below zero: auto (fitted, default), 0 (none) or a width.",
    ),
    reach_ratio: float = typer.Option(
        0.5,
        "--reach-ratio",
        help="The network's reach ends where the metric's slope against depth falls "
        "below this share of its slope near focus: 0.5 where it turns flat (default), "
        "0.85 where it first bends (the linear range; in (0, 1]).",
    ),
    config: str = typer.Option(
        None, "--config", "-c", help="Acquire live from this scope (.cfg; 'sim' = simulator)."
    ),
    frames_per_tilt: int = typer.Option(1, "--frames-per-tilt", "-n", min=1),
) -> None:
    """Fit a depth calibration (um from zernike3 maps) on images of a tilted grid.

    The in-focus line must pass through the centre of the field. From files, or live with
    --config: on the simulated scope the tilt is set in software (with fresh grid offsets),
    on a real scope you are asked to tilt the grid and press Enter.
    """
    import math

    from psf_live.depth import (
        CalibrationError,
        assign_tilts,
        calibrate_frames,
        check_lens_axis,
        parse_tilts,
    )
    from psf_live.psf import TILT_AXES

    try:
        tilts = parse_tilts(tilt_deg)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if axis not in TILT_AXES:
        raise fail(f"--axis must be x, y or xy, got {axis!r}")
    if tta and tta_views not in (2, 4, 8):
        raise fail(f"--tta-views must be 2, 4 or 8, got {tta_views}")
    if not 0.0 < spread_quantile <= 1.0:
        raise fail(f"--spread-quantile must be in (0, 1], got {spread_quantile}")
    if not 0.0 < reach_ratio <= 1.0:
        raise fail(f"--reach-ratio must be in (0, 1], got {reach_ratio}")
    dz: float | Literal["auto"] = "auto"
    if deadzone != "auto":
        try:
            dz = float(deadzone)
        except ValueError:
            dz = math.nan
        if not (math.isfinite(dz) and dz >= 0):
            raise fail(f"--deadzone must be auto or a width >= 0, got {deadzone!r}")
    if bool(images) == bool(config):
        raise fail("give calibration images or --config (not both, not neither)")
    # the network first: a bad model name or a lens axis it was not trained for is
    # refused before a (possibly long, interactive) acquisition
    try:
        est = _load_estimator(model, tta=tta_views if tta else False)
    except Exception as exc:
        raise fail(f"cannot load model {model or 'zernike3'!r}: {exc}") from None
    try:
        check_lens_axis(est.meta, math.radians(lens_axis_deg))
    except CalibrationError as exc:
        raise fail(f"calibration refused: {exc}") from None
    frames: list[Any] = []
    frame_tilts: list[float] = []
    if images:
        try:
            per_file = assign_tilts(len(images), tilts)
        except ValueError as exc:
            raise fail(str(exc)) from None
        for path, t in zip(images, per_file, strict=True):
            stack, _ = _load_frames(path)
            frames.extend(stack)
            frame_tilts.extend([t] * len(stack))
        px = 0.64 if pixel_size_um is None else pixel_size_um
    else:
        from psf_live.acquire import open_core

        try:
            core = open_core(None if config == "sim" else config, headless=True)
        except Exception as exc:
            raise fail(str(exc)) from None
        try:
            frames, frame_tilts, px = _acquire_depth_calibration(
                core, tilts, axis, frames_per_tilt, pixel_size_um
            )
        finally:
            core.unloadAllDevices()
    try:
        cal = calibrate_frames(
            est,
            frames,
            frame_tilts,
            axis=axis,
            pixel_size_um=px,
            features=features,
            lens_axis=math.radians(lens_axis_deg),
            min_r2=min_r2,
            fit=fit,
            spread_quantile=spread_quantile,
            deadzone=dz,
            reach_ratio=reach_ratio,
        )
    except CalibrationError as exc:
        raise fail(f"calibration refused: {exc}") from None
    for im in cal.report["images"]:
        typer.echo(
            f"image {im['index']}: tilt {im['tilt_deg']:+g} deg, {im['n_valid']} valid patches, "
            f"depth range {im['depth_range_um']:.1f} um, R^2 {im['r2']:.4f}, "
            f"residual {im['rms_um']:.2f} um RMS"
        )
    r = cal.report
    cal.save(output)
    typer.echo(
        f"calibration ({cal.features}, {cal.fit} fit, dead zone {cal.deadzone:.3g}, "
        f"network {cal.network['name']!r}): "
        f"R^2 {r['r2']:.4f} "
        f"(inliers {r['r2_inliers']:.4f}), residual {r['rms_um']:.2f} um RMS, "
        f"{r['n_outliers']}/{r['n_patches']} outliers -> {output}"
    )
    reach = cal.reach_um()
    if reach is not None:
        typer.echo(
            f"depth maps leave out patches beyond the network's reach (|metric| > "
            f"{cal.max_metric:.3g}, about {reach:.1f} um from focus: its focus output "
            "stops growing there)"
        )
    if cal.max_spread_um is not None:
        typer.echo(
            f"depth maps leave out patches whose TTA views disagree by more than "
            f"{cal.max_spread_um:.2f} um (SD; {100 * spread_quantile:.0f} % of the "
            "calibration patches agree better)"
        )


def _load_estimator(model: str | None, tta: bool | int = False):  # type: ignore[no-untyped-def]
    from psf_live.estimate import Estimator

    return Estimator.load(model or "zernike3", tta=tta)


def _acquire_depth_calibration(  # type: ignore[no-untyped-def]
    core, tilts: list[float], axis: str, per_tilt: int, pixel_size_um: float | None
):
    """Frames at each tilt: set in software on the simulator, by the user on a real scope."""
    from psf_live.acquire import is_sim_with_tilt, sim_tilt_setter, snapper

    sim = is_sim_with_tilt(core)
    px = pixel_size_um if pixel_size_um is not None else (core.getPixelSizeUm() or 0.64)
    set_sim_tilt = sim_tilt_setter(core, axis) if sim else None

    def set_tilt(t: float, k: int) -> None:
        if set_sim_tilt is not None:
            set_sim_tilt(t, k)
        elif k == 0:
            side = "+x +y corner" if axis == "xy" else f"+{axis} side"
            typer.prompt(
                f"Tilt the grid by {t:+g} deg along {axis} ({side} farther from the "
                "objective), in-focus line through the centre; press Enter",
                default="",
                show_default=False,
                prompt_suffix=" ",
            )

    from psf_live.depth import acquire_calibration_frames

    frames, frame_tilts = acquire_calibration_frames(snapper(core), tilts, set_tilt, per_tilt)
    typer.echo(f"acquired {len(frames)} frames ({'simulated' if sim else 'real'} scope)")
    return frames, frame_tilts, float(px)


@app.command("rescale-depth")
def rescale_depth(
    calibration: str = typer.Argument(..., help="calibrate-depth JSON (made on the grid)."),
    stack: str = typer.Argument(
        None, help="TIFF stack of the specimen, one frame per focus step; omit with --config."
    ),
    z_steps: str = typer.Option(
        ...,
        "--z-steps",
        "-z",
        help="Focal-plane position of each frame in um, e.g. -15,-10,-5,0,5,10,15 "
        "(positive: farther from the objective; with --config, relative to the current one).",
    ),
    output: str = typer.Option(..., "--output", "-o", help="Rescaled calibration JSON."),
    config: str = typer.Option(
        None, "--config", "-c", help="Acquire live from this scope (.cfg; 'sim' = simulator)."
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Model name or path (default: the calibration's)."
    ),
) -> None:
    """Rescale a depth calibration for a specimen from frames of it at known focus steps.

    The network reads one and the same defocus differently through different samples
    (on the simulated scope a grid calibration reads sparse points about 16 % too
    shallow). The stage knows how far it moves the focal plane, so a few frames of one
    field of the specimen, nothing moved but focus, measure the depth scale on it; the
    calibration is rescaled to read the specimen as it read its grid (README, Depth).
    """
    from psf_live.depth import CalibrationError, DepthCalibration, parse_steps, rescale_frames

    try:
        steps = parse_steps(z_steps)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        cal = DepthCalibration.load(calibration)
    except CalibrationError as exc:
        raise fail(str(exc)) from None
    if bool(stack) == bool(config):
        raise fail("give the specimen's focus stack or --config (not both, not neither)")
    if stack:
        frames, _ = _load_frames(stack)
        if len(frames) != len(steps):
            raise fail(f"{stack}: {len(frames)} frames but {len(steps)} focus steps")
    # the calibration's network, mapped its way and checked before any camera starts
    est = _calibrated_estimator(model, cal, calibration)
    if not stack:
        from psf_live.acquire import open_core, snapper
        from psf_live.depth import acquire_focus_steps

        try:
            core = open_core(None if config == "sim" else config, headless=True)
        except Exception as exc:
            raise fail(str(exc)) from None
        z0 = core.getPosition()

        def set_focus(dz: float) -> None:
            core.setPosition(z0 + dz)
            core.waitForSystem()  # a real stage settles before the frame

        try:
            frames = acquire_focus_steps(snapper(core), set_focus, steps)
        finally:
            core.setPosition(z0)
            core.unloadAllDevices()
    try:
        out = rescale_frames(est, frames, steps, cal)
    except CalibrationError as exc:
        raise fail(f"rescale refused: {exc}") from None
    out.save(output)
    r = out.rescaled
    typer.echo(
        f"depth changed {r['slope']:.3f} um per um of focus step on {r['n_patches']} patches "
        f"(the calibration's grid: {cal.response_slope:.3f}); depth x {r['factor']:.3f} "
        f"-> {output}"
    )


@app.command("depth")
def depth_cmd(
    image: str = typer.Argument(..., help="TIFF (2D image or T x H x W stack)."),
    calibration: str = typer.Option(..., "--calibration", "-c", help="calibrate-depth JSON."),
    output: str = typer.Option(..., "--output", "-o", help="Output float32 TIFF (um)."),
    grid: bool = typer.Option(False, "--grid", help="Write the patch grid, not full res."),
    clean: bool = typer.Option(
        True, "--clean/--no-clean", help="Drop patches that disagree with their neighbours."
    ),
    smooth: int = typer.Option(
        0,
        "--smooth",
        min=0,
        help="Fit local planes over this many patches around each (0: none): less noise, "
        "less lateral resolution (README, Depth).",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Model name or path (default: the calibration's)."
    ),
) -> None:
    """Depth map in micrometres (NaN where invalid) and the tilt of the sample plane."""
    import numpy as np

    from psf_live.depth import CalibrationError, DepthCalibration, frame_depth

    try:
        cal = DepthCalibration.load(calibration)
    except CalibrationError as exc:
        raise fail(str(exc)) from None
    frames, is_stack = _load_frames(image)
    if cal.rescaled:  # say which scale the numbers are in
        typer.echo(
            f"{calibration}: rescaled x {cal.rescaled['total_factor']:.3f} from the grid's "
            f"scale by focus steps of a specimen (rescale-depth)"
        )
    name = model or cal.network.get("name") or None
    try:  # mapped the way the calibration was (with or without --tta)
        est = _load_estimator(name, tta=cal.tta_views)
    except Exception as exc:
        raise fail(f"cannot load model {name or 'zernike3'!r}: {exc}") from None
    out = []
    for t, f in enumerate(frames):
        try:
            fd = frame_depth(est, f, cal, full=not grid, clean=clean, smooth=smooth)
        except CalibrationError as exc:
            raise fail(str(exc)) from None
        out.append(fd.grid if grid or fd.full is None else fd.full)
        plane = fd.plane.line() if fd.plane is not None else "no plane (< 3 valid patches)"
        typer.echo(f"frame {t}: {plane}; {fd.line()}")
    import tifffile

    from psf_live._atomic import atomic_output

    arr = np.stack(out).astype(np.float32)
    with atomic_output(output) as tmp:
        tifffile.imwrite(tmp, arr if is_stack else arr[0], photometric="minisblack")
    typer.echo(f"{image}: {len(out)} depth map(s) {arr.shape[1:]} um -> {output}")


@app.command()
def gui(
    config: str = typer.Option(None, "--config", "-c", help="Micro-Manager .cfg (default: sim)."),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    stride: int = typer.Option(64, "--stride", "-s", min=16, help="Patch stride in pixels."),
    calibration: str = typer.Option(
        None, "--calibration", help="Depth calibration JSON (calibrate-depth)."
    ),
) -> None:
    """Open the live panel: camera, focus/astigmatism/depth heatmaps, tilt and trends."""
    import os
    import sys

    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    ):
        raise fail("no display (DISPLAY/WAYLAND_DISPLAY unset); use `psf-live monitor` instead")
    from psf_live.acquire import ConfigError

    if calibration is not None and not os.path.exists(calibration):
        raise fail(f"{calibration}: calibration file not found")
    cal = _load_calibration(calibration)
    # without --model: the network the calibration was made with
    name: str | None = model or (cal.network.get("name") if cal is not None else None)
    try:
        from psf_live.gui import run_gui

        code = run_gui(config, model=name, stride=stride, calibration=calibration)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if code:
        raise typer.Exit(code)


@app.command()
def deconvolve(
    image: str = typer.Argument(..., help="TIFF (2D image or T x H x W stack)."),
    output: str = typer.Option(..., "--output", "-o", help="Output .zarr (OME-Zarr) or .tif."),
    model: str = typer.Option(None, "--model", "-m", help="Shipped model name or weights path."),
    iterations: int = typer.Option(20, "--iterations", "-n", min=0, help="TV-RL iterations."),
    lambda_tv: float = typer.Option(0.1, "--lambda-tv", min=0.0, help="TV weight (Dey 2006)."),
    psf_map: str = typer.Option(None, "--psf-map", help="PSF map .npz (from `estimate`)."),
    stride: int = typer.Option(64, "--stride", "-s", min=1, help="Patch stride in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    tta: bool = _TTA_OPTION,
    shrink: str = typer.Option(
        "auto",
        "--shrink",
        help="Lower each patch's PSF size by this many SDs of its TTA views before "
        "deconvolving (a too-large defocus kernel rings, a too-small one only deblurs less); "
        "auto: 1.5 for Zernike maps made with --tta, else 0.",
    ),
    refine: bool = typer.Option(
        False,
        "--refine",
        help="Rescale each patch's PSF size to what the frame itself predicts best "
        "(Poisson-thinning cross-validation, up to 16 extra RL runs per frame); "
        "replaces --shrink.",
    ),
    gain: float = typer.Option(
        None,
        "--gain",
        help="With --refine: camera gain in ADU per photo-electron (default: estimated "
        "from each frame's noise).",
    ),
    offset: float = typer.Option(
        0.0, "--offset", help="With --refine and --gain: dark offset (ADU)."
    ),
    read_noise: float = typer.Option(
        0.0, "--read-noise", min=0.0, help="With --refine and --gain: read noise (e- RMS)."
    ),
) -> None:
    """Deblur an image (or stack) with its PSF map by spatially-variant TV-RL and save it."""
    from psf_live.store import deblur_file

    try:
        res = deblur_file(
            image,
            output,
            model=model,
            iterations=iterations,
            lambda_tv=lambda_tv,
            psf_map=psf_map,
            stride=stride,
            overwrite=overwrite,
            tta=tta,
            shrink=shrink,
            refine=refine,
            gain=gain,
            offset=offset,
            read_noise=read_noise,
        )
    except ValueError as exc:
        msg = str(exc)
        raise fail(
            msg if msg.startswith((image, output, str(psf_map))) else f"{image}: {msg}"
        ) from None
    except Exception as exc:
        raise fail(f"{image}: {type(exc).__name__}: {exc}") from None
    k = float(res["settings"].get("shrink_applied", 0.0))
    how = f" (PSF size lowered by {k:g} SD of the TTA views)" if k else ""
    if refine:
        from statistics import median

        factor = median(res["psf_scale_median"])
        how = f" (PSF size refined from the frame: median factor {factor:.2f})"
    typer.echo(
        f"{image}: {res['frames']} frame(s) deconvolved with a {res['grid'][0]}x{res['grid'][1]} "
        f"{res['psf_model']} map{how} -> {res['output']}"
    )
    if not model and not psf_map and "cylinder" in res.get("param_names", ()):
        typer.echo(
            f"hint: {res['psf_model']} (the default model) reads astigmatism in every patch; "
            "without a cylindrical lens in the light path, --model zernike1 deblurs better "
            "(README, Deblur and save)"
        )


@app.command()
def record(
    output: str = typer.Option(..., "--output", "-o", help="Session store (.zarr) to create."),
    config: str = typer.Option(None, "--config", help="Micro-Manager .cfg (default: simulator)."),
    frames: int | None = typer.Option(
        None, "--frames", "-n", min=1, help="Time points (default 10)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=0.0, help="Seconds (instead of -n)."
    ),
    interval_ms: float = typer.Option(0.0, "--interval-ms", min=0.0, help="Time step, ms."),
    z_range: tuple[float, float] = typer.Option(
        None, "--z-range", help="Z-stack bottom and top (um) at every time point."
    ),
    z_step: float = typer.Option(1.0, "--z-step", min=1e-6, help="Z-stack step (um)."),
    deconvolve: bool = typer.Option(False, "--deconvolve", help="TV-RL every frame too."),
    sequence: bool = typer.Option(
        False,
        "--sequence",
        help="Let the camera stream (hardware sequencing); by default each frame waits for "
        "room in the recording queue, so none is lost.",
    ),
    model: str = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    calibration: str = typer.Option(None, "--calibration", help="Depth calibration JSON."),
    fail_at_frame: int = typer.Option(
        -1, "--sim-fail-at", hidden=True, help="Simulated camera fails at this frame (tests)."
    ),
    sensor: int = typer.Option(None, "--sim-size", hidden=True, help="Simulated sensor side."),
) -> None:
    """Record an MDA: every raw frame, its PSF map and validity (depth, TV-RL) to one store."""
    from pathlib import Path

    from psf_live.acquire import open_core
    from psf_live.record import record as run_record

    if frames is not None and duration is not None:
        raise fail("give --frames or --duration, not both")
    out = Path(output)
    if out.exists():
        raise fail(f"{output}: already exists")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise fail(f"{output}: directory {parent} does not exist")
    import os

    if not os.access(parent, os.W_OK):
        raise fail(f"{output}: directory {parent} is not writable")
    cal = _load_calibration(calibration)
    est = _calibrated_estimator(model, cal, calibration)
    try:
        core = open_core(config, headless=True)
    except Exception as exc:
        raise fail(str(exc).splitlines()[0] if str(exc) else f"{config}: cannot load") from None
    cam = core.getCameraDevice()
    if sensor is not None:
        core.setProperty(cam, "SensorWidth", sensor)
        core.setProperty(cam, "SensorHeight", sensor)
    if fail_at_frame >= 0:
        core.setProperty(cam, "FailAtFrame", fail_at_frame)
    zr = None if not z_range or z_range[0] is None else (float(z_range[0]), float(z_range[1]))
    try:
        res = run_record(
            core,
            output,
            est,
            frames=(frames or 10) if duration is None else None,
            duration_s=duration,
            interval_ms=interval_ms,
            z_range=zr,
            z_step=z_step,
            calibration=cal,
            deconvolve=deconvolve,
            progress=True,
            metadata={"config": str(config) if config else "simulator"},
            hardware_sequencing=sequence,
        )
    except KeyboardInterrupt as exc:
        r = getattr(exc, "result", None)
        if r is not None:
            typer.echo(
                f"interrupted: store closed; frames written {r.written}, mapped {r.mapped}, "
                f"deconvolved {r.deconvolved} -> {output}",
                err=True,
            )
        raise typer.Exit(130) from None
    except OSError as exc:
        raise fail(f"{output}: {exc}") from None
    finally:
        core.unloadAllDevices()
    typer.echo(
        f"frames acquired {res.acquired}, written {res.written}, mapped {res.mapped}"
        + (f" ({res.map_failed} invalid)" if res.map_failed else "")
        + (f", deconvolved {res.deconvolved}" if deconvolve else "")
        + f"; {res.write_rate:.1f} frames/s to disk, max queue {res.max_queue} "
        f"(bound {res.memory_bound_mb:.0f} MB) -> {output}"
    )
    if res.error:
        raise fail(res.error)


@app.command()
def verify(
    store: str = typer.Argument(..., help="Session store (.zarr)."),
    json_: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Check a session store (arrays, frame counts, chunks, metadata); ends with `frames: N`."""
    import json

    from psf_live.store import verify_store

    rep = verify_store(store)
    if json_:
        typer.echo(json.dumps(rep, indent=1))
    else:
        for problem in rep["problems"]:
            typer.echo(f"problem: {problem}")
        for name, a in rep["arrays"].items():
            typer.echo(f"{name}: {a['chunks_present']}/{a['counted']} frames {a['shape']}")
    typer.echo(f"frames: {rep['frames']}")
    if not rep["ok"]:
        raise typer.Exit(1)


@app.command()
def simulate(
    output: str = typer.Option(..., "--output", "-o", help="Frame TIFF to write (uint16)."),
    sample: str = typer.Option("grid", help="grid, cells, points, or a TIFF path."),
    tilt_deg: float = typer.Option(6.0, "--tilt-deg", help="Sample tilt in degrees."),
    axis: str = typer.Option(
        "x", help="Axis along which the depth varies: x, y or xy (the field diagonal)."
    ),
    astigmatism: float = typer.Option(
        0.25, help="Cylindrical-lens astigmatism, waves RMS at 45 deg (0: no lens)."
    ),
    z_um: float = typer.Option(0.0, "--z-um", help="Stage (focal plane) position in um."),
    size: int = typer.Option(1024, help="Frame side in pixels."),
    seed: int = typer.Option(0, help="Seed of the sample texture and the noise."),
) -> None:
    """Write what the simulated camera sees, plus its ground-truth depth map (um)."""
    from .sim import simulate_to_tiff

    try:
        frame, depth = simulate_to_tiff(
            output,
            sample=sample,
            tilt_deg=tilt_deg,
            axis=axis,
            astigmatism=astigmatism,
            z_um=z_um,
            size=size,
            seed=seed,
        )
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None
    typer.echo(f"frame: {frame}")
    typer.echo(f"depth: {depth}")


def main() -> None:
    """Entry point for ``python -m psf_live``."""
    app()
