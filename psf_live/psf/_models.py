"""The parametric PSF models of Table II and the ranges training draws from."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PSF_MODELS", "PSFModel", "get_model"]


@dataclass(frozen=True)
class PSFModel:
    """A parametric PSF model.

    Attributes
    ----------
    name : str
        Registry name (``gaussian1``, ``gaussian2``, ``zernike1``, ``zernike2``,
        ``zernike3``).
    kind : str
        ``"gaussian"`` (Eq. 8) or ``"zernike"`` (pupil function, Eq. 6-7).
    param_names : tuple of str
        Names of the N parameters, in order.
    units : tuple of str
        Unit of each parameter.
    ranges : tuple of (float, float)
        Closed interval each parameter is drawn from (uniformly) for training.
        Networks report values outside it clipped to its edges.
    kernel_size : int
        Default (odd) kernel window in pixels at the default optics; it holds
        >= 99 % of the energy of every PSF inside ``ranges``.
    """

    name: str
    kind: str
    param_names: tuple[str, ...]
    units: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    kernel_size: int

    @property
    def n_params(self) -> int:
        """Number of PSF parameters N (without the validity flag a0)."""
        return len(self.param_names)


_SIGMA = (0.5, 8.0)  # Gaussian widths, pixels: in focus -> strongly blurred
_FOCUS = (0.0, 1.0)  # Noll Z4, waves RMS: 1.0 wave ~ 24 px geometric blur radius at default optics
_CYL = (0.0, 0.5)  # astigmatism magnitude, waves RMS (cylindrical lens setup: 0.25)
_AXIS = (0.0, math.pi)  # astigmatism axis, radians

PSF_MODELS: dict[str, PSFModel] = {
    m.name: m
    for m in (
        PSFModel("gaussian1", "gaussian", ("width",), ("px",), (_SIGMA,), 49),
        PSFModel(
            "gaussian2",
            "gaussian",
            ("width_x", "width_y"),
            ("px", "px"),
            (_SIGMA, _SIGMA),
            49,
        ),
        PSFModel("zernike1", "zernike", ("focus",), ("waves",), (_FOCUS,), 85),
        PSFModel("zernike2", "zernike", ("cylinder", "axis"), ("waves", "rad"), (_CYL, _AXIS), 85),
        PSFModel(
            "zernike3",
            "zernike",
            ("focus", "cylinder", "axis"),
            ("waves", "waves", "rad"),
            (_FOCUS, _CYL, _AXIS),
            85,
        ),
    )
}


def get_model(name: str | PSFModel) -> PSFModel:
    """Return the PSF model called ``name`` (or ``name`` itself if already a model)."""
    if isinstance(name, PSFModel):
        return name
    try:
        return PSF_MODELS[name]
    except KeyError:
        known = ", ".join(PSF_MODELS)
        raise ValueError(f"unknown PSF model {name!r}; choose one of: {known}") from None
