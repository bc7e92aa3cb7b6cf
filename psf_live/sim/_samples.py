"""Synthetic samples for the simulated microscope (pure functions, float32 in [0, 1]).

Every sample is an image of the object (reflectance, transmission or fluorophore
density) sampled on the camera grid projected into the sample, i.e. at the
camera's object-space pixel size. Coordinates are measured from the centre of
the image, so an image generated with a margin (a larger shape) shows the same
content in its centre as one generated without.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "SAMPLES",
    "cells_sample",
    "grid_sample",
    "image_sample",
    "make_sample",
    "points_sample",
]


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(shape[0]), int(shape[1]))
    if h < 1 or w < 1:
        raise ValueError(f"sample shape must be positive, got {shape}")
    return h, w


def _coords_um(n: int, pixel_size_um: float, offset_um: float) -> np.ndarray:
    """Pixel-centre coordinates in um, origin at the image centre, plus an offset."""
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * pixel_size_um + offset_um


def _line_coverage(x_um: np.ndarray, pitch_um: float, width_um: float, px: float) -> np.ndarray:
    """Fraction of each pixel [x - px/2, x + px/2] covered by lines at k * pitch."""
    d = np.abs(np.mod(x_um + pitch_um / 2.0, pitch_um) - pitch_um / 2.0)
    lo = np.maximum(d - px / 2.0, -width_um / 2.0)
    hi = np.minimum(d + px / 2.0, width_um / 2.0)
    return np.clip((hi - lo) / px, 0.0, 1.0)


def _unit_field(
    shape: tuple[int, int], sigmas_px: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """Zero-mean, unit-variance random field with structure at the given scales."""
    field = np.zeros(shape, dtype=np.float32)
    for s in sigmas_px:
        f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), s)
        field += f / max(float(f.std()), 1e-12)
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _specks(
    shape: tuple[int, int],
    density_per_px: float,
    sigma_px: float,
    amplitude: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Sparse Gaussian blobs (peak values drawn from ``amplitude``), summed."""
    h, w = shape
    n = rng.poisson(density_per_px * h * w)
    img = np.zeros(shape, dtype=np.float32)
    if n == 0:
        return img
    ys = rng.integers(0, h, n)
    xs = rng.integers(0, w, n)
    np.add.at(img, (ys, xs), rng.uniform(*amplitude, n).astype(np.float32))
    peak = 1.0 / (2.0 * math.pi * sigma_px**2) if sigma_px > 0.3 else 1.0
    return ndimage.gaussian_filter(img, sigma_px) / np.float32(min(peak, 1.0))


def grid_sample(
    shape: tuple[int, int],
    pixel_size_um: float = 0.64,
    *,
    pitch_um: float = 200.0,
    line_width_um: float = 4.0,
    background: float = 0.85,
    line_level: float = 0.08,
    texture: float = 0.12,
    offset_um: tuple[float, float] = (0.0, 0.0),
    seed: int | None = 0,
) -> np.ndarray:
    """Draw a laser-printed grid on transparent foil (the sample of Section III-E).

    Dark lines every ``pitch_um`` along x and y (200 um squares), with a print
    texture: a multiplicative band-limited fluctuation of the foil (structure at
    about 1, 3 and 8 um), scattered toner specks and slightly rough line edges.
    The texture gives every patch of the image content, as the real foil does.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    pixel_size_um : float
        Object-space pixel size in micrometres.
    pitch_um : float
        Grid period (square side) in micrometres.
    line_width_um : float
        Width of the printed lines in micrometres.
    background, line_level : float
        Reflectance of the bare foil and of the printed lines.
    texture : float
        Relative amplitude (standard deviation) of the print texture; 0 gives a
        clean grid.
    offset_um : (float, float)
        Shift (y, x) of the grid lines in micrometres, e.g. to draw fresh
        calibration images.
    seed : int, optional
        Seed of the texture.

    Returns
    -------
    numpy.ndarray
        Float32 image in [0, 1] of the given shape.
    """
    h, w = _check_shape(shape)
    if pixel_size_um <= 0 or pitch_um <= 0 or line_width_um < 0:
        raise ValueError("pixel size and pitch must be positive, line width non-negative")
    rng = np.random.default_rng(seed)
    px = float(pixel_size_um)
    y = _coords_um(h, px, offset_um[0])[:, None]
    x = _coords_um(w, px, offset_um[1])[None, :]
    if texture > 0:
        # Rough edges: jitter the line position by ~0.3 line widths along the line.
        rough = _unit_field((h, w), (1.5 / px,), rng) * (0.15 * line_width_um)
    else:
        rough = np.zeros((h, w), dtype=np.float32)
    cy = _line_coverage(y + rough, pitch_um, line_width_um, px)
    cx = _line_coverage(x + rough, pitch_um, line_width_um, px)
    ink = 1.0 - (1.0 - cx) * (1.0 - cy)
    img = (background + (line_level - background) * ink).astype(np.float32)
    if texture > 0:
        sig = tuple(s / px for s in (1.0, 3.0, 8.0))
        img *= 1.0 + np.float32(texture) * _unit_field((h, w), sig, rng)
        dens = px * px / 150.0  # one toner speck per ~150 um^2
        img *= 1.0 - _specks((h, w), dens, 0.8 / px, (0.2, 0.6), rng)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def cells_sample(
    shape: tuple[int, int],
    pixel_size_um: float = 0.64,
    *,
    density_per_mm2: float = 250.0,
    radius_um: tuple[float, float] = (10.0, 22.0),
    background: float = 0.02,
    offset_um: tuple[float, float] = (0.0, 0.0),
    seed: int | None = 0,
) -> np.ndarray:
    """Synthetic fluorescent cells: textured cytoplasm, bright nuclei, puncta.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    pixel_size_um : float
        Object-space pixel size in micrometres.
    density_per_mm2 : float
        Mean number of cells per mm^2.
    radius_um : (float, float)
        Range of cell radii in micrometres.
    background : float
        Background fluorescence.
    offset_um : (float, float)
        Shift (y, x) of the cell positions in micrometres.
    seed : int, optional
        Random seed.

    Returns
    -------
    numpy.ndarray
        Float32 image in [0, 1].
    """
    h, w = _check_shape(shape)
    rng = np.random.default_rng(seed)
    px = float(pixel_size_um)
    area_mm2 = h * w * px * px * 1e-6
    n = int(rng.poisson(density_per_mm2 * area_mm2))
    img = np.full((h, w), background, dtype=np.float32)
    tex = 0.5 + 0.5 * np.tanh(_unit_field((h, w), (1.0 / px, 4.0 / px), rng))
    oy, ox = offset_um[0] / px, offset_um[1] / px
    for _ in range(n):
        cy, cx = rng.uniform(0, h) + oy, rng.uniform(0, w) + ox
        r = rng.uniform(*radius_um) / px
        ecc = rng.uniform(0.6, 1.0)
        theta = rng.uniform(0, math.pi)
        bright = rng.uniform(0.25, 0.6)
        y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), h)
        x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        rho = np.sqrt((u / r) ** 2 + (v / (r * ecc)) ** 2)
        cell = np.clip((1.0 - rho) * r * 0.5, 0.0, 1.0)  # ~2 px soft edge
        nuc = np.clip((0.45 - rho) * r * 0.5, 0.0, 1.0)
        sub = img[y0:y1, x0:x1]
        sub += cell * bright * (0.4 + 0.6 * tex[y0:y1, x0:x1]) + nuc * rng.uniform(0.2, 0.4)
    img += _specks((h, w), px * px / 400.0, 0.4 / px, (0.2, 0.5), rng)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def points_sample(
    shape: tuple[int, int],
    pixel_size_um: float = 0.64,
    *,
    density_per_mm2: float = 1500.0,
    brightness: tuple[float, float] = (0.5, 1.0),
    background: float = 0.0,
    offset_um: tuple[float, float] = (0.0, 0.0),
    seed: int | None = 0,
) -> np.ndarray:
    """Sparse point sources (sub-resolution beads), one pixel each.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    pixel_size_um : float
        Object-space pixel size in micrometres.
    density_per_mm2 : float
        Mean number of points per mm^2.
    brightness : (float, float)
        Range of point intensities.
    background : float
        Uniform background level.
    offset_um : (float, float)
        Shift (y, x) of the points in micrometres (rounded to whole pixels).
    seed : int, optional
        Random seed.

    Returns
    -------
    numpy.ndarray
        Float32 image in [0, 1].
    """
    h, w = _check_shape(shape)
    rng = np.random.default_rng(seed)
    px = float(pixel_size_um)
    n = int(rng.poisson(density_per_mm2 * h * w * px * px * 1e-6))
    img = np.full((h, w), background, dtype=np.float32)
    ys = (rng.integers(0, h, n) + round(offset_um[0] / px)) % h
    xs = (rng.integers(0, w, n) + round(offset_um[1] / px)) % w
    img[ys, xs] = rng.uniform(*brightness, n).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def _load_image(source: str | Path | np.ndarray) -> np.ndarray:
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such image file")
        import tifffile

        try:
            arr = np.asarray(tifffile.imread(path))
        except Exception as e:
            raise ValueError(f"{path}: cannot read as TIFF ({e})") from e
        name = str(path)
    else:
        arr = np.asarray(source)
        name = "image"
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2D image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty image")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: image contains NaN or infinity")
    return arr


def image_sample(
    image: str | Path | np.ndarray,
    shape: tuple[int, int] | None = None,
    pixel_size_um: float = 0.64,
    *,
    image_pixel_size_um: float | None = None,
) -> np.ndarray:
    """Use any 2D image (array or TIFF path) as the sample.

    The image is scaled to [0, 1] (min/max), resampled if its own pixel size is
    given, and centre-cropped or mirror-padded to ``shape``.

    Parameters
    ----------
    image : str, Path or numpy.ndarray
        A 2D array, or the path of a TIFF file (RGB is averaged to grey).
    shape : (int, int), optional
        Output shape; defaults to the image's own shape.
    pixel_size_um : float
        Object-space pixel size of the simulated camera.
    image_pixel_size_um : float, optional
        Pixel size of ``image`` in micrometres; when given the image is
        resampled to ``pixel_size_um``. Otherwise one image pixel is one camera
        pixel.

    Returns
    -------
    numpy.ndarray
        Float32 image in [0, 1].
    """
    arr = _load_image(image)
    if image_pixel_size_um is not None and not math.isclose(image_pixel_size_um, pixel_size_um):
        arr = ndimage.zoom(arr, image_pixel_size_um / pixel_size_um, order=1)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if shape is None:
        return arr.astype(np.float32)
    h, w = _check_shape(shape)
    for axis, n in ((0, h), (1, w)):
        m = arr.shape[axis]
        if m > n:
            start = (m - n) // 2
            arr = arr.take(np.arange(start, start + n), axis=axis)
        elif m < n:
            before = (n - m) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, n - m - before)
            arr = np.pad(arr, pad, mode="symmetric")
            while arr.shape[axis] < n:  # symmetric padding grows by <= m per call
                arr = np.pad(arr, pad, mode="symmetric")
            arr = arr.take(np.arange(n), axis=axis)
    return np.ascontiguousarray(arr, dtype=np.float32)


SampleFn = Callable[..., np.ndarray]

SAMPLES: dict[str, SampleFn] = {
    "grid": grid_sample,
    "cells": cells_sample,
    "points": points_sample,
}


def make_sample(
    kind: str,
    shape: tuple[int, int],
    pixel_size_um: float = 0.64,
    *,
    seed: int | None = 0,
    offset_um: tuple[float, float] = (0.0, 0.0),
    image: str | Path | np.ndarray | None = None,
) -> np.ndarray:
    """Build a sample by name.

    Parameters
    ----------
    kind : str
        ``grid``, ``cells``, ``points`` or ``image`` (then ``image`` is required;
        a path to a TIFF file may also be passed directly as ``kind``).
    shape : (int, int)
        Image shape.
    pixel_size_um : float
        Object-space pixel size in micrometres.
    seed : int, optional
        Random seed (texture, positions).
    offset_um : (float, float)
        Lateral shift (y, x) of the sample content in micrometres.
    image : str, Path or numpy.ndarray, optional
        The user image for ``kind="image"``.

    Returns
    -------
    numpy.ndarray
        Float32 image in [0, 1] of the given shape.
    """
    if kind == "image" or image is not None:
        if image is None:
            raise ValueError("sample 'image' needs an image (array or TIFF path)")
        out = image_sample(image, shape, pixel_size_um)
        if offset_um != (0.0, 0.0):
            shift = (offset_um[0] / pixel_size_um, offset_um[1] / pixel_size_um)
            out = ndimage.shift(out, shift, order=1, mode="mirror")
        return out
    if kind not in SAMPLES:
        if Path(kind).suffix.lower() in (".tif", ".tiff"):
            return make_sample("image", shape, pixel_size_um, offset_um=offset_um, image=kind)
        known = ", ".join([*SAMPLES, "image"])
        raise ValueError(f"unknown sample {kind!r}; choose one of: {known} (or a TIFF path)")
    return SAMPLES[kind](shape, pixel_size_um, seed=seed, offset_um=offset_um)
