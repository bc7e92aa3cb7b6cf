import math

import pytest
import torch

from psf_live.nets import ARCHS, build_net, get_codec, normalize_patches
from psf_live.psf import PSF_MODELS, get_model


@pytest.mark.parametrize(
    "arch", ["compact", "spectral", "spectral-deep", "spectral-wide", "resnet18-w16", "tiny"]
)
def test_build_net_shapes(arch: str) -> None:
    net = build_net(arch, 5).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, 128, 128))
    assert out.shape == (3, 5) and out.dtype == torch.float32


def test_log_power_spectrum_puts_a_grating_at_its_frequency() -> None:
    """Zero frequency at row P/4 of the (pooled, half-plane) output; +v rows go down."""
    from psf_live.nets import LogPowerSpectrum

    n = 128
    r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    spec = LogPowerSpectrum(n)
    for v, u in [(12, 20), (-30, 6), (0, 40)]:  # cycles per patch along rows, columns
        x = torch.cos(2 * math.pi * (v * r + u * c) / n).float()[None, None]
        out = spec(x)[0, 0]
        assert out.shape == (n // 2, n // 4)
        row, col = divmod(int(out.argmax()), out.shape[1])
        assert (row, col) == (n // 4 + v // 2, u // 2)


def test_log_power_spectrum_turns_blur_into_the_log_otf() -> None:
    """A Gaussian blur of width s adds log|OTF|^2 = -4 pi^2 s^2 |k|^2 to every patch's
    log spectrum, whatever the texture (the reason the spectral net sees blur directly)."""
    from psf_live.nets import LogPowerSpectrum

    n, s = 128, 1.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, n, n, generator=g)
    ky = torch.fft.fftfreq(n)[:, None]
    kx = torch.fft.fftfreq(n)[None, :]
    otf = torch.exp(-2 * math.pi**2 * s**2 * (kx**2 + ky**2))
    y = torch.fft.ifft2(torch.fft.fft2(x) * otf).real  # circular: no edge effects
    spec = LogPowerSpectrum(n, eps=1e-9)
    diff = spec(y) - spec(x)
    # frequency of each pooled bin (centre of its 2 x 2 block, rows DC-centred)
    fy = ((torch.arange(n // 2) * 2 + 0.5) - n // 2) / n
    fx = (torch.arange(n // 4) * 2 + 0.5) / n
    k2 = fy[:, None] ** 2 + fx[None, :] ** 2
    ring = (k2 > 0.03**2) & (k2 < 0.12**2)  # away from DC (window leakage) and the noise floor
    expected = -4 * math.pi**2 * s**2 * k2
    err = (diff - expected)[:, 0][:, ring]
    assert float(err.abs().median()) < 0.1
    # texture-independent: each patch alone follows the law, not just the average
    assert float(err.median(dim=1).values.abs().max()) < 0.15


def test_build_net_unknown_arch() -> None:
    assert "resnet34" in ARCHS
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net("vgg", 4)


def test_normalize_patches_degenerate_and_scale_invariant() -> None:
    x = torch.zeros(4, 1, 128, 128)
    x[1] = 7.0  # flat
    x[2] = 65535.0  # saturated
    x[3] = torch.rand(1, 128, 128) * 1000 + 50
    z = normalize_patches(x)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert z[:3].abs().max() < 1e-6
    assert abs(float(z[3].mean())) < 1e-4 and abs(float(z[3].std()) - 1) < 1e-2
    # gain/offset invariance (illumination changes do not move the input)
    z2 = normalize_patches(3.0 * x[3:] + 10.0)
    assert torch.allclose(z2, z[3:], atol=1e-4)
    assert normalize_patches(x.to(torch.uint8).squeeze(1)).shape == (4, 128, 128)


@pytest.mark.parametrize("name", sorted(PSF_MODELS))
def test_codec_roundtrip(name: str) -> None:
    pm = get_model(name)
    codec = get_codec(name)
    g = torch.Generator().manual_seed(1)
    lo = torch.tensor([r[0] for r in pm.ranges])
    hi = torch.tensor([r[1] for r in pm.ranges])
    p = lo + torch.rand(64, pm.n_params, generator=g) * (hi - lo)
    if name == "zernike2":  # the PSF only defines the axis modulo pi/2
        p[:, 1] = torch.remainder(p[:, 1], math.pi / 2)
    t = codec.encode(p)
    assert t.shape == (64, codec.n_outputs - 1)
    assert t.abs().max() <= 1.0 + 1e-5
    raw = torch.cat([torch.full((64, 1), -5.0), t], dim=1)
    valid, back = codec.decode(raw)
    assert valid.shape == (64,) and bool((valid > 0.99).all())
    assert torch.allclose(back, p, atol=1e-4)


def test_codec_axis_wraps_and_clips() -> None:
    codec = get_codec("zernike3")
    # axis just below pi and just above 0 are neighbours in target space
    a = codec.encode(torch.tensor([[0.5, 0.25, math.pi - 0.01], [0.5, 0.25, 0.01]]))
    assert torch.allclose(a[0, :3], a[1, :3], atol=1e-6) and abs(float(a[0, 3] + a[1, 3])) < 0.05
    # out-of-range outputs are clipped to the ranges, not folded back
    _, p = codec.decode(torch.tensor([[3.0, 1.7, -0.2, 0.0, 0.0]]))
    assert float(p[0, 0]) == pytest.approx(1.0) and float(p[0, 1]) == pytest.approx(0.0)
    valid, _ = codec.decode(torch.tensor([[3.0, 0.1, 0.1, 0.1, 0.1]]))
    assert float(valid[0]) < 0.05


def test_normalize_patches_inplace_and_nonfinite() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 128, 128, generator=g) * 500
    ref = normalize_patches(x)
    assert not torch.equal(ref, x)  # the default never writes into its input
    buf = x.clone()
    out = normalize_patches(buf, inplace=True)
    assert out.data_ptr() == buf.data_ptr() and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ValueError, match="contiguous float32"):
        normalize_patches(x.to(torch.float64), inplace=True)
    # a NaN or inf counts as 0 and only touches its own patch
    bad = x.clone()
    bad[1, 0, 5, 5] = float("nan")
    bad[2, 0, 0, 0] = float("inf")
    z = normalize_patches(bad)
    assert torch.isfinite(z).all() and torch.allclose(z[0], ref[0], atol=1e-6)
    clean = x.clone()
    clean[1, 0, 5, 5] = 0.0
    clean[2, 0, 0, 0] = 0.0
    assert torch.allclose(z, normalize_patches(clean), atol=1e-6)


@pytest.mark.parametrize("name", sorted(PSF_MODELS))
@pytest.mark.parametrize(
    ("rotations", "transpose"), [(1, False), (2, False), (0, True), (3, True)]
)
def test_undo_dihedral_matches_the_transformed_psf(
    name: str, rotations: int, transpose: bool
) -> None:
    """Find the parameters whose PSF is the rotated/transposed PSF (by physics), encode
    them as a perfect network would for the transformed patch, and check that
    undo_dihedral gives back the targets of the untransformed patch."""
    import numpy as np

    from psf_live.psf import render_psf

    pm = get_model(name)
    codec = get_codec(name)
    g = torch.Generator().manual_seed(3)
    lo = torch.tensor([r[0] for r in pm.ranges])
    hi = torch.tensor([r[1] for r in pm.ranges])
    p = lo + (0.2 + 0.6 * torch.rand(6, pm.n_params, generator=g)) * (hi - lo)
    k = torch.rot90(render_psf(pm, p), rotations, dims=(-2, -1))
    kt = k.transpose(-2, -1) if transpose else k
    # candidate transformed parameters: axis + pi/2 per turn, then pi/2 - axis; widths swap
    q = p.clone()
    if pm.param_names[-1] == "axis":
        a = q[:, -1] + rotations * math.pi / 2
        a = math.pi / 2 - a if transpose else a
        q[:, -1] = torch.remainder(a, math.pi / 2 if name == "zernike2" else math.pi)
    if name == "gaussian2" and (rotations % 2 == 1) != transpose:
        q = q.flip(-1)
    np.testing.assert_allclose(render_psf(pm, q).numpy(), kt.numpy(), atol=2e-5)
    raw_t = torch.cat([torch.zeros(6, 1), codec.encode(q)], dim=1)
    back = codec.undo_dihedral(raw_t, rotations, transpose)
    torch.testing.assert_close(back[:, 1:], codec.encode(p), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "params"), [("resnet18-w16", 0.70e6), ("resnet18-w32", 2.80e6)])
def test_slim_resnet_is_resnet18_at_a_fraction_of_the_width(arch: str, params: float) -> None:
    """ResNet-18's blocks and strides (128 px in, 4 x 4 features out), w/64 of its width."""
    net = build_net(arch, 3)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) / params < 0.02, n
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8
    feats = net.features(torch.randn(2, 1, 128, 128))  # type: ignore[operator]
    w = int(arch[-2:])
    assert feats.shape == (2, 8 * w, 4, 4)
    # its residual stages: torchvision's ResNet-18 stages scaled by (w / 64)^2 (BatchNorm,
    # linear in the width, is a fraction of a percent of them)
    from torchvision.models import resnet18

    full = resnet18(num_classes=3)
    body = sum(p.numel() for name, p in full.named_parameters() if name.startswith("layer"))
    mine = sum(p.numel() for b in blocks for p in b.parameters())
    assert mine == pytest.approx(body * (w / 64) ** 2, rel=0.01)
