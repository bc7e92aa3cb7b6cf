"""Geometry of a tilted sample plane: the known depth a calibration is fitted against.

One convention for the simulator and the depth calibration: the in-focus line passes
through the centre of the field; ``axis`` names the direction along which the depth
increases ("x": along columns, the plane rotated about y; "y": along rows; "xy": along
the field diagonal from the top-left to the bottom-right corner, the plane rotated about
the other diagonal); a positive tilt puts that side *farther* from the objective. The
"xy" tilt spans the field diagonal, so a square field of side L shows a depth range of
sqrt(2) L tan(tilt): the ranges of the paper's Section III-E (48.2, 94.7 and 159.9 um at
3, 6 and 10 deg over a 655 um field).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["TILT_AXES", "TiltAxis", "plane_depth", "tilt_direction"]

TiltAxis = Literal["x", "y", "xy"]
TILT_AXES: tuple[TiltAxis, ...] = ("x", "y", "xy")


def tilt_direction(axis: str) -> tuple[float, float]:
    """Return the unit vector ``(dy, dx)`` along which a tilted plane's depth grows.

    Parameters
    ----------
    axis : {"x", "y", "xy"}
        Tilt axis convention (module docstring).

    Returns
    -------
    (float, float)
        Row and column components of the direction.

    Raises
    ------
    ValueError
        For any other name.
    """
    if axis == "x":
        return 0.0, 1.0
    if axis == "y":
        return 1.0, 0.0
    if axis == "xy":
        r = math.sqrt(0.5)
        return r, r
    raise ValueError(f"tilt axis must be one of {', '.join(TILT_AXES)}; got {axis!r}")


def plane_depth(
    rows: npt.ArrayLike,
    cols: npt.ArrayLike,
    tilt_deg: float,
    axis: str,
    pixel_size_um: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Depth in micrometres of a tilted plane at a grid of pixel positions.

    ``depth = ((y - (H - 1) / 2) dy + (x - (W - 1) / 2) dx) * pixel_size * tan(tilt)``
    with ``(dy, dx) = tilt_direction(axis)``: zero on the in-focus line through the
    centre of the field, positive beyond the focal plane.

    Parameters
    ----------
    rows, cols : array_like
        Row and column coordinates (pixels, may be fractional) of the grid.
    tilt_deg : float
        Tilt of the plane in degrees.
    axis : {"x", "y", "xy"}
        Direction along which the depth increases.
    pixel_size_um : float
        Object-space pixel size.
    shape : (int, int)
        Frame (height, width); its centre lies on the in-focus line.

    Returns
    -------
    numpy.ndarray
        Float64 array (len(rows), len(cols)).
    """
    dy, dx = tilt_direction(axis)
    y = np.asarray(rows, dtype=np.float64).ravel() - (int(shape[0]) - 1) / 2.0
    x = np.asarray(cols, dtype=np.float64).ravel() - (int(shape[1]) - 1) / 2.0
    slope = math.tan(math.radians(tilt_deg)) * float(pixel_size_um)
    if dy == 0.0:
        return np.broadcast_to((x * slope)[None, :], (y.size, x.size)).copy()
    if dx == 0.0:
        return np.broadcast_to((y * slope)[:, None], (y.size, x.size)).copy()
    return (dy * y[:, None] + dx * x[None, :]) * slope
