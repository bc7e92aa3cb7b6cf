"""Camera model of the simulated microscope: Eq. (10) noise, offset, gain, bit depth.

A frame is ``clip(round(offset + gain * (beta * Poisson(psi) + N(0, read_sigma^2))),
0, 2^bit_depth - 1)`` as uint16, with ``psi`` the expected photo-electrons per
pixel (Eq. 10 of the paper plus the camera's analogue offset and gain).

Drawing exact Poisson numbers for a megapixel costs ~35 ms on a CPU core
(``torch.poisson``), too slow for a live camera. :class:`FrameNoiser` therefore
draws pixels whose expected count is at least ``gauss_threshold`` (default 20
photo-electrons) from the moment-matched normal distribution
``N(beta psi, beta^2 psi + read_sigma^2)`` (skewness 1/sqrt(psi) <= 0.22 is the
only difference), and the darker pixels exactly from Eq. (10). Set
``gauss_threshold=math.inf`` for exact Poisson everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CameraModel", "FrameNoiser", "camera_frame"]


@dataclass(frozen=True)
class CameraModel:
    """Detection parameters of the simulated camera.

    Attributes
    ----------
    beta : float
        Quantum-efficiency factor of Eq. (10) (electrons per detected photon).
    read_noise_e : float
        Gaussian read noise, electrons RMS.
    gain_adu_per_e : float
        Analogue-to-digital gain.
    offset_adu : float
        Dark offset added to every pixel (ADU).
    bit_depth : int
        Output range is ``[0, 2^bit_depth - 1]``; frames are uint16.
    gauss_threshold : float
        Expected counts at or above this use the normal approximation of the
        Poisson law; ``math.inf`` draws every pixel exactly.
    """

    beta: float = 1.0
    read_noise_e: float = 2.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 100.0
    bit_depth: int = 16
    gauss_threshold: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.bit_depth <= 16:
            raise ValueError(f"bit depth must be within 1..16, got {self.bit_depth}")
        if self.beta <= 0 or self.gain_adu_per_e <= 0:
            raise ValueError("beta and gain must be positive")
        if self.read_noise_e < 0 or self.offset_adu < 0:
            raise ValueError("read noise and offset must be non-negative")

    @property
    def max_adu(self) -> int:
        """Largest value a pixel can hold."""
        return int(2**self.bit_depth - 1)


class FrameNoiser:
    """Draws noisy uint16 frames of one expected image, fast.

    Everything that depends only on the expected image (means, standard
    deviations, the set of low-count pixels) is computed once; each
    :meth:`sample` then costs one normal draw over the frame plus an exact
    Poisson draw over the low-count pixels.

    Parameters
    ----------
    expected : torch.Tensor
        Expected photo-electrons psi >= 0, shape (H, W).
    camera : CameraModel, optional
        Detection parameters.
    """

    def __init__(self, expected: torch.Tensor, camera: CameraModel | None = None) -> None:
        self.camera = cam = camera or CameraModel()
        psi = expected.detach().to("cpu", torch.float32)
        if psi.ndim != 2:
            raise ValueError(f"expected image must be 2D, got shape {tuple(psi.shape)}")
        if not torch.isfinite(psi).all():
            raise ValueError("expected image contains NaN or infinity")
        if (psi < 0).any():
            raise ValueError("expected photo-electrons must be non-negative")
        self.shape = (int(psi.shape[0]), int(psi.shape[1]))
        g, b, s = cam.gain_adu_per_e, cam.beta, cam.read_noise_e
        flat = psi.reshape(-1)
        # Poisson(0) is 0: pixels without signal need no draw (read noise only).
        low = (flat < cam.gauss_threshold) & (flat > 0)
        self._low_idx = torch.nonzero(low).reshape(-1)
        self._low_psi = flat[self._low_idx].contiguous()
        # +0.5 so that truncation when casting to integers rounds to nearest.
        mean = cam.offset_adu + 0.5 + g * b * flat
        var = (g * b) ** 2 * flat + (g * s) ** 2
        mean[self._low_idx] = cam.offset_adu + 0.5
        var[self._low_idx] = (g * s) ** 2
        self._mean = mean.contiguous()
        self._std = var.sqrt_().contiguous()
        self._gb = g * b
        self._buf = torch.empty_like(self._mean)

    @property
    def exact_fraction(self) -> float:
        """Fraction of pixels drawn exactly from the Poisson law."""
        return self._low_idx.numel() / max(self._mean.numel(), 1)

    def sample(
        self, generator: torch.Generator | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Draw one noisy frame.

        Parameters
        ----------
        generator : torch.Generator, optional
            CPU random generator (fresh noise on every call).
        out : numpy.ndarray, optional
            A uint16 array of the frame's shape to fill in place (e.g. a camera
            buffer); a new one is returned otherwise.

        Returns
        -------
        numpy.ndarray
            The frame, uint16, shape (H, W).
        """
        buf = self._buf
        torch.randn(buf.shape, generator=generator, out=buf)
        torch.addcmul(self._mean, self._std, buf, out=buf)
        if self._low_idx.numel():
            counts = torch.poisson(self._low_psi, generator=generator)
            buf.index_add_(0, self._low_idx, counts, alpha=self._gb)
        buf.clamp_(0.0, float(self.camera.max_adu))
        frame = buf.numpy().reshape(self.shape)
        if out is None:
            return frame.astype(np.uint16)
        if out.shape != self.shape or out.dtype != np.uint16:
            raise ValueError(f"out must be uint16 of shape {self.shape}")
        np.copyto(out, frame, casting="unsafe")
        return out


def camera_frame(
    expected: torch.Tensor,
    camera: CameraModel | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """One noisy uint16 camera frame of an expected photo-electron image.

    Parameters
    ----------
    expected : torch.Tensor
        Expected photo-electrons psi >= 0, shape (H, W).
    camera : CameraModel, optional
        Detection parameters (Eq. 10 noise, offset, gain, bit depth).
    generator : torch.Generator, optional
        Random generator.

    Returns
    -------
    numpy.ndarray
        uint16 frame of shape (H, W).
    """
    return FrameNoiser(expected, camera).sample(generator)
