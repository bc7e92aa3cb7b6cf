"""Python devices of the simulated microscope for pymmcore-plus's ``UniMMCore``.

A ``.cfg`` declares them with ``#py`` lines (see ``psf_live/sim/configs/``)::

    #py pyDevice,Camera,psf_live.sim,SimCamera
    #py pyDevice,Z,psf_live.sim,SimZStage
    #py pyDevice,Shutter,psf_live.sim,SimShutter

The camera renders the sample for the current position of its focus stage
(property ``FocusDevice``, default ``Z``): a device only sees a restricted
proxy of the core, so sim stages register themselves in a process-wide table
that the camera looks up by label (devices of different cores are told apart
by their core's event signals).

The simulated illumination is always on; :class:`SimShutter` only records its
state (UniMMCore does not drive Python shutters during snaps), so open cores
with ``setAutoShutter(False)`` as the sim configs do.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import (
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    pymm_property,
)

from ..psf import TILT_AXES
from ._microscope import SimMicroscope, SimSettings
from ._noise import CameraModel

__all__ = ["SimCamera", "SimShutter", "SimZStage"]

_STAGES: weakref.WeakValueDictionary[int, SimZStage] = weakref.WeakValueDictionary()
_ORDER = itertools.count()
_REG_LOCK = threading.Lock()


def _signal_of(device: Any) -> Any:
    try:
        return device.core.events.stagePositionChanged
    except AttributeError:
        return None


class SimZStage(StageDevice):
    """Simulated focus drive: the focal plane position in micrometres.

    Positive z moves the focal plane away from the objective (into the sample).
    Moves are instantaneous and emit ``stagePositionChanged``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._z = 0.0
        self._origin = 0.0
        with _REG_LOCK:
            self._order = next(_ORDER)
            _STAGES[self._order] = self

    def get_position_um(self) -> float:
        """Return the focal plane position (um)."""
        return self._z - self._origin

    def set_position_um(self, val: float) -> None:
        """Move the focal plane to ``val`` um."""
        self._z = float(val) + self._origin
        self._emit()

    def _emit(self) -> None:
        try:
            self.core.events.stagePositionChanged.emit(self.get_label(), self.get_position_um())
        except AttributeError:  # not loaded in a core
            pass

    def home(self) -> None:
        """Move to the origin."""
        self.set_position_um(0.0)

    def stop(self) -> None:
        """Nothing to stop: moves are instantaneous."""

    def set_origin(self) -> None:
        """Make the current position z = 0."""
        self._origin = self._z
        self._emit()

    def shutdown(self) -> None:
        """Leave the registry of stages."""
        with _REG_LOCK:
            _STAGES.pop(self._order, None)

    @property
    def absolute_z_um(self) -> float:
        """Focal plane position ignoring :meth:`set_origin` (what the camera uses)."""
        return self._z


def _find_stage(camera: SimCamera, label: str) -> SimZStage | None:
    with _REG_LOCK:
        stages = sorted(
            (s for s in list(_STAGES.values()) if s.get_label() == label),
            key=lambda s: s._order,
        )
    if len(stages) <= 1:
        return stages[0] if stages else None
    mine = _signal_of(camera)
    same = [s for s in stages if mine is not None and _signal_of(s) == mine]
    return (same or stages)[-1]


class SimShutter(ShutterDevice):
    """Simulated shutter: records open/closed (the sim illumination is always on)."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        """Return True if open."""
        return self._open

    def set_open(self, open: bool) -> None:
        """Open or close."""
        self._open = bool(open)

    @pymm_property(name="State", limits=(0, 1), property_type="integer")
    def state(self) -> int:
        """1 when open, 0 when closed."""
        return int(self._open)

    @state.setter  # type: ignore[no-redef]
    def state(self, value: int) -> None:
        self._open = bool(int(value))


class SimCamera(SimpleCameraDevice):
    """Simulated camera of psf-live: a tilted sample seen through the PSF physics.

    Every frame renders the sample for the current position of the focus stage,
    with the sample's tilt, the optional cylindrical lens, Eq. (10) noise,
    offset, gain and bit depth; a frame takes at least the exposure time.

    Properties (besides ``Exposure``, ``Gain``, ``Offset``, ``Binning``):
    ``Sample`` (grid, cells, points, image), ``SampleImagePath``, ``SampleSeed``,
    ``SampleOffsetXUm``, ``SampleOffsetYUm``, ``SampleZUm``, ``TiltDeg``,
    ``TiltAxis`` (x, y, xy: the field diagonal), ``CylinderWaves`` (0 = no lens),
    ``CylinderAxisDeg``,
    ``PhotonsPerMs``, ``ReadNoiseE``, ``BitDepth``, ``SensorWidth``,
    ``SensorHeight``, ``PixelSizeUm``, ``NoiseSeed``, ``FocusDevice``,
    ``FailAtFrame`` (frame k, counted from when it is set, and every later frame
    raise; -1 never), ``FrameCount`` and ``LastError`` (read-only).

    A failing frame raises ``RuntimeError`` from ``snapImage``; in a sequence the
    acquisition thread ends after the frames before it (pymmcore-plus reports
    the error as an unhandled thread exception) and ``LastError`` holds the
    message.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scope = SimMicroscope(SimSettings(), CameraModel(), seed=None, device="cpu")
        self._exposure = 10.0
        self._focus_label = "Z"
        self._fail_at = -1
        self._frames = 0
        self._last_error = ""
        self._seed = -1
        self._image_path = ""

    # -- camera API ----------------------------------------------------------

    def sensor_shape(self) -> tuple[int, int]:
        """Frame shape (rows, columns)."""
        return self.scope.settings.shape

    def dtype(self) -> np.dtype[np.uint16]:
        """Frames are uint16."""
        return np.dtype(np.uint16)

    def get_exposure(self) -> float:
        """Exposure in milliseconds."""
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        """Set the exposure (ms); frames take at least this long."""
        exposure = float(exposure)
        if not 0 <= exposure <= 10_000:
            raise ValueError(f"exposure must be within [0, 10000] ms, got {exposure}")
        self._exposure = exposure

    def get_gain(self) -> float:
        """Analogue gain, ADU per electron."""
        return self.scope.camera.gain_adu_per_e

    def set_gain(self, value: float) -> None:
        """Set the analogue gain (ADU per electron)."""
        self._set_camera(gain_adu_per_e=float(value))

    def get_offset(self) -> float:
        """Dark offset in ADU."""
        return self.scope.camera.offset_adu

    def set_offset(self, value: float) -> None:
        """Set the dark offset (ADU)."""
        self._set_camera(offset_adu=float(value))

    def _set_camera(self, **changes: Any) -> None:
        from dataclasses import replace

        self.scope.camera = replace(self.scope.camera, **changes)

    def focus_z_um(self) -> float:
        """Return the focal plane position from the focus stage (0 without one)."""
        stage = _find_stage(self, self._focus_label)
        return stage.absolute_z_um if stage is not None else 0.0

    def snap(self, buffer: np.ndarray) -> Mapping[str, str]:
        """Render one frame into ``buffer`` (paced to the exposure time)."""
        t0 = time.perf_counter()
        k = self._frames
        if 0 <= self._fail_at <= k:
            self._last_error = f"simulated camera failure at frame {k}"
            raise RuntimeError(self._last_error)
        z = self.focus_z_um()
        s = self.scope.settings
        if tuple(buffer.shape) != s.shape:
            self._last_error = (
                f"sensor size changed to {s.shape} during a sequence of {buffer.shape} frames"
            )
            raise RuntimeError(self._last_error)
        try:
            self.scope.snap(z, self._exposure, out=buffer)
        except Exception as e:
            self._last_error = f"{type(e).__name__}: {e}"
            raise
        self._frames = k + 1
        remaining = self._exposure / 1000.0 - (time.perf_counter() - t0)
        if remaining > 0:
            time.sleep(remaining)
        return {
            "psf_live_z_um": f"{z:.4f}",
            "psf_live_tilt_deg": f"{s.scene.tilt_deg:.4f}",
            "psf_live_tilt_axis": s.scene.tilt_axis,
            "psf_live_cylinder_waves": f"{s.scene.cylinder:.4f}",
            "psf_live_frame": str(k),
        }

    # -- sample and scene properties ------------------------------------------

    @pymm_property(
        name="Sample", allowed_values=("grid", "cells", "points", "image"), property_type="string"
    )
    def sample(self) -> str:
        """Return the imaged sample."""
        return self.scope.settings.sample

    @sample.setter  # type: ignore[no-redef]
    def sample(self, value: str) -> None:
        if value == "image" and self._image_path == "" and self.scope._user_image is None:
            raise ValueError("set SampleImagePath before choosing the 'image' sample")
        self.scope.update(sample=str(value))

    @pymm_property(name="SampleImagePath", property_type="string")
    def sample_image_path(self) -> str:
        """TIFF file used as the sample (setting it selects ``Sample=image``)."""
        return self._image_path

    @sample_image_path.setter  # type: ignore[no-redef]
    def sample_image_path(self, value: str) -> None:
        value = str(value)
        if value:
            self.scope.set_user_image(value)
        self._image_path = value

    @pymm_property(name="SampleSeed", limits=(0, 2**31 - 1), property_type="integer")
    def sample_seed(self) -> int:
        """Seed of the sample texture / positions."""
        return self.scope.settings.sample_seed

    @sample_seed.setter  # type: ignore[no-redef]
    def sample_seed(self, value: int) -> None:
        self.scope.update(sample_seed=int(value))

    @pymm_property(name="SampleOffsetXUm", limits=(-1e4, 1e4), property_type="float")
    def sample_offset_x_um(self) -> float:
        """Lateral shift of the sample along x (um)."""
        return self.scope.settings.sample_offset_um[1]

    @sample_offset_x_um.setter  # type: ignore[no-redef]
    def sample_offset_x_um(self, value: float) -> None:
        oy = self.scope.settings.sample_offset_um[0]
        self.scope.update(sample_offset_um=(oy, float(value)))

    @pymm_property(name="SampleOffsetYUm", limits=(-1e4, 1e4), property_type="float")
    def sample_offset_y_um(self) -> float:
        """Lateral shift of the sample along y (um)."""
        return self.scope.settings.sample_offset_um[0]

    @sample_offset_y_um.setter  # type: ignore[no-redef]
    def sample_offset_y_um(self, value: float) -> None:
        ox = self.scope.settings.sample_offset_um[1]
        self.scope.update(sample_offset_um=(float(value), ox))

    @pymm_property(name="SampleZUm", limits=(-1e4, 1e4), property_type="float")
    def sample_z_um(self) -> float:
        """Stage position at which the centre of the sample is in focus (um)."""
        return self.scope.settings.scene.sample_z_um

    @sample_z_um.setter  # type: ignore[no-redef]
    def sample_z_um(self, value: float) -> None:
        self.scope.update(sample_z_um=float(value))

    @pymm_property(name="TiltDeg", limits=(-45.0, 45.0), property_type="float")
    def tilt_deg(self) -> float:
        """Sample tilt in degrees (+: the +axis side is farther from the objective)."""
        return self.scope.settings.scene.tilt_deg

    @tilt_deg.setter  # type: ignore[no-redef]
    def tilt_deg(self, value: float) -> None:
        self.scope.update(tilt_deg=float(value))

    @pymm_property(name="TiltAxis", allowed_values=TILT_AXES, property_type="string")
    def tilt_axis(self) -> str:
        """Axis along which the depth varies (x: plane rotated about y)."""
        return self.scope.settings.scene.tilt_axis

    @tilt_axis.setter  # type: ignore[no-redef]
    def tilt_axis(self, value: str) -> None:
        self.scope.update(tilt_axis=str(value))

    @pymm_property(name="CylinderWaves", limits=(0.0, 1.0), property_type="float")
    def cylinder_waves(self) -> float:
        """Astigmatism of the cylindrical lens, waves RMS (0: no lens)."""
        return self.scope.settings.scene.cylinder

    @cylinder_waves.setter  # type: ignore[no-redef]
    def cylinder_waves(self, value: float) -> None:
        self.scope.update(cylinder=float(value))

    @pymm_property(name="CylinderAxisDeg", limits=(0.0, 180.0), property_type="float")
    def cylinder_axis_deg(self) -> float:
        """Axis of the cylindrical lens, degrees from +x towards +y."""
        return math.degrees(self.scope.settings.scene.cylinder_axis)

    @cylinder_axis_deg.setter  # type: ignore[no-redef]
    def cylinder_axis_deg(self, value: float) -> None:
        self.scope.update(cylinder_axis=math.radians(float(value)))

    # -- detection properties ---------------------------------------------------

    @pymm_property(name="PhotonsPerMs", limits=(0.0, 1e6), property_type="float")
    def photons_per_ms(self) -> float:
        """Return the expected photo-electrons per ms of exposure at sample value 1."""
        return self.scope.settings.photons_per_ms

    @photons_per_ms.setter  # type: ignore[no-redef]
    def photons_per_ms(self, value: float) -> None:
        self.scope.update(photons_per_ms=float(value))

    @pymm_property(name="ReadNoiseE", limits=(0.0, 1000.0), property_type="float")
    def read_noise_e(self) -> float:
        """Gaussian read noise, electrons RMS."""
        return self.scope.camera.read_noise_e

    @read_noise_e.setter  # type: ignore[no-redef]
    def read_noise_e(self, value: float) -> None:
        self._set_camera(read_noise_e=float(value))

    @pymm_property(name="BitDepth", limits=(8, 16), property_type="integer")
    def bit_depth(self) -> int:
        """Bit depth of the digitiser (frames are uint16)."""
        return self.scope.camera.bit_depth

    @bit_depth.setter  # type: ignore[no-redef]
    def bit_depth(self, value: int) -> None:
        self._set_camera(bit_depth=int(value))

    @pymm_property(name="SensorWidth", limits=(16, 8192), property_type="integer")
    def sensor_width(self) -> int:
        """Frame width in pixels."""
        return self.scope.settings.shape[1]

    @sensor_width.setter  # type: ignore[no-redef]
    def sensor_width(self, value: int) -> None:
        self.scope.update(shape=(self.scope.settings.shape[0], int(value)))

    @pymm_property(name="SensorHeight", limits=(16, 8192), property_type="integer")
    def sensor_height(self) -> int:
        """Frame height in pixels."""
        return self.scope.settings.shape[0]

    @sensor_height.setter  # type: ignore[no-redef]
    def sensor_height(self, value: int) -> None:
        self.scope.update(shape=(int(value), self.scope.settings.shape[1]))

    @pymm_property(name="PixelSizeUm", limits=(0.01, 100.0), property_type="float")
    def pixel_size_um(self) -> float:
        """Object-space pixel size used for rendering (um)."""
        return self.scope.settings.optics.pixel_size_um

    @pixel_size_um.setter  # type: ignore[no-redef]
    def pixel_size_um(self, value: float) -> None:
        optics = self.scope.settings.optics.replace(pixel_size_um=float(value))
        self.scope.update(optics=optics)

    @pymm_property(name="NoiseSeed", limits=(-1, 2**31 - 1), property_type="integer")
    def noise_seed(self) -> int:
        """Seed of the frame noise (-1: random); setting it restarts the stream."""
        return self._seed

    @noise_seed.setter  # type: ignore[no-redef]
    def noise_seed(self, value: int) -> None:
        self._seed = int(value)
        if self._seed < 0:
            self.scope.generator.seed()
        else:
            self.scope.generator.manual_seed(self._seed)

    @pymm_property(name="FocusDevice", property_type="string")
    def focus_device(self) -> str:
        """Label of the SimZStage whose position is the focal plane."""
        return self._focus_label

    @focus_device.setter  # type: ignore[no-redef]
    def focus_device(self, value: str) -> None:
        self._focus_label = str(value)

    # -- fault injection and status ---------------------------------------------

    @pymm_property(name="FailAtFrame", limits=(-1, 2**31 - 1), property_type="integer")
    def fail_at_frame(self) -> int:
        """Frame index (from when this is set) at which frames start failing; -1 never."""
        return self._fail_at

    @fail_at_frame.setter  # type: ignore[no-redef]
    def fail_at_frame(self, value: int) -> None:
        self._fail_at = int(value)
        self._frames = 0
        self._last_error = ""

    @pymm_property(name="FrameCount", is_read_only=True, property_type="integer")
    def frame_count(self) -> int:
        """Frames produced since start-up or since FailAtFrame was last set."""
        return self._frames

    @pymm_property(name="LastError", is_read_only=True, property_type="string")
    def last_error(self) -> str:
        """Message of the last camera failure ('' if none)."""
        return self._last_error
