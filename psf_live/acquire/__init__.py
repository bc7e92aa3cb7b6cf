"""Acquisition: opening a pymmcore-plus core on a real or simulated microscope."""

from ._core import ConfigError, declares_python_devices, default_config, open_core

__all__ = ["ConfigError", "declares_python_devices", "default_config", "open_core"]
