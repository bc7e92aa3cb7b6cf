"""A classical blind reference: the Whittle posterior mean on Gaussian fractal textures.

Usage::

    python -m training.whittle --model zernike3 --patches 256 --samples 512
    python -m training.whittle --model zernike1 --patches 256 --samples 256 --oracle

The network's test R^2 is far below the non-blind ceiling of ``training.ceiling``, which is
told the sharp source. Between the two lies the blind problem: soft texture and blur look
alike. This module measures how well a blind estimator that is *not* a network does on a
texture family whose statistics are known: Gaussian random fields with a power spectrum
``A |f|^(-2 beta)`` (the unthresholded fractal noise of the [tex] and [syn] sources).
Blurred and noisy, their periodogram has the expectation ``A |f|^(-2 beta) |H(f)|^2 + N``
(N: white Eq. 10 noise) with exponential scatter, and a Gaussian field's phases say nothing
about the PSF. Each prior PSF is scored by the Whittle likelihood of the patch's
Hann-windowed periodogram (an asymptotically efficient approximation of the exact Gaussian
likelihood), profiled over ``A`` and ``N`` (iteratively reweighted least squares) and
``beta`` (a grid); the estimate is the posterior mean (``--chains`` adds the maximum, found by
the local search of ``training.ceiling``). It knows the texture family, not the texture.
Where it beats the network on the same patches, the data hold more than the network reads.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from psf_live.psf import Optics, get_model, render_psf

from .ceiling import (
    _cat_truth,
    oracle_estimate,
    posterior_mean,
    prior_samples,
    refine_mode,
    setup,
)
from .data import PATCH, Batch, DegradeConfig, PatchStream
from .evaluate import DihedralMean, _fmt_table, _stream, card_ranges, predict
from .metrics import r2_report
from .sources import SOURCE_TYPES, fractal_noise

__all__ = [
    "BETAS",
    "fractal_batch",
    "periodogram",
    "spectral_models",
    "whittle_loglik",
    "whittle_search",
]

BETAS = torch.linspace(1.0, 2.2, 7)
"""Exponents of the texture's amplitude spectrum searched (the generator's range)."""
FREQ_MIN = 2.0 / PATCH
"""Lowest frequency used (cycles/px): below, the mean and the illumination ramp dominate.
Measured on zernike1 (160 fractal patches): from 4 / 128 the posterior mean scores R^2 0.55,
from 2 / 128 0.86; the first zeros of a strong defocus's MTF lie at 2-4 / 128."""


def _radius() -> torch.Tensor:
    f = torch.fft.fftfreq(PATCH)
    fr = torch.fft.rfftfreq(PATCH)
    return torch.sqrt(f[:, None] ** 2 + fr[None, :] ** 2)


def _hann() -> torch.Tensor:
    w = torch.hann_window(PATCH, periodic=True, dtype=torch.float64)
    return w[:, None] * w[None, :]


def periodogram(raw: torch.Tensor) -> torch.Tensor:
    """Hann-windowed periodogram of patches (the half plane of ``rfft2``).

    Parameters
    ----------
    raw : torch.Tensor
        (P, 128, 128) detector counts.

    Returns
    -------
    torch.Tensor
        (P, 128, 65) float64; white noise of variance s^2 has expectation s^2.
    """
    w = _hann()
    y = raw.double()
    y = y - (w * y).sum(dim=(-2, -1), keepdim=True) / w.sum()
    spec = torch.fft.rfft2(w * y)
    return spec.abs() ** 2 / (w**2).sum()


def spectral_models(
    psf_model: str, params: torch.Tensor, optics: Optics | None = None
) -> torch.Tensor:
    """Return the expected periodogram shapes ``|f|^(-2 beta) |H(f)|^2``, PSFs x ``BETAS``.

    The Hann window's spectral smoothing (the circular kernel [1, 4, 1] / 6 along each
    axis, the squared DFT of the window) is applied, as it acts on the patch's spectrum.

    Parameters
    ----------
    psf_model : str
    params : torch.Tensor
        (S, N) PSF parameters.
    optics : Optics, optional

    Returns
    -------
    torch.Tensor
        (S, len(BETAS), 128, 65) float32.
    """
    kern = render_psf(get_model(psf_model), params, optics=optics or Optics())
    mtf2 = torch.fft.fft2(kern, s=(PATCH, PATCH)).abs() ** 2  # full plane, for the window
    f = torch.fft.fftfreq(PATCH)
    rad = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp_min(0.5 / PATCH)
    out = []
    for beta in BETAS.tolist():
        g = mtf2 * (rad * PATCH) ** (-2 * beta)  # in bins, so float32 keeps its range
        for dim in (-2, -1):
            g = (4 * g + g.roll(1, dims=dim) + g.roll(-1, dims=dim)) / 6
        out.append(g[..., : PATCH // 2 + 1])
    return torch.stack(out, dim=1)


def _mask() -> torch.Tensor:
    return _radius() >= FREQ_MIN


def whittle_loglik(
    pgram: torch.Tensor, shapes: torch.Tensor, iterations: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whittle log-likelihood of one periodogram under ``A g + N``, A and N profiled.

    Parameters
    ----------
    pgram : torch.Tensor
        (128, 65) periodogram (:func:`periodogram`).
    shapes : torch.Tensor
        (..., 128, 65) candidate shapes g (:func:`spectral_models`).
    iterations : int
        Reweighted least-squares steps (the Fisher scoring of the Whittle likelihood).

    Returns
    -------
    ll : torch.Tensor
        (...) log-likelihood up to a constant, over bins at or above ``FREQ_MIN``.
    amplitude : torch.Tensor
        (...) the texture amplitude A at the maximum.
    """
    m = _mask()
    i_f = pgram[m].float()
    g = shapes[..., m]
    g = g / g.mean(dim=-1, keepdim=True).clamp_min(1e-30)  # A then in units of the data
    n0 = i_f.mean() * 0.1
    a = (i_f.mean() - n0).clamp_min(0) * torch.ones(g.shape[:-1])
    n = n0 * torch.ones(g.shape[:-1])
    floor = 1e-6 * float(i_f.mean())
    for _ in range(iterations):
        mod = a[..., None] * g + n[..., None]
        w = 1.0 / mod**2
        s_gg, s_g, s_1 = (w * g * g).sum(-1), (w * g).sum(-1), w.sum(-1)
        s_gi, s_i = (w * g * i_f).sum(-1), (w * i_f).sum(-1)
        det = (s_gg * s_1 - s_g**2).clamp_min(1e-30)
        a_new = (s_gi * s_1 - s_g * s_i) / det
        n_new = (s_gg * s_i - s_g * s_gi) / det
        # on the boundary (A = 0 or N = 0) the other is the weighted mean fit alone
        a = torch.where(n_new < floor, s_gi / s_gg, a_new).clamp_min(0)
        n = torch.where(a_new < 0, s_i / s_1, n_new).clamp_min(floor)
    mod = a[..., None] * g + n[..., None]
    ll = -(torch.log(mod) + i_f / mod).sum(-1)
    return ll.double(), a


def fractal_batch(stream: PatchStream, n: int) -> Batch:
    """``n`` Gaussian fractal-texture patches degraded like the test stream, with truth."""
    srcs = fractal_noise(n, stream.r, stream.g, binary=0.0)
    kind = torch.full((n,), SOURCE_TYPES.index("tex"))
    return stream.degrade_sources(srcs, kind, keep_truth=True)


def whittle_search(
    psf_model: str, pgrams: torch.Tensor
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """``loglik(i, params)``: patch i's Whittle likelihood, maximised over ``BETAS``."""

    def one(i: int, params: torch.Tensor) -> torch.Tensor:
        ll, _ = whittle_loglik(pgrams[i], spectral_models(psf_model, params))
        return ll.max(dim=1).values

    return one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.whittle", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="zernike3", help="shipped name or .pt path")
    p.add_argument("--patches", type=int, default=256, help="fractal-texture test patches")
    p.add_argument("--samples", type=int, default=1024, help="prior PSFs scored first")
    p.add_argument(
        "--chains", type=int, default=0, help="also the maximum: local-search starts per patch"
    )
    p.add_argument("--oracle", action="store_true", help="also the non-blind ceiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank-size", type=int, default=512, help="Zernike kernels of the test")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    net, card = setup(p, a, min_chains=0)
    pm, ranges = card.psf_model, card_ranges(card)
    stream = _stream(pm, {"tex": 1.0}, a.seed, DegradeConfig(invalid_fraction=0.0), 64, ranges)
    batches = [fractal_batch(stream, min(64, a.patches - i)) for i in range(0, a.patches, 64)]
    preds = {
        f"{card.name} ({card.arch})": predict(net, pm, batches),
        f"{card.name} + TTA": predict(DihedralMean(net, pm), pm, batches),
    }
    first = next(iter(preds.values()))
    keep = (first["inv"] == 0) & (first["w"] > 0)
    truth, raw = _cat_truth(batches, keep)
    true = first["true"][keep]
    rows = {name: r2_report(pm, r["pred"][keep], true) for name, r in preds.items()}
    t0 = time.perf_counter()
    pgrams = periodogram(raw)
    samples = prior_samples(pm, a.samples, a.seed, ranges)
    shapes = spectral_models(pm, samples)
    ll = torch.stack(
        [
            whittle_loglik(pgrams[i], shapes)[0].max(dim=1).values
            for i in tqdm(range(len(raw)), desc="whittle", unit="patch")
        ]
    )
    mean, _ = posterior_mean(pm, ll, samples)
    rows["Whittle posterior mean (blind, knows the texture family)"] = r2_report(pm, mean, true)
    if a.chains:
        starts = samples[ll.topk(a.chains, dim=1).indices]
        blind, _ = refine_mode(pm, whittle_search(pm, pgrams), starts, ranges, seed=a.seed)
        rows["Whittle maximum likelihood"] = r2_report(pm, blind, true)
    took = time.perf_counter() - t0
    if a.oracle:
        best = oracle_estimate(pm, truth, raw, samples, 8, ranges, a.seed, progress=True)[0]
        rows["oracle (non-blind, training.ceiling)"] = r2_report(pm, best, true)
    for row in rows.values():
        row["n"] = float(len(true))
    cols = [*card.param_names]
    if pm in ("zernike2", "zernike3"):
        cols += ["astig_c", "astig_s"]
    cols += ["r2", "n"]
    title = f"Blind reference: {card.name} ({pm}) on Gaussian fractal textures (test noise)"
    print(_fmt_table(title, rows, cols))
    print(
        f"Whittle: {a.samples} prior PSFs x {len(BETAS)} exponents (posterior mean)"
        + (f", then a local search from the {a.chains} best (maximum)" if a.chains else "")
        + f"; {took:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
