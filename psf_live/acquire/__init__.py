"""Acquisition: opening a pymmcore-plus core and mapping its frames live."""

from ._calibrate import (
    DEMO_DEPTH_MODEL,
    calibrate_demo_scope,
    calibrate_sim,
    is_sim_with_tilt,
    sim_lens_axis,
    sim_tilt_setter,
    snapper,
)
from ._core import ConfigError, declares_python_devices, default_config, open_core
from ._live import FrameMapper, LiveMapper, LiveMapperSignals, LiveStats, MapTimings
from ._monitor import MonitorResult, format_line, monitor, run_demo

__all__ = [
    "DEMO_DEPTH_MODEL",
    "ConfigError",
    "FrameMapper",
    "LiveMapper",
    "LiveMapperSignals",
    "LiveStats",
    "MapTimings",
    "MonitorResult",
    "calibrate_demo_scope",
    "calibrate_sim",
    "declares_python_devices",
    "default_config",
    "format_line",
    "is_sim_with_tilt",
    "monitor",
    "open_core",
    "run_demo",
    "sim_lens_axis",
    "sim_tilt_setter",
    "snapper",
]
