"""The Whittle blind reference: periodogram, spectral model, profiled likelihood, estimate."""

from __future__ import annotations

import math

import pytest
import torch

from training import whittle
from training.ceiling import refine_mode
from training.data import DegradeConfig, PatchStream


def test_periodogram_of_white_noise_is_its_variance() -> None:
    g = torch.Generator().manual_seed(0)
    noise = 3.0 * torch.randn(16, 128, 128, generator=g) + 100.0
    pg = whittle.periodogram(noise)
    assert pg.shape == (16, 128, 65)
    used = pg[:, whittle._mask()]
    assert float(used.mean()) == pytest.approx(9.0, rel=0.02)
    assert float(used.std() / used.mean()) == pytest.approx(1.0, abs=0.05)  # exponential


def test_spectral_model_is_power_law_times_mtf() -> None:
    shapes = whittle.spectral_models("gaussian1", torch.tensor([[0.5], [3.0]])).double()
    assert shapes.shape == (2, len(whittle.BETAS), 128, 65)
    row = shapes[:, :, 0, :]  # frequencies c / 128 along x

    # the exponent: the ratio of two betas' shapes falls as |f|^(-2 (2.2 - 1.0))
    lr = torch.log(row[0, -1] / row[0, 0])
    slope = float((lr[32] - lr[16]) / math.log(2.0))
    assert slope == pytest.approx(-2.4, abs=0.05)
    # the PSF: a Gaussian of sigma 3 px against 0.5 px, MTF^2 = exp(-4 pi^2 sigma^2 f^2)
    for c in (4, 8, 12):
        ratio = float(row[1, 3, c] / row[0, 3, c])
        analytic = math.exp(-4 * math.pi**2 * (3.0**2 - 0.5**2) * (c / 128) ** 2)
        assert abs(math.log(ratio / analytic)) < 0.2  # the window's smoothing


def test_profiled_likelihood_recovers_shape_amplitude_and_noise() -> None:
    params = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    shapes = whittle.spectral_models("gaussian1", params)
    m = whittle._mask()
    true = shapes[2, 3]
    scale = true[m].mean()
    pgram = (5.0 * true / scale + 0.2).double()  # A = 5 in units of the data, N = 0.2
    ll, amp = whittle.whittle_loglik(pgram, shapes)
    assert ll.shape == (4, len(whittle.BETAS))
    assert int(ll.flatten().argmax()) == 2 * len(whittle.BETAS) + 3
    assert float(amp[2, 3]) == pytest.approx(5.0, rel=1e-3)


def test_whittle_estimates_gaussian_widths_blind() -> None:
    cfg = DegradeConfig(peak_photons=(5e3, 2e4), invalid_fraction=0.0, read_rel=(0.0, 0.01))
    s = PatchStream("gaussian1", "test", 5, types={"tex": 1.0}, degrade=cfg, pool=8)
    b = whittle.fractal_batch(s, 12)
    assert b.raw is not None and b.truth is not None
    ok = (b.invalid == 0) & (b.weight > 0)
    pg = whittle.periodogram(b.raw[ok])
    grid = torch.linspace(0.5, 8.0, 61)[:, None]
    ll = torch.stack(
        [whittle.whittle_loglik(p, whittle.spectral_models("gaussian1", grid))[0] for p in pg]
    ).amax(dim=2)
    starts = grid[ll.topk(2, dim=1).indices]
    est, _ = refine_mode("gaussian1", whittle.whittle_search("gaussian1", pg), starts, rounds=4)
    rel = ((est[:, 0] - b.params[ok, 0]) / b.params[ok, 0]).abs()
    assert int(ok.sum()) >= 6
    assert float(rel.median()) < 0.1


def test_cli_scores_the_network_whittle_and_oracle(capsys: pytest.CaptureFixture) -> None:
    args = ["--model", "gaussian1", "--patches", "16", "--samples", "32", "--oracle"]
    assert whittle.main(args) == 0
    out = capsys.readouterr().out
    assert "Gaussian fractal textures" in out

    def r2(prefix: str) -> float:
        return float(next(ln for ln in out.splitlines() if ln.startswith(prefix)).split("|")[2])

    assert r2("| Whittle posterior mean") > 0.5  # blind, on a texture family it knows
    assert r2("| oracle (non-blind") > max(r2("| Whittle posterior mean"), r2("| gaussian1 ("))
