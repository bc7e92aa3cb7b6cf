"""Acquisition: opening a pymmcore-plus core and mapping its frames live."""

from ._core import ConfigError, declares_python_devices, default_config, open_core
from ._live import FrameMapper, LiveMapper, LiveMapperSignals, LiveStats, MapTimings
from ._monitor import MonitorResult, format_line, monitor, run_demo

__all__ = [
    "ConfigError",
    "FrameMapper",
    "LiveMapper",
    "LiveMapperSignals",
    "LiveStats",
    "MapTimings",
    "MonitorResult",
    "declares_python_devices",
    "default_config",
    "format_line",
    "monitor",
    "open_core",
    "run_demo",
]
