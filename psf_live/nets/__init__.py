"""Patch-regression networks, per-patch normalisation and output codecs."""

from ._arch import ARCHS, LogPowerSpectrum, SpectralNet, build_net
from ._codec import TTA_VIEWS, OutputCodec, dihedral_mean, dihedral_views, get_codec
from ._normalize import normalize_patches

__all__ = [
    "ARCHS",
    "TTA_VIEWS",
    "LogPowerSpectrum",
    "OutputCodec",
    "SpectralNet",
    "build_net",
    "dihedral_mean",
    "dihedral_views",
    "get_codec",
    "normalize_patches",
]
