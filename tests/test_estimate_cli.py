"""``psf-live estimate``: TIFF in, npz out, one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from psf_live.cli import app
from psf_live.estimate import patch_starts

models = pytest.importorskip("psf_live.models")
nets = pytest.importorskip("psf_live.nets")

runner = CliRunner()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_estimate_estimator import make_tiny

    net, card = make_tiny()
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    models.save_model(net, card, path)
    return path


def _img(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 4000, size=shape).astype(np.uint16)


def test_estimate_2d(tmp_path: Path, model_path: Path, rng: np.random.Generator) -> None:
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _img(rng, (256, 320)))
    out = tmp_path / "map.npz"
    r = runner.invoke(app, ["estimate", str(tif), "--model", str(model_path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    with np.load(out) as z:
        rows, cols = patch_starts(256).size, patch_starts(320).size
        assert z["params"].shape == (rows, cols, 3)
        assert z["valid"].shape == (rows, cols) and z["valid"].dtype == bool
        assert list(z["names"]) == ["focus", "cylinder", "axis"]
        np.testing.assert_allclose(z["centers_y"], patch_starts(256) + 63.5)
        np.testing.assert_allclose(z["centers_x"], patch_starts(320) + 63.5)


def test_estimate_stack_json(tmp_path: Path, model_path: Path, rng: np.random.Generator) -> None:
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, _img(rng, (3, 256, 256)), photometric="minisblack")
    out = tmp_path / "map.npz"
    r = runner.invoke(
        app,
        ["estimate", str(tif), "-m", str(model_path), "-s", "128", "-o", str(out), "--json"],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert len(summary["frames"]) == 3 and summary["grid"] == [2, 2]
    with np.load(out) as z:
        assert z["params"].shape == (3, 2, 2, 3)
        assert z["valid"].shape == (3, 2, 2)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros(400, np.uint16), "1D"),
        (np.zeros((2, 2, 200, 200), np.uint16), "4D"),
        (np.zeros((64, 400), np.uint16), "smaller"),
        (np.full((200, 200), np.nan, np.float32), "NaN"),
    ],
)
def test_estimate_bad_input(
    tmp_path: Path, model_path: Path, data: np.ndarray, match: str
) -> None:
    if data.ndim == 1:  # TIFF cannot hold 1D data; .npy input is accepted too
        tif = tmp_path / "bad.npy"
        np.save(tif, data)
    else:
        tif = tmp_path / "bad.tif"
        tifffile.imwrite(tif, data, photometric="minisblack")
    r = runner.invoke(app, ["estimate", str(tif), "-m", str(model_path), "-o", "x.npz"])
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert err.startswith("error:") and match in err and "\n" not in err


def test_estimate_missing_file_and_bad_model(tmp_path: Path, rng: np.random.Generator) -> None:
    r = runner.invoke(app, ["estimate", str(tmp_path / "nope.tif"), "-o", "x.npz"])
    assert r.exit_code != 0 and "no such file" in r.stderr
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _img(rng, (256, 256)))
    r = runner.invoke(app, ["estimate", str(tif), "-m", str(tmp_path / "no.pt"), "-o", "x.npz"])
    assert r.exit_code != 0 and "cannot load model" in r.stderr
    assert "\n" not in r.stderr.strip()


def test_estimate_tta(tmp_path: Path, model_path: Path, rng: np.random.Generator) -> None:
    """--tta maps the same grid with the symmetry-averaged network (different values)."""
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _img(rng, (256, 256)))
    outs = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / f"map{len(flag)}.npz"
        args = ["estimate", str(tif), "-m", str(model_path), "-o", str(out), *flag]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        with np.load(out) as z:
            outs[bool(flag)] = z["params"]
            # the 8 views' estimates travel with a --tta map (uncertainty per patch)
            assert ("view_params" in z) == bool(flag)
            if flag:
                assert z["view_params"].shape == (*z["params"].shape[:2], 8, 3)
    assert outs[True].shape == outs[False].shape
    assert not np.allclose(outs[True], outs[False])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"data": np.zeros((256, 256, 3), np.uint8), "photometric": "rgb"}, "colour image"),
        (  # an ImageJ hyperstack of two channels is not two frames
            {
                "data": np.zeros((2, 256, 256), np.uint16),
                "imagej": True,
                "metadata": {"axes": "CYX"},
            },
            "2 channels (axes CYX)",
        ),
    ],
)
def test_estimate_colour_or_channels(
    tmp_path: Path, model_path: Path, kw: dict[str, Any], match: str
) -> None:
    """Colour and multi-channel TIFFs are refused saying so, not mapped as frames."""
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, **kw)
    r = runner.invoke(app, ["estimate", str(tif), "-m", str(model_path), "-o", "x.npz"])
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert err.startswith("error:") and match in err and "\n" not in err
    # the same stack as frames (axes ZYX) is mapped frame by frame
    if kw.get("imagej"):
        frames = np.random.default_rng(0).integers(0, 4000, (2, 256, 256)).astype(np.uint16)
        tifffile.imwrite(tif, frames, imagej=True, metadata={"axes": "ZYX"})
        out = tmp_path / "z.npz"
        r = runner.invoke(app, ["estimate", str(tif), "-m", str(model_path), "-o", str(out)])
        assert r.exit_code == 0, r.output
        with np.load(out) as z:
            assert z["valid"].shape[0] == 2


def test_estimate_reports_blank_frames(tmp_path: Path, rng: np.random.Generator) -> None:
    """Valid patches are counted, frames without any are named; the .npz suffix is added."""
    tif = tmp_path / "stack.tif"
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(rng.random((256, 256)), 1.5)  # blurred texture: PSF readable
    textured = (1000 + 3000 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint16)
    blank = np.zeros_like(textured)
    tifffile.imwrite(tif, np.stack([textured, blank, blank]), photometric="minisblack")
    out = tmp_path / "map"  # numpy.savez's naming: map.npz
    r = runner.invoke(app, ["estimate", str(tif), "-s", "128", "-o", str(out)])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "map.npz") as z:
        valid = z["valid"]
    assert valid.shape == (3, 2, 2) and not valid[1:].any()  # the shipped net: blank = invalid
    n = int(valid.sum())
    assert f"valid patches {n}/12 -> {out}.npz" in r.stdout
    assert "warning: no valid patch in frame(s) 1-2" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.npz", "stack.tif"]
