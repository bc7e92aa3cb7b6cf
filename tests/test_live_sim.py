"""LiveMapper and the monitor/demo commands on the simulated scope (open_core)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from psf_live.acquire._live import LiveMapper
from psf_live.estimate import Estimator, PSFMap

models = pytest.importorskip("psf_live.models")
pytest.importorskip("psf_live.nets")
acquire = pytest.importorskip("psf_live.acquire")
if not hasattr(acquire, "open_core"):
    pytest.skip("psf_live.acquire.open_core not available yet", allow_module_level=True)

runner = CliRunner()


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("psf-live")]


class Slow:
    """Wrap an estimator and make every map take at least ``delay`` seconds."""

    def __init__(self, inner: Estimator, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def map(self, frame: np.ndarray) -> PSFMap:
        t0 = time.perf_counter()
        m = self.inner.map(frame)
        time.sleep(max(0.0, self.delay - (time.perf_counter() - t0)))
        return m


def test_sim_frames_flow(core: Any, tiny_path: Path) -> None:
    est = Estimator.load(tiny_path, device="cpu", stride=128)
    seen: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
    mapper = LiveMapper(core, est, mode="all")
    mapper.events.mapReady.connect(lambda i, f, m, t: seen.append((i, f.shape, m.shape)))
    with mapper:
        core.startSequenceAcquisition(6, 0, True)
        t0 = time.perf_counter()
        while mapper.stats().frames_mapped < 6 and time.perf_counter() - t0 < 30:
            time.sleep(0.01)
    assert [s[0] for s in seen] == list(range(6))
    h, w = core.getImageHeight(), core.getImageWidth()
    assert all(s[1] == (h, w) for s in seen)
    assert all(s[2] == (h // 128, w // 128) for s in seen)
    st = mapper.stats()
    assert st.frames_in == st.frames_mapped == 6 and st.frames_dropped == 0
    assert not _threads()


def test_sim_slow_estimator_does_not_stall_camera(core: Any, tiny_path: Path) -> None:
    est = Slow(Estimator.load(tiny_path, device="cpu", stride=128), delay=0.25)
    core.setExposure(10.0)
    mapper = LiveMapper(core, est, mode="latest")
    with mapper:
        core.startContinuousSequenceAcquisition(0)
        t0 = time.perf_counter()  # the first frame renders the scene (cached afterwards)
        while mapper.stats().frames_mapped < 1 and time.perf_counter() - t0 < 30:
            time.sleep(0.01)
        s0 = mapper.stats()
        time.sleep(1.0)
        s1 = mapper.stats()
        core.stopSequenceAcquisition()
    end = mapper.stats()
    camera_rate = s1.frames_in - s0.frames_in  # frames per second
    mapped = s1.frames_mapped - s0.frames_mapped
    assert mapped <= 5  # inference is the bottleneck (4 maps/s)...
    assert camera_rate >= 3 * max(mapped, 1)  # ...but the camera keeps its own pace
    assert end.frames_dropped > 0
    assert end.frames_in == end.frames_mapped + end.frames_dropped
    assert not _threads()


def test_monitor_cli_prints_one_line_per_frame(tiny_path: Path) -> None:
    from psf_live.cli import app

    r = runner.invoke(
        app, ["monitor", "--frames", "3", "--model", str(tiny_path), "--stride", "128"]
    )
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("frame")]
    assert len(lines) == 3
    for ln in lines:
        assert "focus" in ln and "fps" in ln and "latency" in ln and "dropped" in ln
    assert "done: 3 frames reported" in r.stdout
    assert not _threads()


def test_monitor_cli_bad_config(tmp_path: Path) -> None:
    from psf_live.cli import app

    r = runner.invoke(app, ["monitor", "--config", str(tmp_path / "nope.cfg")])
    assert r.exit_code != 0
    assert r.stderr.startswith("error:") and "nope.cfg" in r.stderr
    r = runner.invoke(app, ["monitor", "--calibration", str(tmp_path / "nope.json")])
    assert r.exit_code != 0
    assert r.stderr.startswith("error:") and "nope.json" in r.stderr


def test_demo_cli_runs_records_and_says_what_is_missing(tmp_path: Path) -> None:
    from psf_live.cli import app
    from psf_live.store import verify_store

    store = tmp_path / "demo.zarr"
    args = ["demo", "--frames", "2", "--no-gui", "--no-calibrate", "--record", str(store)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "simulated microscope" in out
    assert len([ln for ln in out.splitlines() if ln.startswith("frame")]) == 2
    assert "summary:" in out and "still missing:" in out
    assert "no depth calibration loaded" in out and "depth: calibrated" not in out
    assert f"recording: {store}" in out
    report = verify_store(store)
    assert report["ok"] and report["frames"] == 5
    assert not _threads()
    # A second run refuses to overwrite the recording.
    r = runner.invoke(app, ["demo", "--frames", "1", "--no-gui", "--record", str(store)])
    assert r.exit_code != 0 and "already exists" in r.stderr


class Broken:
    """An estimator whose every map fails."""

    def map(self, frame: np.ndarray) -> PSFMap:
        raise ValueError("broken network")


def test_monitor_reports_failing_maps_instead_of_waiting(core: Any) -> None:
    from psf_live.acquire._monitor import monitor

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"failed on 3 frames in a row.*broken network"):
        monitor(core, Broken(), frames=3, echo=None, timeout=60.0)
    assert time.perf_counter() - t0 < 20.0  # not the timeout
    assert not _threads()


def _calibration_for(name: str, path: Path, tta: bool = False) -> Path:
    from psf_live.depth import DepthCalibration

    card = models.load_model(name)[1]
    net = {"name": card.name, "sha256": card.sha256, "tta": tta}
    cal = DepthCalibration(features="signed", coef=[0.0, 70.0], network=net)
    return cal.save(path)


def test_monitor_and_demo_follow_the_calibration_network(tmp_path: Path) -> None:
    """A calibration made with a non-default network drives monitor/demo with that network;
    another network or mode given with it is refused at once, in one line."""
    from psf_live.acquire._live import LiveMapper
    from psf_live.cli import app
    from psf_live.depth import CalibrationError, DepthCalibration

    cp = _calibration_for("zernike3-spectral", tmp_path / "cal.json")
    r = runner.invoke(app, ["monitor", "-n", "2", "--stride", "128", "--calibration", str(cp)])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("frame")]
    assert len(lines) == 2 and all(" deg " in ln for ln in lines)
    t0 = time.perf_counter()
    r = runner.invoke(app, ["monitor", "-n", "2", "-m", "zernike3", "--calibration", str(cp)])
    assert r.exit_code == 1 and time.perf_counter() - t0 < 20.0
    assert r.stderr.startswith("error:") and "made with network 'zernike3-spectral'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    store = tmp_path / "demo.zarr"
    r = runner.invoke(
        app, ["demo", "-n", "1", "--no-gui", "--calibration", str(cp), "--record", str(store)]
    )
    assert r.exit_code == 0, r.output
    assert "zernike3-spectral" in r.stdout and "no depth calibration" not in r.stdout
    tp = _calibration_for("zernike3-spectral", tmp_path / "tta.json", tta=True)
    est = Estimator.load("zernike3-spectral")
    with pytest.raises(CalibrationError, match="test-time augmentation"):
        LiveMapper(None, est, calibration=DepthCalibration.load(tp))
    assert not _threads()


@pytest.mark.skipif(
    "zernike3-lens45" not in models.available_models(), reason="zernike3-lens45 not shipped"
)
def test_demo_calibrates_depth_on_the_sim_first(tmp_path: Path) -> None:
    """The first-contact demo shows the third application too: it calibrates depth on the
    simulated scope (tilted grid at 3/6/10 deg) and then reports the 6 deg tilt in degrees."""
    import json
    import re

    from psf_live.cli import app
    from psf_live.store import verify_store

    store = tmp_path / "demo.zarr"
    r = runner.invoke(app, ["demo", "--frames", "3", "--no-gui", "--record", str(store)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    made = re.search(r"depth: calibrated on the simulated scope .* -> (\S+)", out)
    assert made, out
    cal = json.loads(Path(made.group(1)).read_text())
    assert cal["network"]["name"] == "zernike3-lens45" and len(cal["report"]["images"]) == 6
    assert "estimator: Estimator(model='zernike3-lens45'" in out
    frames = [ln for ln in out.splitlines() if ln.startswith("frame")]
    assert len(frames) == 3 and all(" deg " in ln for ln in frames)
    tilt = re.search(r"tilt \(depth calibration\): x ([-+0-9.]+) deg, y ([-+0-9.]+) deg", out)
    assert tilt, out
    assert 4.5 < float(tilt.group(1)) < 7.5 and abs(float(tilt.group(2))) < 1.0  # truth 6, 0
    assert "no depth calibration loaded" not in out
    assert verify_store(store)["ok"]
    assert not _threads()


def test_calibrate_sim_restores_the_scope(core: Any, tmp_path: Path) -> None:
    from psf_live.acquire import calibrate_demo_scope, calibrate_sim

    cam = core.getCameraDevice()
    names = ("TiltDeg", "TiltAxis", "SampleOffsetXUm", "SampleOffsetYUm")
    core.setProperty(cam, "SampleOffsetXUm", 17.0)
    core.setPosition(3.0)
    before = {p: core.getProperty(cam, p) for p in names}
    cal = calibrate_sim(core, Estimator.load("zernike3"), min_r2=0.0, seed=1)
    assert {p: core.getProperty(cam, p) for p in names} == before
    assert core.getPosition() == pytest.approx(3.0)
    tilts = [im["tilt_deg"] for im in cal.report["images"]]
    assert tilts == [3.0, 3.0, 6.0, 6.0, 10.0, 10.0]
    assert cal.coef[1] > 0 and cal.network["name"] == "zernike3"  # deeper -> larger focus
    said: list[str] = []
    assert calibrate_demo_scope(tmp_path / "c.json", echo=said.append, model="nope") is None
    assert said == ["depth: no calibration ('nope' is not shipped in this install)"]
    assert not (tmp_path / "c.json").exists()
