"""A PSF map built by hand, for tests that need one without running a network."""

from __future__ import annotations

import numpy as np

from psf_live.estimate import PSFMap, fill_invalid
from psf_live.psf import get_model


def grid_map(
    values: np.ndarray,
    model: str,
    *,
    step: int = 64,
    valid: np.ndarray | None = None,
    views: np.ndarray | None = None,
) -> PSFMap:
    """A KNN-filled map of ``values`` (rows, cols, N) from 128 px patches ``step`` px apart.

    Centres at ``64 + step i``; the frame just holds the patches
    (``step (rows - 1) + 128`` px high).
    """
    r, c, _ = values.shape
    pm = get_model(model)
    v = np.ones((r, c), bool) if valid is None else valid
    cy = 64.0 + step * np.arange(r)
    cx = 64.0 + step * np.arange(c)
    return PSFMap(
        params=fill_invalid(values, v, cy, cx, param_names=pm.param_names),
        valid=v,
        valid_prob=v.astype(np.float32),
        centers_y=cy,
        centers_x=cx,
        param_names=pm.param_names,
        units=pm.units,
        psf_model=model,
        frame_shape=(step * (r - 1) + 128, step * (c - 1) + 128),
        patch_size=128,
        stride=step,
        view_params=views,
        filled=True,
    )
