"""The simulated microscope without any hardware layer: sample + optics + camera.

:class:`SimMicroscope` ties the pure pieces together and caches what is
expensive: the sample (per sample settings), the noiseless image (per stage
position, tilt, lens and sample) and the per-frame noise set-up, so that a
snap at an unchanged state only draws fresh noise. The pymmcore-plus devices
(:mod:`psf_live.sim._devices`), the ``psf-live simulate`` command and the
benchmarks all use it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..psf import Optics
from ._noise import CameraModel, FrameNoiser
from ._samples import make_sample
from ._scene import Scene, SceneRender, depth_map, render_scene

__all__ = ["SimMicroscope", "SimSettings"]


@dataclass(frozen=True)
class SimSettings:
    """Everything that determines the noiseless image (except the stage z).

    Attributes
    ----------
    shape : (int, int)
        Camera frame shape (rows, columns).
    sample : str
        ``grid``, ``cells``, ``points`` or ``image`` (then set
        :attr:`SimMicroscope.user_image`), or a TIFF path.
    sample_seed : int
        Seed of the sample's random texture / positions.
    sample_offset_um : (float, float)
        Lateral shift (y, x) of the sample content.
    scene : Scene
        Tilt, sample height and cylindrical lens.
    optics : Optics
        Microscope optics (pixel size included).
    photons_per_ms : float
        Expected photo-electrons per millisecond of exposure at sample value 1.
    margin : int
        Pixels of sample rendered beyond each edge so that blur near the edges
        sees real content (kernels wider than the margin see zeros beyond it).
    grid_step : int
        Spacing of the PSF kernels along the tilted axis (pixels).
    """

    shape: tuple[int, int] = (1024, 1024)
    sample: str = "grid"
    sample_seed: int = 0
    sample_offset_um: tuple[float, float] = (0.0, 0.0)
    scene: Scene = field(default_factory=Scene)
    optics: Optics = field(default_factory=Optics)
    photons_per_ms: float = 100.0
    margin: int = 128
    grid_step: int = 32


class SimMicroscope:
    """A simulated wide-field microscope: render, cache, add camera noise.

    Parameters
    ----------
    settings : SimSettings, optional
        Initial settings.
    camera : CameraModel, optional
        Detection model (noise, offset, gain, bit depth).
    seed : int, optional
        Seed of the frame noise (every frame gets fresh noise).
    device : torch.device or str, optional
        Where to render the noiseless images (CUDA when available by default);
        noise is drawn on the CPU.

    Notes
    -----
    Methods are thread-safe: settings are replaced atomically
    (:meth:`update`), and caches are guarded by a lock.
    """

    def __init__(
        self,
        settings: SimSettings | None = None,
        camera: CameraModel | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.settings = settings or SimSettings()
        self.camera = camera or CameraModel()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._user_image: np.ndarray | None = None
        self._user_version = 0
        self._lock = threading.RLock()
        self._samples: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._renders: OrderedDict[tuple[Any, ...], SceneRender] = OrderedDict()
        self._noisers: OrderedDict[tuple[Any, ...], FrameNoiser] = OrderedDict()

    # -- settings ----------------------------------------------------------------

    def update(self, **changes: Any) -> SimSettings:
        """Change settings (fields of :class:`SimSettings` or of :class:`Scene`).

        Examples
        --------
        >>> scope = SimMicroscope()
        >>> s = scope.update(tilt_deg=6.0, cylinder=0.25, sample_seed=3)
        """
        scene_fields = {f.name for f in fields(Scene)}
        scene_changes = {k: changes.pop(k) for k in list(changes) if k in scene_fields}
        with self._lock:
            s = self.settings
            if scene_changes:
                changes["scene"] = replace(s.scene, **scene_changes)
            self.settings = replace(s, **changes)
            return self.settings

    def set_user_image(self, image: str | Path | np.ndarray) -> None:
        """Use a 2D array or TIFF file as the sample (``sample="image"``)."""
        from ._samples import _load_image

        arr = _load_image(image)
        with self._lock:
            self._user_image = arr
            self._user_version += 1
            self.settings = replace(self.settings, sample="image")

    # -- images ------------------------------------------------------------------

    def sample_image(self, settings: SimSettings | None = None) -> np.ndarray:
        """Return the sample with its margin, shape ``(H + 2 margin, W + 2 margin)``."""
        s = settings or self.settings
        h, w = s.shape
        key = (
            s.sample,
            s.sample_seed,
            s.sample_offset_um,
            s.shape,
            s.margin,
            s.optics.pixel_size_um,
            self._user_version if s.sample == "image" else -1,
        )
        with self._lock:
            if (hit := self._samples.get(key)) is not None:
                self._samples.move_to_end(key)
                return hit
            padded = (h + 2 * s.margin, w + 2 * s.margin)
            img = make_sample(
                s.sample,
                padded,
                s.optics.pixel_size_um,
                seed=s.sample_seed,
                offset_um=s.sample_offset_um,
                image=self._user_image if s.sample == "image" else None,
            )
            _put(self._samples, key, img, 2)
            return img

    def _render_key(self, s: SimSettings, z_um: float) -> tuple[Any, ...]:
        return (s, round(float(z_um), 6), self._user_version if s.sample == "image" else -1)

    def render(self, z_um: float, settings: SimSettings | None = None) -> SceneRender:
        """Noiseless image (photo-electrons per ms at unit sample) and depth map.

        Cached per (settings, z): the first call at a new state costs a render
        (0.1 - 2 s for a megapixel on a CPU), later ones are free.
        """
        s = settings or self.settings
        key = self._render_key(s, z_um)
        with self._lock:
            if (hit := self._renders.get(key)) is not None:
                self._renders.move_to_end(key)
                return hit
            out = render_scene(
                self.sample_image(s),
                float(z_um),
                s.scene,
                s.optics,
                margin=s.margin,
                photons=1.0,
                grid_step=s.grid_step,
                device=self.device,
            )
            _put(self._renders, key, out, 4)
            return out

    def expected(self, z_um: float, exposure_ms: float) -> torch.Tensor:
        """Return the expected photo-electrons per pixel for a stage position and exposure."""
        s = self.settings
        return self.render(z_um, s).image * (s.photons_per_ms * float(exposure_ms))

    def depth_map(self, z_um: float) -> np.ndarray:
        """Ground-truth depth (sample minus focal plane) in um, float32 (H, W)."""
        s = self.settings
        return depth_map(s.shape, float(z_um), s.scene, s.optics.pixel_size_um)

    def snap(self, z_um: float, exposure_ms: float, out: np.ndarray | None = None) -> np.ndarray:
        """One noisy uint16 frame (fresh noise every call).

        Parameters
        ----------
        z_um : float
            Stage (focal plane) position in micrometres.
        exposure_ms : float
            Exposure time; the signal scales with it (no pacing here: the
            camera device sleeps for the exposure).
        out : numpy.ndarray, optional
            uint16 buffer of the frame's shape to fill in place.

        Returns
        -------
        numpy.ndarray
            The frame, uint16.
        """
        s, cam = self.settings, self.camera
        key = (self._render_key(s, z_um), round(float(exposure_ms), 6), cam)
        with self._lock:
            noiser = self._noisers.get(key)
            if noiser is None:
                expected = self.render(z_um, s).image * (s.photons_per_ms * float(exposure_ms))
                noiser = FrameNoiser(expected, cam)
                _put(self._noisers, key, noiser, 2)
            else:
                self._noisers.move_to_end(key)
            return noiser.sample(self.generator, out)

    def clear_cache(self) -> None:
        """Forget cached samples, renders and noise set-ups."""
        with self._lock:
            self._samples.clear()
            self._renders.clear()
            self._noisers.clear()


def _put(
    cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any, size: int
) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
