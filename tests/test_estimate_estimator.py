"""Estimator on a tiny untrained network: shapes, dtypes, errors, determinism, fill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from psf_live.estimate import Estimator, fill_invalid, patch_starts

models = pytest.importorskip("psf_live.models")
nets = pytest.importorskip("psf_live.nets")


def make_tiny(psf_model: str = "zernike3", seed: int = 0) -> tuple[torch.nn.Module, Any]:
    card = models.ModelCard.for_psf_model(f"tiny-{psf_model}", psf_model, "tiny")
    torch.manual_seed(seed)
    net = nets.build_net("tiny", card.n_outputs)
    return net.eval(), card


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net, card = make_tiny()
    path = tmp_path_factory.mktemp("models") / "tiny_zernike3.pt"
    models.save_model(net, card, path)
    return path


@pytest.fixture(scope="module")
def est(tiny_path: Path) -> Estimator:
    return Estimator.load(tiny_path, device="cpu")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, size=(300, 420)).astype(np.float32)
    img[::16] = 255  # some structure
    return img


def test_map_shapes(est: Estimator, frame: np.ndarray) -> None:
    m = est.map(frame)
    rows, cols = patch_starts(300, 128, 64).size, patch_starts(420, 128, 64).size
    assert m.params.shape == (rows, cols, 3) and m.params.dtype == np.float32
    assert m.valid.shape == (rows, cols) and m.valid.dtype == bool
    assert m.valid_prob.shape == (rows, cols)
    assert m.param_names == ("focus", "cylinder", "axis")
    np.testing.assert_allclose(m.centers_x, patch_starts(420, 128, 64) + 63.5)
    assert m.frame_shape == (300, 420)
    assert set(m.timings) == {"transfer", "inference", "post"}
    assert np.isfinite(m.params).all()
    m128 = est.map(frame, stride=128)
    assert m128.shape == (patch_starts(300, 128, 128).size, patch_starts(420, 128, 128).size)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_dtypes_agree(est: Estimator, frame: np.ndarray, dtype: type) -> None:
    ref = est.map(frame)
    m = est.map(frame.astype(dtype))
    np.testing.assert_allclose(m.params, ref.params, atol=1e-5)
    np.testing.assert_array_equal(m.valid, ref.valid)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros(300 * 300), "2D"),
        (np.zeros((2, 300, 300)), "2D"),
        (np.zeros((64, 300)), "smaller"),
        (np.full((200, 200), np.nan), "NaN"),
    ],
)
def test_bad_input(est: Estimator, bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        est.map(bad)


def test_cpu_deterministic(tiny_path: Path, est: Estimator, frame: np.ndarray) -> None:
    a = est.map(frame)
    b = est.map(frame)
    np.testing.assert_array_equal(a.params, b.params)
    other = Estimator.load(tiny_path, device="cpu")
    np.testing.assert_array_equal(other.map(frame).params, a.params)


def test_optimized_matches_plain(frame: np.ndarray) -> None:
    net, card = make_tiny(seed=3)
    plain = Estimator(net, card, "cpu", optimize=False, precision="fp32")
    ref = plain.map(frame, fill=False)
    net2, _ = make_tiny(seed=3)
    opt = Estimator(net2, card, "cpu", optimize=True, precision="fp32")
    m = opt.map(frame, fill=False)
    np.testing.assert_allclose(m.valid_prob, ref.valid_prob, atol=1e-4)
    np.testing.assert_allclose(m.params[..., :2], ref.params[..., :2], atol=1e-4)


def test_optimized_spectral_net_matches_plain(frame: np.ndarray) -> None:
    """BatchNorm folding and channels_last also hold for the FFT front end."""
    card = models.ModelCard.for_psf_model("spec-zernike3", "zernike3", "spectral")
    torch.manual_seed(5)
    net = nets.build_net("spectral", card.n_outputs).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    # fp32 on both sides: on a CPU with native bf16 "auto" may pick bf16 (its own check)
    ref = Estimator(net, card, "cpu", optimize=False, precision="fp32").map(frame, fill=False)
    opt = Estimator(net, card, "cpu", optimize=True, precision="fp32")
    assert opt.channels_last and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in opt.net.modules()
    )
    m = opt.map(frame, fill=False)
    np.testing.assert_allclose(m.valid_prob, ref.valid_prob, atol=1e-4)
    np.testing.assert_allclose(m.params[..., :2], ref.params[..., :2], atol=1e-4)


def test_fill_uses_knn_of_valid(frame: np.ndarray) -> None:
    net, card = make_tiny(seed=1)
    est = Estimator(net, card, "cpu")
    raw = est.map(frame, fill=False)
    est.threshold = float(np.median(raw.valid_prob))  # about half the patches invalid
    m = est.map(frame)
    assert 0 < m.n_valid < m.valid.size
    assert m.raw_params is not None
    np.testing.assert_array_equal(m.params[m.valid], m.raw_params[m.valid])
    expect = fill_invalid(m.raw_params, m.valid, m.centers_y, m.centers_x, 4, m.param_names)
    np.testing.assert_allclose(m.params, expect, atol=1e-6)
    est.threshold = 2.0  # nothing valid: nothing to fill from, raw values kept
    none = est.map(frame)
    assert none.n_valid == 0
    np.testing.assert_array_equal(none.params, none.raw_params)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(models.ModelLoadError):
        Estimator.load(tmp_path / "missing.pt", device="cpu")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(models.ModelLoadError):
        Estimator.load(bad, device="cpu")


def test_num_threads_and_precision_validation(tiny_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        Estimator.load(tiny_path, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="num_threads"):
        Estimator.load(tiny_path, device="cpu", num_threads=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_path: Path, frame: np.ndarray) -> None:
    cpu = Estimator.load(tiny_path, device="cpu").map(frame, fill=False)
    for precision, graphs in (("fp32", False), ("auto", False), ("auto", True)):
        gpu_est = Estimator.load(tiny_path, device="cuda", precision=precision, cuda_graphs=graphs)
        gpu = gpu_est.map(frame, fill=False)
        gpu = gpu_est.map(frame, fill=False)  # second call replays the graph
        tol = 1e-3 if precision == "fp32" else 3e-2
        np.testing.assert_allclose(gpu.valid_prob, cpu.valid_prob, atol=tol)
        np.testing.assert_allclose(gpu.params[..., :2], cpu.params[..., :2], atol=tol)


def test_auto_precision_on_cpu_is_checked(tiny_path: Path, frame: np.ndarray) -> None:
    auto = Estimator.load(tiny_path, device="cpu")
    fp32 = Estimator.load(tiny_path, device="cpu", precision="fp32")
    assert fp32.precision == "fp32" and fp32.precision_check == {}
    if auto.precision == "bf16":  # chosen only after the load-time agreement check
        assert auto.precision_check["ok"]
        assert auto.precision_check["max_rel_param_diff"] <= 0.01
    else:
        assert auto.precision == "fp32"
    a = auto.map(frame, fill=False)
    b = fp32.map(frame, fill=False)
    np.testing.assert_allclose(a.params[..., 0], b.params[..., 0], atol=0.01)
    np.testing.assert_allclose(a.valid_prob, b.valid_prob, atol=0.02)


@pytest.mark.parametrize("stride", [64, 100])
def test_map_equals_reference_patch_path(est: Estimator, frame: np.ndarray, stride: int) -> None:
    """The buffered gather + in-place normalisation in map() equals cutting the patches
    with extract_patches and running predict_patches (edge-aligned last patches included:
    300 x 420 with stride 64 or 100 does not divide)."""
    from psf_live.estimate import extract_patches

    pt, _, _ = extract_patches(frame.astype(np.uint16), 128, stride)
    prob, params = est.predict_patches(torch.from_numpy(pt).reshape(-1, 1, 128, 128))
    for _ in range(2):  # second call reuses the patch buffer
        m = est.map(frame.astype(np.uint16), stride, fill=False)
        np.testing.assert_allclose(m.valid_prob.ravel(), prob, atol=1e-5)
        np.testing.assert_allclose(m.params.reshape(params.shape), params, atol=1e-5)


def test_tta_makes_the_map_equivariant_to_transposing_the_frame() -> None:
    """With test-time augmentation the (untrained) estimator commutes with a transpose:
    the map of frame.T is the transposed map with axis a -> pi/2 - a. The plain
    estimator does not (so the test can tell them apart)."""
    net, card = make_tiny(seed=3)
    rng = np.random.default_rng(11)
    frame = rng.gamma(2.0, 300.0, size=(256, 256)).astype(np.float32)
    frame[40:60, :] += 2000.0  # anisotropic structure

    def pair(m: Any) -> np.ndarray:
        f, c, a = np.moveaxis(m.params, -1, 0)
        return np.stack([f, c * np.cos(2 * a), c * np.sin(2 * a)], -1)

    errs = {}
    for tta in (False, True):
        est = Estimator(net, card, "cpu", tta=tta, fill=False)
        assert est.meta["tta"] is tta
        a, b = est.map(frame, 64), est.map(np.ascontiguousarray(frame.T), 64)
        expect = pair(a).transpose(1, 0, 2) * np.array([1.0, -1.0, 1.0])
        errs[tta] = float(np.abs(pair(b) - expect).max())
        if tta:
            np.testing.assert_allclose(b.valid_prob, a.valid_prob.T, atol=1e-5)
    assert errs[True] < 1e-4 < errs[False]


def test_tta_maps_carry_each_views_estimate() -> None:
    """With TTA the map keeps the 8 views' estimates: view 0 is the plain network's
    estimate, and the views' spread per patch commutes with transposing the frame
    (the same 8 views, in another order); without TTA there are none."""
    net, card = make_tiny(seed=3)
    rng = np.random.default_rng(11)
    frame = rng.gamma(2.0, 300.0, size=(256, 256)).astype(np.float32)
    frame[40:60, :] += 2000.0
    # fp32: bf16 (auto on CPUs that have it natively) rounds the two runs differently
    plain = Estimator(net, card, "cpu", fill=False, precision="fp32").map(frame, 64)
    assert plain.view_params is None
    est = Estimator(net, card, "cpu", tta=True, fill=False, precision="fp32")
    a, b = est.map(frame, 64), est.map(np.ascontiguousarray(frame.T), 64)
    assert a.view_params is not None and b.view_params is not None
    assert a.view_params.shape == (*a.shape, 8, 3)
    np.testing.assert_allclose(a.view_params[:, :, 0], plain.raw_params, atol=1e-5)

    def spread(vp: np.ndarray) -> np.ndarray:
        f, c, ax = np.moveaxis(vp, -1, 0)
        return np.stack([f, c * np.cos(2 * ax), c * np.sin(2 * ax)], -1).std(axis=-2)

    assert float(spread(a.view_params).max()) > 1e-3  # the untrained views disagree
    np.testing.assert_allclose(
        spread(b.view_params), spread(a.view_params).transpose(1, 0, 2), atol=1e-4
    )
    # fewer views: the patch and its transpose, or its quarter turns - the same
    # estimates as those views of the full set, in the full set's order
    assert est.meta["tta_views"] == 8
    for n, pick in ((2, [0, 1]), (4, [0, 2, 4, 6])):
        few = Estimator(net, card, "cpu", tta=n, fill=False, precision="fp32")
        assert few.meta["tta"] is True and few.meta["tta_views"] == n
        m = few.map(frame, 64)
        assert m.view_params is not None and m.view_params.shape == (*m.shape, n, 3)
        np.testing.assert_allclose(m.view_params, a.view_params[:, :, pick], atol=1e-5)
    with pytest.raises(ValueError, match="views"):
        Estimator(net, card, "cpu", tta=3)


def test_auto_precision_on_cpu_takes_bf16_only_where_native_and_checked(
    frame: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psf_live.estimate._estimator as mod

    monkeypatch.setattr(mod, "_cpu_has_native_bf16", lambda: False)
    net, card = make_tiny(seed=3)
    plain = Estimator(net, card, "cpu")
    assert plain.precision == "fp32" and not plain.precision_check
    ref = plain.map(frame, fill=False)
    monkeypatch.setattr(mod, "_cpu_has_native_bf16", lambda: True)
    net, _ = make_tiny(seed=3)
    auto = Estimator(net, card, "cpu")
    chk = auto.precision_check
    assert chk["ok"] and auto.precision == "bf16", chk
    assert chk["max_rel_param_diff"] <= 0.01 and chk["max_valid_prob_diff"] <= 0.02
    m = auto.map(frame, fill=False)
    assert not np.array_equal(m.params, ref.params)  # bf16 really ran
    # on a real frame, too, within the check's tolerance: 1 % of focus / cylinder range
    np.testing.assert_allclose(m.params[..., 0], ref.params[..., 0], atol=0.01 * 1.0)
    np.testing.assert_allclose(m.params[..., 1], ref.params[..., 1], atol=0.01 * 0.5)
    np.testing.assert_allclose(m.valid_prob, ref.valid_prob, atol=0.02)
