"""PSF physics: optics, parametric PSF models, image formation and noise."""

from ._formation import OverlapAdd, bilinear_weights, convolve, irfft2
from ._models import PSF_MODELS, PSFModel, get_model
from ._noise import add_noise, estimate_noise
from ._optics import Optics, defocus_um_to_waves, defocus_waves_to_um
from ._plane import TILT_AXES, TiltAxis, plane_depth, tilt_direction
from ._render import (
    as_params,
    astigmatic_twin,
    canonical_twin,
    gaussian_psf,
    next_fast_len,
    render_psf,
    zernike_psf,
)

__all__ = [
    "PSF_MODELS",
    "TILT_AXES",
    "Optics",
    "OverlapAdd",
    "PSFModel",
    "TiltAxis",
    "add_noise",
    "as_params",
    "astigmatic_twin",
    "bilinear_weights",
    "canonical_twin",
    "convolve",
    "defocus_um_to_waves",
    "defocus_waves_to_um",
    "estimate_noise",
    "gaussian_psf",
    "get_model",
    "irfft2",
    "next_fast_len",
    "plane_depth",
    "render_psf",
    "tilt_direction",
    "zernike_psf",
]
