"""Kernel preparation for deconvolution: support trimming and PSF maps to local kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["kernels_from_map", "trim_kernels"]


def trim_kernels(kernels: torch.Tensor, energy: float = 0.99) -> torch.Tensor:
    """Crop centred kernels to the smallest odd square holding ``energy`` of each.

    Parameters
    ----------
    kernels : torch.Tensor
        (..., k, k) kernels with odd ``k``, centred on the middle pixel.
    energy : float
        Fraction of the (absolute) kernel sum the cropped square must keep, for
        every kernel; 1.0 keeps the whole support.

    Returns
    -------
    torch.Tensor
        (..., k', k') float32 kernels, ``k' <= k`` odd, common to all kernels,
        each renormalised to sum to one. Cropping a 85 px Zernike kernel of a
        small defocus to its real support is what keeps local FFT windows small.
    """
    k = kernels.shape[-1]
    if kernels.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"kernels must be square with an odd side, got {tuple(kernels.shape)}")
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    h = kernels.float().reshape(-1, k, k).abs()
    total = h.sum((-2, -1)).clamp_min(1e-30)
    c = k // 2
    radius = c
    if energy < 1.0:
        # Energy inside the centred square of radius rr, for rr = 0..c (all kernels).
        d = torch.maximum(
            (torch.arange(k, device=h.device) - c).abs()[:, None],
            (torch.arange(k, device=h.device) - c).abs()[None, :],
        )
        ring = torch.zeros((h.shape[0], c + 1), device=h.device)
        ring.index_add_(1, d.reshape(-1), h.reshape(h.shape[0], -1))
        frac = ring.cumsum(1) / total[:, None]
        ok = (frac >= energy - 1e-7).all(0)
        radius = int(torch.nonzero(ok)[0].item()) if bool(ok.any()) else c
    out = kernels.float()[..., c - radius : c + radius + 1, c - radius : c + radius + 1]
    s = out.sum((-2, -1), keepdim=True)
    return (out / torch.where(s.abs() > 0, s, torch.ones_like(s))).contiguous()


def kernels_from_map(
    psf_map: Any,
    optics: Any = None,
    device: torch.device | str | None = None,
    energy: float = 0.99,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Render one kernel per patch of a PSF map (blind use).

    Parameters
    ----------
    psf_map : psf_live.estimate.PSFMap
        A map whose invalid patches are already KNN-filled (the estimator does
        it by default).
    optics : psf_live.psf.Optics, optional
        Optics for Zernike models; defaults to the optics of the map's model card.
    device : torch.device or str, optional
        Where to render.
    energy : float
        Support trimming, see :func:`trim_kernels`.

    Returns
    -------
    kernels : torch.Tensor
        (rows, cols, k, k) float32 kernels summing to one.
    centers_y, centers_x : numpy.ndarray
        Patch centres (pixels) along rows and columns.
    """
    from psf_live.estimate._map import psf_kernels

    k = psf_kernels(psf_map, optics=optics, device=device)
    return (
        trim_kernels(k, energy),
        np.asarray(psf_map.centers_y, dtype=np.float64),
        np.asarray(psf_map.centers_x, dtype=np.float64),
    )
