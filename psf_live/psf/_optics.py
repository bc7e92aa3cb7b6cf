"""Optical description of the microscope used to render PSFs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["Optics", "defocus_um_to_waves", "defocus_waves_to_um"]


@dataclass(frozen=True)
class Optics:
    """Wide-field microscope optics, in object space.

    The defaults describe a 10x / 0.25 NA dry objective imaging green light onto a
    camera whose pixels are 0.64 um wide in the sample (6.4 um pixels behind 10x),
    so that a 1024 x 1024 frame covers 655 um, the field of view of the paper's
    depth experiment (Section III-E).

    Parameters
    ----------
    na : float
        Numerical aperture of the objective.
    wavelength_um : float
        Emission (or transmitted-light) wavelength in micrometres.
    immersion_index : float
        Refractive index of the immersion medium (1.0 for air).
    pixel_size_um : float
        Camera pixel size projected into the sample, in micrometres.
    magnification : float
        Total magnification from sample to camera (recorded for metadata; the
        rendering itself works in object space).
    oversample : int
        Sub-pixel sampling used when rendering pupil-function PSFs; each camera
        pixel integrates ``oversample x oversample`` samples of the intensity PSF.
        Must be odd so that the PSF centre falls on a pixel centre.
    """

    na: float = 0.25
    wavelength_um: float = 0.55
    immersion_index: float = 1.0
    pixel_size_um: float = 0.64
    magnification: float = 10.0
    oversample: int = field(default=3)

    def __post_init__(self) -> None:
        if not 0 < self.na < self.immersion_index:
            raise ValueError(
                f"na must be in (0, immersion_index={self.immersion_index}), got {self.na}"
            )
        if self.wavelength_um <= 0 or self.pixel_size_um <= 0 or self.magnification <= 0:
            raise ValueError("wavelength, pixel size and magnification must be positive")
        if self.oversample < 1 or self.oversample % 2 == 0:
            raise ValueError(f"oversample must be a positive odd integer, got {self.oversample}")

    @property
    def cutoff_cycles_per_um(self) -> float:
        """Radius of the coherent pupil, NA / lambda, in cycles per micrometre."""
        return self.na / self.wavelength_um

    @property
    def airy_fwhm_um(self) -> float:
        """Full width at half maximum of the in-focus Airy disc, 0.514 lambda / NA."""
        return 0.5145 * self.wavelength_um / self.na

    def to_dict(self) -> dict[str, Any]:
        """Return the optics as a JSON-serialisable dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Optics:
        """Build optics from :meth:`to_dict` output (unknown keys are rejected)."""
        return cls(**data)

    def replace(self, **changes: Any) -> Optics:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


def _defocus_scale(optics: Optics) -> float:
    """Waves RMS of Noll Z4 per micrometre of sample defocus.

    A defocus ``dz`` adds the optical path ``dz * (n - sqrt(n^2 - NA^2 rho^2))``
    across the pupil; its rho^2 part has peak value ``W = dz (n - sqrt(n^2 - NA^2))``
    and the Noll-normalised defocus term sqrt(3) (2 rho^2 - 1) carrying the same
    wavefront has coefficient ``W / (2 sqrt(3))``.
    """
    n, na = optics.immersion_index, optics.na
    peak_um_per_um = n - math.sqrt(n * n - na * na)
    return peak_um_per_um / (2.0 * math.sqrt(3.0) * optics.wavelength_um)


def defocus_um_to_waves(dz_um: float, optics: Optics) -> float:
    """Convert a sample defocus in micrometres to a Zernike defocus in waves RMS.

    Parameters
    ----------
    dz_um : float
        Signed distance between the sample and the focal plane, in micrometres.
    optics : Optics
        Microscope optics.

    Returns
    -------
    float
        Noll Z4 coefficient in waves RMS (same sign as ``dz_um``).
    """
    return dz_um * _defocus_scale(optics)


def defocus_waves_to_um(waves: float, optics: Optics) -> float:
    """Inverse of :func:`defocus_um_to_waves`."""
    return waves / _defocus_scale(optics)
