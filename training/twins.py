"""Where zernike3's focus/cylinder error lies: astigmatic twins and shrinkage.

Usage::

    python -m training.twins --model zernike3 --batches 16

The zernike3 pupil phase ``2 pi [f sqrt(3) (2 rho^2 - 1) + C sqrt(6) rho^2 cos 2(phi - a)]``
is quadratic, with principal curvatures ``k+- = 2 sqrt(3) f +- sqrt(6) C`` along the axis
``a`` and across it. In geometric optics the blur is an ellipse with semi-axes
proportional to ``|k+|`` and ``|k-|``, so the sign of ``k-`` (is the image plane between
the two line foci of the Sturm interval, or outside them?) does not show. Flipping it
maps ``(f, C)`` to its *twin* ``(C / sqrt(2), sqrt(2) f)``, same axis: a different point
of parameter space (up to 0.3 waves away) whose PSF differs only by diffraction detail.
Within the zernike3 ranges (focus 0-1, cylinder 0-0.5 waves) a third of the prior has
its twin in range (``f <= 0.354``).

This script measures (1) how alike twin PSFs are, as the relative difference of their
MTFs next to that of a small step of one parameter, (2) what confusing every twin would
cost at most (the posterior mean of two equally likely twins is their midpoint, which
lies on ``k- = 0``), and (3) on the mixed test stream that ``training.evaluate`` scores
the validity flag on, whether a network's estimate sits nearer the truth, its twin or
their midpoint, how often it tells the side of the Sturm interval, and how far its
cylinder estimate is shrunk towards the mean, by focus.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys

import numpy as np
import torch

from psf_live.models import load_model
from psf_live.psf import zernike_psf

from .data import DEFAULT_TYPES, DegradeConfig
from .evaluate import BANK_SIZE, DihedralMean, _stream, card_ranges, predict

__all__ = ["mtf_distance", "twin", "twin_confusion_r2", "twin_report"]

SQRT2 = math.sqrt(2.0)
PURE_DEFOCUS = {"cylinder": (0.0, 0.02)}
"""Draw intervals of the pure-defocus check (no cylindrical lens, no astigmatism)."""


def twin(focus: np.ndarray, cylinder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the astigmatic twin ``(C / sqrt(2), sqrt(2) f)`` of ``(f, C)`` (same axis).

    The twin has the same ``|k+|`` and the opposite ``k-`` (principal curvatures of the
    pupil phase, module docstring); the map is its own inverse. The float64 numpy form of
    :func:`psf_live.psf.astigmatic_twin` (float32 tensors), for the bookkeeping here.
    """
    f = np.asarray(focus, dtype=np.float64)
    c = np.asarray(cylinder, dtype=np.float64)
    return c / SQRT2, f * SQRT2


def mtf_distance(params_a: np.ndarray, params_b: np.ndarray, size: int = 85) -> np.ndarray:
    """Relative L2 difference of the MTFs of zernike3 PSFs ``a`` and ``b`` (B, 3 each).

    ``||MTF_a - MTF_b|| / ||MTF_a||`` over the kernel's frequency grid (default optics):
    what a blind estimator can see of a PSF change in a patch's power spectrum.
    """
    a = torch.as_tensor(np.asarray(params_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(params_b), dtype=torch.float32)
    ka = zernike_psf(a[:, 0], a[:, 1], a[:, 2], size)
    kb = zernike_psf(b[:, 0], b[:, 1], b[:, 2], size)
    ma = torch.fft.rfft2(torch.fft.ifftshift(ka, dim=(-2, -1))).abs()
    mb = torch.fft.rfft2(torch.fft.ifftshift(kb, dim=(-2, -1))).abs()
    d = torch.linalg.vector_norm(ma - mb, dim=(-2, -1)) / torch.linalg.vector_norm(
        ma, dim=(-2, -1)
    )
    return d.double().numpy()


def _r2(t: np.ndarray, e: np.ndarray) -> float:
    return float(1.0 - np.mean((t - e) ** 2) / np.var(t))


Interval = tuple[float, float]


def _inside(f: np.ndarray, c: np.ndarray, f_range: Interval, c_range: Interval) -> np.ndarray:
    return (f >= f_range[0]) & (f <= f_range[1]) & (c >= c_range[0]) & (c <= c_range[1])


def twin_confusion_r2(
    f_range: Interval = (0.0, 1.0), c_range: Interval = (0.0, 0.5), n: int = 200_000, seed: int = 0
) -> dict[str, float]:
    """R^2 of focus and cylinder for an estimator exact but for the twins, which it blends.

    Parameters drawn uniformly from ``f_range x c_range``; where the twin lies in range
    too the estimate is the midpoint of the two (the posterior mean when both are
    equally likely: the twin map preserves area, so the prior gives them equal weight).
    """
    rng = np.random.default_rng(seed)
    f = rng.uniform(*f_range, n)
    c = rng.uniform(*c_range, n)
    tf, tc = twin(f, c)
    both = _inside(tf, tc, f_range, c_range)
    ef = np.where(both, (f + tf) / 2, f)
    ec = np.where(both, (c + tc) / 2, c)
    return {"twin_share": float(both.mean()), "focus": _r2(f, ef), "cylinder": _r2(c, ec)}


def twin_report(
    pred: np.ndarray,
    true: np.ndarray,
    f_range: Interval = (0.0, 1.0),
    c_range: Interval = (0.0, 0.5),
) -> dict[str, float]:
    """Where the (focus, cylinder) estimates lie relative to truth and twin.

    Parameters
    ----------
    pred, true : numpy.ndarray
        (B, 3) zernike3 parameters (focus, cylinder, axis) of textured test patches.
    f_range, c_range : (float, float)
        The focus and cylinder ranges of the network's prior (where a twin counts).

    Returns
    -------
    dict
        ``twin_share`` (patches whose twin is in range); over those, ``sturm_side`` (share
        whose estimate has the sign of the true ``k-``) and, where truth and twin lie more
        than 0.1 waves apart, the shares nearest the ``truth``, the ``twin`` and their
        ``midpoint``; ``sturm_side_elsewhere`` over the rest (1 for an estimate on the
        right side of the line foci); the R^2 of focus and cylinder, and that of the
        cylinder with truth and estimate both mapped to the twin with ``k- >= 0``
        (``cylinder_folded``: what the estimate would score if the parameters were
        defined up to the twins).
    """
    f, c = true[:, 0].astype(np.float64), true[:, 1].astype(np.float64)
    pf, pc = pred[:, 0].astype(np.float64), pred[:, 1].astype(np.float64)
    tf, tc = twin(f, c)
    has = _inside(tf, tc, f_range, c_range)
    km = 2 * math.sqrt(3) * f - math.sqrt(6) * c
    pkm = 2 * math.sqrt(3) * pf - math.sqrt(6) * pc
    side = np.sign(km) == np.sign(pkm)
    out = {
        "n": float(f.size),
        "twin_share": float(has.mean()),
        "sturm_side": float(side[has].mean()) if has.any() else float("nan"),
        "sturm_side_elsewhere": float(side[~has].mean()) if (~has).any() else float("nan"),
        "focus": _r2(f, pf),
        "cylinder": _r2(c, pc),
    }
    far = has & (np.hypot(f - tf, c - tc) > 0.1)
    if far.any():
        d_true = np.hypot(pf - f, pc - c)[far]
        d_twin = np.hypot(pf - tf, pc - tc)[far]
        d_mid = np.hypot(pf - (f + tf) / 2, pc - (c + tc) / 2)[far]
        nearest = np.argmin(np.stack([d_true, d_twin, d_mid]), axis=0)
        out.update(
            n_far=float(far.sum()),
            truth=float((nearest == 0).mean()),
            twin=float((nearest == 1).mean()),
            midpoint=float((nearest == 2).mean()),
        )

    def fold(ff: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, h = twin(ff, cc)
        swap = (cc > SQRT2 * ff) & _inside(g, h, f_range, c_range)
        return np.where(swap, g, ff), np.where(swap, h, cc)

    out["cylinder_folded"] = _r2(fold(f, c)[1], fold(pf, pc)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.twins", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="zernike3", help="zernike3 network: name or .pt path")
    p.add_argument("--batches", type=int, default=16, help="batches of 64 of the mixed stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="score the network with TTA")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    net, card = load_model(a.model)
    if card.psf_model != "zernike3":
        p.error(f"{a.model} is a {card.psf_model} network; twins are a zernike3 matter")
    rec = (card.data_recipe or {}).get("param_ranges") or {}
    fr = rec.get("focus", card.ranges[0])
    cr = rec.get("cylinder", card.ranges[1])
    f_range, c_range = (float(fr[0]), float(fr[1])), (float(cr[0]), float(cr[1]))

    pairs = np.array([[0.1, 0.1], [0.2, 0.1], [0.3, 0.2], [0.2, 0.4], [0.1, 0.4], [0.25, 0.25]])
    base = np.c_[pairs, np.full(len(pairs), 0.7)]
    tw = np.c_[np.stack(twin(pairs[:, 0], pairs[:, 1]), 1), base[:, 2]]
    steps = {
        "twin": tw,
        "midpoint": (base + tw) / 2,
        "focus +0.02": base + np.array([0.02, 0, 0]),
        "cylinder +0.02": base + np.array([0, 0.02, 0]),
    }
    dist = {k: mtf_distance(base, v) for k, v in steps.items()}
    print("1. MTF difference (relative L2) from (focus, cylinder) at axis 0.7 rad:")
    print(
        "| (focus, cylinder) | twin | its MTF difference | midpoint's (k- = 0) | focus +0.02 "
        "| cylinder +0.02 |"
    )
    print("|---|---|---|---|---|---|")
    for i, (fc, t) in enumerate(zip(pairs, tw, strict=True)):
        print(
            f"| ({fc[0]:.2f}, {fc[1]:.2f}) | ({t[0]:.3f}, {t[1]:.3f}) | {dist['twin'][i]:.3f} "
            f"| {dist['midpoint'][i]:.3f} | {dist['focus +0.02'][i]:.3f} "
            f"| {dist['cylinder +0.02'][i]:.3f} |"
        )
    b = twin_confusion_r2(f_range, c_range)
    print(
        f"\n2. Blending every twin pair (exact otherwise), focus {f_range[0]:g}-{f_range[1]:g} /"
        f" cylinder {c_range[0]:g}-{c_range[1]:g} waves: {b['twin_share']:.1%} of the prior has "
        "its twin in range; "
        f"R^2 focus {b['focus']:.3f}, cylinder {b['cylinder']:.3f} at best"
    )
    BANK_SIZE[0] = 512
    if a.tta:
        net = DihedralMean(net, "zernike3")
    s = _stream("zernike3", dict(DEFAULT_TYPES), a.seed, DegradeConfig(), 512, card_ranges(card))
    r = predict(net, "zernike3", [s.next(64) for _ in range(a.batches)])
    keep = (r["inv"] == 0) & (r["w"] > 0)
    pred, true = r["pred"][keep].numpy(), r["true"][keep].numpy()
    rep = twin_report(pred, true, f_range, c_range)
    print(
        f"\n3. {card.name}{' with TTA' if a.tta else ''} on {int(rep['n'])} textured patches of "
        f"the mixed test stream: R^2 focus {rep['focus']:.3f}, cylinder {rep['cylinder']:.3f} "
        f"(defined up to the twins: {rep['cylinder_folded']:.3f})"
    )
    print(
        f"   twin in range: {rep['twin_share']:.1%}; there the estimate is on the true side "
        f"of the line foci for {rep['sturm_side']:.0%} (elsewhere "
        f"{rep['sturm_side_elsewhere']:.0%})"
    )
    if "n_far" in rep:
        print(
            f"   twins > 0.1 waves apart ({int(rep['n_far'])} patches): estimate nearest the "
            f"truth {rep['truth']:.0%}, the twin {rep['twin']:.0%}, their midpoint "
            f"{rep['midpoint']:.0%}"
        )
    f, c, pc = true[:, 0], true[:, 1], pred[:, 1]
    print("\n| true focus (waves) | patches | cylinder RMSE | slope of estimate on truth |")
    print("|---|---|---|---|")
    edges = np.linspace(*f_range, 6)
    for lo, hi in itertools.pairwise(edges):
        m = (f >= lo) & (f < hi)
        if m.sum() > 10:
            slope = float(np.polyfit(c[m], pc[m], 1)[0])
            rmse = float(np.sqrt(np.mean((pc[m] - c[m]) ** 2)))
            print(f"| {lo:.1f}-{hi:.1f} | {int(m.sum())} | {rmse:.3f} | {slope:.2f} |")
    if c_range[0] > 0.0:  # a network for one lens: no pure defocus in its prior
        return 0
    # pure defocus, the common case without a cylindrical lens: its twin (0, sqrt 2 f) is
    # in range up to f = 0.354 waves, and a blend reads half the defocus as astigmatism
    s = _stream("zernike3", dict(DEFAULT_TYPES), a.seed, DegradeConfig(), 512, PURE_DEFOCUS)
    r = predict(net, "zernike3", [s.next(64) for _ in range(a.batches)])
    keep = (r["inv"] == 0) & (r["w"] > 0)
    pred, true = r["pred"][keep].numpy(), r["true"][keep].numpy()
    print(f"\n4. pure defocus (cylinder 0-0.02 waves), {int(keep.sum())} textured patches:")
    print("| true focus (waves) | patches | focus read / true (median) | cylinder read (median) |")
    print("|---|---|---|---|")
    for lo, hi in ((0.05, 0.2), (0.2, 0.354), (0.354, 0.6), (0.6, 1.0)):
        m = (true[:, 0] >= lo) & (true[:, 0] < hi)
        if m.sum() > 5:
            ratio = float(np.median(pred[m, 0] / true[m, 0]))
            cyl = float(np.median(pred[m, 1]))
            print(f"| {lo:.2f}-{hi:.2f} | {int(m.sum())} | {ratio:.2f} | {cyl:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
