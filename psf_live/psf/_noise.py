"""The Poisson-Gaussian detection model of Eq. (10)."""

from __future__ import annotations

import torch

__all__ = ["add_noise"]


def add_noise(
    image: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    read_sigma: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Corrupt an expected photon image with Poisson and Gaussian noise (Eq. 10).

    ``psi_noisy = beta * n_p + b`` with ``n_p ~ Poisson(psi)`` and
    ``b ~ N(0, read_sigma^2)``: the mean is ``beta * psi`` and the variance
    ``beta^2 * psi + read_sigma^2`` (the paper's form, with beta the quantum
    efficiency in [0, 1]).

    Parameters
    ----------
    image : torch.Tensor
        Expected photon counts psi >= 0, any shape, float.
    beta : float or torch.Tensor
        Quantum efficiency; a tensor broadcasts against ``image`` (e.g. one
        value per patch of a batch, shape (B, 1, 1)).
    read_sigma : float or torch.Tensor
        Standard deviation of the Gaussian read noise, in output units.
    generator : torch.Generator, optional
        Random generator for reproducible noise.

    Returns
    -------
    torch.Tensor
        Noisy image, float32, same shape and device as ``image``.
    """
    psi = image.float()
    if not torch.isfinite(psi).all():
        raise ValueError("image contains NaN or infinity")
    if (psi < 0).any():
        raise ValueError("expected photon counts must be non-negative")
    counts = torch.poisson(psi, generator=generator)
    noise = torch.randn(psi.shape, generator=generator, device=psi.device, dtype=psi.dtype)
    return beta * counts + read_sigma * noise
