"""Shipped network weights: registry, model cards and checked loading."""

from psf_live.nets import OutputCodec, get_codec

from ._registry import (
    DEFAULT_MODEL,
    ModelCard,
    ModelLoadError,
    available_models,
    load_model,
    model_path,
    save_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelCard",
    "ModelLoadError",
    "OutputCodec",
    "available_models",
    "get_codec",
    "load_model",
    "model_path",
    "save_model",
]
