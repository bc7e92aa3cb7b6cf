"""Blind PSF size from the image itself: Poisson-thinning cross-validation.

The network's size estimate is off by some 10-20 % per patch, and TV-RL is sensitive to
exactly that (the true PSFs 15 % too large or small keep 81-93 % of the gain). The image
can arbitrate. A frame of photon counts ``n ~ Poisson(lambda)`` splits into two halves,
``n1 ~ Binomial(n, 1/2)`` and ``n2 = n - n1``, that are *independent* Poisson images of the
same mean ``lambda / 2`` (binomial thinning). Deconvolving one half with a candidate PSF
and blurring the result again predicts the other half; the Poisson negative
log-likelihood of that prediction is a cross-validated score of the candidate. A PSF that
is too small lets the deconvolution follow the first half's noise, one that is too large
cannot follow its detail, and both predict the second half worse than the right one.
Each patch of the map gets the scale of its size parameters (focus/cylinder, or Gaussian
widths) that scores best on the pixels nearest its centre.

Two details decide whether the score is usable:

* The deconvolution used for scoring is RL run to near convergence (no TV; 25
  accelerated iterations for Zernike maps, which score as well as 80 plain ones for 40 %
  of the cost): TV and early stopping both favour small kernels, and with TV-RL's 20
  iterations the score picked 0.6 x the estimate nearly everywhere.
* The halves are independent only if ``n`` counts photons. Gaussian read noise of
  ``sigma`` electrons is folded in as a Poisson count of mean ``sigma^2``
  (``n = (y - offset) / gain + sigma^2``); without that, the read noise shared by the
  halves made the score prefer small kernels. A gain that overstates the photons does
  the same (the halves are then positively correlated), one that understates them
  errs the other way and costs less.

What it cannot do: tell a small Gaussian blur from a somewhat larger one. For 1 px the
blurred image is smooth at that scale whichever kernel explains it, a larger kernel fits
less of the first half's noise, and the score prefers the largest factor offered
(``tests/test_deconv_refine.py`` pins this). Defocus kernels, with their rings, do not
have that freedom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ._kernels import kernels_from_map
from ._shrink import SIZE_PARAMS, with_sizes

__all__ = [
    "REFINE_ACCELERATED_ITERATIONS",
    "REFINE_ACCELERATION",
    "REFINE_ITERATIONS",
    "REFINE_MIN_SNR",
    "REFINE_SCALES",
    "photon_counts",
    "refine_iterations",
    "refine_size",
    "structure_snr",
]

REFINE_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
"""Factors on the estimated size parameters that :func:`refine_size` scores."""

REFINE_ITERATIONS = {"zernike": 80, "gaussian": 40}
"""Plain RL iterations (no TV) of each scoring deconvolution, by PSF model kind
(``refine_size(..., accelerate=False)``; the default is :data:`REFINE_ACCELERATED_ITERATIONS`).

Two biases pull against each other. RL converges slowly for large kernels, and a score of
under-converged deconvolutions prefers small ones: with 40 iterations a quadrant defocused
by 0.84 waves (network 0.73) was refined to 0.44, with 160 to 0.81. The longer RL runs,
the more noise it fits, and the more a larger kernel (which fits less) gains: a Gaussian
blur, with no OTF zeros to pin its size, suffers this first. Chosen on Table V images of
seeds 11 and 21 (the benchmark's is 5; maps with TTA, camera known), as % of the true-PSF
gain. Z-1 blur, zernike1 map: seed 11 (20 images, global minimum, no structure threshold)
20 / 30 / 40 / 80 iterations -> 88 / 93 / 96 / 94 %, TV-RL's own 20 iterations with lambda
0.1 80 %; with the rules of :func:`refine_size` 40 / 80 -> 96 / 95 %; seed 21 (30 images)
40 / 80 / 160 -> 90 / 94 / 92 %. G-1 blur, gaussian1 map, seed 11: 40 / 80 -> 96 / 92 %."""

REFINE_ACCELERATION = 0.6
"""Largest extrapolation step of the accelerated scoring RL (``richardson_lucy_tv``'s
``accelerate``); with Biggs and Andrews' own 1 the best iteration count was a narrow
optimum (see :data:`REFINE_ACCELERATED_ITERATIONS`)."""

REFINE_ACCELERATED_ITERATIONS = {"zernike": 25, "gaussian": 16}
"""Iterations of accelerated RL (``refine_size(..., accelerate=True)``, steps capped at
:data:`REFINE_ACCELERATION`) that score as well as :data:`REFINE_ITERATIONS` of plain RL,
for about 40 % of the cost.

Chosen the same way (2026-12-04, later stop; the rules of :func:`refine_size`; plain RL
scored by the same harness, whose figures differ from those above: Z-1 92.8 / 88.4 % on
seeds 11 / 21 with 80 iterations, G-1 97.0 / 96.9 % with 40). Uncapped steps (Biggs and
Andrews' rule, ``accelerate=1``): Z-1 seed 11, 15 / 20 / 25 / 30 / 40 iterations -> 92.4 /
91.2 / 89.3 / 88.0 / 84.4 %; seed 21, 10 / 12 / 15 / 20 -> 80.1 / 86.8 / 89.6 / 86.8 %: a
narrow optimum, and on the benchmark's seed 5 15 iterations gave 89.7 % against 90.8 %
plain. Steps capped at 0.8: seed 11, 15 / 20 / 25 / 30 -> 92.1 / 92.7 / 91.8 / 91.7 %.
Capped at 0.6: seed 11, 15 / 20 / 25 / 30 -> 91.2 / 93.1 / 93.2 / 93.1 %; seed 21, 20 / 25
/ 30 -> 89.8 / 90.0 / 90.0 % (0.5: 87.5 / 90.0 / 90.1 %): a plateau, above plain RL on
both seeds. G-1 capped at 0.6: seed 11, 12 / 16 / 20 -> 97.3 / 97.2 / 96.5 %; seed 21 96.4
/ 96.9 / 96.5 %. Hence 0.6 with 25 and 16 iterations. On the benchmark's seed 5 (100
images, checked once, after the choice): Z-1 91.6 % of the GT gain with the camera known
and 90.8 % with it estimated (plain RL: 90.8 / 90.8 %), G-1 96.7 % (plain 96.7 %), so the
accelerated scoring is the default."""

REFINE_MIN_SNR = 4.0
"""Pixels scored by :func:`refine_size`: those where :func:`structure_snr` exceeds this.

Flat regions carry no information on the PSF, only noise, and RL fits noise less with a
larger kernel, so scoring them pulled sparse patches towards the largest scale (a dark
cell-culture corner: 0.43 for a true 0.30 waves; within 7 % with the threshold). On 20
Table V images of seed 11 (the benchmark's is 5), camera known, global minimum of the
score: no threshold / 3 / 4 / 9 -> 96 / 96 / 96 / 94 % of the true-PSF gain on Z-1 blur,
95 / - / 96 / 97 % on G-1 blur. With the nearest minimum (:func:`refine_size`) and 4:
96 % on Z-1 with the camera known and with it estimated (93 % estimated before), 96 / 97 %
on G-1."""


def refine_iterations(psf_model: str, accelerate: bool = True) -> int:
    """Default RL iterations of :func:`refine_size` for a PSF model.

    :data:`REFINE_ACCELERATED_ITERATIONS`, or :data:`REFINE_ITERATIONS` without ``accelerate``.
    """
    from psf_live.psf import get_model

    table = REFINE_ACCELERATED_ITERATIONS if accelerate else REFINE_ITERATIONS
    return table[get_model(psf_model).kind]


def photon_counts(
    image: npt.ArrayLike,
    gain: float | None = None,
    offset: float = 0.0,
    read_noise: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Convert a raw frame to Poisson counts, read noise folded in as counts.

    Parameters
    ----------
    image : array_like
        (H, W) raw frame in camera units (ADU), finite.
    gain : float, optional
        Camera gain in ADU per photo-electron. None estimates the photon-transfer line
        from the frame itself (:func:`psf_live.psf.estimate_noise`), which gives the
        gain and ``read_noise^2 - offset / gain`` together; ``offset`` and
        ``read_noise`` are then ignored.
    offset : float
        Dark offset in ADU.
    read_noise : float
        Read noise in electrons (RMS).

    Returns
    -------
    counts : numpy.ndarray
        (H, W) int64 counts ``round((image - offset) / gain + read_noise^2)``, >= 0:
        Poisson-distributed with mean ``signal + read_noise^2`` to a good approximation.
    background : float
        ``read_noise^2`` in counts (the part of the mean that is not signal; 0 when the
        estimate puts it below zero).

    Raises
    ------
    ValueError
        Not a finite 2D image, or a gain <= 0, negative read noise, or a frame whose
        noise cannot be estimated.
    """
    from psf_live.psf import estimate_noise

    y = np.asarray(image, dtype=np.float64)
    if y.ndim != 2 or y.size == 0:
        raise ValueError(f"expected a 2D image, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("image contains NaN or infinity")
    if gain is None:
        gain, intercept = estimate_noise(y)
        bg = intercept / gain**2
        counts = y / gain + bg
    else:
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be > 0 ADU per electron, got {gain}")
        if not (math.isfinite(read_noise) and read_noise >= 0):
            raise ValueError(f"read noise must be >= 0 electrons, got {read_noise}")
        bg = read_noise**2
        counts = (y - offset) / gain + bg
    return np.rint(np.clip(counts, 0, None)).astype(np.int64), max(float(bg), 0.0)


def _scaled(psf_map: Any, scale: np.ndarray, refill: bool) -> Any:
    """``psf_map`` with its size parameters times ``scale`` (per patch), kept in range."""
    from psf_live.psf import get_model

    ranges = get_model(psf_map.psf_model).ranges
    return with_sizes(
        psf_map, lambda p, i: np.clip(p * scale, ranges[i][0], ranges[i][1]), refill=refill
    )


def structure_snr(counts: npt.ArrayLike, sigma: float = 2.0) -> np.ndarray:
    """Where a frame has structure: squared gradient over its expectation from noise alone.

    ``|grad (G_sigma * n)|^2`` divided by ``2 v (G_sigma * n)``, where ``v`` is the
    variance of one gradient-of-Gaussian component per unit of white-noise variance;
    for Poisson counts (variance = mean) the ratio is about 1 on flat regions and
    grows with edges and texture.

    Parameters
    ----------
    counts : array_like
        (H, W) photon counts.
    sigma : float
        Gaussian scale of the gradient, pixels.

    Returns
    -------
    numpy.ndarray
        (H, W) float64 ratio.
    """
    from scipy.ndimage import gaussian_filter, gaussian_filter1d, gaussian_gradient_magnitude

    c = np.asarray(counts, dtype=np.float64)
    imp = np.zeros((8 * math.ceil(sigma) + 9,) * 2)
    imp[imp.shape[0] // 2, imp.shape[1] // 2] = 1.0
    d = gaussian_filter1d(gaussian_filter1d(imp, sigma, axis=0, order=1), sigma, axis=1)
    unit = float((d**2).sum())
    g2 = gaussian_gradient_magnitude(c, sigma) ** 2
    return np.asarray(g2 / (2 * unit * np.maximum(gaussian_filter(c, sigma), 1.0)))


def _nearest_minimum(nll: np.ndarray, start: int) -> np.ndarray:
    """Per column, the local minimum of ``nll`` reached by descent from row ``start``."""
    best = np.empty(nll.shape[1], dtype=np.int64)
    for q in range(nll.shape[1]):
        j = start
        while True:
            down = j > 0 and nll[j - 1, q] < nll[j, q]
            up = j < nll.shape[0] - 1 and nll[j + 1, q] < nll[j, q]
            if down and (not up or nll[j - 1, q] <= nll[j + 1, q]):
                j -= 1
            elif up:
                j += 1
            else:
                break
        best[q] = j
    return best


def _descend_on_demand(
    score: Callable[[int], np.ndarray],
    n: int,
    start: int,
    wanted: np.ndarray,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nearest_minimum` over ``n`` rows of scores computed only where needed.

    ``score(j)`` gives row ``j`` (one value per column) and is called for the rows the
    descents of the ``wanted`` columns visit, plus one beyond each minimum (the third
    point of the parabola), growing a contiguous range around ``start``. The minima of
    the wanted columns are those of :func:`_nearest_minimum` on all rows.

    Returns
    -------
    nll : numpy.ndarray
        (n, columns) scores, NaN in the rows never computed.
    best : numpy.ndarray
        (columns,) row of each column's minimum (within the computed range for columns
        not wanted).
    """
    lo, hi = max(start - 1, 0), min(start + 1, n - 1)
    todo = list(range(lo, hi + 1))
    rows: dict[int, np.ndarray] = {}
    while True:
        for j in todo:
            rows[j] = np.asarray(score(j), dtype=np.float64)
            if callback is not None:
                callback(len(rows), n)
        nll = np.stack([rows[j] for j in range(lo, hi + 1)])
        best = _nearest_minimum(nll, start - lo) + lo
        todo = []
        if lo > 0 and (best[wanted] == lo).any():
            lo -= 1
            todo.append(lo)
        if hi < n - 1 and (best[wanted] == hi).any():
            hi += 1
            todo.append(hi)
        if not todo:
            break
    full = np.full((n, nll.shape[1]), np.nan)
    full[lo : hi + 1] = nll
    return full, best


def refine_size(
    image: npt.ArrayLike,
    psf_map: Any,
    *,
    gain: float | None = None,
    offset: float = 0.0,
    read_noise: float = 0.0,
    scales: Sequence[float] = REFINE_SCALES,
    num_iter: int | None = None,
    seed: int = 0,
    min_snr: float = REFINE_MIN_SNR,
    splits: int = 1,
    device: torch.device | str | None = None,
    callback: Callable[[int, int], None] | None = None,
    accelerate: bool = True,
) -> tuple[Any, np.ndarray]:
    """Rescale each patch's PSF size to the value the image itself predicts best.

    For a factor in ``scales`` the map's size parameters (``SIZE_PARAMS``) are
    multiplied by it everywhere; one binomial half of the photon counts is deconvolved
    with those kernels (RL, ``num_iter`` iterations, no TV), blurred again, and scored
    by the Poisson negative log-likelihood of the other half, both ways round, summed
    per patch over the pixels nearest its centre that show structure
    (:func:`structure_snr` above ``min_snr``), away from the frame's border where the
    kernels reach outside it. Each patch takes the local minimum of its score reached
    by descent from the factor nearest 1 (the network's estimate), refined by a
    parabola in log scale. A Zernike defocus score can have a second minimum at small
    kernels whose OTF has no zeros in the passband; the global minimum jumped there
    on some binomial splits and not others (1 patch in 4 on some Table V images), the
    nearest one does not. Factors are scored on demand, from 1 outwards as far as some
    valid patch's descent goes (plus one beyond its minimum for the parabola): the
    result is that of scoring them all. Cost: 2 RL runs of ``num_iter`` iterations on
    the frame per factor scored, at most ``2 len(scales)``.

    Parameters
    ----------
    image : array_like
        (H, W) raw frame the map was estimated from, in camera units.
    psf_map : psf_live.estimate.PSFMap
        Its PSF map (KNN-filled where invalid, as the estimator returns it).
    gain, offset, read_noise : float
        Camera model (ADU per electron, dark offset in ADU, read noise in electrons);
        ``gain=None`` estimates it from the frame (see :func:`photon_counts`).
    scales : sequence of float
        Increasing factors > 0 to score (at least 3).
    num_iter : int, optional
        RL iterations per scoring deconvolution (>= 1); default
        :func:`refine_iterations` of the map's model (which depends on ``accelerate``).
    seed : int
        Seed of the binomial split, so a result can be reproduced.
    min_snr : float
        Score only pixels whose :func:`structure_snr` exceeds this (0: every pixel).
    splits : int
        Independent binomial splits whose scores are summed (each costs
        ``2 len(scales)`` RL runs).
    device : torch.device or str, optional
        Where to deconvolve (default: CPU).
    callback : callable, optional
        Called as ``callback(done, total)`` after each scored factor (a progress bar),
        ``total = len(scales)``, the most that may be scored; ``done`` stops short of it
        when the factors left are not needed.
    accelerate : bool
        Accelerated RL for the scoring deconvolutions (the default: steps capped at
        :data:`REFINE_ACCELERATION`, :data:`REFINE_ACCELERATED_ITERATIONS`); ``False``:
        plain RL with :data:`REFINE_ITERATIONS`, 2.5x slower and no better on the Table V
        benchmark (Z-1 blur: 90.8 % of the true-PSF gain, accelerated 91.6 %).

    Returns
    -------
    refined : psf_live.estimate.PSFMap
        Copy of ``psf_map`` with the size parameters of valid patches scaled (clipped to
        the model's range); invalid patches are filled again from the valid ones when
        the map was filled, else keep their values.
    scale : numpy.ndarray
        (rows, cols) float64 factor chosen per patch (1.0 for invalid patches and for
        patches with no scored pixels).

    Raises
    ------
    ValueError
        Bad image or camera model, a map of another frame size or without size
        parameters, fewer than 3 scales or non-positive ones, or ``num_iter < 1``.
    """
    from psf_live.deconv._tvrl import richardson_lucy_tv
    from psf_live.psf import OverlapAdd

    s_grid = np.asarray(scales, dtype=np.float64)
    if s_grid.ndim != 1 or s_grid.size < 3 or not (s_grid > 0).all():
        raise ValueError(f"need at least 3 positive scales, got {list(scales)}")
    if not (np.diff(s_grid) > 0).all():
        raise ValueError(f"scales must increase, got {list(scales)}")
    if num_iter is None:
        num_iter = refine_iterations(psf_map.psf_model, accelerate)
    if int(num_iter) < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    if int(splits) < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if not any(n in SIZE_PARAMS for n in psf_map.param_names):
        raise ValueError(f"the {psf_map.psf_model} map has no size parameter to refine")
    counts, bg = photon_counts(image, gain, offset, read_noise)
    h, w = counts.shape
    if tuple(psf_map.frame_shape) != (h, w):
        raise ValueError(f"the PSF map is of a {psf_map.frame_shape} frame, the image is {(h, w)}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    rows, cols = psf_map.params.shape[:2]
    cy = np.asarray(psf_map.centers_y, dtype=np.float64)
    cx = np.asarray(psf_map.centers_x, dtype=np.float64)
    ones = np.ones((rows, cols))
    rendered: dict[int, torch.Tensor] = {}

    def kernels(j: int) -> torch.Tensor:
        """Render the map's kernels with the size parameters times ``s_grid[j]`` (once)."""
        if j not in rendered:
            pm = _scaled(psf_map, s_grid[j] * ones, refill=False)
            k = kernels_from_map(pm, device=dev)[0]
            rendered[j] = k.reshape(-1, k.shape[-2], k.shape[-1])
        return rendered[j]

    # the widest kernels (largest factor) set the border left out of the score
    margin = int(kernels(s_grid.size - 1).shape[-1]) // 2
    # Each scored pixel belongs to the patch whose centre is nearest.
    iy = np.abs(np.arange(h)[:, None] - cy[None, :]).argmin(1)
    ix = np.abs(np.arange(w)[:, None] - cx[None, :]).argmin(1)
    label = iy[:, None] * cols + ix[None, :]
    inner = np.zeros((h, w), dtype=bool)
    inner[margin : h - margin, margin : w - margin] = True
    if min_snr > 0:
        inner &= structure_snr(counts) > min_snr
    lab = label[inner]
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(int(splits)):
        half1 = rng.binomial(counts, 0.5)
        pairs += [(half1, counts - half1), (counts - half1, half1)]

    def score(j: int) -> np.ndarray:
        """Score factor ``s_grid[j]``: summed NLL of the held-out halves per patch."""
        kk = kernels(j)
        op = OverlapAdd((h, w), cy, cx, kk, device=dev)
        out = np.zeros(rows * cols)
        for fit, held in pairs:
            x = richardson_lucy_tv(
                np.clip(fit - bg / 2, 0, None).astype(np.float32),
                kk,
                num_iter=int(num_iter),
                lambda_tv=0.0,
                centers_y=cy,
                centers_x=cx,
                energy=1.0,
                device=dev,
                accelerate=REFINE_ACCELERATION if accelerate else 0.0,
            )
            mu = op.forward(torch.as_tensor(x, dtype=torch.float32, device=dev))
            mu_np = np.maximum(mu.cpu().numpy().astype(np.float64) + bg / 2, 1e-6)
            s_ = mu_np - held * np.log(mu_np)
            out += np.bincount(lab, weights=s_[inner], minlength=rows * cols)
        return out

    scored = np.bincount(lab, minlength=rows * cols) > 0
    wanted = scored & np.asarray(psf_map.valid, dtype=bool).ravel()
    start = int(np.abs(np.log(s_grid)).argmin())
    nll, best = _descend_on_demand(score, s_grid.size, start, wanted, callback)
    log_s = np.log(s_grid)
    chosen = s_grid[best].copy()
    for q in np.flatnonzero(wanted & (best > 0) & (best < s_grid.size - 1)):
        j = best[q]
        a, b, c = nll[j - 1, q], nll[j, q], nll[j + 1, q]
        curv = a - 2 * b + c
        if curv > 0:  # vertex of the parabola through the three points, in log scale
            t = 0.5 * (a - c) / curv  # in (-0.5, 0.5) grid steps
            step = log_s[j + 1] - log_s[j] if t > 0 else log_s[j] - log_s[j - 1]
            chosen[q] = math.exp(log_s[j] + t * step)
    scale = np.where(wanted, chosen, 1.0).reshape(rows, cols)
    return _scaled(psf_map, scale, refill=True), scale
