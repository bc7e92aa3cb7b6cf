"""The non-blind R^2 ceiling: its noise model, likelihood, posterior and mode search."""

from __future__ import annotations

import math

import pytest
import torch

from training import ceiling
from training.data import PatchStream
from training.evaluate import card_ranges


def _batch(psf_model: str, n: int = 32, seed: int = 3, keep_truth: bool = True):
    s = PatchStream(psf_model, "test", seed, pool=32, refresh=0.0, bank_size=32)
    return s.next(n, keep_truth=keep_truth)


def test_truth_is_the_degradation_and_leaves_the_stream_alone() -> None:
    b = _batch("gaussian1")
    plain = _batch("gaussian1", keep_truth=False)
    assert torch.equal(b.x, plain.x) and torch.equal(b.params, plain.params)
    t = b.truth
    assert t is not None and b.raw is not None
    # re-blur the source with the true kernel: the residual is the Eq. 10 noise, z ~ N(0, 1)
    ll_true = ceiling.log_likelihood("gaussian1", t, b.raw, b.params)
    assert ll_true.shape == (32, 32)
    from psf_live.psf import render_psf
    from training.data import valid_blur

    mu = (t.beta * t.peak)[:, None, None] * (
        valid_blur(t.src, render_psf("gaussian1", b.params)).clamp_min(0)
        + t.background[:, None, None]
    )
    var = t.read[:, None, None] ** 2 + t.beta[:, None, None] * mu * t.shot[:, None, None]
    z = (b.raw - mu) / var.sqrt()
    assert abs(float(z.mean())) < 0.01
    assert float(z.std()) == pytest.approx(1.0, abs=0.01)


def test_likelihood_peaks_at_the_true_width() -> None:
    b = _batch("gaussian1")
    assert b.truth is not None and b.raw is not None and b.snr is not None
    grid = torch.linspace(0.5, 8.0, 151)[:, None]  # 0.05 px apart
    ll = ceiling.log_likelihood("gaussian1", b.truth, b.raw, grid)
    found = grid[ll.argmax(dim=1), 0]
    ok = (b.invalid == 0) & (b.snr > 1) & (b.truth.peak >= 500)  # well exposed
    assert int(ok.sum()) >= 8
    err = (found - b.params[:, 0])[ok].abs()
    assert float(err.max()) <= 0.1  # two grid steps, at any width from 0.5 to 8 px


def test_posterior_mean_is_the_weighted_mean_of_the_targets() -> None:
    samples = torch.tensor([[0.5, 0.2, 0.0], [0.5, 0.2, math.pi / 2], [0.9, 0.4, 1.0]])
    ll = torch.tensor([[0.0, -1e4, -1e4], [0.0, 0.0, -1e4]], dtype=torch.float64)
    est, ess = ceiling.posterior_mean("zernike3", ll, samples)
    assert torch.allclose(est[0], samples[0])
    assert ess.tolist() == pytest.approx([1.0, 2.0])
    # axes 0 and pi/2 cancel in the signed pair: no astigmatism left, focus kept
    assert float(est[1, 0]) == pytest.approx(0.5)
    assert float(est[1, 1]) == pytest.approx(0.2)  # the cylinder has its own target


def test_prior_samples_fill_the_ranges() -> None:
    s = ceiling.prior_samples("zernike3", 256, seed=1)
    assert s.shape == (256, 3)
    lo, hi = s.amin(dim=0), s.amax(dim=0)
    assert torch.all(lo >= torch.tensor([0.0, 0.0, 0.0]))
    assert torch.all(hi <= torch.tensor([1.0, 0.5, math.pi]))
    assert torch.all(hi - lo > torch.tensor([0.98, 0.49, 3.1]))  # spread over the whole box
    card = type("Card", (), {"data_recipe": {"param_ranges": {"cylinder": [0.15, 0.35]}}})()
    narrow = ceiling.prior_samples("zernike3", 64, ranges=card_ranges(card))
    assert float(narrow[:, 1].min()) >= 0.15 and float(narrow[:, 1].max()) <= 0.35


def test_mode_search_finds_both_widths_from_a_far_start() -> None:
    b = _batch("gaussian2", n=8)
    assert b.truth is not None and b.raw is not None and b.snr is not None
    ok = ((b.invalid == 0) & (b.snr > 1)).nonzero().flatten()[:3]
    assert len(ok) >= 2
    truth = ceiling._take(b.truth, ok)
    starts = torch.full((len(ok), 2, 2), 4.0)  # the middle of the range, two chains
    starts[:, 1] = torch.tensor([1.0, 7.0])
    search = ceiling.patch_loglik("gaussian2", truth, b.raw[ok])
    mode, ll = ceiling.refine_mode("gaussian2", search, starts, rounds=10)
    assert torch.allclose(mode, b.params[ok], atol=0.1)
    ll_true = ceiling.log_likelihood("gaussian2", truth, b.raw[ok], b.params[ok]).diagonal()
    assert torch.all(ll >= ll_true - 2.0)


def test_cli_bounds_gaussian1_near_one(capsys: pytest.CaptureFixture) -> None:
    args = ["--model", "gaussian1", "--patches", "24", "--samples", "64", "--chains", "2"]
    assert ceiling.main(args) == 0
    out = capsys.readouterr().out
    assert "R^2 ceiling: gaussian1" in out and "by texture/noise ratio" in out
    row = next(line for line in out.splitlines() if line.startswith("| oracle (mean"))
    r2 = float(row.split("|")[2])
    assert r2 > 0.98  # the source and noise known, a Gaussian width is determined
    net = next(line for line in out.splitlines() if line.startswith("| gaussian1 ("))
    assert float(net.split("|")[2]) < r2
