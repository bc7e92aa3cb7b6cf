"""Ground-truth zernike3 PSF maps of a depth field (for tests and pipeline checks)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ._metric import DEFAULT_LENS_AXIS

__all__ = ["synthetic_psf_map"]


def synthetic_psf_map(
    depth_um: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    frame_shape: tuple[int, int],
    *,
    cylinder: float = 0.25,
    lens_axis: float = DEFAULT_LENS_AXIS,
    optics: Any = None,
    focus_noise: float = 0.0,
    axis_noise: float = 0.0,
    invalid_fraction: float = 0.0,
    outlier_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
    meta: dict[str, Any] | None = None,
) -> Any:
    """Return the zernike3 map an ideal network gives for a known depth per patch.

    A patch at depth ``d`` (um, positive beyond the focal plane) has the signed focus
    ``f = defocus_um_to_waves(d)``; in the canonical form with focus >= 0 it reads
    ``(|f|, cylinder, lens_axis)`` for ``f >= 0`` and ``(|f|, cylinder, lens_axis + pi/2)``
    (mod pi) for ``f < 0`` (see :func:`psf_live.psf.zernike_psf`).

    Parameters
    ----------
    depth_um : array_like
        (rows, cols) true depth per patch.
    centers_y, centers_x : array_like
        Patch centres (pixels).
    frame_shape : (int, int)
        Frame shape.
    cylinder, lens_axis : float
        The cylindrical lens (waves RMS, radians).
    optics : Optics, optional
        Defaults to :class:`psf_live.psf.Optics`.
    focus_noise, axis_noise : float
        Std of Gaussian noise on focus (waves) and axis (radians).
    invalid_fraction : float
        Fraction of patches marked invalid at random.
    outlier_fraction : float
        Fraction of valid patches whose focus and axis are replaced by random values.
    rng : numpy.random.Generator, optional
        Random source.
    meta : dict, optional
        Network metadata (defaults to a ``ground-truth`` name and no sha256).

    Returns
    -------
    psf_live.estimate.PSFMap
    """
    from psf_live.estimate import PSFMap
    from psf_live.psf import Optics, defocus_um_to_waves

    rng = rng or np.random.default_rng(0)
    d = np.asarray(depth_um, dtype=np.float64)
    opt = optics or Optics()
    f = np.array([defocus_um_to_waves(float(v), opt) for v in d.ravel()]).reshape(d.shape)
    focus = np.abs(f) + focus_noise * rng.standard_normal(d.shape)
    axis = np.where(f >= 0, lens_axis, lens_axis + math.pi / 2)
    axis = axis + axis_noise * rng.standard_normal(d.shape)
    valid = rng.random(d.shape) >= invalid_fraction
    out = rng.random(d.shape) < outlier_fraction
    focus = np.where(out, rng.uniform(0, 1, d.shape), focus)
    axis = np.where(out, rng.uniform(0, math.pi, d.shape), axis)
    params = np.stack(
        [np.abs(focus), np.full_like(d, cylinder), np.mod(axis, math.pi)], axis=-1
    ).astype(np.float32)
    return PSFMap(
        params=params,
        valid=valid,
        valid_prob=valid.astype(np.float32),
        centers_y=np.asarray(centers_y, dtype=np.float64),
        centers_x=np.asarray(centers_x, dtype=np.float64),
        param_names=("focus", "cylinder", "axis"),
        units=("waves RMS", "waves RMS", "rad"),
        psf_model="zernike3",
        frame_shape=(int(frame_shape[0]), int(frame_shape[1])),
        patch_size=128,
        stride=64,
        meta=dict(meta) if meta is not None else {"name": "ground-truth", "sha256": ""},
    )
