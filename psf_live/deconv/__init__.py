"""Spatially-variant TV-regularised Richardson-Lucy deconvolution (Section II-G)."""

from ._kernels import kernels_from_map, trim_kernels
from ._shrink import (
    SIZE_PARAMS,
    ZERNIKE_SHRINK,
    default_shrink,
    parse_shrink,
    shrink_uncertain,
)
from ._tvrl import poisson_nll, richardson_lucy_tv, tv_divergence

__all__ = [
    "SIZE_PARAMS",
    "ZERNIKE_SHRINK",
    "default_shrink",
    "kernels_from_map",
    "parse_shrink",
    "poisson_nll",
    "richardson_lucy_tv",
    "shrink_uncertain",
    "trim_kernels",
    "tv_divergence",
]
