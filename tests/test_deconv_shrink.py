"""Risk-aware PSF size (psf_live.deconv.shrink_uncertain): the premise and the arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _maps import grid_map

from psf_live.deconv import (
    ZERNIKE_SHRINK,
    default_shrink,
    richardson_lucy_tv,
    shrink_uncertain,
)
from psf_live.estimate import PSFMap
from psf_live.psf import add_noise, convolve, get_model, render_psf
from psf_live.sim import cells_sample


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - est) ** 2).sum()))


def _gain(model: str, true: float, used: float, seed: int) -> float:
    """SNR gain (dB) of TV-RL with a kernel of parameter ``used`` on a ``true`` blur."""
    x = cells_sample((96, 96), seed=seed).astype(np.float64) * 300
    m = get_model(model)
    k = render_psf(m, np.array([[true]], np.float32))[0]
    blurred = convolve(torch.as_tensor(x, dtype=torch.float32), k).clamp_min(0)
    y = add_noise(blurred, 1.0, 2.0, torch.Generator().manual_seed(seed)).numpy()
    ku = render_psf(m, np.array([[used]], np.float32), size=k.shape[-1])[0]
    return snr_db(x, richardson_lucy_tv(y, ku, device="cpu")) - snr_db(x, y)


def test_defocus_too_large_costs_more_than_too_small() -> None:
    """The premise: at 0.3 waves of defocus, a kernel 0.1 wave too large deblurs worse than
    one 0.1 wave too small (OTF dips put where the image has signal), and the true kernel
    beats both (mean over five scenes; single scenes scatter)."""
    small, right, large = (
        np.mean([_gain("zernike1", 0.3, v, seed) for seed in range(5)]) for v in (0.2, 0.3, 0.4)
    )
    assert right > small > large + 0.15


def test_gaussian_asymmetry_is_the_other_way() -> None:
    """Why Gaussian maps are not shrunk: a width 0.5 px too small costs much more than
    0.5 px too large."""
    small, large = (
        np.mean([_gain("gaussian1", 1.0, v, seed) for seed in range(3)]) for v in (0.5, 1.5)
    )
    assert large > small + 1.0


def _map(
    values: np.ndarray, views: np.ndarray | None, model: str, valid: np.ndarray | None = None
) -> PSFMap:
    return grid_map(values, model, valid=valid, views=views)


def test_shrink_lowers_size_parameters_by_k_sd_and_keeps_the_axis() -> None:
    rng = np.random.default_rng(1)
    views = np.stack(
        [
            rng.uniform(0.2, 0.6, (2, 3, 8)),  # focus
            rng.uniform(0.1, 0.3, (2, 3, 8)),  # cylinder
            rng.uniform(0.5, 1.0, (2, 3, 8)),  # axis
        ],
        -1,
    ).astype(np.float32)
    views[0, 0, :, 0] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4]  # sd 0.13 > mean 0.05
    mean = views.mean(2)
    m = _map(mean, views, "zernike3")
    out = shrink_uncertain(m, 1.5)
    sd = views.astype(np.float64).std(2)
    want = np.maximum(mean[..., :2] - 1.5 * sd[..., :2], 0.0)
    np.testing.assert_allclose(out.params[..., :2], want, atol=1e-6)
    assert out.params[0, 0, 0] == 0.0  # clipped at the range's lower limit
    np.testing.assert_array_equal(out.params[..., 2], m.params[..., 2])
    np.testing.assert_array_equal(m.params, mean)  # the input map is not modified
    assert shrink_uncertain(m, 0) is m


def test_shrink_refills_invalid_patches_from_the_lowered_valid_ones() -> None:
    views = np.zeros((1, 3, 8, 1), np.float32)
    views[0, 0, :, 0] = [0.4, 0.6] * 4  # sd 0.1
    views[0, 2, :, 0] = 0.5  # no spread
    views[0, 1, :, 0] = 0.9  # the invalid patch's own (ignored) output
    valid = np.array([[True, False, True]])
    m = _map(views.mean(2), views, "zernike1", valid)
    assert m.params[0, 1, 0] == pytest.approx(0.5)
    out = shrink_uncertain(m, 1.0)
    assert out.params[0, 0, 0] == pytest.approx(0.4)
    assert out.params[0, 2, 0] == pytest.approx(0.5)
    assert out.params[0, 1, 0] == pytest.approx(0.45)  # equidistant neighbours


def test_default_shrink_and_bad_input() -> None:
    views = np.full((1, 1, 8, 1), 2.0, np.float32)
    assert default_shrink(_map(np.full((1, 1, 1), 0.5), views / 4, "zernike1")) == ZERNIKE_SHRINK
    assert default_shrink(_map(np.full((1, 1, 1), 2.0), views, "gaussian1")) == 0.0
    no_views = _map(np.full((1, 1, 1), 0.5), None, "zernike1")
    assert default_shrink(no_views) == 0.0
    assert shrink_uncertain(no_views, 0.0) is no_views
    with pytest.raises(ValueError, match="test-time augmentation"):
        shrink_uncertain(no_views, 1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=">= 0"):
            shrink_uncertain(no_views, bad)
