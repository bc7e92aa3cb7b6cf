"""The Poisson-Gaussian detection model of Eq. (10)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["add_noise", "estimate_noise"]


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


def estimate_noise(image: npt.ArrayLike, bins: int = 16) -> tuple[float, float]:
    """Fit the Poisson-Gaussian noise of one image: ``variance = gain * mean + intercept``.

    The photon-transfer line of a camera, read from a single frame. The noise is
    isolated by the separable second difference ``[1, -2, 1] x [1, -2, 1]`` (for
    white noise of variance v its output has variance 36 v; a blurred image's own
    curvature is small beside it), its variance is measured robustly
    (``(1.4826 MAD)^2``) in ``bins`` bins of equal pixel count over the local mean
    (5 x 5 box), and a line is fitted through the bins by least squares weighted by
    the inverse squared variance (a variance estimate's error grows with it). For the
    model of :func:`add_noise` the slope is ``beta`` (ADU per photon) and the
    intercept ``read_sigma^2``; a dark offset ``o`` lowers the intercept by
    ``beta * o``. Sharp texture inflates the variance of the bins it falls in, so
    the gain errs high rather than low on in-focus images.

    Parameters
    ----------
    image : array_like
        (H, W) raw frame in camera units, at least 16 x 16, finite.
    bins : int
        Number of intensity bins (>= 3).

    Returns
    -------
    gain : float
        Slope of variance against mean (ADU per photon), > 0.
    intercept : float
        Variance at zero signal (ADU^2); may be negative with a dark offset.

    Raises
    ------
    ValueError
        Not a finite 2D image of at least 16 x 16, fewer than 3 bins, or no
        signal-dependent noise found (a flat, noise-free or clipped image).
    """
    from scipy.ndimage import uniform_filter

    y = np.asarray(image, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 16:
        raise ValueError(f"need a 2D image of at least 16 x 16 pixels, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("image contains NaN or infinity")
    if bins < 3:
        raise ValueError(f"need at least 3 bins, got {bins}")
    d = y[:-2] - 2.0 * y[1:-1] + y[2:]
    r = (d[:, :-2] - 2.0 * d[:, 1:-1] + d[:, 2:]).ravel()
    m = uniform_filter(y, 5, mode="nearest")[1:-1, 1:-1].ravel()
    order = np.argsort(m, kind="stable")
    means, vs = [], []
    for idx in np.array_split(order, bins):
        if idx.size < 32:
            continue
        rb = r[idx]
        mad = np.median(np.abs(rb - np.median(rb)))
        means.append(float(m[idx].mean()))
        vs.append((1.4826 * mad) ** 2 / 36.0)
    mv, vv = np.asarray(means), np.asarray(vs)
    if mv.size < 3 or np.ptp(mv) <= 0 or not (vv > 0).any():
        raise ValueError("no noise found to fit (a flat, noise-free or clipped image)")
    w = 1.0 / np.maximum(vv, vv[vv > 0].min())
    a = np.vstack([mv, np.ones_like(mv)]).T * w[:, None]
    (gain, intercept), *_ = np.linalg.lstsq(a, vv * w, rcond=None)
    if not gain > 0:
        raise ValueError(
            "no signal-dependent (Poisson) noise found: give the camera's gain instead"
        )
    return float(gain), float(intercept)
