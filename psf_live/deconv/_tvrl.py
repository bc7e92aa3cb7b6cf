"""Total-variation regularised Richardson-Lucy with spatially-variant PSFs (Eq. 12-13)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from psf_live.psf import OverlapAdd

from ._kernels import kernels_from_map, trim_kernels

__all__ = ["poisson_nll", "richardson_lucy_tv", "tv_divergence"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Where H^T 1 (the sensitivity of the data to an extended-domain pixel) falls
# below this, the pixel is not updated: it is (almost) unobserved.
_MIN_SENSITIVITY = 1e-3
# Smallest allowed TV factor 1 - lambda div(...): keeps the update positive and
# bounded for any lambda (never reached for lambda < 0.25 since |div| <= 4).
_MIN_TV_FACTOR = 0.05
# Floor of an extrapolated (accelerated) estimate, relative to the image maximum: a
# multiplicative update can never leave an exact zero.
_MIN_EXTRAPOLATED = 1e-6


def tv_divergence(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Curvature term ``div(grad x / |grad x|_eps)`` of the TV prior.

    Forward differences for the gradient, backward differences for the
    divergence (so ``div = -grad^T``), Neumann boundaries, and
    ``|g|_eps = sqrt(gx^2 + gy^2 + eps^2)``.

    Parameters
    ----------
    x : torch.Tensor
        (H, W) image.
    eps : float
        Smoothing of the gradient norm, in the units of ``x``.

    Returns
    -------
    torch.Tensor
        (H, W), values in [-4, 4].
    """
    # forward differences, zero on the last column/row (Neumann)
    gx = torch.diff(x, dim=1, append=x[:, -1:])
    gy = torch.diff(x, dim=0, append=x[-1:, :])
    inv = torch.mul(gx, gx).addcmul_(gy, gy).add_(eps * eps).rsqrt_()
    px = gx.mul_(inv)
    py = gy.mul_(inv)
    # backward differences of p (div = -grad^T), in place on a copy of px + py
    div = torch.add(px, py)
    div[:, 1:] -= px[:, :-1]
    div[1:, :] -= py[:-1, :]
    return div


def poisson_nll(image: torch.Tensor, blurred: torch.Tensor) -> float:
    """Poisson negative log-likelihood ``sum(Hx - y log Hx)`` (constant terms dropped).

    Parameters
    ----------
    image : torch.Tensor
        Observed counts ``y`` (>= 0).
    blurred : torch.Tensor
        Model ``H x`` (> 0 where ``y > 0``).

    Returns
    -------
    float
        The negative log-likelihood (float64 accumulation).
    """
    y = image.double()
    m = blurred.double().clamp_min(1e-300)
    return float((m - torch.where(y > 0, y * torch.log(m), torch.zeros_like(y))).sum())


def _to_tensor(a: Any, device: torch.device) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.to(device=device, dtype=torch.float32)


def _default_device(image: Any) -> torch.device:
    if isinstance(image, torch.Tensor):
        return image.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Problem:
    """The extended-domain operator y = crop(H x_ext) and its adjoint."""

    def __init__(
        self,
        shape: tuple[int, int],
        kernels: torch.Tensor,
        centers_y: np.ndarray,
        centers_x: np.ndarray,
        extend: bool,
        device: torch.device,
        method: str = "auto",
    ) -> None:
        self.shape = shape
        self.r = r = kernels.shape[-1] // 2 if extend else 0
        H, W = shape
        self.ext_shape = (H + 2 * r, W + 2 * r)
        self.op = OverlapAdd(
            self.ext_shape, centers_y + r, centers_x + r, kernels, device=device, method=method
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x, crop=self.r)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        # y covers the frame only: the operator zero-pads it by r itself
        return self.op.adjoint(y, margin=self.r)


def _as_kernels(
    psf: Any,
    shape: tuple[int, int],
    centers_y: Sequence[float] | npt.NDArray[Any] | None,
    centers_x: Sequence[float] | npt.NDArray[Any] | None,
    energy: float,
    device: torch.device,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    if hasattr(psf, "params") and hasattr(psf, "centers_y") and hasattr(psf, "psf_model"):
        k, cy, cx = kernels_from_map(psf, device=device, energy=energy)
        return k.reshape(-1, k.shape[-2], k.shape[-1]).to(device), cy, cx
    k = _to_tensor(psf, device)
    if not bool(torch.isfinite(k).all()):
        raise ValueError("the PSF contains NaN or inf")
    if k.ndim == 2:
        k = k[None]
        cy = np.array([(shape[0] - 1) / 2.0]) if centers_y is None else np.asarray(centers_y)
        cx = np.array([(shape[1] - 1) / 2.0]) if centers_x is None else np.asarray(centers_x)
    else:
        if centers_y is None or centers_x is None:
            raise ValueError("several PSFs need their grid centres (centers_y, centers_x)")
        cy, cx = np.asarray(centers_y, np.float64), np.asarray(centers_x, np.float64)
        k = k.reshape(-1, k.shape[-2], k.shape[-1])
    if k.shape[0] != cy.size * cx.size:
        raise ValueError(f"{k.shape[0]} PSFs do not match a {cy.size}x{cx.size} grid of centres")
    if k.shape[-1] != k.shape[-2] or k.shape[-1] % 2 == 0:
        raise ValueError(f"PSFs must be square with an odd side, got {tuple(k.shape[-2:])}")
    if bool((k.sum((-2, -1)) <= 0).any()):
        raise ValueError("every PSF must have a positive sum")
    k = k.clamp_min(0)
    return trim_kernels(k, energy), cy.astype(np.float64), cx.astype(np.float64)


def richardson_lucy_tv(
    image: ArrayT,
    psf: Any,
    num_iter: int = 20,
    lambda_tv: float = 0.1,
    *,
    centers_y: Sequence[float] | npt.NDArray[Any] | None = None,
    centers_x: Sequence[float] | npt.NDArray[Any] | None = None,
    eps: float | None = None,
    energy: float = 0.99,
    extend: bool = True,
    device: torch.device | str | None = None,
    method: str = "auto",
    accelerate: float = 0.0,
) -> ArrayT:
    r"""Deconvolve an image with (spatially-variant) TV-regularised Richardson-Lucy.

    The forward model is the overlap-add operator of Eq. (12),
    ``H x = sum_m h_m * (phi_m . x)`` (bilinear masks phi_m centred on the PSF
    grid, :class:`psf_live.psf.OverlapAdd`), with its exact adjoint
    ``H^T r = sum_m phi_m . (h~_m * r)``. Each iteration is the TV-RL update of
    Dey et al. (2006), the standard form of the paper's Eq. (13)::

        x <- x / (1 - lambda_tv * div(grad x / |grad x|_eps)) * H^T(y / H x) / H^T 1

    With one PSF this is ordinary TV-RL (and plain RL for ``lambda_tv=0``).

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor
        (H, W) blurred image, any real dtype; negative values (read noise) are
        clipped to zero, NaN/inf are rejected.
    psf : array_like, torch.Tensor or PSFMap
        One PSF (k, k) (spatially invariant); or R*C PSFs (R, C, k, k) or
        (R*C, k, k) centred at ``(centers_y[i], centers_x[j])`` (non-blind); or
        a PSF map from :class:`psf_live.estimate.Estimator` (blind: one kernel
        rendered per patch from its parameters; invalid patches are expected to
        be KNN-filled already). Kernels are normalised to sum to one.
    num_iter : int
        Number of iterations (20 in the paper).
    lambda_tv : float
        TV weight (0.1 in the paper, as in Dey et al.). It is dimensionless: the
        update is multiplicative and ``div(grad x/|grad x|)`` does not depend on
        the intensity scale, so the result is equivariant to scaling the image
        (``f(a y) = a f(y)``). The image is normalised internally by its
        maximum, which is the unit of ``eps``. ``|div| <= 4``, so the TV factor
        stays positive for ``lambda_tv < 0.25``; above, it is clamped at 0.05.
    centers_y, centers_x : sequence of float, optional
        Increasing pixel coordinates of the PSF grid (required for several PSFs;
        the image centre for one PSF).
    eps : float, optional
        Smoothing of ``|grad x|``, relative to the image maximum; default
        ``5 * lambda_tv``. Where ``|grad x| << eps`` the Dey update is an
        explicit diffusion step of size ``tau = lambda_tv * x / eps`` (x <= 1 after
        normalisation, about 1 in the flat bright areas): the checkerboard mode is
        multiplied by ``1 - 8 tau`` per iteration, so the step must stay below 1/4.
        The default gives ``tau = 0.2`` at the maximum (factor -0.6). A small
        ``eps`` makes ``lambda_tv = 0.1`` oscillate (checkerboards; measured on a
        128x128 camera image, Gaussian sigma 2.5 blur, Poisson noise: 13.5 dB SNR
        with eps=1e-3, 17.1 dB with eps=0.3, blurry input 15.1 dB, plain RL
        16.6 dB); the default before 2026-12-04, ``3 * lambda_tv`` (``tau = 1/3``,
        factor -1.67), grew rounding errors on a saturated flat frame to 0.3 % in
        20 iterations (0.56 % on a GPU) and left Table V's gains unchanged (30
        images: within 0.05 dB).
    energy : float
        Each kernel is cropped to the smallest centred square holding this
        fraction of its energy (99 % by default) so local FFTs stay small. The
        far diffraction tails beyond it do not change the result: on 2 x 20
        Table V-style images (Zernike defocus and Gaussian quadrants, true PSFs)
        the SNR gain was 2.644 / 2.641 / 2.638 dB (Zernike) and 2.260 / 2.259 /
        2.258 dB (Gaussian) at 99.9 / 99.5 / 99 %, while a 0.6-wave defocus
        kernel shrinks from 81 to 51 px (FFT windows 360 -> 320 px at 1024x1024).
    extend : bool
        Field extension: estimate ``x`` on a domain larger than the frame by the
        kernel radius, so that borders do not ring and nothing wraps around; the
        data term only covers the frame (``H^T 1 < 1`` in the margin, which the
        update accounts for). With ``False`` the object is assumed zero outside
        the frame.
    device : torch.device or str, optional
        Where to compute: the image's device for tensors, else CUDA when
        available, else CPU.
    method : {"auto", "windows", "frame"}
        How the overlap-add convolutions are computed (:class:`psf_live.psf.OverlapAdd`):
        the same result either way; "auto" takes the cheaper one.
    accelerate : float
        Largest step of Biggs-Andrews vector extrapolation (first order), 0 (the
        default: plain updates, so the paper's 20 iterations mean what they say) to 1
        (``True``: Biggs and Andrews' own rule). Each update starts from
        ``x_k + alpha (x_k - x_{k-1})`` (floored just above zero), ``alpha`` the
        correlation of the last two update steps, clipped to ``[0, accelerate]``. Same
        fixed points; with 1, as far after N iterations as plain RL after 2-4 N on
        deblurring problems (``tests/test_deconv_tvrl.py``). A smaller cap fits noise
        less abruptly: :func:`psf_live.deconv.refine_size` uses 0.6.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        (H, W) float32 non-negative estimate, same kind as ``image`` (tensors on
        the compute device).

    Notes
    -----
    Guards: ``H x`` is floored at 1e-12 of the image scale (zero regions give a
    zero ratio, not NaN), pixels of the extended margin with ``H^T 1 < 1e-3``
    are not updated, and the TV factor is floored at 0.05. The first estimate
    is flat at the image mean. The denominator is ``(1 - lambda div) H^T 1``
    (the brief's product form; Dey's derivation gives ``H^T 1 - lambda div``,
    identical wherever ``H^T 1 = 1``, i.e. everywhere but the margin).

    References
    ----------
    .. [1] W. H. Richardson, "Bayesian-based iterative method of image
       restoration", J. Opt. Soc. Am. 62 (1972).
    .. [2] N. Dey et al., "Richardson-Lucy algorithm with total variation
       regularization for 3D confocal microscope deconvolution", Microsc. Res.
       Tech. 69 (2006), 260-266.
    .. [3] M. Hirsch et al., "Efficient filter flow for space-variant multiframe
       blind deconvolution", CVPR 2010 (overlap-add).
    .. [4] A. Shajkofci and M. Liebling, IEEE TIP 29 (2020), Eq. 12-13.
    """
    if num_iter < 0:
        raise ValueError(f"num_iter must be >= 0, got {num_iter}")
    if lambda_tv < 0:
        raise ValueError(f"lambda_tv must be >= 0, got {lambda_tv}")
    if not 0 <= float(accelerate) <= 1:
        raise ValueError(f"accelerate must be in [0, 1], got {accelerate}")
    dev = torch.device(device) if device is not None else _default_device(image)
    is_tensor = isinstance(image, torch.Tensor)
    y = _to_tensor(image, dev)
    if y.ndim != 2 or y.numel() == 0:
        raise ValueError(f"expected a non-empty 2D image, got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("the image contains NaN or inf")
    shape = (int(y.shape[0]), int(y.shape[1]))
    kernels, cy, cx = _as_kernels(psf, shape, centers_y, centers_x, energy, dev)
    y = y.clamp_min(0)
    scale = float(y.max())
    if scale <= 0 or num_iter == 0:
        out = y.clone()
        return out if is_tensor else out.cpu().numpy()  # type: ignore[return-value]
    y = y / scale
    eps_ = 5.0 * lambda_tv if eps is None else float(eps)
    prob = _Problem(shape, kernels, cy, cx, extend, dev, method)
    sens = prob.adjoint(torch.ones_like(y))
    observed = sens > _MIN_SENSITIVITY
    inv_sens = torch.where(observed, 1.0 / sens.clamp_min(_MIN_SENSITIVITY), 0.0)
    unobserved = None if bool(observed.all()) else ~observed
    x = torch.full(prob.ext_shape, float(y.mean()), device=dev)
    floor = 1e-12
    # Biggs-Andrews state: the previous estimate and the last two update steps
    x_prev: torch.Tensor | None = None
    steps: list[torch.Tensor] = []
    for _ in range(num_iter):
        start = x
        if accelerate and len(steps) == 2:
            g1, g2 = steps
            alpha = float((g1 * g2).sum() / (g2 * g2).sum().clamp_min(1e-30))
            alpha = min(max(alpha, 0.0), float(accelerate))
            if x_prev is not None and alpha > 0:
                start = torch.lerp(x, x_prev, -alpha).clamp_min_(_MIN_EXTRAPOLATED)
        # forward/adjoint return fresh tensors, so the updates below work in place
        ratio = torch.div(y, prob.forward(start).clamp_min_(floor))
        corr = prob.adjoint(ratio).mul_(inv_sens)
        if lambda_tv > 0:
            tv = tv_divergence(start, max(eps_, 1e-12)).mul_(-lambda_tv).add_(1.0)
            corr.div_(tv.clamp_min_(_MIN_TV_FACTOR))
        if unobserved is not None:  # unobserved margin pixels keep their value
            corr.masked_fill_(unobserved, 1.0)
        if accelerate:
            new = start * corr
            steps = [new - start, *steps[:1]]
            x_prev, x = x, new
        else:
            x = x.mul_(corr)
    r = prob.r
    out = x[r : r + shape[0], r : r + shape[1]] * scale
    return out if is_tensor else out.cpu().numpy()  # type: ignore[return-value]
