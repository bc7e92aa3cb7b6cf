"""Render batches of PSF kernels from model parameters (torch, any device)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._models import PSFModel, get_model
from ._optics import Optics

__all__ = [
    "as_params",
    "astigmatic_twin",
    "canonical_twin",
    "gaussian_psf",
    "render_psf",
    "zernike_psf",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]

_SQRT3 = math.sqrt(3.0)
_SQRT6 = math.sqrt(6.0)


def as_params(
    params: ArrayLike, n_params: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Return ``params`` as a float32 tensor of shape (B, n_params).

    A single parameter vector of shape (n_params,) becomes a batch of one.
    """
    t = torch.as_tensor(params, dtype=torch.float32, device=device)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != n_params:
        raise ValueError(f"expected parameters of shape (B, {n_params}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("PSF parameters contain NaN or infinity")
    return t


def _check_size(size: int) -> int:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    return int(size)


def gaussian_psf(width_x: torch.Tensor, width_y: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel-integrated anisotropic Gaussian PSFs (Eq. 8).

    Parameters
    ----------
    width_x, width_y : torch.Tensor
        Standard deviations (widths) along x (columns) and y (rows), in pixels,
        shape (B,). The paper's parameters are the variances ``a = width**2``.
    size : int
        Odd kernel size in pixels.

    Returns
    -------
    torch.Tensor
        Kernels of shape (B, size, size), float32, each summing to one. Each
        pixel holds the integral of the continuous Gaussian over its area, so the
        discrete variance along x is ``width_x**2 + 1/12`` (box-filter term).
    """
    size = _check_size(size)
    wx = torch.as_tensor(width_x, dtype=torch.float32).reshape(-1, 1)
    wy = torch.as_tensor(width_y, dtype=torch.float32, device=wx.device).reshape(-1, 1)
    if (wx <= 0).any() or (wy <= 0).any():
        raise ValueError("Gaussian widths must be positive")
    half = size // 2
    edges = torch.arange(-half, half + 2, dtype=torch.float64, device=wx.device) - 0.5

    def profile(w: torch.Tensor) -> torch.Tensor:
        cdf = torch.special.ndtr(edges[None, :] / w.double())
        p = cdf[:, 1:] - cdf[:, :-1]
        return p / p.sum(dim=1, keepdim=True)

    px, py = profile(wx), profile(wy)
    return (py[:, :, None] * px[:, None, :]).float()


def zernike_psf(
    focus: torch.Tensor,
    cylinder: torch.Tensor,
    axis: torch.Tensor,
    size: int,
    optics: Optics | None = None,
) -> torch.Tensor:
    """Incoherent PSFs from a pupil with defocus and astigmatism (Eq. 6-7).

    The pupil is a disc of radius NA / lambda in spatial frequency; its phase is
    ``2 pi [focus * sqrt(3) (2 rho^2 - 1) + cylinder * sqrt(6) rho^2 cos(2 (phi - axis))]``
    (Noll-normalised Zernike terms Z4 and Z5/Z6, coefficients in waves RMS; ``phi``
    is measured from the +x (column) axis towards +y (rows)). The PSF is
    ``|DFT(pupil)|^2`` sampled ``optics.oversample`` times finer than the camera,
    integrated over each camera pixel and normalised to sum to one.

    Parameters
    ----------
    focus, cylinder, axis : torch.Tensor
        Shape (B,). Defocus (waves RMS, either sign), astigmatism magnitude (waves
        RMS) and astigmatism axis (radians).
    size : int
        Odd kernel size in camera pixels.
    optics : Optics, optional
        Microscope optics; defaults to :class:`Optics()`.

    Returns
    -------
    torch.Tensor
        Kernels of shape (B, size, size), float32, on the device of ``focus``.

    Notes
    -----
    ``(focus, cylinder, axis)`` and ``(-focus, cylinder, axis + pi/2)`` describe
    wavefronts of opposite sign and hence the same (centro-symmetric) PSF; the
    training ranges therefore keep ``focus >= 0`` and let the axis carry the
    sign of the defocus when astigmatism is present.
    """
    optics = optics or Optics()
    size = _check_size(size)
    f = torch.as_tensor(focus, dtype=torch.float32).reshape(-1)
    device = f.device
    c = torch.as_tensor(cylinder, dtype=torch.float32, device=device).reshape(-1)
    a = torch.as_tensor(axis, dtype=torch.float32, device=device).reshape(-1)
    os_ = optics.oversample
    n_win = size * os_
    dx = optics.pixel_size_um / os_
    # Field of view of the FFT: at least 1.5x the window, so that tails beyond the
    # window wrap in only from > 0.75 window widths away (negligible energy), and
    # enough samples for a pupil at least 32 samples across.
    n_min = max(1.5 * n_win, 32.0 / (optics.cutoff_cycles_per_um * dx))
    n_fft = next_fast_len(math.ceil(n_min))
    df = 1.0 / (n_fft * dx)
    # Only the pupil disc is non-zero and only the n_win x n_win window of the field
    # is kept, so the DFT is done as two matrix products over the disc's bounding
    # square (the "matrix Fourier transform"): the same samples as the centred
    # n_fft-point FFT of the pupil, at a fraction of the work (64 kernels of 85 px:
    # 75 x 75 pupil samples instead of 384 x 384).
    half = math.floor(optics.cutoff_cycles_per_um / df)
    kk = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    ky, kx = torch.meshgrid(kk * df, kk * df, indexing="ij")
    rho = torch.sqrt(kx**2 + ky**2) / optics.cutoff_cycles_per_um
    inside = rho <= 1.0
    phi = torch.atan2(ky, kx)
    rho2 = rho**2
    phase = (
        2
        * math.pi
        * (
            f[:, None, None] * (_SQRT3 * (2 * rho2 - 1))
            + c[:, None, None] * (_SQRT6 * rho2 * torch.cos(2 * (phi[None] - a[:, None, None])))
        )
    )
    pupil = torch.polar(inside.float().expand_as(phase), phase * inside)
    # field[j] = sum_k pupil[k] exp(-2 pi i x_j f_k), x_j = j dx for the window's
    # samples j = -(n_win // 2) ... (the centred FFT's convention), f_k = k df
    jj = torch.arange(n_win, device=device, dtype=torch.float64) - n_win // 2
    ang = (-2.0 * math.pi / n_fft) * torch.outer(jj, kk.double())
    dft = torch.polar(torch.ones_like(ang), ang).to(torch.complex64)  # (n_win, m)
    field = dft @ pupil @ dft.T
    intensity = field.real**2 + field.imag**2
    psf = intensity.reshape(-1, size, os_, size, os_).sum(dim=(2, 4))
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def astigmatic_twin(params: ArrayLike) -> torch.Tensor:
    """Return the other reading of zernike3 parameters that gives (nearly) the same PSF.

    The pupil phase of :func:`zernike_psf` is quadratic, with principal curvatures
    ``k+- = 2 sqrt(3) focus +- sqrt(6) cylinder`` along the astigmatism axis and across
    it. Geometric blur is an ellipse with semi-axes proportional to ``|k+|`` and
    ``|k-|``, so the sign of ``k-`` (the image plane between the two line foci, or
    outside them) shows only in diffraction detail. Flipping it gives the twin
    ``(cylinder / sqrt(2), sqrt(2) focus, axis)``: on the default optics the MTFs of
    twins 0.13-0.32 waves apart differ about as little as those of a 0.02-wave focus step
    (``python -m training.twins``). The map is its own inverse.

    Parameters
    ----------
    params : array_like
        (B, 3) or (3,) zernike3 parameters (focus, cylinder, axis), focus >= 0.

    Returns
    -------
    torch.Tensor
        (B, 3) float32, the twins.
    """
    p = as_params(params, 3).clone()
    f, c = p[:, 0].clone(), p[:, 1].clone()
    p[:, 0] = c / math.sqrt(2.0)
    p[:, 1] = f * math.sqrt(2.0)
    return p


def canonical_twin(params: ArrayLike) -> torch.Tensor:
    """Return, of each pair of astigmatic twins, the reading with less astigmatism.

    Replaces ``(focus, cylinder, axis)`` by its :func:`astigmatic_twin` where
    ``cylinder > sqrt(2) focus`` (``k- < 0``: the image plane between the line foci),
    so that the result has ``k- >= 0``: pure defocus stays as it is, and a point that
    blur cannot tell from its twin always reads the same. Within zernike3's ranges
    (focus 0-1, cylinder 0-0.5 waves) the result stays in range. Used as the training
    label convention of networks trained with ``training.train --twins canonical``.

    Parameters
    ----------
    params : array_like
        (B, 3) or (3,) zernike3 parameters.

    Returns
    -------
    torch.Tensor
        (B, 3) float32.
    """
    p = as_params(params, 3)
    swap = p[:, 1] > math.sqrt(2.0) * p[:, 0]
    return torch.where(swap[:, None], astigmatic_twin(p), p)


def next_fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast sizes for pocketfft and cuFFT)."""
    best = 2 * n
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < best:
                if p5 >= n:
                    best = min(best, p5)
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def render_psf(
    model: str | PSFModel,
    params: ArrayLike,
    size: int | None = None,
    optics: Optics | None = None,
    device: torch.device | str | None = None,
    cylinder_lens: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Render a batch of PSF kernels of a named model.

    Parameters
    ----------
    model : str or PSFModel
        ``gaussian1`` (width), ``gaussian2`` (width_x, width_y), ``zernike1``
        (focus), ``zernike2`` (cylinder, axis) or ``zernike3`` (focus, cylinder,
        axis). Widths are Gaussian standard deviations in pixels, Zernike
        coefficients in waves RMS, axes in radians.
    params : array_like
        Shape (B, N) or (N,).
    size : int, optional
        Odd kernel size in pixels; defaults to the model's ``kernel_size``.
    optics : Optics, optional
        Optics for Zernike models (ignored by Gaussian models).
    device : torch.device or str, optional
        Where to compute; defaults to the device of ``params`` (CPU for arrays).
    cylinder_lens : (float, float), optional
        Fixed astigmatism ``(cylinder, axis)`` added to ``zernike1`` PSFs, as a
        cylindrical lens in the light path would (used by the simulated scope).

    Returns
    -------
    torch.Tensor
        Kernels of shape (B, size, size), float32, each summing to one.
    """
    m = get_model(model)
    if device is None and isinstance(params, torch.Tensor):
        device = params.device
    p = as_params(params, m.n_params, device)
    size = _check_size(size or m.kernel_size)
    if m.kind == "gaussian":
        wx = p[:, 0]
        wy = p[:, 1] if m.n_params == 2 else p[:, 0]
        return gaussian_psf(wx, wy, size)
    zeros = torch.zeros_like(p[:, 0])
    if m.name == "zernike1":
        f = p[:, 0]
        if cylinder_lens is not None:
            c = torch.full_like(f, cylinder_lens[0])
            a = torch.full_like(f, cylinder_lens[1])
        else:
            c, a = zeros, zeros
        return zernike_psf(f, c, a, size, optics)
    if m.name == "zernike2":
        return zernike_psf(zeros, p[:, 0], p[:, 1], size, optics)
    return zernike_psf(p[:, 0], p[:, 1], p[:, 2], size, optics)
