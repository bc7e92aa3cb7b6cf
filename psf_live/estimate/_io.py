"""Offline mapping of image files (the ``psf-live estimate`` command)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ._map import PSFMap
from ._summary import summarize

__all__ = ["load_image", "maps_to_npz", "summaries_json"]


def load_image(path: str | Path) -> np.ndarray:
    """Read a 2D image or a (T, H, W) stack from a TIFF (or .npy) file.

    Raises
    ------
    ValueError
        Missing or unreadable file, a colour (H, W, 3 or 4) or multi-channel image, or
        data that is neither 2D nor 3D.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    axes = ""  # the TIFF's axis letters, where it names them (ImageJ / OME hyperstacks)
    try:
        if p.suffix.lower() == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                axes, data = series.axes, series.asarray()
    except Exception as exc:
        raise ValueError(f"{p}: cannot read image ({type(exc).__name__}: {exc})") from None
    if "C" in axes and data.shape[axes.index("C")] > 1:  # not frames of one channel
        raise ValueError(
            f"{p}: {data.shape[axes.index('C')]} channels (axes {axes}); psf-live reads one "
            "channel: save the channel you imaged as its own TIFF"
        )
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 3 and data.shape[-1] in (3, 4) and min(data.shape[:2]) > 4:
        # (H, W, 3|4): the samples of a colour (RGB/RGBA) image, not a stack of frames
        # 3 or 4 pixels wide; the PSF is read from one channel of a wide-field camera
        raise ValueError(
            f"{p}: a colour image of shape {data.shape}; psf-live reads one channel (the "
            "camera's grey levels): save the channel you imaged as a grey-level TIFF"
        )
    if data.ndim not in (2, 3):
        raise ValueError(
            f"{p}: expected a 2D image or a (T, H, W) stack, got {data.ndim}D data "
            f"of shape {data.shape}"
        )
    return data


def maps_to_npz(maps: list[PSFMap], stack: bool) -> dict[str, Any]:
    """Arrays for ``numpy.savez``: params (rows, cols, N) or (T, rows, cols, N), etc.

    Maps made with test-time augmentation add ``view_params`` ([T,] rows, cols, V, N).
    """
    first = maps[0].to_npz_dict()
    if not stack:
        return first
    out: dict[str, Any] = dict(first)
    for key in ("params", "valid", "valid_prob", "view_params"):
        if key in first:
            out[key] = np.stack([m.to_npz_dict()[key] for m in maps])
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def summaries_json(maps: list[PSFMap], path: str, model: str) -> dict[str, Any]:
    """JSON-friendly summary of the maps of one file."""
    frames = []
    for t, m in enumerate(maps):
        s = summarize(m).to_dict()
        frames.append({"frame": t, **{k: _clean(v) for k, v in s.items()}})
    m0 = maps[0]
    return {
        "image": path,
        "model": model,
        "psf_model": m0.psf_model,
        "param_names": list(m0.param_names),
        "grid": list(m0.shape),
        "stride": m0.stride,
        "frames": frames,
    }
