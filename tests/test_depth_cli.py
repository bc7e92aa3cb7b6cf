"""The calibrate-depth and depth commands (CliRunner), with a stand-in mapper and a tiny net."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from psf_live import cli
from psf_live.depth import DepthCalibration, synthetic_psf_map, true_depth_grid
from psf_live.estimate import patch_centers, patch_starts

tifffile = pytest.importorskip("tifffile")
runner = CliRunner()
SHAPE = (384, 512)
META = {"name": "fake-z3", "sha256": "ee" * 32, "psf_model": "zernike3"}


class TiltMapper:
    """Stand-in for an Estimator: the ideal zernike3 map of a plane whose tilt (deg) is the
    frame's mean value (frames are constant images), plus a little noise."""

    def __init__(self, meta: dict[str, Any] = META) -> None:
        self.meta = meta
        self.rng = np.random.default_rng(0)
        self.map_noise = 0.003  # waves of focus noise per patch

    def map(self, frame: Any) -> Any:
        f = np.asarray(frame, dtype=np.float64)
        tilt = float(f.mean()) - 20.0
        cy = patch_centers(patch_starts(f.shape[0]))
        cx = patch_centers(patch_starts(f.shape[1]))
        d = true_depth_grid(cy, cx, tilt, "x", 0.64, f.shape)
        return synthetic_psf_map(
            d,
            cy,
            cx,
            f.shape,
            focus_noise=self.map_noise,
            rng=self.rng,
            invalid_fraction=0.05,
            meta=self.meta,
        )


def _frame(tilt: float) -> np.ndarray:
    return np.full(SHAPE, tilt + 20.0, np.float32)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> TiltMapper:
    m = TiltMapper()
    monkeypatch.setattr(cli, "_load_estimator", lambda model, tta=False: m)
    return m


def _tilts(text: str) -> list[tuple[float, float]]:
    return [
        (float(a), float(b))
        for a, b in re.findall(r"tilt x ([-+.\d]+) deg, tilt y ([-+.\d]+) deg", text)
    ]


def _write(tmp: Path, name: str, data: np.ndarray) -> str:
    p = tmp / name
    tifffile.imwrite(p, data, photometric="minisblack")
    return str(p)


def test_calibrate_then_depth(tmp_path: Path, fake: TiltMapper) -> None:
    imgs = [_write(tmp_path, f"g{t}.tif", _frame(t)) for t in (3, 6, 10)]
    # a stack: both frames share the file's tilt
    imgs.append(_write(tmp_path, "s.tif", np.stack([_frame(-5), _frame(-5)])))
    out = tmp_path / "c.json"
    r = runner.invoke(
        cli.app, ["calibrate-depth", *imgs, "--tilt-deg", "3,6,10,-5", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("R^2") == 6 and "image 4: tilt -5 deg" in r.output
    cal = json.loads(out.read_text())
    assert cal["network"]["sha256"] == META["sha256"] and cal["tilt_axis"] == "x"
    assert cal["tilts_deg"] == [3, 6, 10, -5, -5]
    assert "dead zone" in r.output and cal["deadzone"] >= 0
    fixed = tmp_path / "c0.json"
    args = ["calibrate-depth", *imgs, "-t", "3,6,10,-5", "--deadzone", "0.05", "-o", str(fixed)]
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(fixed.read_text())["deadzone"] == 0.05

    img = _write(tmp_path, "x.tif", _frame(8))
    r = runner.invoke(
        cli.app, ["depth", img, "--calibration", str(out), "-o", str(tmp_path / "d.tif")]
    )
    assert r.exit_code == 0, r.output
    tx, ty = _tilts(r.output)[0]
    assert tx == pytest.approx(8.0, abs=0.1) and ty == pytest.approx(0.0, abs=0.1)
    assert "depth on" in r.output and "views disagree" not in r.output  # no TTA here
    d = tifffile.imread(tmp_path / "d.tif")
    assert d.shape == SHAPE and d.dtype == np.float32
    x = np.arange(SHAPE[1])
    truth = (x - (SHAPE[1] - 1) / 2) * 0.64 * math.tan(math.radians(8))
    ok = np.isfinite(d[200]) & (x > 64) & (x < SHAPE[1] - 64)
    assert ok.sum() > 200
    assert np.median(np.abs(d[200, ok] - truth[ok])) < 1.0

    # grid output of a stack: one map per frame
    st = _write(tmp_path, "st.tif", np.stack([_frame(4), _frame(-4), _frame(0)]))
    r = runner.invoke(
        cli.app, ["depth", st, "-c", str(out), "-o", str(tmp_path / "g.tif"), "--grid"]
    )
    assert r.exit_code == 0, r.output
    g = tifffile.imread(tmp_path / "g.tif")
    assert g.shape == (3, 5, 7)
    assert [round(t[0]) for t in _tilts(r.output)] == [4, -4, 0]


def test_depth_smooth_lowers_the_error_of_the_grid(tmp_path: Path, fake: TiltMapper) -> None:
    """--smooth 1 on a tilted plane: same plane, smaller errors (up to 9 patches averaged)."""
    fake.map_noise = 0.02  # waves of focus noise per patch
    imgs = [_write(tmp_path, f"g{t}.tif", _frame(t)) for t in (3, 6, 10)]
    cal = tmp_path / "c.json"
    r = runner.invoke(cli.app, ["calibrate-depth", *imgs, "-t", "3,6,10", "-o", str(cal)])
    assert r.exit_code == 0, r.output
    img = _write(tmp_path, "x.tif", np.stack([_frame(6)] * 4))
    cy = patch_centers(patch_starts(SHAPE[0]))
    cx = patch_centers(patch_starts(SHAPE[1]))
    truth = true_depth_grid(cy, cx, 6.0, "x", 0.64, SHAPE)
    err, tilts = {}, {}
    for k in (0, 1):
        out = tmp_path / f"d{k}.tif"
        args = ["depth", img, "-c", str(cal), "--grid", "--smooth", str(k), "-o", str(out)]
        r = runner.invoke(cli.app, args)
        assert r.exit_code == 0, r.output
        g = tifffile.imread(out)
        err[k] = float(np.nanmean(np.abs(g - truth[None])))
        tilts[k] = np.array([tx for tx, _ in _tilts(r.output)])
    assert err[1] < 0.75 * err[0], err  # 5 x 7 patches: most windows cut by the border
    for k in (0, 1):  # the plane's tilt survives the smoothing (noisy calibration: 0.5 deg)
        assert np.all(np.abs(tilts[k] - 6.0) < 0.5), tilts
    r = runner.invoke(cli.app, ["depth", img, "-c", str(cal), "--smooth", "-1", "-o", "d.tif"])
    assert r.exit_code != 0 and "--smooth" in r.output


class ViewsMapper(TiltMapper):
    """A TTA mapper: each patch also carries 8 views scattered around its estimate."""

    def map(self, frame: Any) -> Any:
        m = super().map(frame)
        views = np.repeat(m.params[:, :, None, :], 8, axis=2)
        views[..., 0] += 0.01 * self.rng.random(views.shape[:3])
        m.view_params = views.astype(np.float32)
        return m


def test_calibrate_with_tta_sets_the_spread_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = ViewsMapper({**META, "tta": True})
    asked: list[Any] = []

    def load(model: Any, tta: Any = False) -> ViewsMapper:
        asked.append(tta)
        return m

    monkeypatch.setattr(cli, "_load_estimator", load)
    imgs = [_write(tmp_path, f"g{t}.tif", _frame(t)) for t in (3, 6, 10)]
    out = tmp_path / "c.json"
    base = ["calibrate-depth", *imgs, "--tilt-deg", "3,6,10", "--tta", "-o", str(out)]
    r = runner.invoke(cli.app, base)
    assert r.exit_code == 0, r.output
    assert "views disagree by more than" in r.output and "90 %" in r.output
    assert json.loads(out.read_text())["max_spread_um"] > 0
    img = _write(tmp_path, "x.tif", _frame(8))
    r = runner.invoke(cli.app, ["depth", img, "-c", str(out), "-o", str(tmp_path / "d.tif")])
    assert r.exit_code == 0, r.output
    n = re.search(
        r"depth on (\d+) of 35 patches \((\d+) valid; left out: (\d+) whose views", r.output
    )
    assert n is not None, r.output
    used, valid, spread = (int(v) for v in n.groups())
    assert 0 < spread < valid // 3 and used <= valid - spread
    assert asked == [8, 8]  # calibrate-depth --tta, then depth following the calibration
    r = runner.invoke(cli.app, [*base, "--tta-views", "3"])
    assert r.exit_code != 0 and "--tta-views must be 2, 4 or 8" in r.output
    r = runner.invoke(cli.app, [*base, "--tta-views", "2"])
    assert r.exit_code == 0 and asked[-1] == 2, r.output
    r = runner.invoke(cli.app, [*base, "--spread-quantile", "1"])
    assert r.exit_code == 0, r.output
    assert "disagree" not in r.output and json.loads(out.read_text())["max_spread_um"] is None


def test_calibration_refused_and_bad_input(tmp_path: Path, fake: TiltMapper) -> None:
    flat = _write(tmp_path, "flat.tif", _frame(0))
    r = runner.invoke(
        cli.app, ["calibrate-depth", flat, "--tilt-deg", "0", "-o", str(tmp_path / "c.json")]
    )
    assert r.exit_code == 1 and "calibration refused" in r.output and "no depth range" in r.output
    assert not (tmp_path / "c.json").exists()
    a = _write(tmp_path, "a.tif", _frame(3))
    cases = [
        (["calibrate-depth", a, "--tilt-deg", "3,6", "-o", "c.json"], "1 images but 2 tilts"),
        (["calibrate-depth", a, "--tilt-deg", "3;x", "-o", "c.json"], "expected comma"),
        (["calibrate-depth", str(tmp_path / "no.tif"), "-t", "3", "-o", "c.json"], "no such"),
        (["calibrate-depth", "--tilt-deg", "3", "-o", "c.json"], "give calibration images"),
        (["calibrate-depth", a, "-t", "3", "--axis", "z", "-o", "c.json"], "--axis"),
        (["calibrate-depth", a, "-t", "3", "--deadzone", "-1", "-o", "c.json"], "--deadzone"),
        (["calibrate-depth", a, "-t", "3", "--deadzone", "wide", "-o", "c.json"], "--deadzone"),
        (["calibrate-depth", a, "-t", "3", "--reach-ratio", "0", "-o", "c.json"], "--reach-ratio"),
        (["calibrate-depth", a, "-t", "3", "--reach-ratio", "nan", "-o", "c.json"], "(0, 1]"),
        (
            ["depth", a, "-c", str(tmp_path / "none.json"), "-o", "d.tif"],
            "none.json: no such calibration file",
        ),
    ]
    for args, msg in cases:
        r = runner.invoke(cli.app, args)
        assert r.exit_code != 0 and msg in r.output, (args, r.output)
        assert r.output.strip().count("\n") == 0, r.output


def test_depth_with_another_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cal = DepthCalibration(features="eq14", coef=[0.0, -120.0], network=dict(META))
    p = cal.save(tmp_path / "cal.json")
    other = TiltMapper({"name": "fake-z3", "sha256": "aa" * 32})
    monkeypatch.setattr(cli, "_load_estimator", lambda model, tta=False: other)
    img = _write(tmp_path, "i.tif", _frame(5))
    r = runner.invoke(cli.app, ["depth", img, "-c", str(p), "-o", str(tmp_path / "d.tif")])
    assert r.exit_code == 1
    assert "cal.json: made with network 'fake-z3'" in r.output
    assert r.output.strip().count("\n") == 0


def test_tiny_network_end_to_end(tmp_path: Path) -> None:
    """Real Estimator path: an untrained tiny net cannot calibrate (refused with a reason);
    a calibration made for it maps depth at full resolution."""
    models = pytest.importorskip("psf_live.models")
    pytest.importorskip("psf_live.nets")
    from test_estimate_estimator import make_tiny

    net, card = make_tiny()
    mp = tmp_path / "tiny.pt"
    models.save_model(net, card, mp)
    card = models.load_model(mp)[1]
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4000, size=(256, 320)).astype(np.uint16)
    f = _write(tmp_path, "i.tif", img)
    r = runner.invoke(
        cli.app, ["calibrate-depth", f, "-t", "6", "-m", str(mp), "-o", str(tmp_path / "c.json")]
    )
    assert r.exit_code == 1 and "calibration refused" in r.output
    cal = DepthCalibration(
        features="signed", coef=[1.0, 50.0], network={"name": card.name, "sha256": card.sha256}
    )
    cp = cal.save(tmp_path / "c.json")
    r = runner.invoke(
        cli.app, ["depth", f, "-c", str(cp), "-m", str(mp), "-o", str(tmp_path / "d.tif")]
    )
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "d.tif").shape == (256, 320)


def test_live_acquisition_sim_sets_tilt() -> None:
    """On the simulated scope the tilt is set in software with fresh grid offsets."""
    acquire = pytest.importorskip("psf_live.acquire")
    core = acquire.open_core(None)
    try:
        cam = core.getCameraDevice()
        core.setProperty(cam, "SensorWidth", 192)
        core.setProperty(cam, "SensorHeight", 160)
        seen: list[float] = []
        snap0 = core.snapImage

        def snap_and_record() -> None:
            seen.append(float(core.getProperty(cam, "TiltDeg")))
            snap0()

        core.snapImage = snap_and_record  # type: ignore[method-assign]
        core.setPosition(25.0)  # out of focus: the calibration brings the grid back
        frames, tilts, px = cli._acquire_depth_calibration(core, [3.0, -6.0], "x", 2, None)
        assert core.getPosition() == pytest.approx(float(core.getProperty(cam, "SampleZUm")))
    finally:
        core.unloadAllDevices()
    assert tilts == [3.0, 3.0, -6.0, -6.0] and seen == tilts
    assert px == pytest.approx(0.64) and len(frames) == 4 and frames[0].shape == (160, 192)
    assert not np.array_equal(frames[0], frames[1])


def test_live_acquisition_real_scope_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real scope (no TiltDeg property) the user is asked once per tilt."""

    class Core:
        def getCameraDevice(self) -> str:
            return "Cam"

        def hasProperty(self, dev: str, prop: str) -> bool:
            return False

        def getPixelSizeUm(self) -> float:
            return 0.5

        def snapImage(self) -> None:
            pass

        def getImage(self) -> np.ndarray:
            return np.zeros((8, 8), np.uint16)

    prompts: list[str] = []
    monkeypatch.setattr(cli.typer, "prompt", lambda text, **kw: prompts.append(text) or "")
    frames, tilts, px = cli._acquire_depth_calibration(Core(), [3.0, 6.0], "y", 3, None)
    assert len(frames) == 6 and px == 0.5 and tilts == [3.0] * 3 + [6.0] * 3
    assert len(prompts) == 2 and "+3 deg along y" in prompts[0] and "+6" in prompts[1]


def test_wrong_lens_axis_is_refused_before_acquisition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network trained for a lens at 40-50 deg refuses --lens-axis-deg 0 before the scope
    is even opened (a live calibration asks the user to tilt a grid several times)."""
    import psf_live.acquire

    recipe = {"param_ranges": {"axis": [math.radians(40), math.radians(50)]}}
    m = TiltMapper({**META, "data_recipe": recipe})
    monkeypatch.setattr(cli, "_load_estimator", lambda model, tta=False: m)

    def no_scope(*a: Any, **k: Any) -> Any:
        raise AssertionError("the scope was opened")

    monkeypatch.setattr(psf_live.acquire, "open_core", no_scope)
    monkeypatch.setattr(cli, "_acquire_depth_calibration", no_scope)
    out = tmp_path / "c.json"
    args = ["calibrate-depth", "--config", "sim", "-t", "3,6", "-o", str(out)]
    r = runner.invoke(cli.app, [*args, "--lens-axis-deg", "0"])
    assert r.exit_code == 1 and "calibration refused" in r.output, r.output
    assert "trained for a cylindrical lens at 40-50 deg" in r.output and not out.exists()
    # the axis it was trained for passes the check and reaches the scope (refused there)
    r = runner.invoke(cli.app, [*args, "--lens-axis-deg", "45"])
    assert r.exit_code == 1 and "the scope was opened" in r.output, r.output


class StepMapper(TiltMapper):
    """Stand-in for an Estimator on a specimen at focus steps: a frame of constant value
    ``100 + step`` shows a plane tilted 5 deg whose depth changes by ``-read * step`` (a
    specimen read ``read`` x as deep as the calibration grid)."""

    def __init__(self, read: float) -> None:
        super().__init__()
        self.read = read

    def map(self, frame: Any) -> Any:
        f = np.asarray(frame, dtype=np.float64)
        step = float(f.mean()) - 100.0
        cy = patch_centers(patch_starts(f.shape[0]))
        cx = patch_centers(patch_starts(f.shape[1]))
        d = true_depth_grid(cy, cx, 5.0, "x", 0.64, f.shape) - self.read * step
        return synthetic_psf_map(
            d, cy, cx, f.shape, focus_noise=self.map_noise, rng=self.rng, meta=self.meta
        )


def test_rescale_depth_from_a_focus_stack(
    tmp_path: Path, fake: TiltMapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    imgs = [_write(tmp_path, f"g{t}.tif", _frame(t)) for t in (3, 6, 10, -5)]
    cal = tmp_path / "c.json"
    r = runner.invoke(cli.app, ["calibrate-depth", *imgs, "-t", "3,6,10,-5", "-o", str(cal)])
    assert r.exit_code == 0, r.output
    steps = [-10.0, -5.0, 0.0, 5.0, 10.0]
    stack = _write(
        tmp_path, "spec.tif", np.stack([np.full(SHAPE, 100 + s, np.float32) for s in steps])
    )
    monkeypatch.setattr(cli, "_calibrated_estimator", lambda *a, **k: StepMapper(0.8))
    out = tmp_path / "spec.json"
    r = runner.invoke(
        cli.app, ["rescale-depth", str(cal), stack, "-z", "-10,-5,0,5,10", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    spec = DepthCalibration.load(out)
    assert spec.rescaled["factor"] == pytest.approx(1.25, abs=0.04)
    assert spec.rescaled["steps_um"] == steps
    base = DepthCalibration.load(cal)
    assert spec.coef[1] == pytest.approx(base.coef[1] * spec.rescaled["factor"])
    assert "depth x 1.2" in r.output
    # the depth command says the file is in a specimen's scale
    r = runner.invoke(
        cli.app,
        [
            "depth",
            _write(tmp_path, "t.tif", _frame(6)),
            "-c",
            str(out),
            "-o",
            str(tmp_path / "d.tif"),
        ],
    )
    assert r.exit_code == 0 and "rescaled x 1.2" in r.output, r.output
    # the steps given with the wrong sign (a stage that moves the other way): refused
    bad = tmp_path / "bad.json"
    r = runner.invoke(
        cli.app, ["rescale-depth", str(cal), stack, "-z", "10,5,0,-5,-10", "-o", str(bad)]
    )
    assert r.exit_code == 1 and "opposite sign" in r.output and not bad.exists(), r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-z", "-5,0,5,10"], "3 frames but 4 focus steps"),
        (["-z", "0,0,5"], "at least 3 different"),
        (["-z", "a,b"], "expected comma-separated"),
        (["-z", "-5,0,5", "--config", "sim"], "not both"),
    ],
)
def test_rescale_depth_errors(
    tmp_path: Path, fake: TiltMapper, args: list[str], message: str
) -> None:
    imgs = [_write(tmp_path, f"g{t}.tif", _frame(t)) for t in (3, 6, 10)]
    cal = tmp_path / "c.json"
    assert (
        runner.invoke(
            cli.app, ["calibrate-depth", *imgs, "-t", "3,6,10", "-o", str(cal)]
        ).exit_code
        == 0
    )
    stack = _write(tmp_path, "s.tif", np.stack([_frame(0)] * 3))
    r = runner.invoke(cli.app, ["rescale-depth", str(cal), stack, *args, "-o", "x.json"])
    assert r.exit_code != 0 and message in r.output, r.output
    r = runner.invoke(cli.app, ["rescale-depth", str(cal), "-z", "-5,0,5", "-o", "x.json"])
    assert r.exit_code == 1 and "give the specimen's focus stack or --config" in r.output


def test_rescale_depth_live_on_the_simulated_scope(tmp_path: Path) -> None:
    """End to end: calibrate on the simulator's tilted grid, then rescale from focus steps
    of its (untilted) grid: the same sample, so the scale stays within a few per cent."""
    models = pytest.importorskip("psf_live.models")
    if "zernike3-lens45" not in models.available_models():
        pytest.skip("zernike3-lens45 not shipped")
    cal, out = tmp_path / "c.json", tmp_path / "spec.json"
    r = runner.invoke(
        cli.app,
        [
            "calibrate-depth",
            "--config",
            "sim",
            "-t",
            "3,6,10",
            "-m",
            "zernike3-lens45",
            "-o",
            str(cal),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli.app,
        ["rescale-depth", str(cal), "--config", "sim", "-z", "-10,-5,0,5,10", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    spec = DepthCalibration.load(out)
    assert 0.9 < spec.rescaled["factor"] < 1.1
    assert spec.rescaled["n_patches"] > 100
