"""Patch-regression networks, per-patch normalisation and output codecs."""

from ._arch import ARCHS, LogPowerSpectrum, SlimResNet, SpectralNet, build_net
from ._codec import TTA_VIEWS, OutputCodec, dihedral_mean, dihedral_views, get_codec
from ._normalize import normalize_patches
from ._quant import (
    INT8_FLOAT_MODULES,
    int8_from_state,
    int8_unavailable,
    probe_patches,
    quantize_int8,
)

__all__ = [
    "ARCHS",
    "INT8_FLOAT_MODULES",
    "TTA_VIEWS",
    "LogPowerSpectrum",
    "OutputCodec",
    "SlimResNet",
    "SpectralNet",
    "build_net",
    "dihedral_mean",
    "dihedral_views",
    "get_codec",
    "int8_from_state",
    "int8_unavailable",
    "normalize_patches",
    "probe_patches",
    "quantize_int8",
]
