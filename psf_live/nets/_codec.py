"""Mapping between public PSF parameters and the network's internal regression targets."""

from __future__ import annotations

import math

import torch

from psf_live.psf import get_model

__all__ = ["OutputCodec", "get_codec"]


class OutputCodec:
    """Public PSF parameters <-> internal regression targets for one PSF model.

    The network output is ``raw = (a0, t_1..t_T)``: ``a0`` is the validity logit
    (``sigmoid(a0)`` = probability that the patch is *invalid*, i.e. a0 = 1 in the
    paper's notation; trained with binary cross-entropy) and ``t`` the targets:

    - gaussian1 / gaussian2 / zernike1: each parameter scaled to [0, 1] by its range.
    - zernike3 (focus f, cylinder C, axis a): ``(f/f_max, C/C_max, C cos 2a / C_max,
      C sin 2a / C_max)``. The signed pair has no wrap-around at the axis period pi;
      the axis decodes as ``atan2(s, c) / 2 mod pi``, the cylinder from its own head.
      Near f = 0 the axes a and a + pi/2 give the same PSF (the sign of defocus is
      then undefined), a genuine ambiguity of the model.
    - zernike2 (C, a, no focus): the PSF only defines the axis modulo pi/2, so the
      signed pair is ``(C cos 4a, C sin 4a)`` and the decoded axis lies in [0, pi/2).

    Parameters
    ----------
    psf_model : str
        Name of a model in :data:`psf_live.psf.PSF_MODELS`.
    """

    def __init__(self, psf_model: str) -> None:
        self.model = get_model(psf_model)
        self.psf_model = self.model.name
        self.param_names = self.model.param_names
        lo = torch.tensor([r[0] for r in self.model.ranges], dtype=torch.float32)
        hi = torch.tensor([r[1] for r in self.model.ranges], dtype=torch.float32)
        self._lo, self._hi = lo, hi
        name = self.psf_model
        if name == "zernike3":
            self._harm = 2
            self.n_targets = 4
        elif name == "zernike2":
            self._harm = 4
            self.n_targets = 3
        else:
            self._harm = 0
            self.n_targets = self.model.n_params
        self.n_outputs = 1 + self.n_targets

    def _range(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._lo.to(t.device), self._hi.to(t.device)

    def encode(self, params: torch.Tensor) -> torch.Tensor:
        """Public parameters (B, N) -> targets (B, T), float32."""
        p = params.float()
        if p.ndim != 2 or p.shape[1] != self.model.n_params:
            raise ValueError(
                f"expected parameters of shape (B, {self.model.n_params}), got {tuple(p.shape)}"
            )
        lo, hi = self._range(p)
        if self._harm == 0:
            return (p - lo) / (hi - lo)
        c_max = hi[-2]
        cyl, axis = p[:, -2], p[:, -1]
        c = cyl / c_max
        pair = torch.stack(
            [c * torch.cos(self._harm * axis), c * torch.sin(self._harm * axis)], dim=1
        )
        cols = []
        if self.psf_model == "zernike3":
            cols.append(((p[:, 0] - lo[0]) / (hi[0] - lo[0]))[:, None])
        cols.append(c[:, None])
        cols.append(pair)
        return torch.cat(cols, dim=1)

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output (B, 1 + T) -> (valid_prob (B,), params (B, N) clipped to the ranges)."""
        r = raw.float()
        if r.ndim != 2 or r.shape[1] != self.n_outputs:
            raise ValueError(
                f"expected raw outputs of shape (B, {self.n_outputs}), got {tuple(r.shape)}"
            )
        valid = torch.sigmoid(-r[:, 0])
        t = r[:, 1:]
        lo, hi = self._range(r)
        if self._harm == 0:
            p = lo + t * (hi - lo)
        else:
            off = 1 if self.psf_model == "zernike3" else 0
            c_max = hi[-2]
            cyl = t[:, off] * c_max
            axis = torch.atan2(t[:, off + 2], t[:, off + 1]) / self._harm
            axis = torch.remainder(axis, 2 * math.pi / self._harm)
            cols = []
            if off:
                cols.append((lo[0] + t[:, 0] * (hi[0] - lo[0]))[:, None])
            cols += [cyl[:, None], axis[:, None]]
            p = torch.cat(cols, dim=1)
        p = torch.maximum(torch.minimum(p, hi), lo)
        return valid, p


_CACHE: dict[str, OutputCodec] = {}


def get_codec(psf_model: str) -> OutputCodec:
    """Return the :class:`OutputCodec` of PSF model ``psf_model``."""
    name = get_model(psf_model).name
    if name not in _CACHE:
        _CACHE[name] = OutputCodec(name)
    return _CACHE[name]
