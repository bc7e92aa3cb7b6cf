"""The ``psf-live`` command line (one typer app; each command delegates to its module)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="psf-live",
    help="Live PSF maps, deblurring and depth from astigmatism for wide-field microscopes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def demo(
    frames: int = typer.Option(30, "--frames", "-n", min=1, help="Frames to map."),
) -> None:
    """Run the whole product on the built-in simulated microscope (no hardware needed)."""
    from psf_live.acquire._monitor import run_demo

    run_demo(frames=frames, echo=typer.echo)


@app.command()
def estimate(
    image: str = typer.Argument(..., help="TIFF (2D image or T x H x W stack)."),
    output: str = typer.Option(..., "--output", "-o", help="Output .npz with the PSF map(s)."),
    model: str = typer.Option(None, "--model", "-m", help="Shipped model name or weights path."),
    stride: int = typer.Option(64, "--stride", "-s", min=1, help="Patch stride in pixels."),
    json_: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Map the PSF of an image (per 128x128 patch) and save it as .npz."""
    import json

    import numpy as np

    from psf_live.estimate import Estimator, check_frame
    from psf_live.estimate._io import load_image, maps_to_npz, summaries_json

    try:
        data = load_image(image)
        frames = data[None] if data.ndim == 2 else data
        for f in frames:
            check_frame(f)
    except ValueError as exc:
        msg = str(exc)
        raise fail(msg if msg.startswith(image) else f"{image}: {msg}") from None
    try:
        est = Estimator.load(model, stride=stride)
    except Exception as exc:
        raise fail(f"cannot load model {model or 'default'!r}: {exc}") from None
    maps = [est.map(f) for f in frames]
    np.savez(output, **maps_to_npz(maps, stack=data.ndim == 3))
    if json_:
        typer.echo(json.dumps(summaries_json(maps, image, str(est.meta.get("name", model)))))
    else:
        typer.echo(f"{image}: {len(maps)} frame(s), grid {maps[0].shape} -> {output}")


@app.command()
def monitor(
    config: str = typer.Option(None, "--config", "-c", help="Micro-Manager .cfg (default: sim)."),
    frames: int = typer.Option(20, "--frames", "-n", min=1, help="Frames to map."),
    model: str = typer.Option(None, "--model", "-m", help="Shipped model name or weights path."),
    stride: int = typer.Option(64, "--stride", "-s", min=1, help="Patch stride in pixels."),
) -> None:
    """Headless live monitoring: one line per mapped frame (focus, tilt, fps, latency)."""
    from psf_live.acquire import open_core
    from psf_live.acquire._monitor import monitor as run_monitor
    from psf_live.estimate import Estimator

    try:
        core = open_core(config)
    except Exception as exc:
        raise fail(str(exc)) from None
    try:
        est = Estimator.load(model, stride=stride)
    except Exception as exc:
        core.unloadAllDevices()
        raise fail(f"cannot load model {model or 'default'!r}: {exc}") from None
    try:
        result = run_monitor(core, est, frames=frames, echo=typer.echo)
    except TimeoutError as exc:
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


def main() -> None:
    """Entry point for ``python -m psf_live``."""
    app()
