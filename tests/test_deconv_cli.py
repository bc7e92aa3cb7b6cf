"""`psf-live deconvolve` and `psf-live verify` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from psf_live.cli import app
from psf_live.deconv import ZERNIKE_SHRINK
from psf_live.psf import OverlapAdd, get_model, render_psf
from psf_live.store import load_store, verify_store

runner = CliRunner()


def _make(tmp_path: Path, frames: int = 1) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 96
    x = np.full((n, n), 20.0, np.float32)
    for _ in range(30):
        i, j = rng.integers(5, n - 5, 2)
        x[i - 2 : i + 3, j - 2 : j + 3] += 300
    cy = cx = np.array([24.0, 72.0])
    widths = np.array([[1.0, 2.0], [2.5, 1.5]], np.float32)
    ks = render_psf(get_model("gaussian1"), widths.reshape(-1, 1), size=21)
    y = OverlapAdd((n, n), cy, cx, ks).forward(torch.as_tensor(x)).numpy()
    y = rng.poisson(y).astype(np.uint16)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.stack([y] * frames) if frames > 1 else y)
    mp = tmp_path / "map.npz"
    np.savez(
        mp,
        params=widths[..., None],
        names=np.array(["width"]),
        valid=np.ones((2, 2), bool),
        centers_y=cy,
        centers_x=cx,
    )
    return img, mp, x


def test_deconvolve_zarr_stack_then_verify(tmp_path: Path) -> None:
    img, mp, x = _make(tmp_path, frames=2)
    out = tmp_path / "out.zarr"
    res = runner.invoke(
        app, ["deconvolve", str(img), "-o", str(out), "--psf-map", str(mp), "--iterations", "15"]
    )
    assert res.exit_code == 0, res.output
    assert "2 frame(s)" in res.output
    data = load_store(out)
    assert data["raw"].shape == (2, 96, 96) and data["raw"].dtype == np.uint16
    assert data["deconvolved"].dtype == np.float32
    assert data["params"].shape == (2, 2, 2, 1) and data["valid"].shape == (2, 2, 2)
    meta = data["metadata"]
    assert meta["deconvolution"]["iterations"] == 15 and meta["psf_model"] == "gaussian1"
    # deblurring brings the image closer to the object
    raw = data["raw"][0].astype(np.float64)
    err_raw = np.abs(raw - x).mean()
    err_dec = np.abs(data["deconvolved"][0] - x).mean()
    assert err_dec < 0.8 * err_raw
    rep = verify_store(out)
    assert rep["ok"] and rep["frames"] == 2
    v = runner.invoke(app, ["verify", str(out)])
    assert v.exit_code == 0 and v.output.strip().splitlines()[-1] == "frames: 2"
    j = runner.invoke(app, ["verify", str(out), "--json"])
    assert json.loads(j.output[: j.output.rindex("frames:")])["ngff"] == "valid"


def test_deconvolve_tif(tmp_path: Path) -> None:
    img, mp, _ = _make(tmp_path)
    out = tmp_path / "out.tif"
    res = runner.invoke(app, ["deconvolve", str(img), "-o", str(out), "--psf-map", str(mp)])
    assert res.exit_code == 0, res.output
    d = tifffile.imread(out)
    assert d.shape == (96, 96) and d.dtype == np.float32


@pytest.mark.parametrize("case", ["missing_image", "bad_map", "bad_suffix", "exists"])
def test_deconvolve_bad_input(tmp_path: Path, case: str) -> None:
    img, mp, _ = _make(tmp_path)
    out = tmp_path / "o.zarr"
    if case == "missing_image":
        img = tmp_path / "nope.tif"
    elif case == "bad_map":
        np.savez(mp, params=np.zeros((2, 2, 1)), names=np.array(["width"]))
    elif case == "bad_suffix":
        out = tmp_path / "o.png"
    else:
        out.mkdir()
    res = runner.invoke(app, ["deconvolve", str(img), "-o", str(out), "--psf-map", str(mp)])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output


def test_verify_damaged(tmp_path: Path) -> None:
    img, mp, _ = _make(tmp_path)
    out = tmp_path / "d.zarr"
    runner.invoke(app, ["deconvolve", str(img), "-o", str(out), "--psf-map", str(mp)])
    (out / "raw" / "c" / "0" / "0" / "0").unlink()
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == "frames: 0"


def test_deconvolve_blind_with_shipped_model(tmp_path: Path) -> None:
    models = pytest.importorskip("psf_live.models")
    try:
        from psf_live.estimate import Estimator

        Estimator.load(getattr(models, "DEFAULT_MODEL", None))
    except Exception as exc:  # no trained weights yet
        pytest.skip(f"no shipped weights: {exc}")
    rng = np.random.default_rng(1)
    y = (rng.random((256, 256)) * 100).astype(np.float32)
    img = tmp_path / "b.tif"
    tifffile.imwrite(img, y)
    out = tmp_path / "b.zarr"
    res = runner.invoke(app, ["deconvolve", str(img), "-o", str(out), "--iterations", "3"])
    assert res.exit_code == 0, res.output
    assert verify_store(out)["frames"] == 1
    # the default zernike3 reads astigmatism: a hint names the model for plain defocus
    assert "--model zernike1 deblurs better" in res.output
    out1 = tmp_path / "b1.zarr"
    args = ["deconvolve", str(img), "-o", str(out1), "-n", "3", "--model", "zernike1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "hint" not in res.output


def _zernike_map_with_views(path: Path, focus: np.ndarray, sd: float) -> None:
    """A zernike1 map of a 96 px image whose 8 TTA views spread by ``sd`` around ``focus``."""
    offsets = sd * np.array([1, -1] * 4, np.float32)  # mean 0, population SD ``sd``
    views = (focus[..., None, None] + offsets[:, None]).astype(np.float32)
    np.savez(
        path,
        params=focus[..., None].astype(np.float32),
        names=np.array(["focus"]),
        psf_model=np.array("zernike1"),
        valid=np.ones(focus.shape, bool),
        centers_y=np.array([24.0, 72.0]),
        centers_x=np.array([24.0, 72.0]),
        view_params=views,
    )


def test_deconvolve_shrinks_zernike_maps_by_their_views_spread(tmp_path: Path) -> None:
    """auto lowers a Zernike map's focus by 1.5 SD of its views: the same result as the
    lowered map given by hand with --shrink 0; the saved params stay the estimates."""
    img, _, _ = _make(tmp_path)
    focus = np.array([[0.3, 0.4], [0.35, 0.5]])
    mp, lowered = tmp_path / "z.npz", tmp_path / "z_low.npz"
    _zernike_map_with_views(mp, focus, 0.05)
    _zernike_map_with_views(lowered, focus - 1.5 * 0.05, 0.05)
    outs = {}
    for name, m, extra in (
        ("auto", mp, []),
        ("none", mp, ["--shrink", "0"]),
        ("hand", lowered, ["--shrink", "0"]),
    ):
        out = tmp_path / f"{name}.zarr"
        res = runner.invoke(
            app, ["deconvolve", str(img), "-o", str(out), "--psf-map", str(m), "-n", "5", *extra]
        )
        assert res.exit_code == 0, res.output
        assert ("lowered by 1.5 SD" in res.output) == (name == "auto"), res.output
        outs[name] = load_store(out)
    meta = outs["auto"]["metadata"]["deconvolution"]
    assert meta["shrink"] == "auto" and meta["shrink_applied"] == ZERNIKE_SHRINK
    assert outs["none"]["metadata"]["deconvolution"]["shrink_applied"] == 0.0
    np.testing.assert_allclose(outs["auto"]["params"][0, ..., 0], focus, atol=1e-6)
    np.testing.assert_allclose(
        outs["auto"]["deconvolved"], outs["hand"]["deconvolved"], rtol=1e-4, atol=1e-3
    )
    assert np.abs(outs["auto"]["deconvolved"] - outs["none"]["deconvolved"]).max() > 1.0


@pytest.mark.parametrize("case", ["blind_without_tta", "map_without_views", "word", "negative"])
def test_deconvolve_shrink_bad_input(tmp_path: Path, case: str) -> None:
    img, mp, _ = _make(tmp_path)
    args = ["deconvolve", str(img), "-o", str(tmp_path / "o.zarr")]
    args += {
        "blind_without_tta": ["--shrink", "1"],
        "map_without_views": ["--psf-map", str(mp), "--shrink", "1"],
        "word": ["--psf-map", str(mp), "--shrink", "lots"],
        "negative": ["--psf-map", str(mp), "--shrink", "-1"],
    }[case]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    want = {"blind_without_tta": "--tta", "map_without_views": str(mp)}.get(case, "'auto'")
    assert want in lines[0]
    assert not (tmp_path / "o.zarr").exists()


def test_deconvolve_refine_rescales_a_too_large_map(tmp_path: Path) -> None:
    """--refine pulls a map 30 % too wide back towards the true widths (where they are 1.5 px
    or more: below, the score prefers larger Gaussians, test_deconv_refine), stores the
    factors as `psf_scale` beside the unchanged estimates, and deconvolves with them."""
    img, _, _ = _make(tmp_path)
    true = np.array([[1.0, 2.0], [2.5, 1.5]], np.float32)
    wide = tmp_path / "wide.npz"
    np.savez(
        wide,
        params=(1.3 * true)[..., None],
        names=np.array(["width"]),
        valid=np.ones((2, 2), bool),
        centers_y=np.array([24.0, 72.0]),
        centers_x=np.array([24.0, 72.0]),
    )
    out = tmp_path / "r.zarr"
    args = ["deconvolve", str(img), "-o", str(out), "--psf-map", str(wide), "-n", "5"]
    res = runner.invoke(app, [*args, "--refine", "--gain", "1", "--read-noise", "0"])
    assert res.exit_code == 0, res.output
    assert "refined from the frame" in res.output
    s = load_store(out)
    scale = s["psf_scale"][0]
    wide_enough = true >= 1.5
    assert scale.shape == (2, 2) and (scale[wide_enough] < 0.95).all(), scale
    np.testing.assert_allclose(s["params"][0, ..., 0], 1.3 * true, rtol=1e-6)
    meta = s["metadata"]["deconvolution"]["refine"]
    assert meta["camera"] == {"gain_adu_per_e": 1.0, "offset_adu": 0.0, "read_noise_e": 0.0}
    assert meta["iterations"] == 16 and meta["acceleration"] == 0.6  # the Gaussian default
    assert verify_store(out)["ok"]
    # the deconvolution used the refined widths: the same as giving them by hand
    hand = tmp_path / "hand.npz"
    d = dict(np.load(wide))
    d["params"] = (1.3 * true * scale)[..., None].astype(np.float32)
    np.savez(hand, **d)
    out2 = tmp_path / "h.zarr"
    res = runner.invoke(
        app, ["deconvolve", str(img), "-o", str(out2), "--psf-map", str(hand), "-n", "5"]
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(
        s["deconvolved"], load_store(out2)["deconvolved"], rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize(
    "case",
    ["with_shrink", "zero_gain", "noise_without_gain", "gain_without_refine"],
)
def test_deconvolve_refine_bad_input(tmp_path: Path, case: str) -> None:
    img, mp, _ = _make(tmp_path)
    args = ["deconvolve", str(img), "-o", str(tmp_path / "o.zarr"), "--psf-map", str(mp)]
    args += {
        "with_shrink": ["--refine", "--shrink", "1"],
        "zero_gain": ["--refine", "--gain", "0"],
        "noise_without_gain": ["--refine", "--read-noise", "2"],
        "gain_without_refine": ["--gain", "1"],
    }[case]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    want = {
        "with_shrink": "refine replaces shrink",
        "zero_gain": "gain must be > 0",
        "noise_without_gain": "need the gain too",
        "gain_without_refine": "are for refine",
    }[case]
    assert want in lines[0]
    assert not (tmp_path / "o.zarr").exists()
