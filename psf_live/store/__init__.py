"""OME-Zarr (zarr v3, OME-NGFF 0.5) session stores: writer, verifier, reader."""

from ._deblur import deblur_file, map_from_npz
from ._writer import LAYOUT_VERSION, SessionWriter, load_store, verify_store

__all__ = [
    "LAYOUT_VERSION",
    "SessionWriter",
    "deblur_file",
    "load_store",
    "map_from_npz",
    "verify_store",
]
