"""Spatially-variant PSF maps from single frames (Section II-F) and their summaries."""

from ._estimator import Estimator
from ._map import KernelBank, PSFMap, fill_invalid, interpolate_map, psf_kernels
from ._patches import check_frame, extract_patches, gather_patches, patch_centers, patch_starts
from ._summary import (
    DEFAULT_LENS_AXIS,
    DepthCalibration,
    FrameSummary,
    PlaneFit,
    fit_plane,
    focus_map,
    optics_tilt_deg,
    signed_defocus,
    summarize,
)

__all__ = [
    "DEFAULT_LENS_AXIS",
    "DepthCalibration",
    "Estimator",
    "FrameSummary",
    "KernelBank",
    "PSFMap",
    "PlaneFit",
    "check_frame",
    "extract_patches",
    "fill_invalid",
    "fit_plane",
    "focus_map",
    "gather_patches",
    "interpolate_map",
    "optics_tilt_deg",
    "patch_centers",
    "patch_starts",
    "psf_kernels",
    "signed_defocus",
    "summarize",
]
