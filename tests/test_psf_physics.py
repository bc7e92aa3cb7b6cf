"""PSF physics against analytic results (paper Eq. 6-8, 10, 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from psf_live.psf import (
    PSF_MODELS,
    Optics,
    OverlapAdd,
    add_noise,
    bilinear_weights,
    convolve,
    defocus_um_to_waves,
    defocus_waves_to_um,
    gaussian_psf,
    get_model,
    render_psf,
    zernike_psf,
)


def _moments(k: torch.Tensor) -> tuple[float, float, float, float]:
    """Centroid (y, x) and central second moments (var_y, var_x) of a kernel."""
    k = k.double()
    n = k.shape[-1]
    c = torch.arange(n, dtype=torch.float64) - n // 2
    py, px = k.sum(1), k.sum(0)
    my, mx = float((py * c).sum()), float((px * c).sum())
    vy = float((py * (c - my) ** 2).sum())
    vx = float((px * (c - mx) ** 2).sum())
    return my, mx, vy, vx


def _encircled_radius(k: torch.Tensor, fraction: float) -> float:
    n = k.shape[-1]
    c = torch.arange(n, dtype=torch.float64) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = torch.sqrt(yy**2 + xx**2).flatten()
    order = torch.argsort(r)
    cum = torch.cumsum(k.double().flatten()[order], 0)
    return float(r[order][torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64))])


@pytest.mark.parametrize(("wx", "wy"), [(0.5, 0.5), (1.3, 2.7), (4.0, 1.0), (8.0, 8.0)])
def test_gaussian_second_moments_equal_parameters(wx: float, wy: float) -> None:
    k = gaussian_psf(torch.tensor([wx]), torch.tensor([wy]), 81)[0]
    my, mx, vy, vx = _moments(k)
    assert abs(my) < 1e-9 and abs(mx) < 1e-9
    # Pixel integration adds the variance of a unit box, 1/12 px^2 (Sheppard's
    # correction, exact up to terms in exp(-2 pi^2 width^2): 3 % at 0.5 px).
    for width, var in ((wx, vx), (wy, vy)):
        tol = 3e-2 if width < 1 else 1e-3
        assert var == pytest.approx(width**2 + 1 / 12, rel=tol)


def test_gaussian1_is_isotropic_gaussian2() -> None:
    a = render_psf("gaussian1", [[2.5]])
    b = render_psf("gaussian2", [[2.5, 2.5]])
    torch.testing.assert_close(a, b)


def test_aberration_free_fwhm_matches_airy() -> None:
    optics = Optics(pixel_size_um=0.04, oversample=1)
    k = render_psf("zernike1", [0.0], size=121, optics=optics)[0].double().numpy()
    row = k[60]
    half = row.max() / 2
    above = np.flatnonzero(row >= half)
    i0, i1 = above[0], above[-1]
    left = i0 - 1 + (half - row[i0 - 1]) / (row[i0] - row[i0 - 1])
    right = i1 + (row[i1] - half) / (row[i1] - row[i1 + 1])
    fwhm_um = (right - left) * optics.pixel_size_um
    expected = 0.514 * optics.wavelength_um / optics.na
    assert fwhm_um == pytest.approx(expected, rel=0.05)


def test_large_defocus_matches_geometric_blur_disc() -> None:
    """Far from focus the PSF approaches a uniform disc of radius 4 sqrt(3) f lambda / NA."""
    optics = Optics()
    f = 1.0
    radius_px = 4 * math.sqrt(3) * f * optics.wavelength_um / optics.na / optics.pixel_size_um
    k = render_psf("zernike1", [f], size=161, optics=optics)[0]
    for fraction in (0.5, 0.8):
        assert _encircled_radius(k, fraction) == pytest.approx(
            math.sqrt(fraction) * radius_px, rel=0.08
        )
    # The documented range reaches a blur radius of at least 12 px at the default optics.
    assert radius_px >= 12


def test_defocus_conversion_round_trip_and_scale() -> None:
    optics = Optics()
    w = defocus_um_to_waves(30.0, optics)
    # Paraxial: peak path difference dz * NA^2 / (2 n); Noll coefficient = peak / (2 sqrt 3).
    approx = 30.0 * optics.na**2 / 2 / (2 * math.sqrt(3) * optics.wavelength_um)
    assert w == pytest.approx(approx, rel=0.02)
    assert defocus_waves_to_um(w, optics) == pytest.approx(30.0)
    assert defocus_um_to_waves(-5.0, optics) == pytest.approx(-defocus_um_to_waves(5.0, optics))


def test_astigmatic_psf_round_at_focus_and_perpendicular_either_side() -> None:
    c = torch.tensor([0.3])
    axis = torch.tensor([0.0])
    at_focus = zernike_psf(torch.tensor([0.0]), c, axis, 85)[0]
    plus = zernike_psf(torch.tensor([0.3]), c, axis, 85)[0]
    minus = zernike_psf(torch.tensor([-0.3]), c, axis, 85)[0]
    _, _, vy0, vx0 = _moments(at_focus)
    assert vx0 == pytest.approx(vy0, rel=0.02)
    _, _, vyp, vxp = _moments(plus)
    _, _, vym, vxm = _moments(minus)
    assert vxp / vyp > 1.5 or vyp / vxp > 1.5  # elongated
    assert (vxp > vyp) != (vxm > vym)  # along perpendicular axes
    torch.testing.assert_close(minus, plus.T, atol=1e-6, rtol=1e-4)


def test_sign_of_wavefront_is_invisible() -> None:
    """(f, C, a) and (-f, C, a + pi/2) are the same PSF (why focus ranges are >= 0)."""
    a = render_psf("zernike3", [[0.4, 0.2, 0.3]])
    b = zernike_psf(
        torch.tensor([-0.4]), torch.tensor([0.2]), torch.tensor([0.3 + math.pi / 2]), 85
    )
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", list(PSF_MODELS))
def test_kernels_normalised_and_hold_99_percent_of_energy(name: str) -> None:
    model = get_model(name)
    extreme = torch.tensor([[hi for _, hi in model.ranges]])
    if name.startswith("zernike") and model.n_params > 1:
        extreme[0, -1] = 0.0  # axis: any value, the range's upper edge is pi
    kernels = render_psf(name, extreme)
    assert kernels.shape == (1, model.kernel_size, model.kernel_size)
    assert kernels.dtype == torch.float32
    assert float(kernels.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(kernels.min()) >= 0
    big = render_psf(name, extreme, size=3 * model.kernel_size)[0]
    c, h = big.shape[-1] // 2, model.kernel_size // 2
    assert float(big[c - h : c + h + 1, c - h : c + h + 1].sum()) >= 0.99


def test_render_psf_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        render_psf("zernike3", [[0.1, 0.2]])
    with pytest.raises(ValueError, match="NaN"):
        render_psf("gaussian1", [[float("nan")]])
    with pytest.raises(ValueError, match="odd"):
        render_psf("gaussian1", [[1.0]], size=10)
    with pytest.raises(ValueError, match="unknown PSF model"):
        render_psf("airy", [[1.0]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_cpu_and_cuda_agree() -> None:
    p = torch.tensor([[0.3, 0.2, 1.0], [0.9, 0.5, 2.0]])
    torch.testing.assert_close(
        render_psf("zernike3", p), render_psf("zernike3", p.cuda()).cpu(), atol=1e-6, rtol=1e-3
    )


def test_fft_lengths_are_the_smallest_5_smooth_multiples_of_8() -> None:
    from psf_live.psf._formation import _fast_len

    def smooth(m: int) -> bool:
        for q in (2, 3, 5):
            while m % q == 0:
                m //= q
        return m == 1

    for n in range(1, 700):
        m = _fast_len(n)
        assert m >= n and m % 8 == 0 and smooth(m)
        assert not any(j % 8 == 0 and smooth(j) for j in range(n, m))
    assert (_fast_len(258), _fast_len(212), _fast_len(306)) == (288, 216, 320)


def test_convolve_matches_direct_linear_convolution(generator: torch.Generator) -> None:
    x = torch.rand(37, 52, generator=generator)
    k = torch.rand(9, 9, generator=generator)
    ref = scipy.signal.convolve2d(x.double().numpy(), k.double().numpy(), mode="same")
    np.testing.assert_allclose(convolve(x, k).numpy(), ref, atol=1e-5)
    # No wrap-around: a point at the left edge leaves nothing at the right edge.
    delta = torch.zeros(16, 16)
    delta[8, 0] = 1
    out = convolve(delta, render_psf("gaussian1", [[1.0]], size=9)[0])
    assert float(out[:, -4:].abs().max()) < 1e-6


def test_bilinear_masks_sum_to_one_and_peak_at_centres() -> None:
    w = bilinear_weights(100, [10.0, 40.0, 95.0])
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    assert w[1, 40] == 1.0 and w[0, 40] == 0.0 and w[1, 25] == pytest.approx(0.5)
    assert w[0, :11].min() == 1.0 and w[2, 95:].min() == 1.0


def _kernels(generator: torch.Generator) -> torch.Tensor:
    widths = torch.rand(12, 2, generator=generator) * 3 + 0.5
    return render_psf("gaussian2", widths, size=13).reshape(3, 4, 13, 13)


_CY, _CX = [15.0, 45.0, 80.0], [5.0, 35.0, 70.0, 100.0]


_METHODS = pytest.mark.parametrize("method", ["windows", "frame"])


@_METHODS
def test_overlap_add_adjoint_identity(generator: torch.Generator, method: str) -> None:
    op = OverlapAdd((90, 110), _CY, _CX, _kernels(generator), method=method)
    x = torch.rand(90, 110, generator=generator)
    y = torch.rand(90, 110, generator=generator)
    lhs = float((op.forward(x).double() * y.double()).sum())
    rhs = float((x.double() * op.adjoint(y).double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-6)


@_METHODS
def test_overlap_add_adjoint_of_inner_data_equals_zero_padded(
    generator: torch.Generator, method: str
) -> None:
    op = OverlapAdd((90, 110), _CY, _CX, _kernels(generator), method=method)
    inner = torch.rand(80, 100, generator=generator)
    padded = torch.nn.functional.pad(inner, (5, 5, 5, 5))
    torch.testing.assert_close(op.adjoint(inner, margin=5), op.adjoint(padded))
    with pytest.raises(ValueError, match="shape"):
        op.adjoint(inner, margin=4)


@_METHODS
def test_overlap_add_reduces_to_convolution_for_one_kernel(
    generator: torch.Generator, method: str
) -> None:
    k = render_psf("zernike1", [[0.3]], size=21)[0]
    x = torch.rand(64, 80, generator=generator)
    expected = convolve(x, k)
    single = OverlapAdd((64, 80), [30.0], [40.0], k[None], method=method)
    repeated = OverlapAdd(
        (64, 80), [10.0, 50.0], [5.0, 40.0, 70.0], k.expand(6, 21, 21), method=method
    )
    torch.testing.assert_close(single(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(repeated(x), expected, atol=1e-5, rtol=1e-4)


@_METHODS
def test_overlap_add_is_local(generator: torch.Generator, method: str) -> None:
    """A point at a grid centre is blurred by that centre's kernel only."""
    kernels = _kernels(generator)
    op = OverlapAdd((90, 110), _CY, _CX, kernels, method=method)
    delta = torch.zeros(90, 110)
    delta[45, 70] = 1.0  # grid point (1, 2)
    out = op(delta)
    expected = torch.zeros(90, 110)
    expected[45 - 6 : 45 + 7, 70 - 6 : 70 + 7] = kernels[1, 2]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-4)


def test_noise_mean_and_variance_follow_eq10(generator: torch.Generator) -> None:
    psi = torch.full((400, 500), 50.0)
    beta, sigma = 0.7, 4.0
    noisy = add_noise(psi, beta, sigma, generator=generator)
    assert float(noisy.mean()) == pytest.approx(beta * 50.0, rel=0.01)
    assert float(noisy.var()) == pytest.approx(beta**2 * 50.0 + sigma**2, rel=0.03)
    with pytest.raises(ValueError):
        add_noise(torch.tensor([-1.0]))
    with pytest.raises(ValueError):
        add_noise(torch.tensor([float("nan")]))


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_overlap_add_matches_dense_definition_in_any_chunking(
    generator: torch.Generator, chunk: int
) -> None:
    """H x = sum_m h_m * (phi_m x), whatever number of windows share one FFT batch."""
    kernels = _kernels(generator)
    op = OverlapAdd((90, 110), _CY, _CX, kernels, method="windows")
    op._chunk = chunk  # 12 windows: 12 batches of 1, 3 of <= 5, or one
    x = torch.rand(90, 110, generator=generator)
    wy = torch.as_tensor(bilinear_weights(90, _CY))
    wx = torch.as_tensor(bilinear_weights(110, _CX))
    dense = sum(
        convolve(x * (wy[i, :, None] * wx[j, None, :]), kernels[i, j])
        for i in range(3)
        for j in range(4)
    )
    torch.testing.assert_close(op.forward(x), dense, atol=1e-5, rtol=1e-4)
    y = torch.rand(90, 110, generator=generator)
    lhs = float((op.forward(x).double() * y.double()).sum())
    rhs = float((x.double() * op.adjoint(y).double()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-6)


@pytest.mark.parametrize("crop", [1, 6, 20])
def test_overlap_add_methods_agree_on_cropped_and_inner_problems(
    generator: torch.Generator, crop: int
) -> None:
    """The whole-frame FFTs are shortened for a cropped output or an inner input
    (TV-RL's field extension); they must not wrap around, whatever the crop."""
    kernels = _kernels(generator)
    windows = OverlapAdd((90, 110), _CY, _CX, kernels, method="windows")
    frame = OverlapAdd((90, 110), _CY, _CX, kernels, method="frame")
    x = torch.rand(90, 110, generator=generator)
    full = windows.forward(x)
    torch.testing.assert_close(windows.forward(x, crop=crop), full[crop:-crop, crop:-crop])
    torch.testing.assert_close(
        frame.forward(x, crop=crop), full[crop:-crop, crop:-crop], atol=1e-5, rtol=1e-4
    )
    inner = torch.rand(90 - 2 * crop, 110 - 2 * crop, generator=generator)
    torch.testing.assert_close(
        frame.adjoint(inner, margin=crop),
        windows.adjoint(inner, margin=crop),
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="crop"):
        frame.forward(x, crop=45)
    with pytest.raises(ValueError, match="method"):
        OverlapAdd((90, 110), _CY, _CX, kernels, method="fft")


def test_overlap_add_picks_the_cheaper_method() -> None:
    """A few kernels: whole-frame FFTs; a live map's 8x8 grid: local windows."""
    k = torch.ones(4, 45, 45) / 45**2
    assert OverlapAdd((300, 300), [86.0, 214.0], [86.0, 214.0], k).method == "frame"
    c = (np.arange(8) + 0.5) * 128 + 25
    k64 = torch.ones(64, 51, 51) / 51**2
    assert OverlapAdd((1074, 1074), c, c, k64).method == "windows"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@_METHODS
def test_overlap_add_cpu_and_cuda_agree(generator: torch.Generator, method: str) -> None:
    kernels = _kernels(generator)
    x = torch.rand(90, 110, generator=generator)
    inner = torch.rand(80, 100, generator=generator)
    cpu = OverlapAdd((90, 110), _CY, _CX, kernels, method=method)
    gpu = OverlapAdd((90, 110), _CY, _CX, kernels.cuda(), method=method)
    torch.testing.assert_close(gpu.forward(x.cuda(), crop=5).cpu(), cpu.forward(x, crop=5))
    torch.testing.assert_close(
        gpu.adjoint(inner.cuda(), margin=5).cpu(), cpu.adjoint(inner, margin=5)
    )


def test_zernike_psf_equals_the_centred_fft_of_the_pupil() -> None:
    """The matrix-DFT rendering gives the samples of |FFT(pupil)|^2 on the centred grid."""
    from psf_live.psf._render import next_fast_len

    optics = Optics()
    size, os_ = 21, optics.oversample
    f, c, a = torch.tensor([0.4, -0.2]), torch.tensor([0.1, 0.3]), torch.tensor([0.3, 2.0])
    n_win, dx = size * os_, optics.pixel_size_um / os_
    n = next_fast_len(math.ceil(max(1.5 * n_win, 32.0 / (optics.cutoff_cycles_per_um * dx))))
    k = (torch.arange(n, dtype=torch.float64) - n // 2) / (n * dx)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    rho = torch.sqrt(kx**2 + ky**2) / optics.cutoff_cycles_per_um
    phi = torch.atan2(ky, kx)
    phase = (
        2
        * math.pi
        * (
            f.double()[:, None, None] * math.sqrt(3) * (2 * rho**2 - 1)
            + c.double()[:, None, None]
            * math.sqrt(6)
            * rho**2
            * torch.cos(2 * (phi - a.double()[:, None, None]))
        )
    )
    pupil = torch.polar((rho <= 1).double().expand_as(phase), phase)
    field = torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(pupil, dim=(-2, -1))), dim=(-2, -1)
    )
    start = n // 2 - n_win // 2
    win = field.abs().square()[:, start : start + n_win, start : start + n_win]
    ref = win.reshape(2, size, os_, size, os_).sum(dim=(2, 4))
    ref = ref / ref.sum(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(zernike_psf(f, c, a, size).double(), ref, atol=1e-6, rtol=1e-4)


def test_astigmatic_twins_blur_alike_and_fold_to_the_less_astigmatic() -> None:
    """(f, C) and (C / sqrt 2, sqrt 2 f): the same |k+|, opposite k-, nearly the same PSF."""
    from psf_live.psf import astigmatic_twin, canonical_twin

    p = torch.tensor([[0.2, 0.1, 0.3], [0.1, 0.4, 1.2], [0.3, 0.2, 2.0], [0.6, 0.5, 0.1]])
    t = astigmatic_twin(p)
    kp = lambda q: 2 * math.sqrt(3) * q[:, 0] + math.sqrt(6) * q[:, 1]  # noqa: E731
    km = lambda q: 2 * math.sqrt(3) * q[:, 0] - math.sqrt(6) * q[:, 1]  # noqa: E731
    torch.testing.assert_close(kp(t), kp(p))
    torch.testing.assert_close(km(t), -km(p))
    torch.testing.assert_close(astigmatic_twin(t), p)
    assert torch.equal(t[:, 2], p[:, 2])
    # rendered: a twin 0.12-0.32 waves away blurs closer than a 0.05-wave focus step
    step = p + torch.tensor([0.05, 0.0, 0.0])
    k0, kt, ks = (zernike_psf(q[:, 0], q[:, 1], q[:, 2], 63) for q in (p, t, step))
    d_twin = (kt - k0).flatten(1).norm(dim=1) / k0.flatten(1).norm(dim=1)
    d_step = (ks - k0).flatten(1).norm(dim=1) / k0.flatten(1).norm(dim=1)
    assert bool((d_twin[:3] < d_step[:3]).all()), (d_twin, d_step)
    # canonical: k- >= 0, pure defocus kept, idempotent, inside zernike3's ranges
    c = canonical_twin(p)
    assert bool((km(c) >= -1e-6).all())
    torch.testing.assert_close(c[0], p[0])  # already k- >= 0
    torch.testing.assert_close(c[1], t[1])  # swapped
    torch.testing.assert_close(canonical_twin(c), c)
    grid = torch.cartesian_prod(torch.linspace(0, 1, 21), torch.linspace(0, 0.5, 21))
    g = canonical_twin(torch.cat([grid, torch.zeros(len(grid), 1)], 1))
    assert float(g[:, 0].max()) <= 1.0 and float(g[:, 1].max()) <= 0.5 + 1e-6
