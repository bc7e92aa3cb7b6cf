"""Patch geometry, input validation, KNN fill, interpolation and the plane fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from psf_live.estimate import (
    PSFMap,
    check_frame,
    extract_patches,
    fill_invalid,
    fit_plane,
    interpolate_map,
    patch_starts,
    signed_defocus,
    summarize,
)


def test_starts_divisible() -> None:
    assert patch_starts(1024, 128, 128).tolist() == [i * 128 for i in range(8)]
    s = patch_starts(1024, 128, 64)
    assert s.size == 15 and s[-1] == 1024 - 128
    assert patch_starts(128, 128, 64).tolist() == [0]


def test_starts_edge_aligned() -> None:
    s = patch_starts(1000, 128, 64)
    # 0..832 by 64 (14 patches), then one aligned to the edge
    assert s.tolist() == [*range(0, 833, 64), 872]
    assert s[-1] + 128 == 1000
    s = patch_starts(300, 128, 128)
    assert s.tolist() == [0, 128, 172]


def test_extract_patch_content_and_centers(rng: np.random.Generator) -> None:
    frame = rng.integers(0, 4000, size=(300, 460)).astype(np.uint16)
    patches, cy, cx = extract_patches(frame, 128, 64)
    sy, sx = patch_starts(300, 128, 64), patch_starts(460, 128, 64)
    assert patches.shape == (sy.size, sx.size, 128, 128)
    assert patches.dtype == np.float32
    for i, y in enumerate(sy):
        for j, x in enumerate(sx):
            np.testing.assert_array_equal(patches[i, j], frame[y : y + 128, x : x + 128])
    np.testing.assert_allclose(cy, sy + 63.5)
    np.testing.assert_allclose(cx, sx + 63.5)
    # edge-aligned last column ends at the frame edge
    assert sx[-1] + 128 == 460


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_dtypes_give_same_patches(dtype: type, rng: np.random.Generator) -> None:
    base = rng.integers(0, 200, size=(256, 256))
    p, _, _ = extract_patches(base.astype(dtype), 128, 128)
    ref, _, _ = extract_patches(base.astype(np.float32), 128, 128)
    np.testing.assert_array_equal(p, ref)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros(500), "2D"),
        (np.zeros((2, 256, 256)), "2D"),
        (np.zeros((100, 300)), "smaller"),
        (np.zeros((0, 0)), "empty"),
        (np.full((200, 200), np.nan), "NaN"),
        (np.full((200, 200), np.inf, np.float32), "NaN or infinite"),
        (np.zeros((200, 200), bool), "dtype"),
        (np.zeros((200, 200), complex), "dtype"),
    ],
)
def test_bad_frames(frame: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_frame(frame)


def test_bad_stride() -> None:
    with pytest.raises(ValueError, match="stride"):
        patch_starts(512, 128, 0)


def test_knn_fill_hand_computed() -> None:
    # 3x3 grid, unit spacing 10 px; centre invalid, and a corner invalid.
    cy = np.array([0.0, 10.0, 20.0])
    cx = np.array([0.0, 10.0, 20.0])
    vals = np.arange(9, dtype=np.float32).reshape(3, 3, 1)
    valid = np.ones((3, 3), bool)
    valid[1, 1] = False
    out = fill_invalid(vals, valid, cy, cx, k=4)
    # the 4 nearest valid neighbours of the centre are the 4-connected ones at d=10
    assert out[1, 1, 0] == pytest.approx((1 + 3 + 5 + 7) / 4)
    np.testing.assert_array_equal(out[valid], vals[valid])
    valid2 = valid.copy()
    valid2[0, 0] = False
    out2 = fill_invalid(vals, valid2, cy, cx, k=4)
    # corner (0,0): valid neighbours (0,1) d=10, (1,0) d=10, (0,2) d=20, (2,0) d=20
    w = np.array([1 / 10, 1 / 10, 1 / 20, 1 / 20])
    v = np.array([1.0, 3.0, 2.0, 6.0])
    assert out2[0, 0, 0] == pytest.approx(float((w * v).sum() / w.sum()), rel=1e-6)


def test_knn_fill_axis_wraps() -> None:
    # axes 0.1 and pi-0.1 are nearly the same orientation: the fill must not give pi/2
    names = ("focus", "cylinder", "axis")
    p = np.zeros((1, 3, 3), np.float32)
    p[0, 0] = (0.5, 0.2, 0.1)
    p[0, 2] = (0.5, 0.2, math.pi - 0.1)
    valid = np.array([[True, False, True]])
    out = fill_invalid(p, valid, [0.0], [0.0, 10.0, 20.0], k=2, param_names=names)
    axis = out[0, 1, 2]
    assert min(axis, math.pi - axis) < 0.02
    assert out[0, 1, 0] == pytest.approx(0.5)


def test_knn_fill_none_valid_returns_input() -> None:
    p = np.ones((2, 2, 1), np.float32)
    out = fill_invalid(p, np.zeros((2, 2), bool), [0, 1], [0, 1])
    np.testing.assert_array_equal(out, p)


def _map(values: np.ndarray, names: tuple[str, ...], cy: np.ndarray, cx: np.ndarray) -> PSFMap:
    r, c, _ = values.shape
    return PSFMap(
        params=values.astype(np.float32),
        valid=np.ones((r, c), bool),
        valid_prob=np.ones((r, c), np.float32),
        centers_y=cy,
        centers_x=cx,
        param_names=names,
        units=tuple("u" for _ in names),
        psf_model="zernike3" if len(names) == 3 else "gaussian1",
        frame_shape=(int(cy[-1] + 64.5), int(cx[-1] + 64.5)),
        patch_size=128,
        stride=64,
        meta={"optics": {"pixel_size_um": 0.5}},
    )


def test_interpolate_map_bilinear() -> None:
    cy = np.array([63.5, 127.5])
    cx = np.array([63.5, 127.5, 191.5])
    vals = np.array([[[0.0], [1.0], [2.0]], [[1.0], [2.0], [3.0]]])
    m = _map(vals, ("width",), cy, cx)
    full = interpolate_map(m, (192, 256))
    assert full.shape == (192, 256, 1)
    # value = (y - 63.5)/64 + (x - 63.5)/64 inside the centre hull, constant outside
    assert full[95, 159, 0] == pytest.approx((95 - 63.5) / 64 + (159 - 63.5) / 64, abs=1e-5)
    assert full[0, 0, 0] == pytest.approx(0.0)
    assert full[191, 255, 0] == pytest.approx(3.0)


def test_plane_fit_recovers_tilt_with_outliers(rng: np.random.Generator) -> None:
    cy = patch_starts(1024, 128, 64) + 63.5
    cx = patch_starts(1024, 128, 64) + 63.5
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    px = 0.64
    sx, sy = 2e-3, -1e-3  # units per um
    z = 0.3 + sx * (xx - 511.5) * px + sy * (yy - 511.5) * px
    z = z + rng.normal(0, 1e-3, z.shape)
    z[3, 4] += 5.0
    z[10, 2] -= 3.0
    fit = fit_plane(z, cy, cx, pixel_size_um=px)
    assert fit.slope_x == pytest.approx(sx, rel=0.02)
    assert fit.slope_y == pytest.approx(sy, rel=0.03)
    assert fit.offset == pytest.approx(0.3, abs=2e-3)
    assert fit.residual < 3e-3
    assert fit.n_used == z.size - 2
    plain = fit_plane(z, cy, cx, pixel_size_um=px, robust=False)
    assert abs(plain.slope_y - sy) > 10 * abs(fit.slope_y - sy)
    assert plain.residual > 100 * fit.residual


def test_plane_fit_too_few_points() -> None:
    fit = fit_plane(np.ones((2, 2)), [0, 1], [0, 1], mask=np.eye(2, dtype=bool))
    assert math.isnan(fit.slope_x)


def test_signed_defocus_sign() -> None:
    lens = math.pi / 4
    s = signed_defocus([0.4, 0.4, 0.0], [lens, lens + math.pi / 2, 0.3], lens)
    np.testing.assert_allclose(s, [0.4, -0.4, 0.0], atol=1e-6)


def test_summarize_signed_tilt_and_calibration() -> None:
    cy = patch_starts(512, 128, 64) + 63.5
    cx = patch_starts(768, 128, 64) + 63.5
    _yy, xx = np.meshgrid(cy, cx, indexing="ij")
    px = 0.5
    signed = 1e-3 * (xx - xx.mean()) * px  # waves, crosses zero along x
    lens = math.pi / 4
    axis = np.where(signed >= 0, lens, lens + math.pi / 2)
    vals = np.stack([np.abs(signed), np.full_like(signed, 0.25), axis], -1)
    m = _map(vals, ("focus", "cylinder", "axis"), cy, cx)
    s = summarize(m)
    assert s.plane_quantity == "signed_defocus"
    assert s.slope_x == pytest.approx(1e-3, rel=1e-3)
    assert abs(s.slope_y) < 1e-6
    assert s.tilt_x_deg is None
    assert s.focus == pytest.approx(float(np.median(np.abs(signed))), rel=1e-5)

    class Cal:
        def depth_um(self, psf_map: PSFMap) -> np.ndarray:
            f = psf_map.param("focus")
            a = psf_map.param("axis")
            return np.asarray(signed_defocus(f, a)) * 100.0  # 100 um per wave

    c = summarize(m, calibration=Cal())
    assert c.plane_quantity == "depth"
    assert c.tilt_x_deg == pytest.approx(math.degrees(math.atan(0.1)), rel=1e-3)
    assert c.tilt_y_deg == pytest.approx(0.0, abs=1e-4)
    assert "deg" in c.line()


def test_psf_kernels_and_bank() -> None:
    import torch

    from psf_live.estimate import KernelBank, psf_kernels
    from psf_live.psf import render_psf

    cy = np.array([63.5, 127.5])
    cx = np.array([63.5, 127.5])
    vals = np.array([[[1.0], [2.0]], [[2.0], [30.0]]])  # 30 px is clipped to the range (8)
    m = _map(vals, ("width",), cy, cx)
    m.psf_model = "gaussian1"
    k = psf_kernels(m, size=31)
    assert k.shape == (2, 2, 31, 31)
    torch.testing.assert_close(k[0, 1], render_psf("gaussian1", [2.0], 31)[0])
    torch.testing.assert_close(k[1, 1], render_psf("gaussian1", [8.0], 31)[0])
    bank = KernelBank("gaussian1", size=31)
    kb = psf_kernels(m, bank=bank)
    torch.testing.assert_close(kb, k)
    assert len(bank) == 3 and bank.misses == 3 and bank.hits == 1  # 2.0 rendered once
    m.params = m.params + 0.001  # within the 0.01 px quantisation: all from the cache
    psf_kernels(m, bank=bank)
    assert bank.misses == 3 and bank.hits == 5


@pytest.mark.parametrize(
    ("shape", "stride"), [((512, 512), 128), ((300, 417), 64), ((128, 200), 50), ((128, 128), 64)]
)
@pytest.mark.parametrize("dtype", ["uint16", "uint8", "int32", ">f8", "float32"])
def test_gather_patches_equals_extract(shape: tuple[int, int], stride: int, dtype: str) -> None:
    import torch

    from psf_live.estimate import gather_patches

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 250, size=shape).astype(dtype)
    ref, _, _ = extract_patches(frame, 128, stride)
    sy, sx = patch_starts(shape[0], 128, stride), patch_starts(shape[1], 128, stride)
    out = torch.full((sy.size, sx.size, 128, 128), -1.0)
    assert gather_patches(frame, sy, sx, 128, out) is out
    np.testing.assert_array_equal(out.numpy(), ref)


def test_gather_patches_reads_views_and_read_only_frames() -> None:
    import torch

    from psf_live.estimate import gather_patches

    big = np.arange(400 * 600, dtype=np.uint16).reshape(400, 600)
    for frame in (big[50:350, 100:], big[:, ::2], big.T):
        frame.flags.writeable = False
        ref, _, _ = extract_patches(frame, 128, 64)
        sy, sx = patch_starts(frame.shape[0], 128, 64), patch_starts(frame.shape[1], 128, 64)
        out = torch.empty((sy.size, sx.size, 128, 128))
        np.testing.assert_array_equal(gather_patches(frame, sy, sx, 128, out).numpy(), ref)
