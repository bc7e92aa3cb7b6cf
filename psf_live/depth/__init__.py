"""Depth from astigmatism (Section II-H, Eq. 14; Section III-E, Table VI).

A cylindrical lens makes the zernike3 astigmatism axis carry the sign of the defocus;
:func:`depth_metric` (Eq. 14) or :func:`signed_focus` turn a PSF map into a signed
metric, :func:`fit_calibration` maps it to micrometres from tilted-grid images of known
geometry (:func:`true_depth_grid`), :func:`rescale_frames` carries that scale over to a
specimen from its frames at known focus steps, :class:`DepthCalibration` is the JSON file, and
:func:`depth_map` / :func:`depth_full` / :func:`sample_plane` give per-frame depth
maps and the tilt of the sample plane. Pure numpy; no hardware, no Qt.
"""

from ._calib import (
    CalibrationError,
    DepthCalibration,
    FitReport,
    ImageFit,
    PlaneTilt,
    beyond_reach,
    beyond_spread,
    check_lens_axis,
    clean_depth,
    depth_full,
    depth_map,
    depth_spread,
    fit_calibration,
    fit_depth_plane,
    metric_reach,
    robust_lstsq,
    sample_plane,
    smooth_depth,
    true_depth_grid,
)
from ._metric import (
    DEFAULT_LENS_AXIS,
    FEATURE_SETS,
    base_metric,
    dead_zone,
    depth_features,
    depth_metric,
    signed_focus,
)
from ._rescale import MAX_RESCALE, focus_step_slope, rescale_calibration
from ._synthetic import synthetic_psf_map
from ._workflow import (
    FrameDepth,
    Mapper,
    acquire_calibration_frames,
    acquire_focus_steps,
    assign_tilts,
    calibrate_frames,
    frame_depth,
    map_depth,
    parse_steps,
    parse_tilts,
    rescale_frames,
)

__all__ = [
    "DEFAULT_LENS_AXIS",
    "FEATURE_SETS",
    "MAX_RESCALE",
    "CalibrationError",
    "DepthCalibration",
    "FitReport",
    "FrameDepth",
    "ImageFit",
    "Mapper",
    "PlaneTilt",
    "acquire_calibration_frames",
    "acquire_focus_steps",
    "assign_tilts",
    "base_metric",
    "beyond_reach",
    "beyond_spread",
    "calibrate_frames",
    "check_lens_axis",
    "clean_depth",
    "dead_zone",
    "depth_features",
    "depth_full",
    "depth_map",
    "depth_metric",
    "depth_spread",
    "fit_calibration",
    "fit_depth_plane",
    "focus_step_slope",
    "frame_depth",
    "map_depth",
    "metric_reach",
    "parse_steps",
    "parse_tilts",
    "rescale_calibration",
    "rescale_frames",
    "robust_lstsq",
    "sample_plane",
    "signed_focus",
    "smooth_depth",
    "synthetic_psf_map",
    "true_depth_grid",
]
