"""Image formation for the simulated microscope: a tilted sample seen through the PSF.

Conventions (used everywhere in psf-live):

* The optical axis z points away from the objective, into the sample. The
  stage position ``z_um`` is the position of the focal plane on that axis.
* The sample is a plane through ``(centre of the field, sample_z_um)`` tilted
  by ``tilt_deg``. ``tilt_axis="x"`` means the depth varies along x (columns):
  the plane is rotated about the y axis, and a positive tilt puts the +x side
  farther from the objective. ``"y"`` likewise along rows, ``"xy"`` along the
  field diagonal (the +x +y corner farther; the depth ranges of the paper's Section
  III-E; :func:`psf_live.psf.plane_depth`). The in-focus line (for
  ``z_um == sample_z_um``) passes through the centre of the field.
* ``curvature_radius_um`` bends that plane into a paraboloid (a spherical cap for
  small sag): ``+ r^2 / (2 R)`` with ``r`` the distance from the centre of the field,
  so with ``R > 0`` the sample curves away from the objective towards the edges.
* The local depth is ``sample height - focal plane`` in micrometres, positive
  where the sample lies beyond the focal plane (farther from the objective).
  It becomes the signed Zernike focus ``defocus_um_to_waves(depth)``.
* A cylindrical lens adds a fixed astigmatism ``(cylinder, cylinder_axis)``
  (waves RMS, radians from +x towards +y). With the default axis pi/4 a
  ``zernike3`` estimate of a pixel at depth d > 0 reads ``(f, C, pi/4)`` and at
  d < 0 ``(|f|, C, 3 pi/4)``, so Eq. (14), ``a1 (2 a3 / pi - 1)``, is
  ``-f/2`` and ``+|f|/2``: monotone in depth (decreasing), as the paper uses it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..psf import (
    TILT_AXES,
    Optics,
    OverlapAdd,
    TiltAxis,
    convolve,
    defocus_um_to_waves,
    plane_depth,
    zernike_psf,
)

__all__ = [
    "DEFAULT_CYLINDER_AXIS",
    "DEFAULT_CYLINDER_WAVES",
    "Scene",
    "SceneRender",
    "depth_map",
    "depth_profile",
    "kernel_radius_px",
    "render_scene",
]

DEFAULT_CYLINDER_WAVES = 0.25
"""Astigmatism of the simulated cylindrical lens, waves RMS."""
DEFAULT_CYLINDER_AXIS = math.pi / 4
"""Axis of the simulated cylindrical lens, radians (45 degrees)."""


@dataclass(frozen=True)
class Scene:
    """Geometry of the imaged sample and the fixed optics in the light path.

    Attributes
    ----------
    tilt_deg : float
        Tilt of the sample plane in degrees (positive: the +axis side is farther
        from the objective).
    tilt_axis : {"x", "y", "xy"}
        Direction along which the depth varies ("xy": the field diagonal).
    sample_z_um : float
        Height of the sample plane at the centre of the field, in stage
        coordinates (micrometres).
    cylinder : float
        Astigmatism added by a cylindrical lens, waves RMS (0: no lens).
    cylinder_axis : float
        Axis of that astigmatism in radians.
    curvature_radius_um : float
        Radius of curvature of the sample surface in micrometres (0: a plane). The
        depth gains ``r^2 / (2 R)`` at distance ``r`` from the centre of the field,
        and the image is rendered with a 2D grid of kernels.
    """

    tilt_deg: float = 0.0
    tilt_axis: TiltAxis = "x"
    sample_z_um: float = 0.0
    cylinder: float = 0.0
    cylinder_axis: float = DEFAULT_CYLINDER_AXIS
    curvature_radius_um: float = 0.0

    def __post_init__(self) -> None:
        if self.tilt_axis not in TILT_AXES:
            raise ValueError(
                f"tilt axis must be one of {', '.join(TILT_AXES)}; got {self.tilt_axis!r}"
            )
        if not -80.0 < self.tilt_deg < 80.0:
            raise ValueError(f"tilt must be within (-80, 80) degrees, got {self.tilt_deg}")
        if self.cylinder < 0:
            raise ValueError(f"cylinder must be >= 0 waves, got {self.cylinder}")
        if not math.isfinite(self.curvature_radius_um):
            raise ValueError(f"curvature radius must be finite, got {self.curvature_radius_um}")


@dataclass(frozen=True)
class SceneRender:
    """Output of :func:`render_scene`.

    Attributes
    ----------
    image : torch.Tensor
        Expected photon image (H, W), float32, >= 0.
    depth_um : torch.Tensor
        Ground-truth depth (sample minus focal plane) per pixel, (H, W), float32.
    """

    image: torch.Tensor
    depth_um: torch.Tensor


def depth_profile(n: int, z_um: float, scene: Scene, pixel_size_um: float) -> np.ndarray:
    """Depth in micrometres along an axis-aligned tilt ("x" or "y"), for ``n`` pixels.

    Parameters
    ----------
    n : int
        Number of pixels along the tilted axis. A field rendered with a margin
        passes ``n + 2 * margin``: the centre, hence the in-focus line, is the
        same.
    z_um : float
        Stage (focal plane) position.
    scene : Scene
        Sample geometry.
    pixel_size_um : float
        Object-space pixel size.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape (n,): ``sample_z + s * px * tan(tilt) - z`` with
        ``s`` the signed distance (pixels) from the centre of the field.
    """
    s = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    slope = math.tan(math.radians(scene.tilt_deg)) * pixel_size_um
    return scene.sample_z_um + s * slope - z_um


def depth_map(
    shape: tuple[int, int], z_um: float, scene: Scene, pixel_size_um: float
) -> np.ndarray:
    """Ground-truth depth map (sample minus focal plane, um) of a field of view.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    z_um : float
        Stage (focal plane) position.
    scene : Scene
        Sample geometry.
    pixel_size_um : float
        Object-space pixel size.

    Returns
    -------
    numpy.ndarray
        Float32 array of ``shape``; constant across the tilt direction unless the
        sample is curved.
    """
    h, w = int(shape[0]), int(shape[1])
    plane = plane_depth(
        np.arange(h), np.arange(w), scene.tilt_deg, scene.tilt_axis, pixel_size_um, (h, w)
    )
    d = scene.sample_z_um + plane - z_um
    if scene.curvature_radius_um:
        y = (np.arange(h) - (h - 1) / 2.0) * pixel_size_um
        x = (np.arange(w) - (w - 1) / 2.0) * pixel_size_um
        d = d + (y[:, None] ** 2 + x[None, :] ** 2) / (2.0 * scene.curvature_radius_um)
    return np.asarray(d, dtype=np.float32)


def kernel_radius_px(max_focus_waves: float, cylinder: float, optics: Optics) -> int:
    """Half-width of a kernel window that holds the blurred PSF (>= 99 % energy).

    Geometric optics: a Noll defocus of ``f`` waves RMS has a peak wavefront of
    ``2 sqrt(3) f`` waves, i.e. a geometric blur radius of ``4 sqrt(3) f lambda / NA``;
    astigmatism ``C`` adds at most the equivalent of ``C / sqrt(2)`` waves of
    defocus. A 30 % margin plus five Airy radii covers the diffraction rings.
    """
    f_eq = abs(max_focus_waves) + cylinder / math.sqrt(2.0)
    geo_um = 4.0 * math.sqrt(3.0) * f_eq * optics.wavelength_um / optics.na
    airy_um = 1.22 * optics.wavelength_um / optics.na
    r = math.ceil((1.3 * geo_um + 5.0 * airy_um) / optics.pixel_size_um)
    return int(min(max(r, 7), 200))


_KERNEL_CACHE: OrderedDict[tuple[object, ...], torch.Tensor] = OrderedDict()
_KERNEL_CACHE_SIZE = 8
_KERNEL_LOCK = threading.Lock()


def _kernel_bank(
    focus: np.ndarray,
    cylinder: float,
    axis: float,
    size: int,
    optics: Optics,
    device: torch.device | str,
) -> torch.Tensor:
    """``zernike_psf`` for a row of focus values, memoised (kernels are read-only)."""
    key = (focus.tobytes(), cylinder, axis, size, optics, str(device))
    with _KERNEL_LOCK:
        hit = _KERNEL_CACHE.get(key)
        if hit is not None:
            _KERNEL_CACHE.move_to_end(key)
            return hit
    ft = torch.as_tensor(focus, device=device)
    kernels = zernike_psf(
        ft, torch.full_like(ft, cylinder), torch.full_like(ft, axis), size, optics
    )
    with _KERNEL_LOCK:
        _KERNEL_CACHE[key] = kernels
        while len(_KERNEL_CACHE) > _KERNEL_CACHE_SIZE:
            _KERNEL_CACHE.popitem(last=False)
    return kernels


def render_scene(
    sample: np.ndarray | torch.Tensor,
    z_um: float,
    scene: Scene | None = None,
    optics: Optics | None = None,
    *,
    margin: int = 0,
    photons: float = 1.0,
    grid_step: int = 32,
    device: torch.device | str | None = None,
) -> SceneRender:
    """Render the expected camera image of a (tilted) sample for a stage position.

    The local defocus at every point is ``depth_um`` (see :func:`depth_map`); it
    becomes the signed Zernike focus ``defocus_um_to_waves(depth)`` and, with the
    cylindrical lens, the kernel ``zernike_psf(focus, cylinder, axis)``. Kernels
    are placed every ``grid_step`` pixels along the tilted axis and blended with
    the bilinear overlap-add operator of Eq. (12). Because the depth of a plane
    varies along one axis only, one kernel per position along that axis is rendered
    and used for the whole row/column of the grid (a 1 x C grid whose single mask
    along the other axis is 1: exactly the R x C operator with repeated kernels); a
    curved sample, or a plane tilted along the diagonal ("xy"), gets the full 2D grid,
    one kernel per node.

    Parameters
    ----------
    sample : numpy.ndarray or torch.Tensor
        Object (reflectance or fluorophore density, >= 0) of shape
        ``(H + 2 margin, W + 2 margin)``.
    z_um : float
        Stage (focal plane) position in micrometres.
    scene : Scene, optional
        Sample tilt and cylindrical lens; defaults to a flat sample, no lens.
    optics : Optics, optional
        Microscope optics; defaults to :class:`~psf_live.psf.Optics`.
    margin : int
        Pixels of ``sample`` beyond each edge of the field of view. Content
        there blurs into the field, as on a real camera; with 0 the field is
        extended with zeros (darker borders).
    photons : float
        Expected photons at sample value 1 (the image is ``photons * H x``).
    grid_step : int
        Spacing of the kernel centres along the tilted axis, in pixels.
    device : torch.device or str, optional
        Where to compute; defaults to the sample's device (CPU for arrays).

    Returns
    -------
    SceneRender
        The expected photon image and the ground-truth depth map, both (H, W)
        float32 on ``device``.
    """
    scene = scene or Scene()
    optics = optics or Optics()
    if device is None:
        device = sample.device if isinstance(sample, torch.Tensor) else "cpu"
    x = torch.as_tensor(np.asarray(sample) if not isinstance(sample, torch.Tensor) else sample)
    x = x.to(device=device, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"sample must be a 2D image, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("sample contains NaN or infinity")
    if margin < 0 or 2 * margin >= min(x.shape):
        raise ValueError(f"margin {margin} does not fit a sample of shape {tuple(x.shape)}")
    if grid_step < 1:
        raise ValueError("grid_step must be >= 1")
    hp, wp = int(x.shape[0]), int(x.shape[1])
    h, w = hp - 2 * margin, wp - 2 * margin
    if scene.curvature_radius_um or (scene.tilt_axis == "xy" and scene.tilt_deg != 0.0):
        return _render_2d(x, z_um, scene, optics, margin, photons, grid_step, device)
    along_x = scene.tilt_axis == "x"
    n_axis = wp if along_x else hp
    profile = depth_profile(n_axis, z_um, scene, optics.pixel_size_um)
    centers = np.unique(np.r_[np.arange(0, n_axis, grid_step), n_axis - 1]).astype(np.float64)
    idx = centers.astype(np.int64)
    depths = profile[idx]
    if scene.tilt_deg == 0.0:
        centers, depths = centers[:1], depths[:1]
    focus = np.array([defocus_um_to_waves(float(d), optics) for d in depths], dtype=np.float32)
    r = kernel_radius_px(float(np.abs(focus).max()), scene.cylinder, optics)
    kernels = _kernel_bank(focus, scene.cylinder, scene.cylinder_axis, 2 * r + 1, optics, device)
    if len(centers) == 1:
        blurred = convolve(x, kernels[0])
    else:
        mid_other = [((hp if along_x else wp) - 1) / 2.0]
        cy, cx = (mid_other, centers) if along_x else (centers, mid_other)
        blurred = OverlapAdd((hp, wp), cy, cx, kernels, device=device).forward(x)
    image = blurred[margin : margin + h, margin : margin + w].clamp_min(0.0) * float(photons)
    prof = torch.as_tensor(profile[margin : margin + (w if along_x else h)], dtype=torch.float32)
    prof = prof.to(device)
    depth = prof[None, :].expand(h, w) if along_x else prof[:, None].expand(h, w)
    return SceneRender(image=image.contiguous(), depth_um=depth.contiguous())


def _render_2d(
    x: torch.Tensor,
    z_um: float,
    scene: Scene,
    optics: Optics,
    margin: int,
    photons: float,
    grid_step: int,
    device: torch.device | str,
) -> SceneRender:
    """:func:`render_scene` for a curved or diagonally tilted sample: a 2D grid of kernels."""
    hp, wp = int(x.shape[0]), int(x.shape[1])
    h, w = hp - 2 * margin, wp - 2 * margin
    depth_padded = depth_map((hp, wp), z_um, scene, optics.pixel_size_um)
    ny = np.unique(np.r_[np.arange(0, hp, grid_step), hp - 1]).astype(np.int64)
    nx = np.unique(np.r_[np.arange(0, wp, grid_step), wp - 1]).astype(np.int64)
    node_depth = depth_padded[np.ix_(ny, nx)].astype(np.float64).ravel()
    focus = np.array([defocus_um_to_waves(float(d), optics) for d in node_depth], np.float32)
    r = kernel_radius_px(float(np.abs(focus).max()), scene.cylinder, optics)
    # nodes at the same depth share a kernel (a diagonal tilt has one depth per
    # anti-diagonal of the grid, a curved sample one per radius): render each once
    unique, inverse = np.unique(focus, return_inverse=True)
    ft = torch.as_tensor(unique, device=device)
    kernels = zernike_psf(
        ft,
        torch.full_like(ft, scene.cylinder),
        torch.full_like(ft, scene.cylinder_axis),
        2 * r + 1,
        optics,
    )[torch.as_tensor(inverse.ravel(), device=device)]
    op = OverlapAdd((hp, wp), ny.astype(np.float64), nx.astype(np.float64), kernels, device=device)
    blurred = op.forward(x)
    image = blurred[margin : margin + h, margin : margin + w].clamp_min(0.0) * float(photons)
    depth = torch.as_tensor(
        np.ascontiguousarray(depth_padded[margin : margin + h, margin : margin + w]), device=device
    )
    return SceneRender(image=image.contiguous(), depth_um=depth)
