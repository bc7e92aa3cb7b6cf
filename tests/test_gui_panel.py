"""The live panel on the simulated scope (pytest-qt, headless): maps, heatmaps, tilt, close."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")
models = pytest.importorskip("psf_live.models")
acquire = pytest.importorskip("psf_live.acquire")

from psf_live.estimate import Estimator, PSFMap  # noqa: E402
from psf_live.gui import PSFLivePanel  # noqa: E402

MAP_TIMEOUT_MS = 40_000


def _psf_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("psf-live")]


def _wait_maps(qtbot: Any, panel: PSFLivePanel, n: int) -> None:
    target = panel.maps_shown + n
    qtbot.waitUntil(lambda: panel.maps_shown >= target, timeout=MAP_TIMEOUT_MS)


class Slow:
    """An estimator whose every map takes at least ``delay`` seconds."""

    def __init__(self, inner: Estimator, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.meta = inner.meta
        self.device = inner.device
        self.stride = inner.stride

    def map(self, frame: np.ndarray) -> PSFMap:
        t0 = time.perf_counter()
        m = self.inner.map(frame, stride=self.stride)
        time.sleep(max(0.0, self.delay - (time.perf_counter() - t0)))
        return m


class SharpnessMapper:
    """A model-free stand-in for the estimator: per-patch blur from gradient energy.

    ``focus`` grows as the patch loses its edges (1 - normalised gradient energy), so
    defocusing the simulated stage must raise it; ``cylinder`` is the x/y gradient
    anisotropy.
    """

    meta = {"name": "sharpness"}  # noqa: RUF012
    device = "cpu"

    def __init__(self, stride: int = 128) -> None:
        self.stride = stride

    def map(self, frame: np.ndarray) -> PSFMap:
        from psf_live.estimate import extract_patches, patch_centers

        patches, sy, sx = extract_patches(np.asarray(frame, np.float32), 128, self.stride)
        p = patches.reshape(len(sy), len(sx), 128, 128)
        p = p / np.maximum(p.mean(axis=(2, 3), keepdims=True), 1e-6)
        gx = np.abs(np.diff(p, axis=3)).mean(axis=(2, 3))
        gy = np.abs(np.diff(p, axis=2)).mean(axis=(2, 3))
        sharp = gx + gy
        params = np.stack(
            [1.0 / (1.0 + 10 * sharp), np.abs(gx - gy) / (gx + gy + 1e-6), np.zeros_like(sharp)],
            axis=-1,
        ).astype(np.float32)
        valid = np.ones(sharp.shape, bool)
        return PSFMap(
            params=params,
            valid=valid,
            valid_prob=valid.astype(np.float32),
            centers_y=patch_centers(sy),
            centers_x=patch_centers(sx),
            param_names=("focus", "cylinder", "axis"),
            units=("waves", "waves", "rad"),
            psf_model="zernike3",
            frame_shape=frame.shape,
            patch_size=128,
            stride=self.stride,
            meta=dict(self.meta),
        )


def test_panel_maps_sim_frames_and_closes_cleanly(qtbot: Any, tiny_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    panel = PSFLivePanel(model=tiny_path, stride=128)  # default: simulated scope
    qtbot.addWidget(panel)
    assert panel.core.getCameraDevice()
    assert panel.z_spin.isEnabled()  # the sim config has a Z stage
    # the device and the arithmetic the maps come from (the tiny net has no int8 weights)
    assert panel.readouts["device"].text() in ("CPU fp32", "CPU bf16")
    assert panel.readouts["model"].text() == "tiny-zernike3"
    assert panel.calib_label.text() == "not calibrated"
    panel.start_live()
    _wait_maps(qtbot, panel, 2)
    m = panel._last_map
    assert m.shape == (8, 8)  # 1024 px frame, stride 128
    shown = panel.focus_view.image.image
    assert shown is not None and shown.shape == m.shape
    assert panel.camera_image.image is not None
    assert panel.camera_image.image.shape == (1024, 1024)
    assert panel.readouts["focus"].text().endswith("waves")
    assert panel.readouts["tilt_x"].text().endswith("deg")
    assert "maps/s" in panel.readouts["rate"].text()
    assert panel.readouts["latency"].text().endswith("(median)")
    assert len(panel._trend) >= 2
    assert _psf_threads()  # mapper worker and grabber are running
    panel.close()
    assert _psf_threads() == []
    after = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert after == [], [t.name for t in after]


def test_levels_are_fixed_and_user_adjustable(qtbot: Any, core: Any, tiny_path: Path) -> None:
    panel = PSFLivePanel(core, model=tiny_path, stride=128)
    qtbot.addWidget(panel)
    levels = panel.focus_view.levels()
    panel.start_live()
    _wait_maps(qtbot, panel, 2)
    assert panel.focus_view.levels() == levels  # never auto-scaled per frame
    assert tuple(panel.focus_view.image.levels) == pytest.approx(levels)
    panel.focus_view.set_levels(-0.3, 0.3)
    _wait_maps(qtbot, panel, 1)
    assert tuple(panel.focus_view.image.levels) == pytest.approx((-0.3, 0.3))
    panel.close()
    assert not core.isSequenceRunning()  # an embedding app's core is stopped, not unloaded
    assert core.getCameraDevice()


def test_heatmaps_change_when_stage_moves(qtbot: Any, core: Any) -> None:
    panel = PSFLivePanel(core, model=SharpnessMapper(), stride=128)
    qtbot.addWidget(panel)
    panel.start_live()

    def grab() -> tuple[np.ndarray, np.ndarray]:
        _wait_maps(qtbot, panel, 2)
        return (
            np.array(panel.focus_view.image.image, copy=True),
            np.array(panel.astig_view.image.image, copy=True),
        )

    f0, a0 = grab()
    f1, a1 = grab()  # same Z: only camera noise differs
    noise = np.nanmean(np.abs(f1 - f0)) + np.nanmean(np.abs(a1 - a0))
    panel.set_z(60.0)
    assert core.getPosition() == pytest.approx(60.0)
    grab()  # let frames from before the move flush out
    f2, a2 = grab()
    moved = np.nanmean(np.abs(f2 - f1)) + np.nanmean(np.abs(a2 - a1))
    assert moved > 3 * noise + 1e-6, (moved, noise)
    assert np.nanmean(f2) > np.nanmean(f1)  # defocused: blurrier everywhere
    panel.close()


def test_invalid_patches_are_hatched_not_coloured(qtbot: Any, core: Any) -> None:
    panel = PSFLivePanel(core, model="/nonexistent/model.pt")
    qtbot.addWidget(panel)
    assert panel.estimator is None
    assert panel.readouts["model"].text() == "no model"
    assert "no model" in panel.status.text()
    rows, cols = 4, 5
    valid = np.ones((rows, cols), bool)
    valid[1, 2] = valid[3, 0] = False
    params = np.zeros((rows, cols, 3), np.float32)
    params[..., 0], params[..., 1], params[..., 2] = 0.4, 0.2, np.pi / 4
    m = _grid_map(params, valid)
    panel._latest.put(0, np.zeros((512, 640), np.uint16), m, None)
    qtbot.waitUntil(lambda: panel.maps_shown == 1, timeout=5000)
    img = panel.focus_view.image.image
    assert np.isnan(img[~valid]).all() and np.isfinite(img[valid]).all()
    assert img[valid] == pytest.approx(0.4)  # focus at the lens axis: signed +focus
    hatch = panel.focus_view.hatch.image
    cell = hatch.shape[0] // rows
    assert hatch[1 * cell : 2 * cell, 2 * cell : 3 * cell, 3].min() == 255
    assert hatch[0:cell, 0:cell, 3].max() == 0
    # axis segments only on valid patches, along 45 degrees
    x, y = panel.axis_lines.getData()
    assert len(x) == 2 * valid.sum()
    assert np.allclose(np.diff(x.reshape(-1, 2)), np.diff(y.reshape(-1, 2)))
    assert panel.depth_view.message.toPlainText() == "not calibrated"
    panel.close()


def test_slow_inference_keeps_panel_responsive(qtbot: Any, core: Any, tiny_path: Path) -> None:
    est = Slow(Estimator.load(tiny_path, device="cpu", stride=128), delay=0.6)
    panel = PSFLivePanel(core, model=est, refresh_ms=30)
    qtbot.addWidget(panel)
    ticks = []
    panel._timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    panel.start_live()
    _wait_maps(qtbot, panel, 1)
    n0, t0 = len(ticks), time.perf_counter()
    qtbot.wait(1500)
    dt = time.perf_counter() - t0
    # the GUI timer keeps ticking while maps take 0.6 s each ...
    assert (len(ticks) - n0) / dt > 8
    # ... the newest frame wins: the camera outruns the mapper, frames are dropped
    st = panel.mapper.stats()
    assert st.frames_dropped > 0 and st.frames_in > st.frames_mapped
    assert panel._latest._item is None or panel._latest.count >= 1  # one slot, no queue
    t_close = time.perf_counter()
    panel.close()
    assert time.perf_counter() - t_close < 5
    assert _psf_threads() == []


@pytest.mark.skipif(
    "zernike3" not in getattr(models, "available_models", list)(),
    reason="no shipped zernike3 weights yet",
)
@pytest.mark.parametrize("tilt", [6.0, -6.0])
def test_tilt_readout_sign_on_tilted_grid(qtbot: Any, core: Any, tilt: float) -> None:
    cam = core.getCameraDevice()
    core.setProperty(cam, "TiltAxis", "x")
    core.setProperty(cam, "TiltDeg", tilt)
    panel = PSFLivePanel(core, model="zernike3", stride=64)
    qtbot.addWidget(panel)
    panel.start_live()
    _wait_maps(qtbot, panel, 3)
    tx, ty = panel.last_tilt
    assert np.sign(tx) == np.sign(tilt)
    assert abs(tx) > abs(ty)
    assert panel.readouts["tilt_x"].text().startswith("+" if tilt > 0 else "-")
    panel.close()


def test_gui_command_bad_config_one_line_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from psf_live.cli import app

    res = CliRunner().invoke(app, ["gui", "--config", str(tmp_path / "missing.cfg")])
    assert res.exit_code != 0
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "missing.cfg" in err and "not found" in err
    assert len(err.strip().splitlines()) == 1


def test_gui_command_opens_panel_and_exits_cleanly(qapp: Any, tiny_path: Path) -> None:
    from qtpy import QtCore
    from typer.testing import CliRunner

    from psf_live.cli import app

    seen: dict[str, Any] = {}

    def close_when_mapped() -> None:
        panels = [w for w in qapp.topLevelWidgets() if isinstance(w, PSFLivePanel)]
        if panels and panels[0].maps_shown >= 1:
            seen["live"] = panels[0].is_live()
            seen["threads"] = _psf_threads()
            panels[0].close()
            qapp.quit()
        elif time.perf_counter() - t0 < 40:
            QtCore.QTimer.singleShot(100, close_when_mapped)
        else:
            qapp.quit()

    t0 = time.perf_counter()
    QtCore.QTimer.singleShot(100, close_when_mapped)
    # closing the last window would post a deferred quit that ends later tests' loops
    qapp.setQuitOnLastWindowClosed(False)
    try:
        res = CliRunner().invoke(app, ["gui", "--model", str(tiny_path), "--stride", "128"])
    finally:
        qapp.setQuitOnLastWindowClosed(True)
    assert res.exit_code == 0, res.output
    assert seen.get("live") is True  # the command starts live mapping
    assert seen["threads"]
    assert _psf_threads() == []


def _ramp_map(rows: int = 4, cols: int = 5, step: float = 0.1) -> PSFMap:
    """zernike3 map whose signed defocus grows by ``step`` waves per patch along x."""
    valid = np.ones((rows, cols), bool)
    valid[1, 2] = False
    params = np.zeros((rows, cols, 3), np.float32)
    params[..., 0] = 0.05 + step * np.arange(cols)[None, :]
    params[..., 1] = 0.2
    params[..., 2] = np.pi / 4  # at the lens axis: signed defocus = +focus
    return _grid_map(params, valid, meta={"name": "fake-net"})


def _grid_map(params: np.ndarray, valid: np.ndarray, **kw: Any) -> PSFMap:
    """zernike3 map of a 512 x 640 frame on a stride-128 patch grid."""
    rows, cols = valid.shape
    return PSFMap(
        params=params,
        valid=valid,
        valid_prob=valid.astype(np.float32),
        centers_y=64.0 + 128 * np.arange(rows),
        centers_x=64.0 + 128 * np.arange(cols),
        param_names=("focus", "cylinder", "axis"),
        units=("waves", "waves", "rad"),
        psf_model="zernike3",
        frame_shape=(512, 640),
        patch_size=128,
        stride=128,
        **kw,
    )


def test_depth_map_and_tilt_with_calibration(qtbot: Any, core: Any, tmp_path: Path) -> None:
    import math

    from psf_live.depth import DepthCalibration

    good = DepthCalibration(features="signed", coef=[0.0, 50.0], network={"name": "fake-net"})
    other = DepthCalibration(features="signed", coef=[0.0, 50.0], network={"name": "other"})
    panel = PSFLivePanel(core, model="/nonexistent/model.pt")
    qtbot.addWidget(panel)
    panel.load_calibration(good.save(tmp_path / "good.json"))
    assert panel.calib_label.text() == "good.json"
    m = _ramp_map()
    panel._latest.put(0, np.zeros((512, 640), np.uint16), m, None)
    qtbot.waitUntil(lambda: panel.maps_shown == 1, timeout=5000)
    depth = panel.depth_view.image.image
    expected = 50.0 * m.params[..., 0]
    assert np.isnan(depth[1, 2])
    assert depth[m.valid] == pytest.approx(expected[m.valid], rel=1e-4)
    # 5 um more depth per 128 px (81.92 um) along x: atan(5 / 81.92)
    truth = math.degrees(math.atan(5.0 / (128 * 0.64)))
    tx, ty = panel.last_tilt
    assert tx == pytest.approx(truth, abs=0.01) and ty == pytest.approx(0.0, abs=0.01)
    assert panel.readouts["tilt_x"].text() == f"+{truth:.2f} deg"
    assert "calibrated" in panel.readouts["tilt_x"].toolTip()
    # depth smoothing: the view shows local planes (a noisy ramp comes out closer to it)
    from psf_live.depth import smooth_depth

    noisy = _ramp_map()
    noisy.params[..., 0] += np.random.default_rng(0).normal(0, 0.02, noisy.params.shape[:2])
    panel.depth_smooth_spin.setValue(1)
    panel._latest.put(1, np.zeros((512, 640), np.uint16), noisy, None)
    qtbot.waitUntil(lambda: panel.maps_shown == 2, timeout=5000)
    shown = panel.depth_view.image.image
    raw = np.where(noisy.valid, 50.0 * noisy.params[..., 0], np.nan)
    smoothed = smooth_depth(raw, noisy.centers_y, noisy.centers_x, radius=1)
    ok = noisy.valid
    assert shown[ok] == pytest.approx(smoothed[ok], rel=1e-4, abs=1e-4)
    assert np.abs(shown - expected)[ok].mean() < 0.7 * np.abs(raw - expected)[ok].mean()
    panel.depth_smooth_spin.setValue(0)
    # a patch whose sign flipped stands out against its neighbours and is left out, as
    # the depth command leaves it out (both go through psf_live.depth.map_depth)
    flipped = _ramp_map()
    flipped.params[2, 3, 2] = 3 * np.pi / 4  # across the lens axis: the other side of focus
    panel._latest.put(2, np.zeros((512, 640), np.uint16), flipped, None)
    qtbot.waitUntil(lambda: panel.maps_shown == 3, timeout=5000)
    shown = panel.depth_view.image.image
    assert np.isnan(shown[2, 3]) and np.isfinite(shown[2, [2, 4]]).all()
    # a map from another network than the calibration's is refused, not mis-coloured
    panel.load_calibration(other.save(tmp_path / "other.json"))
    panel._latest.put(3, np.zeros((512, 640), np.uint16), _ramp_map(), None)
    qtbot.waitUntil(lambda: panel.maps_shown == 4, timeout=5000)
    assert panel.depth_view.image.image is None
    assert "other" in panel.depth_view.message.toPlainText()
    panel.load_calibration(None)
    assert panel.depth_view.message.toPlainText() == "not calibrated"
    panel.close()


def test_record_writes_a_readable_store(qtbot: Any, core: Any, tmp_path: Path) -> None:
    store = pytest.importorskip("psf_live.store")
    panel = PSFLivePanel(core, model=SharpnessMapper(), stride=128)
    qtbot.addWidget(panel)
    assert panel.record_button.isEnabled()
    panel.start_live()
    _wait_maps(qtbot, panel, 1)
    path = tmp_path / "session.zarr"
    panel.record_path.setText(str(path))
    panel.record_button.click()  # the user's way in
    assert panel.recorder is not None and panel.record_button.text() == "Stop recording"
    qtbot.waitUntil(lambda: panel.recorder.written >= 3, timeout=MAP_TIMEOUT_MS)
    panel.record_button.click()
    assert panel.recorder is None and "recorded" in panel.status.text()
    report = store.verify_store(path)
    assert report["ok"], report
    data = store.load_store(path)
    n = data["raw"].shape[0]
    assert n >= 3 and data["raw"].shape[1:] == (1024, 1024)
    assert data["raw"].dtype == np.uint16 and data["raw"][-1].std() > 0
    assert data["params"].shape == (n, 8, 8, 3) and data["valid"].shape == (n, 8, 8)
    assert data["metadata"]["model"]["name"] == "sharpness"
    # recording into an existing path is refused with a message, not a crash
    panel.record_button.click()
    assert panel.recorder is None and "exists" in panel.status.text()
    assert not panel.record_button.isChecked()
    # closing while recording stops the recorder and closes its store
    panel.record_path.setText(str(tmp_path / "second.zarr"))
    panel.record_button.click()
    rec = panel.recorder
    assert rec is not None
    qtbot.waitUntil(lambda: rec.written >= 1, timeout=MAP_TIMEOUT_MS)
    panel.close()
    assert panel.recorder is None
    assert store.verify_store(tmp_path / "second.zarr")["ok"]
    assert [t for t in threading.enumerate() if t.name == "psf-live-recorder"] == []


def test_model_switch_while_live(qtbot: Any, core: Any, tiny_path: Path, tmp_path: Path) -> None:
    from test_estimate_estimator import make_tiny

    net, card = make_tiny("gaussian1")
    g1 = models.save_model(net, card, tmp_path / "tiny_g1.pt")
    panel = PSFLivePanel(core, model=tiny_path, stride=128)
    qtbot.addWidget(panel)
    panel.start_live()
    _wait_maps(qtbot, panel, 1)
    assert panel.focus_view.quantity == "signed defocus (waves RMS)"
    panel.model_combo.setEditText(str(g1))
    panel._on_model_chosen()  # what choosing / typing a model does
    assert panel.readouts["model"].text() == "tiny-gaussian1"
    assert panel.is_live() and panel.mapper is not None
    _wait_maps(qtbot, panel, 2)
    assert panel._last_map.psf_model == "gaussian1"
    assert panel.focus_view.quantity == "width (px)"
    assert panel.focus_view.levels() == pytest.approx((0.5, 8.0))  # the model's range
    assert panel.astig_view.image.image is None
    assert "no astigmatism" in panel.astig_view.message.toPlainText()
    panel.close()
    assert _psf_threads() == []
