"""Shipped network weights: registry, model cards and checked loading."""

from psf_live.nets import OutputCodec, get_codec

from ._registry import (
    DEFAULT_MODEL,
    ModelCard,
    ModelLoadError,
    available_models,
    int8_path,
    load_int8,
    load_model,
    model_path,
    save_int8,
    save_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelCard",
    "ModelLoadError",
    "OutputCodec",
    "available_models",
    "get_codec",
    "int8_path",
    "load_int8",
    "load_model",
    "model_path",
    "save_int8",
    "save_model",
]
