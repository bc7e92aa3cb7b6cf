"""psf-live: live spatially-variant PSF estimation for wide-field microscopes.

Shajkofci & Liebling, "Spatially-Variant CNN-based PSF Estimation for Blind
Deconvolution and Depth Estimation in Optical Microscopy", IEEE TIP 2020.
"""

__version__ = "0.1.0"
