"""Patch-regression networks, per-patch normalisation and output codecs."""

from ._arch import ARCHS, build_net
from ._codec import OutputCodec, dihedral_mean, get_codec
from ._normalize import normalize_patches

__all__ = [
    "ARCHS",
    "OutputCodec",
    "build_net",
    "dihedral_mean",
    "get_codec",
    "normalize_patches",
]
