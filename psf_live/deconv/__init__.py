"""Spatially-variant TV-regularised Richardson-Lucy deconvolution (Section II-G)."""

from ._kernels import kernels_from_map, trim_kernels
from ._refine import (
    REFINE_ACCELERATED_ITERATIONS,
    REFINE_ACCELERATION,
    REFINE_ITERATIONS,
    REFINE_MIN_SNR,
    REFINE_SCALES,
    photon_counts,
    refine_iterations,
    refine_size,
    structure_snr,
)
from ._shrink import (
    SIZE_PARAMS,
    ZERNIKE_SHRINK,
    default_shrink,
    parse_shrink,
    shrink_uncertain,
)
from ._tvrl import poisson_nll, richardson_lucy_tv, tv_divergence

__all__ = [
    "REFINE_ACCELERATED_ITERATIONS",
    "REFINE_ACCELERATION",
    "REFINE_ITERATIONS",
    "REFINE_MIN_SNR",
    "REFINE_SCALES",
    "SIZE_PARAMS",
    "ZERNIKE_SHRINK",
    "default_shrink",
    "kernels_from_map",
    "parse_shrink",
    "photon_counts",
    "poisson_nll",
    "refine_iterations",
    "refine_size",
    "richardson_lucy_tv",
    "shrink_uncertain",
    "structure_snr",
    "trim_kernels",
    "tv_divergence",
]
