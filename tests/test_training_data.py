import math
from dataclasses import replace

import pytest
import torch

from psf_live.psf import convolve, render_psf

training_data = pytest.importorskip("training.data")
from training.data import (  # noqa: E402
    SNR_MIN,
    DegradeConfig,
    PatchStream,
    PSFBank,
    draw_ranges,
    valid_blur,
    validity_rule,
)
from training.evaluate import CLEAN  # noqa: E402
from training.sources import SOURCE_TYPES, image_bank, make_sources  # noqa: E402


def test_valid_blur_matches_linear_convolution() -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 176, 176, generator=g)
    k = render_psf("gaussian2", torch.tensor([[3.0, 1.0], [0.7, 6.0]]))
    ref = convolve(src, k)[:, 24:152, 24:152]
    out = valid_blur(src, k)
    assert out.shape == (2, 128, 128)
    assert torch.allclose(out, ref, atol=1e-4)


def test_dihedral_bank_parameters_match_rendered_kernels() -> None:
    bank = PSFBank("zernike3", size=8, seed=3)
    k, p = bank.draw(16, torch.Generator().manual_seed(1))
    assert float((render_psf("zernike3", p) - k).abs().max()) < 1e-6
    assert bool(((p[:, 2] >= 0) & (p[:, 2] < math.pi)).all())


def test_param_ranges_narrow_the_draw_only() -> None:
    # a zernike3 bank for one cylindrical lens: cylinder in [0.2, 0.3], the rest untouched
    bank = PSFBank("zernike3", size=64, seed=5, param_ranges={"cylinder": (0.2, 0.3)})
    _, p = bank.draw(256, torch.Generator().manual_seed(2))
    assert float(p[:, 1].min()) >= 0.2 and float(p[:, 1].max()) <= 0.3
    assert float(p[:, 0].min()) < 0.1 and float(p[:, 0].max()) > 0.9  # focus: full [0, 1]
    # without ranges the cylinder covers the model's [0, 0.5]
    _, q = PSFBank("zernike3", size=64, seed=5).draw(256, torch.Generator().manual_seed(2))
    assert float(q[:, 1].max()) > 0.4
    # Gaussian banks draw fresh kernels, from the narrowed interval too
    s = PatchStream("gaussian1", "val", 0, pool=8, param_ranges={"width": (2.0, 3.0)})
    assert bool(((s.next(16).params >= 2.0) & (s.next(16).params <= 3.0)).all())
    assert draw_ranges("gaussian2", {"width_y": (1.0, 2.0)}) == ((0.5, 8.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="no parameter 'sigma'"):
        draw_ranges("gaussian1", {"sigma": (1.0, 2.0)})
    with pytest.raises(ValueError, match="inside the model's"):
        draw_ranges("zernike3", {"cylinder": (0.2, 0.9)})
    with pytest.raises(ValueError, match="inside the model's"):
        draw_ranges("zernike1", {"focus": (0.5, 0.5)})


def test_refresh_sets_the_new_sources_per_batch() -> None:
    """``refresh`` is a fraction of the batch size: 0.25 x 16 = 4 new source regions per
    batch replace the oldest of the pool; 0 keeps the pool; a negative one is refused."""
    kw = {"bank_size": 16, "pool": 16}
    s = PatchStream("gaussian1", "train", 0, refresh=0.25, **kw)  # type: ignore[arg-type]
    first = s._pool_x.clone()
    s.next(16)
    kept = [any(torch.equal(r, f) for f in first) for r in s._pool_x]
    assert kept.count(False) == 4
    still = PatchStream("gaussian1", "train", 0, refresh=0.0, **kw)  # type: ignore[arg-type]
    pool = still._pool_x.clone()
    still.next(16)
    assert torch.equal(still._pool_x, pool)
    with pytest.raises(ValueError, match="refresh"):
        PatchStream("gaussian1", "train", 0, refresh=-0.1, **kw)  # type: ignore[arg-type]


def test_overshoot_draws_beyond_the_top_with_true_labels() -> None:
    # zernike1 with 25 % overshoot: focus drawn from [0, 1.25], kernels match the labels
    bank = PSFBank("zernike1", size=256, seed=2, overshoot=0.25)
    k, p = bank.draw(512, torch.Generator().manual_seed(3))
    assert 1.2 < float(p.max()) <= 1.25 and float(p.min()) < 0.05
    assert float((p > 1.0).float().mean()) == pytest.approx(0.2, abs=0.06)
    assert float((render_psf("zernike1", p[:8]) - k[:8]).abs().max()) < 1e-6
    # the axis never overshoots; a narrowed interval stays as given; Gaussians too
    assert draw_ranges("zernike3", None, 0.25) == ((0.0, 1.25), (0.0, 0.625), (0.0, math.pi))
    assert draw_ranges("zernike3", {"cylinder": (0.2, 0.3)}, 0.25)[1] == (0.2, 0.3)
    assert draw_ranges("gaussian1", None, 0.2) == ((0.5, 8.0 + 0.2 * 7.5),)
    with pytest.raises(ValueError, match="overshoot"):
        PSFBank("zernike1", size=8, overshoot=-0.1)
    # a stream without overshoot (validation, test) stays inside the model's range
    s = PatchStream("gaussian1", "val", 0, pool=8)
    assert float(s.next(64).params.max()) <= 8.0
    t = PatchStream("gaussian1", "train", 0, pool=8, overshoot=0.5)
    assert float(t.next(64).params.max()) > 8.0


def test_validity_rule() -> None:
    g = torch.Generator().manual_seed(0)
    sharp = torch.zeros(4, 128, 128)
    sharp[1] = 0.6  # flat
    sharp[2] = torch.rand(128, 128, generator=g)  # white noise texture
    xx = torch.arange(128.0)[None, :].expand(128, 128)
    sharp[3] = 0.5 + 0.3 * torch.sin(xx / 40)  # smooth gradient: textured but already smooth
    invalid, smooth = validity_rule(sharp)
    assert invalid.tolist() == [True, True, False, False]
    assert smooth.tolist() == [False, False, False, True]


def test_texture_lost_in_noise_is_invalid_below_snr_min() -> None:
    # a sinusoid of std 0.3/sqrt(2) on a mean of 0.5, one period per patch, at P photons:
    # noise std sqrt(0.5 P) (shot noise only), blurred signal std ~0.212 P (a Gaussian
    # of width <= 8 px keeps >= 92 % of it), so sqrt(P) = 0.25 puts the ratio at
    # 0.070-0.075: texture by the old rule (0.05), lost in the noise by the default (0.1)
    s = PatchStream("gaussian1", "test", 0, pool=4)
    xx = torch.arange(float(s.r))[None, :].expand(s.r, s.r)
    src = (0.5 + 0.3 * torch.sin(2 * math.pi * xx / 128))[None].expand(8, -1, -1)
    kind = torch.zeros(8, dtype=torch.long)

    def labels(peak: float, snr_min: float) -> list[float]:
        # the evaluation's idealised recipe (no read noise, background or ramp) + shot noise
        cfg = replace(CLEAN, peak_photons=(peak, peak), poisson=True, snr_min=snr_min)
        return s.degrade_sources(src, kind, cfg=cfg).invalid.tolist()

    assert SNR_MIN == DegradeConfig().snr_min == 0.1
    b = s.degrade_sources(src, kind, cfg=replace(CLEAN, peak_photons=(0.0625,) * 2, poisson=True))
    assert b.snr is not None and 0.068 < float(b.snr.min()) <= float(b.snr.max()) < 0.076
    assert labels(0.0625, 0.1) == [1.0] * 8
    assert labels(0.0625, 0.05) == [0.0] * 8
    assert labels(0.0625 * 4, 0.1) == [0.0] * 8  # twice the ratio: readable again


def test_stream_deterministic_and_labelled() -> None:
    kw = {"bank_size": 32, "pool": 32, "types": {"tex": 1.0, "poi": 1.0}}
    a = PatchStream("zernike1", "train", seed=5, **kw).next(16)  # type: ignore[arg-type]
    b = PatchStream("zernike1", "train", seed=5, **kw).next(16)  # type: ignore[arg-type]
    c = PatchStream("zernike1", "val", seed=5, **kw).next(16)  # type: ignore[arg-type]
    assert torch.equal(a.x, b.x) and torch.equal(a.params, b.params)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (16, 1, 128, 128) and torch.isfinite(a.x).all()
    assert float(a.params.min()) >= 0 and float(a.params.max()) <= 1
    # synthetic black/flat patches are always invalid
    assert bool((a.invalid[a.kind == -1] == 1).all())


def test_image_splits_are_disjoint() -> None:
    import skimage.data as skd

    tr, va, te = (image_bank("micr", s) for s in ("train", "val", "test"))
    h, w = skd.immunohistochemistry().shape[:2]
    # first micr image is split spatially: training rows above the held-out band,
    # validation and test the left and right halves of the band
    assert tr[0].shape[0] + va[0].shape[0] == h and va[0].shape[0] == te[0].shape[0]
    assert va[0].shape[1] + te[0].shape[1] == w
    assert not any(torch.equal(a, b) for a in va for b in te)


@pytest.mark.parametrize("kind", SOURCE_TYPES)
def test_sources_in_range(kind: str) -> None:
    x = make_sources(kind, 2, 140, torch.Generator().manual_seed(0))
    assert x.shape == (2, 140, 140) and float(x.min()) >= 0 and float(x.max()) <= 1.6


def test_source_pool_is_a_fifo_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refreshing overwrites the oldest sources in place; logical order stays FIFO."""
    counter = iter(range(10_000))

    def tagged(self: PatchStream, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        tags = torch.tensor([next(counter) for _ in range(n)], dtype=torch.float32)
        return tags[:, None, None].expand(n, self.r, self.r).clone(), tags.long()

    monkeypatch.setattr(PatchStream, "_new_sources", tagged)
    ps = PatchStream("gaussian1", "train", 0, pool=8, refresh=0.0)
    for n in (3, 3, 5, 8, 11, 1):  # wraps the ring, and one refresh larger than it
        ps._fill(n)
    rows = (ps._head + torch.arange(8)) % 8
    seen = ps._pool_kind[rows].tolist()
    total = 8 + 3 + 3 + 5 + 8 + 11 + 1
    assert seen == list(range(total - 8, total))
    assert ps._pool_x[rows, 0, 0].long().tolist() == seen


def test_fast_irfft2_equals_torch() -> None:
    from psf_live.psf import irfft2

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 40, 36), (2, 45, 51)):
        x = torch.randn(shape, generator=g)
        spec = torch.fft.rfft2(x)
        ref = torch.fft.irfft2(spec, s=shape[-2:])
        torch.testing.assert_close(irfft2(spec, shape[-2:]), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(irfft2(spec, shape[-2:], rows=17), ref[..., :17, :])


def test_clean_fraction_leaves_patches_noise_free() -> None:
    """Idealised patches (the Fig. 7 strength-0 case) carry no shot/read noise."""
    from training.data import DegradeConfig

    kw = {"bank_size": 8, "pool": 8, "types": {"tex": 1.0}}
    flat = {"invalid_fraction": 1.0, "illum_gradient": (0.0, 0.0)}  # flat fields only

    def raw_std(clean: float) -> torch.Tensor:
        cfg = DegradeConfig(clean_fraction=clean, **flat)  # type: ignore[arg-type]
        b = PatchStream("gaussian1", "train", seed=1, degrade=cfg, **kw).next(  # type: ignore[arg-type]
            64, keep_raw=True
        )
        assert b.raw is not None and bool((b.invalid == 1).all())
        # relative fluctuation of each flat field (FFT round-off is ~1e-7)
        return b.raw.std(dim=(-2, -1)) / (b.raw.mean(dim=(-2, -1)).abs() + 1e-9)

    assert bool((raw_std(1.0) < 1e-5).all())  # a flat field without noise stays flat
    assert bool((raw_std(0.0) > 1e-3).all())
    share = float((raw_std(0.5) < 1e-5).float().mean())
    assert 0.3 < share < 0.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["zernike3", "gaussian2"])
def test_gpu_stream_has_the_cpu_streams_sources_and_psfs(model: str) -> None:
    """On a GPU the stream's first batch has the CPU stream's sources, PSFs and settings:
    without noise the patches agree to float precision. Later batches part, since the CPU
    stream draws its per-pixel noise (even at zero read noise) from its one generator, the
    GPU stream from a generator of the device (the first GPU session found the second batch
    differing)."""
    from training.data import dihedral_batch

    quiet = replace(DegradeConfig(), poisson=False, read_rel=(0.0, 0.0))
    kw = {"bank_size": 32, "pool": 32}
    cpu = PatchStream(model, "train", 7, degrade=quiet, **kw)  # type: ignore[arg-type]
    gpu = PatchStream(model, "train", 7, degrade=quiet, device="cuda", **kw)  # type: ignore[arg-type]
    a, b = cpu.next(32), gpu.next(32)
    assert b.x.device.type == "cuda" and b.params.device.type == "cuda"
    torch.testing.assert_close(b.params.cpu(), a.params)
    torch.testing.assert_close(b.kind.cpu(), a.kind)
    torch.testing.assert_close(b.x.cpu(), a.x, atol=1e-3, rtol=1e-3)
    assert int((b.invalid.cpu() != a.invalid).sum()) <= 1  # a rule's edge, at most
    # re-used batches (flips / transposes) stay on the GPU and transform alike
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    fa, fb = dihedral_batch(a, model, g1), dihedral_batch(b, model, g2)
    assert fb.x.device.type == "cuda"
    torch.testing.assert_close(fb.params.cpu(), fa.params)
    torch.testing.assert_close(fb.x.cpu(), fa.x, atol=1e-3, rtol=1e-3)
    noisy = PatchStream(model, "train", 7, device="cuda", **kw).next(32)  # type: ignore[arg-type]
    assert torch.isfinite(noisy.x).all() and not torch.allclose(noisy.x, b.x)


def test_canonical_twin_labels_change_the_labels_not_the_blur() -> None:
    """``twins="canonical"``: the same kernels, labelled with the less astigmatic twin."""
    drawn = PSFBank("zernike3", size=64, seed=7)
    canon = PSFBank("zernike3", size=64, seed=7, twins="canonical")
    assert torch.equal(drawn.kernels, canon.kernels)
    f, c = drawn.params[:, 0], drawn.params[:, 1]
    swap = c > math.sqrt(2) * f
    assert 0 < int(swap.sum()) < 64  # some labels swapped, not all
    torch.testing.assert_close(canon.params[~swap], drawn.params[~swap])
    torch.testing.assert_close(canon.params[swap, 0], c[swap] / math.sqrt(2))
    torch.testing.assert_close(canon.params[swap, 1], f[swap] * math.sqrt(2))
    # drawn patches (flipped, transposed) keep the convention and the axis
    _, p = canon.draw(32, torch.Generator().manual_seed(1))
    assert bool((p[:, 1] <= math.sqrt(2) * p[:, 0] + 1e-6).all())
    torch.testing.assert_close(p[:, 2], drawn.draw(32, torch.Generator().manual_seed(1))[1][:, 2])
    with pytest.raises(ValueError, match="for zernike3"):
        PSFBank("zernike1", size=8, twins="canonical")
    with pytest.raises(ValueError, match="twins must be one of"):
        PSFBank("zernike3", size=8, twins="both")
    with pytest.raises(ValueError, match="the bank's twins"):
        PatchStream("zernike3", "val", 0, pool=8, bank=drawn, twins="canonical")
