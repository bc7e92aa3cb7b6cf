"""Coefficient of determination (Eq. 15) per parameter, with angle-aware errors."""

from __future__ import annotations

import math

import torch

from psf_live.nets import get_codec

__all__ = ["AXIS_MIN_CYLINDER", "axis_period", "r2_report", "r2_score"]

AXIS_MIN_CYLINDER = 0.05  # waves RMS: below, the astigmatism axis is undefined and not scored


def axis_period(psf_model: str) -> float:
    """Period of the astigmatism axis: pi for zernike3, pi / 2 for zernike2 (no focus)."""
    return math.pi if psf_model == "zernike3" else math.pi / 2


def r2_score(pred: torch.Tensor, true: torch.Tensor, err: torch.Tensor | None = None) -> float:
    """R^2 = 1 - sum (a - a_hat)^2 / sum (a - mean a)^2 (Eq. 15)."""
    e = (pred - true) if err is None else err
    ss_res = float((e.double() ** 2).sum())
    ss_tot = float(((true.double() - true.double().mean()) ** 2).sum())
    return 1.0 - ss_res / max(ss_tot, 1e-12)


def r2_report(psf_model: str, pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """R^2 per public parameter, their mean (``r2``) and, for astigmatism, per signed component.

    The axis error is wrapped to its period (pi for zernike3, pi/2 for zernike2) and
    scored only where the true cylinder is >= ``AXIS_MIN_CYLINDER``; ``astig_c``/``astig_s``
    are the R^2 of the signed components C cos(ha), C sin(ha) (h = 2 or 4), the
    well-posed form the network regresses.
    """
    codec = get_codec(psf_model)
    out: dict[str, float] = {}
    for j, name in enumerate(codec.param_names):
        p, t = pred[:, j], true[:, j]
        if name == "axis":
            period = axis_period(psf_model)
            m = true[:, j - 1] >= AXIS_MIN_CYLINDER
            d = torch.remainder(p[m] - t[m] + period / 2, period) - period / 2
            tt = torch.remainder(t[m], period)
            out[name] = r2_score(tt, tt, err=d) if int(m.sum()) > 1 else float("nan")
        else:
            out[name] = r2_score(p, t)
    vals = [v for v in out.values() if not math.isnan(v)]
    r2 = sum(vals) / max(len(vals), 1)
    if psf_model in ("zernike2", "zernike3"):
        tp, tt = codec.encode(pred), codec.encode(true)
        out["astig_c"] = r2_score(tp[:, -2], tt[:, -2])
        out["astig_s"] = r2_score(tp[:, -1], tt[:, -1])
    out["r2"] = r2
    return out
