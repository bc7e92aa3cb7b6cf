"""Spatially-variant TV-regularised Richardson-Lucy deconvolution (Section II-G)."""

from ._kernels import kernels_from_map, trim_kernels
from ._tvrl import poisson_nll, richardson_lucy_tv, tv_divergence

__all__ = [
    "kernels_from_map",
    "poisson_nll",
    "richardson_lucy_tv",
    "trim_kernels",
    "tv_divergence",
]
