"""Shared test configuration: headless Qt, small thread pools, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny zernike3 network saved as a model file (no trained weights needed)."""
    from test_estimate_estimator import make_tiny

    from psf_live import models

    net, card = make_tiny()
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    models.save_model(net, card, path)
    return path


@pytest.fixture
def core() -> Iterator[Any]:
    """The default simulated scope (tilted grid, cylindrical lens), unloaded afterwards."""
    from psf_live import acquire

    c = acquire.open_core()
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()
