"""OME-Zarr (zarr v3, OME-NGFF 0.5) session stores: writer, verifier, reader."""

from ._writer import LAYOUT_VERSION, SessionWriter, load_store, verify_store

__all__ = ["LAYOUT_VERSION", "SessionWriter", "load_store", "verify_store"]
