"""Risk-aware PSF size for blind deconvolution: lower the blur where the estimate is unsure.

A blind estimate is wrong by some amount either way, and the two ways do not cost the same.
The OTF of a Zernike defocus kernel dips to zero and reverses sign at frequencies that fall
as the defocus grows (Hopkins' defocused OTF); a kernel that is too large puts those dips
where the image still has signal and RL turns them into ringing, one that is too small only
deblurs less. At 0.3 waves (TV-RL, 20 iterations, Table V noise) 0.1 wave too much lost
1.2-1.5 dB of a 2-3 dB gain, 0.1 too little 0.8-1.0 dB; at 0.15 waves 1.6-2.6 dB against
1.0-1.5 dB; at 0.6 waves the two are alike. For a Gaussian the asymmetry is the other way
round (a width 0.5 px too small costs more than 0.5 px too large; no OTF zeros). With
test-time augmentation a map carries the estimate of every view of a patch
(:attr:`psf_live.estimate.PSFMap.view_params`); their spread says how unsure the network is,
and lowering a Zernike map's size parameters by a multiple of it is the cheap Bayes-risk
answer to that asymmetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SIZE_PARAMS", "ZERNIKE_SHRINK", "default_shrink", "parse_shrink", "shrink_uncertain"]

SIZE_PARAMS = ("width", "width_x", "width_y", "focus", "cylinder")
"""Parameters that grow the PSF; :func:`shrink_uncertain` lowers these and no others."""

ZERNIKE_SHRINK = 1.5
"""Views' SDs subtracted from a Zernike map's size parameters by default.

Chosen on 40 Table V images of another seed than the benchmark's
(``benchmarks/deconv_table5.py``, Z-1 blur, zernike1 map with TTA: 0 -> 67 %, 1.0 ->
75 %, 1.5 -> 76 %, 2.0 -> 76 %, 3.0 -> 72 % of the true-PSF gain); for Gaussian maps every
shrink lowered the gain (91 % -> 87 % at 1.5), so they keep 0."""


def default_shrink(psf_map: Any) -> float:
    """Shrink factor used when none is given (``"auto"``).

    Parameters
    ----------
    psf_map : psf_live.estimate.PSFMap
        The map to deconvolve with.

    Returns
    -------
    float
        :data:`ZERNIKE_SHRINK` for a Zernike map that carries its test-time-augmentation
        views, else 0 (no views to measure the spread, or a Gaussian PSF model).
    """
    from psf_live.psf import get_model

    if getattr(psf_map, "view_params", None) is None:
        return 0.0
    return ZERNIKE_SHRINK if get_model(psf_map.psf_model).kind == "zernike" else 0.0


def parse_shrink(shrink: float | str) -> float | None:
    """Read a shrink setting as the CLI and :func:`psf_live.store.deblur_file` take it.

    Parameters
    ----------
    shrink : float or str
        ``"auto"`` (any case) or a number (also as text).

    Returns
    -------
    float or None
        None for ``"auto"`` (resolve per map with :func:`default_shrink`), else the factor.

    Raises
    ------
    ValueError
        Neither ``"auto"`` nor a finite number >= 0.
    """
    if isinstance(shrink, str):
        if shrink.strip().lower() == "auto":
            return None
        try:
            shrink = float(shrink)
        except ValueError:
            raise ValueError(f"shrink must be 'auto' or a number >= 0, got {shrink!r}") from None
    k = float(shrink)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"shrink must be 'auto' or a number >= 0, got {shrink!r}")
    return k


def shrink_uncertain(psf_map: Any, k: float) -> Any:
    """Lower each patch's size parameters by ``k`` times the SD of its TTA views.

    Parameters
    ----------
    psf_map : psf_live.estimate.PSFMap
        A map made with test-time augmentation (``view_params`` set) unless ``k`` is 0.
    k : float
        Non-negative factor; 0 returns the map unchanged.

    Returns
    -------
    psf_live.estimate.PSFMap
        A copy whose parameters named in :data:`SIZE_PARAMS` are
        ``max(p - k sd_views, lower range limit)`` on every patch; when the map was
        KNN-filled, its invalid patches are filled again from the lowered valid ones.
        Other parameters (the astigmatism axis) are unchanged.

    Raises
    ------
    ValueError
        ``k`` negative or not finite, or ``k > 0`` on a map without views.
    """
    from psf_live.psf import get_model

    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"shrink factor must be a finite number >= 0, got {k}")
    if k == 0:
        return psf_map
    views = psf_map.view_params
    if views is None:
        raise ValueError(
            "shrinking by the views' spread needs a map made with test-time augmentation "
            "(--tta); this map has no views"
        )
    ranges = get_model(psf_map.psf_model).ranges
    sd = np.asarray(views, dtype=np.float64).std(axis=2)
    return with_sizes(psf_map, lambda p, i: np.maximum(p - k * sd[..., i], ranges[i][0]))


def with_sizes(
    psf_map: Any,
    new_size: Callable[[np.ndarray, int], np.ndarray],
    refill: bool = True,
) -> Any:
    """Copy of a PSF map with its size parameters (:data:`SIZE_PARAMS`) replaced.

    Parameters
    ----------
    psf_map : psf_live.estimate.PSFMap
        The map.
    new_size : callable
        ``new_size(values, i)`` returns the new (rows, cols) float64 values of parameter
        ``i`` from its current ones.
    refill : bool
        When the map was KNN-filled, fill its invalid patches again from the new valid
        ones (their own new values are discarded).

    Returns
    -------
    psf_live.estimate.PSFMap
        The copy, float32; other parameters (the astigmatism axis) unchanged.
    """
    from psf_live.estimate import fill_invalid
    from psf_live.estimate._map import with_params

    p = np.asarray(psf_map.params, dtype=np.float64).copy()
    for i, name in enumerate(psf_map.param_names):
        if name in SIZE_PARAMS:
            p[..., i] = new_size(p[..., i], i)
    if refill and psf_map.filled:
        p = fill_invalid(
            p,
            psf_map.valid,
            psf_map.centers_y,
            psf_map.centers_x,
            param_names=tuple(psf_map.param_names),
        )
    return with_params(psf_map, np.asarray(p, dtype=np.float32))
