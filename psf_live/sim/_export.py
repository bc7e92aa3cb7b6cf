"""Write what the simulated camera sees (and its ground truth) to TIFF files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .._atomic import atomic_output
from ..psf import TILT_AXES
from ._microscope import SimMicroscope, SimSettings
from ._scene import DEFAULT_CYLINDER_WAVES, Scene

__all__ = ["simulate_to_tiff"]


def simulate_to_tiff(
    output: str | Path,
    *,
    sample: str = "grid",
    tilt_deg: float = 6.0,
    axis: str = "x",
    astigmatism: float = DEFAULT_CYLINDER_WAVES,
    z_um: float = 0.0,
    size: int = 1024,
    seed: int = 0,
    exposure_ms: float = 10.0,
) -> tuple[Path, Path]:
    """Simulate one frame and write it with its ground-truth depth map.

    Parameters
    ----------
    output : str or Path
        Frame file (uint16 TIFF with the pixel size in its resolution tags and
        ImageJ metadata). The depth map (float32, micrometres, sample minus focal
        plane) goes next to it as ``<stem>_depth.tif``.
    sample : str
        ``grid``, ``cells``, ``points`` or a TIFF path.
    tilt_deg : float
        Sample tilt in degrees (+: the +axis side farther from the objective).
    axis : {"x", "y", "xy"}
        Axis along which the depth varies ("xy": the field diagonal).
    astigmatism : float
        Cylindrical-lens astigmatism in waves RMS at 45 degrees; 0: no lens.
    z_um : float
        Stage (focal plane) position; the sample centre is in focus at 0.
    size : int
        Frame side in pixels.
    seed : int
        Seed of the sample texture and of the noise.
    exposure_ms : float
        Exposure (the signal scales with it).

    Returns
    -------
    (Path, Path)
        The frame and depth-map paths.
    """
    import tifffile

    out = Path(output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{out}: output must be a .tif/.tiff file")
    if not out.parent.exists():
        raise FileNotFoundError(f"{out.parent}: output folder does not exist")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if axis not in TILT_AXES:
        raise ValueError(f"axis must be one of {', '.join(TILT_AXES)}; got {axis!r}")
    scene = Scene(
        tilt_deg=float(tilt_deg),
        tilt_axis=axis,
        cylinder=float(astigmatism),
    )
    settings = SimSettings(shape=(size, size), sample="grid", sample_seed=seed, scene=scene)
    scope = SimMicroscope(settings, seed=seed, device="cpu")
    if sample in ("grid", "cells", "points"):
        scope.update(sample=sample)
    else:
        scope.set_user_image(sample)
    frame = scope.snap(z_um, exposure_ms)
    depth = scope.depth_map(z_um)
    px = settings.optics.pixel_size_um
    info = {
        "psf_live": "simulated frame",
        "pixel_size_um": px,
        "sample": sample,
        "tilt_deg": tilt_deg,
        "tilt_axis": axis,
        "cylinder_waves": astigmatism,
        "cylinder_axis_deg": math.degrees(scene.cylinder_axis),
        "z_um": z_um,
    }
    res = (1.0 / px, 1.0 / px)
    ij = {"unit": "um", "Info": json.dumps(info)}
    with atomic_output(out) as tmp:
        tifffile.imwrite(tmp, frame, imagej=True, resolution=res, metadata=ij)
    depth_path = out.with_name(out.stem + "_depth" + out.suffix)
    with atomic_output(depth_path) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(depth, dtype=np.float32),
            imagej=True,
            resolution=res,
            metadata={"unit": "um", "Info": json.dumps({**info, "content": "depth_um"})},
        )
    return out, depth_path
