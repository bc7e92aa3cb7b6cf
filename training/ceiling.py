"""How far could any estimator go on the test patches? A non-blind posterior-mean ceiling.

Usage::

    python -m training.ceiling --model zernike3 --patches 256 --samples 1024
    python -m training.ceiling --model zernike1 --patches 512 --samples 256 --tta
    python -m training.ceiling --model zernike1 --patches 512 --degradation mixed --strength 0.5

The network sees only the degraded patch. This oracle is told everything else the
degradation knew (:class:`training.data.Truth`): the sharp source region after
illumination, the photon level, quantum efficiency, read noise and background. Only the
PSF is unknown. It scores ``S`` PSFs spread over the training prior (a scrambled Sobol
set over the model's uniform ranges) by each patch's likelihood under the Eq. 10 noise
model, and returns the posterior mean of the network's regression targets. The posterior
mean is the estimate of least expected squared error given the prior, and the oracle has
strictly more information than any blind estimator, so its R^2 bounds what a network can
reach on these patches, up to the resolution of ``S`` samples (the table gives the oracle
at S/4, S/2 and S: the Sobol prefixes are balanced sets of their own, so a converged
ceiling shows equal rows) and the Gaussian approximation of Poisson noise (exact in the
limit of many photons; a patch of the mix has at least 20 at its peak).

The patches are those of the mixed test stream that ``training.evaluate`` scores the
validity flag on (``DEFAULT_TYPES``, the same seed and kernel bank); R^2 is Eq. 15 over the
textured patches (a0 = 0, not smooth), as everywhere in ``training``. ``--degradation``
replaces the recipe's noise by one point of the Fig. 7 sweep (not ``illumination``: the
oracle's noise model has no 8-bit quantisation).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from psf_live.models import ModelCard, load_model
from psf_live.nets import get_codec
from psf_live.psf import Optics, get_model, next_fast_len, render_psf
from psf_live.psf._formation import irfft2

from .data import DEFAULT_TYPES, PATCH, Batch, DegradeConfig, Truth, draw_ranges
from .evaluate import (
    BANK_SIZE,
    SWEEP,
    TWINS,
    DihedralMean,
    Ranges,
    _fmt_table,
    _stream,
    card_ranges,
    card_twins,
    predict,
    sweep_config,
)
from .metrics import axis_period, r2_report

__all__ = [
    "log_likelihood",
    "oracle_estimate",
    "patch_loglik",
    "posterior_mean",
    "prior_samples",
    "refine_mode",
]

SNR_BANDS = (0.1, 0.3, 1.0, 3.0, math.inf)
"""Edges of the texture/noise ratio bands the comparison is broken down by."""


def _prior_box(psf_model: str, ranges: Ranges) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper ends (N,) of the prior's intervals (:func:`draw_ranges`)."""
    rng = draw_ranges(psf_model, ranges)
    return torch.tensor([r[0] for r in rng]), torch.tensor([r[1] for r in rng])


def prior_samples(psf_model: str, n: int, seed: int = 0, ranges: Ranges = None) -> torch.Tensor:
    """``n`` parameter vectors spread evenly over the training prior (scrambled Sobol).

    Parameters
    ----------
    psf_model : str
        PSF model name.
    n : int
        Number of samples; every prefix of a power of two is itself balanced.
    seed : int
        Scrambling seed.
    ranges : dict of str -> (float, float), optional
        Narrower intervals of a network made for one set-up (its card's ``param_ranges``).

    Returns
    -------
    torch.Tensor
        (n, N) float32 public parameters.
    """
    lo, hi = _prior_box(psf_model, ranges)
    u = torch.quasirandom.SobolEngine(len(lo), scramble=True, seed=seed).draw(n)
    return lo + u.float() * (hi - lo)


def log_likelihood(
    psf_model: str,
    truth: Truth,
    raw: torch.Tensor,
    params: torch.Tensor,
    optics: Optics | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Log-likelihood of each noisy patch under each candidate PSF (Eq. 10, Gaussian form).

    The expected counts are ``mu = beta * peak * (h * src + background)`` ("valid" blur
    of the source region, clamped at 0 as the degradation does), their variance
    ``beta * mu`` (shot noise, where applied) ``+ read^2``.

    Parameters
    ----------
    psf_model : str
        PSF model of the candidates.
    truth : Truth
        The degradation of the P patches without their PSFs.
    raw : torch.Tensor
        (P, 128, 128) noisy detector counts.
    params : torch.Tensor
        (S, N) candidate PSF parameters.
    optics : Optics, optional
        Optics of Zernike kernels (the training default if omitted).
    chunk : int
        Candidate kernels rendered and transformed at a time.
    progress : bool
        Show a progress bar.

    Returns
    -------
    torch.Tensor
        (P, S) float64 log-likelihoods up to a constant per patch.
    """
    model = get_model(psf_model)
    k, r = model.kernel_size, truth.src.shape[-1]
    if r != PATCH + k - 1:
        raise ValueError(f"source regions of {r} px do not fit {psf_model}'s {k}-px kernels")
    n = next_fast_len(r)
    spec = torch.fft.rfft2(truth.src.float(), s=(n, n))
    scale = (truth.beta * truth.peak).float()
    floor = (1e-6 * scale) ** 2  # keeps an idealised patch finite (its posterior is a spike)
    y = raw.float()
    out = torch.empty(len(raw), len(params), dtype=torch.float64)
    optics = optics or Optics()
    starts = range(0, len(params), chunk)
    for s0 in tqdm(starts, desc="likelihood", unit="chunk", disable=not progress):
        kern = render_psf(model, params[s0 : s0 + chunk], optics=optics)
        kspec = torch.fft.rfft2(kern, s=(n, n))
        for i in range(len(raw)):
            blur = irfft2(spec[i] * kspec, (n, n), rows=r)[..., k - 1 : r, k - 1 : r]
            mu = scale[i] * (blur.clamp_min(0) + truth.background[i])
            var = truth.read[i] ** 2 + floor[i]
            if bool(truth.shot[i]):
                var = var + truth.beta[i] * mu
            ll = ((y[i] - mu) ** 2 / var + torch.log(var)).sum(dim=(-2, -1))
            out[i, s0 : s0 + len(kern)] = -0.5 * ll.double()
    return out


def posterior_mean(
    psf_model: str, loglik: torch.Tensor, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-mean parameters from log-likelihoods over samples of a uniform prior.

    The mean is taken over the network's regression targets (for zernike3 the signed
    astigmatism pair, so the axis has no wrap-around) and decoded like a network output.

    Parameters
    ----------
    psf_model : str
    loglik : torch.Tensor
        (P, S) log-likelihoods (:func:`log_likelihood`).
    params : torch.Tensor
        (S, N) the samples they were computed for.

    Returns
    -------
    params : torch.Tensor
        (P, N) float32 posterior-mean public parameters.
    ess : torch.Tensor
        (P,) effective number of samples, ``1 / sum w^2``: near 1 the posterior is
        narrower than the samples' spacing and the estimate is the nearest sample.
    """
    codec = get_codec(psf_model)
    w = torch.softmax(loglik, dim=1)
    targets = w @ codec.encode(params).double()
    raw = torch.cat([torch.zeros(len(w), 1, dtype=torch.float64), targets], dim=1)
    return codec.decode(raw.float())[1], 1.0 / (w**2).sum(dim=1)


def _take(truth: Truth, idx: slice | torch.Tensor) -> Truth:
    """Return the truth of some patches."""
    return Truth(*(getattr(truth, f)[idx] for f in _FIELDS))


_FIELDS = ("src", "peak", "beta", "read", "background", "shot")


def refine_mode(
    psf_model: str,
    loglik: Callable[[int, torch.Tensor], torch.Tensor],
    starts: torch.Tensor,
    ranges: Ranges = None,
    rounds: int = 8,
    per_round: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local random search for each patch's most likely PSF (its posterior mode).

    The likelihood of a well-exposed patch has narrow peaks along a valley where
    defocus and astigmatism trade off (similar second moments), so the search runs one
    chain from each of several starting points (the best prior samples) and keeps the
    best end. Each round of a chain scores ``per_round`` candidates drawn around its
    current best with a spread of 1/8 of each parameter's range, halved every round
    (the axis wraps at its period, the rest is clipped to the prior), and moves there
    if one is better.

    Parameters
    ----------
    psf_model : str
    loglik : callable
        ``loglik(i, params)``: the log-likelihoods (J,) of patch ``i`` under the
        candidate PSFs ``params`` (J, N), e.g. a row of :func:`log_likelihood`.
    starts : torch.Tensor
        (P, K, N) starting parameters of K chains for each of P patches.
    ranges : dict of str -> (float, float), optional
        The prior's intervals.
    rounds, per_round : int
        Search rounds and candidates per round and chain.
    seed : int
    progress : bool

    Returns
    -------
    mode : torch.Tensor
        (P, N) best parameters found.
    ll : torch.Tensor
        (P,) their log-likelihoods.
    """
    names = get_model(psf_model).param_names
    lo, hi = _prior_box(psf_model, ranges)
    period = axis_period(psf_model)
    is_axis = torch.tensor([n == "axis" for n in names])
    g = torch.Generator().manual_seed(seed)
    n_patch, n_chain = starts.shape[:2]
    mode = torch.empty(n_patch, len(names))
    mode_ll = torch.empty(n_patch, dtype=torch.float64)
    chains = torch.arange(n_chain)
    for i in tqdm(range(n_patch), desc="mode search", unit="patch", disable=not progress):
        best = starts[i].float().clone()
        best_ll = loglik(i, best).double()
        spread = (hi - lo) / 8
        for _ in range(rounds):
            noise = torch.randn(n_chain, per_round, len(names), generator=g)
            cand = best[:, None] + spread * noise
            cand = torch.where(is_axis, torch.remainder(cand, period), cand)
            cand = torch.maximum(torch.minimum(cand, hi), lo)
            ll = loglik(i, cand.reshape(-1, len(names))).double().reshape(n_chain, per_round)
            top, j = ll.max(dim=1)
            better = top > best_ll
            best = torch.where(better[:, None], cand[chains, j], best)
            best_ll = torch.where(better, top, best_ll)
            spread = spread / 2
        k = int(best_ll.argmax())
        mode[i], mode_ll[i] = best[k], best_ll[k]
    return mode, mode_ll


def patch_loglik(
    psf_model: str, truth: Truth, raw: torch.Tensor
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """``loglik(i, params)`` of :func:`log_likelihood` for one patch at a time."""

    def one(i: int, params: torch.Tensor) -> torch.Tensor:
        return log_likelihood(psf_model, _take(truth, slice(i, i + 1)), raw[i : i + 1], params)[0]

    return one


def oracle_estimate(
    psf_model: str,
    truth: Truth,
    raw: torch.Tensor,
    samples: torch.Tensor,
    chains: int,
    ranges: Ranges = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimate as the ceiling does: the posterior mean, or the mode where samples are too few.

    Returns
    -------
    estimate : torch.Tensor
        (P, N) the posterior mean over ``samples``, or where its effective number of
        samples is below 2 (the posterior narrower than their spacing) the mode found by
        :func:`refine_mode` from the ``chains`` best samples.
    loglik : torch.Tensor
        (P, S) the samples' log-likelihoods (:func:`log_likelihood`).
    mode : torch.Tensor
        (P, N) the modes.
    """
    ll = log_likelihood(psf_model, truth, raw, samples, progress=progress)
    mean, ess = posterior_mean(psf_model, ll, samples)
    starts = samples[ll.topk(chains, dim=1).indices]
    search = patch_loglik(psf_model, truth, raw)
    mode, _ = refine_mode(psf_model, search, starts, ranges, seed=seed, progress=progress)
    return torch.where((ess >= 2)[:, None], mean, mode), ll, mode


def setup(
    p: argparse.ArgumentParser, a: argparse.Namespace, min_chains: int
) -> tuple[torch.nn.Module, ModelCard]:
    """Check the options shared with ``training.whittle``, set threads and the test bank."""
    if a.samples < 4 or a.patches < 8 or not min_chains <= a.chains <= a.samples:
        p.error(f"--samples must be >= 4, --patches >= 8 and --chains {min_chains}..samples")
    if a.threads:
        torch.set_num_threads(a.threads)
    BANK_SIZE[0] = a.bank_size
    net, card = load_model(a.model)
    TWINS[0] = card_twins(card)  # the test labels in the network's convention
    return net, card


def _draw(
    psf_model: str, n: int, seed: int, bs: int, ranges: Ranges, cfg: DegradeConfig | None = None
) -> list[Batch]:
    """Draw the mixed test stream's first ``n`` patches, with their truth."""
    cfg = cfg or DegradeConfig()
    mix = _stream(psf_model, dict(DEFAULT_TYPES), seed, cfg, max(64, n // 2), ranges)
    return [mix.next(min(bs, n - i), keep_truth=True) for i in range(0, n, bs)]


def _cat_truth(batches: list[Batch], keep: torch.Tensor) -> tuple[Truth, torch.Tensor]:
    ts = [b.truth for b in batches]
    assert all(t is not None for t in ts)
    cat = {f: torch.cat([getattr(t, f) for t in ts])[keep] for f in _FIELDS}
    raw = torch.cat([b.raw for b in batches if b.raw is not None])[keep]
    return Truth(**cat), raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.ceiling", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="zernike3", help="shipped name or .pt path")
    p.add_argument("--patches", type=int, default=256, help="test patches drawn (all types)")
    p.add_argument("--samples", type=int, default=1024, help="PSFs the oracle scores")
    p.add_argument("--chains", type=int, default=8, help="mode-search starts per patch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bank-size", type=int, default=512, help="Zernike kernels of the test")
    p.add_argument(
        "--degradation",
        choices=[k for k in SWEEP if k != "illumination"],
        default=None,
        help="a Fig. 7 sweep degradation instead of the training recipe's noise "
        "(the same patches as training.evaluate's sweep point with --batches patches/64)",
    )
    p.add_argument("--strength", type=float, default=0.5, help="its strength, 0..0.5")
    p.add_argument("--tta", action="store_true", help="also score the network with TTA")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    net, card = setup(p, a, min_chains=1)
    pm, ranges = card.psf_model, card_ranges(card)
    cfg, stream = DegradeConfig(), "the mixed test stream"
    if a.degradation:
        cfg = sweep_config(a.degradation, a.strength)[0]
        stream += f", {a.degradation} degradation at strength {a.strength:g}"
    batches = _draw(pm, a.patches, a.seed, a.batch_size, ranges, cfg)
    nets = {f"{card.name} ({card.arch})": net}
    if a.tta:
        nets[f"{card.name} + TTA"] = DihedralMean(net, pm)
    preds = {name: predict(m, pm, batches) for name, m in nets.items()}
    first = next(iter(preds.values()))
    keep = (first["inv"] == 0) & (first["w"] > 0)
    truth, raw = _cat_truth(batches, keep)
    true = first["true"][keep]
    samples = prior_samples(pm, a.samples, a.seed, ranges)
    t0 = time.perf_counter()
    best, ll, mode = oracle_estimate(
        pm, truth, raw, samples, a.chains, ranges, seed=a.seed, progress=True
    )
    rows = {name: r2_report(pm, r["pred"][keep], true) for name, r in preds.items()}
    for s in sorted({a.samples // 4, a.samples // 2, a.samples}):
        est, ess = posterior_mean(pm, ll[:, :s], samples[:s])
        rows[f"oracle, {s} PSFs"] = {
            **r2_report(pm, est, true),
            "ess<2": float((ess < 2).float().mean()),
        }
    rows["oracle, mode search"] = r2_report(pm, mode, true)
    rows["oracle (mean, or mode where ess<2)"] = r2_report(pm, best, true)
    took = time.perf_counter() - t0
    for row in rows.values():
        row["n"] = float(len(true))
    cols = [*card.param_names]
    if pm in ("zernike2", "zernike3"):
        cols += ["astig_c", "astig_s"]
    cols += ["r2", "ess<2", "n"]
    print(_fmt_table(f"R^2 ceiling: {card.name} ({pm}) on {stream}", rows, cols))
    print(
        f"oracle: told the sharp source and the noise; posterior mean over {a.samples} "
        "prior PSFs, and each patch's most likely PSF by a local search; "
        f"{took:.0f} s. ess<2: share of patches whose posterior is narrower than the "
        "samples' spacing (there the mean is the mode).\n"
    )
    snr = first["snr"][keep]
    bands: dict[str, dict[str, float]] = {}
    for lo, hi in itertools.pairwise(SNR_BANDS):
        m = (snr >= lo) & (snr < hi)
        if int(m.sum()) < 3:
            continue
        row = {name: r2_report(pm, r["pred"][keep][m], true[m])["r2"] for name, r in preds.items()}
        row["oracle"] = r2_report(pm, best[m], true[m])["r2"]
        row["n"] = float(m.sum())
        bands[f"{lo:g}-{hi:g}"] = row
    print(
        _fmt_table("mean R^2 by texture/noise ratio of the patch", bands, [*preds, "oracle", "n"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
