"""The simulated microscope: samples, tilted-scene rendering, camera noise, devices.

Pure functions (``grid_sample``, ``render_scene``, ``depth_map``, ...) need only
torch/numpy; :class:`SimMicroscope` adds caching and noise; the pymmcore-plus
devices (``SimCamera``, ``SimZStage``, ``SimShutter``) are imported on first
use, so importing this package does not import pymmcore-plus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._configs import SIM_CONFIGS, sim_config_path
from ._export import simulate_to_tiff
from ._microscope import SimMicroscope, SimSettings
from ._noise import CameraModel, FrameNoiser, camera_frame
from ._samples import (
    SAMPLES,
    cells_sample,
    grid_sample,
    image_sample,
    make_sample,
    points_sample,
)
from ._scene import (
    DEFAULT_CYLINDER_AXIS,
    DEFAULT_CYLINDER_WAVES,
    Scene,
    SceneRender,
    depth_map,
    depth_profile,
    kernel_radius_px,
    render_scene,
)

if TYPE_CHECKING:
    from ._devices import SimCamera, SimShutter, SimZStage

__all__ = [
    "DEFAULT_CYLINDER_AXIS",
    "DEFAULT_CYLINDER_WAVES",
    "SAMPLES",
    "SIM_CONFIGS",
    "CameraModel",
    "FrameNoiser",
    "Scene",
    "SceneRender",
    "SimCamera",
    "SimMicroscope",
    "SimSettings",
    "SimShutter",
    "SimZStage",
    "camera_frame",
    "cells_sample",
    "depth_map",
    "depth_profile",
    "grid_sample",
    "image_sample",
    "kernel_radius_px",
    "make_sample",
    "points_sample",
    "render_scene",
    "sim_config_path",
    "simulate_to_tiff",
]

_DEVICES = ("SimCamera", "SimShutter", "SimZStage")


def __getattr__(name: str) -> Any:
    if name in _DEVICES:
        from . import _devices

        return getattr(_devices, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
