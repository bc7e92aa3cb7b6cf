"""The simulated microscope through pymmcore-plus: configs, snaps, sequences, MDA, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from psf_live.acquire import ConfigError, open_core
from psf_live.sim import SIM_CONFIGS, sim_config_path

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


def _sharpness(img: np.ndarray) -> float:
    f = img.astype(np.float64)
    return float((np.diff(f, axis=0) ** 2).mean() + (np.diff(f, axis=1) ** 2).mean())


@pytest.fixture
def core() -> Iterator[object]:
    from pymmcore_plus.experimental.unicore import UniMMCore

    c = UniMMCore()
    c.loadSystemConfiguration(str(sim_config_path()))
    c.setProperty("Camera", "SensorWidth", SIZE)
    c.setProperty("Camera", "SensorHeight", SIZE)
    c.setProperty("Camera", "NoiseSeed", 1)
    c.setExposure(1.0)
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


def test_shipped_configs_match_hardware_configs() -> None:
    for name in SIM_CONFIGS:
        shipped = sim_config_path(name).read_text()
        assert (REPO / "hardware_configs" / f"{name}.cfg").read_text() == shipped
    assert (REPO / "hardware_configs" / "MMConfig_demo.cfg").exists()


def test_snap_through_unimmcore_from_the_sim_cfg(core) -> None:
    assert core.getCameraDevice() == "Camera" and core.getFocusDevice() == "Z"
    assert core.getPixelSizeUm() == pytest.approx(0.64)
    assert float(core.getProperty("Camera", "CylinderWaves")) == pytest.approx(0.25)
    assert float(core.getProperty("Camera", "TiltDeg")) == pytest.approx(6.0)
    core.snapImage()
    img = core.getImage()
    assert img.shape == (SIZE, SIZE) and img.dtype == np.uint16
    assert 100 < img.mean() < 65535
    core.setExposure(60.0)
    t0 = time.perf_counter()
    core.snapImage()
    assert time.perf_counter() - t0 >= 0.06  # real exposure pacing
    # ten times the exposure, ten times the signal above the offset
    assert (core.getImage().mean() - 100) / (img.mean() - 100) == pytest.approx(60, rel=0.05)


def test_stage_z_changes_the_blur_as_the_physics_says(core) -> None:
    core.setProperty("Camera", "TiltDeg", 0.0)
    core.setProperty("Camera", "CylinderWaves", 0.0)
    core.setExposure(20.0)
    sharp = {}
    for z in (-30.0, 0.0, 30.0):
        core.setPosition(z)
        core.snapImage()
        sharp[z] = _sharpness(core.getImage())
    assert sharp[0.0] > 1.5 * sharp[30.0] and sharp[0.0] > 1.5 * sharp[-30.0]
    assert sharp[30.0] == pytest.approx(sharp[-30.0], rel=0.15)  # noise-limited symmetry


def test_sequence_acquisition_delivers_n_frames(core) -> None:
    n = 12
    core.startSequenceAcquisition(n, 0, True)
    got: list[np.ndarray] = []
    deadline = time.perf_counter() + 20
    while len(got) < n and time.perf_counter() < deadline:
        if core.getRemainingImageCount():
            got.append(core.popNextImage())
        else:
            time.sleep(0.002)
    assert len(got) == n
    assert all(f.shape == (SIZE, SIZE) and f.dtype == np.uint16 for f in got)
    assert not np.array_equal(got[0], got[1])  # fresh noise per frame


def test_continuous_sequence_acquisition(core) -> None:
    seen: list[str] = []
    core.events.continuousSequenceAcquisitionStarted.connect(lambda *a: seen.append("start"))
    core.events.sequenceAcquisitionStopped.connect(lambda *a: seen.append("stop"))
    core.startContinuousSequenceAcquisition(0)
    deadline = time.perf_counter() + 20
    count = 0
    while count < 5 and time.perf_counter() < deadline:
        if core.getRemainingImageCount():
            core.popNextImage()
            count += 1
        else:
            time.sleep(0.002)
    core.stopSequenceAcquisition()
    assert count == 5 and not core.isSequenceRunning()
    assert seen == ["start", "stop"]


def test_mda_z_stack(core) -> None:
    import useq

    core.setProperty("Camera", "TiltDeg", 0.0)
    frames: list[tuple[float, float]] = []
    core.mda.events.frameReady.connect(
        lambda img, ev, meta: frames.append((ev.z_pos, _sharpness(img)))
    )
    core.setExposure(20.0)
    core.mda.run(useq.MDASequence(z_plan={"range": 60, "step": 30}))
    assert [z for z, _ in frames] == [-30.0, 0.0, 30.0]
    sharp = [s for _, s in frames]
    assert sharp[1] > sharp[0] and sharp[1] > sharp[2]


def test_fail_at_frame(core) -> None:
    core.setProperty("Camera", "FailAtFrame", 2)
    core.snapImage()
    core.snapImage()
    with pytest.raises(RuntimeError, match="simulated camera failure at frame 2"):
        core.snapImage()
    assert "frame 2" in core.getProperty("Camera", "LastError")
    core.setProperty("Camera", "FailAtFrame", -1)
    core.snapImage()


def test_open_core_default_and_errors(tmp_path: Path) -> None:
    from pymmcore_plus.experimental.unicore import UniMMCore

    c = open_core()
    assert isinstance(c, UniMMCore) and float(c.getProperty("Camera", "CylinderWaves")) == 0.25
    assert not c.getAutoShutter() and c.getShutterOpen()
    c.unloadAllDevices()
    c = open_core("psf_live_sim_nolens.cfg")
    assert float(c.getProperty("Camera", "CylinderWaves")) == 0.0
    c.unloadAllDevices()

    missing = tmp_path / "missing.cfg"
    with pytest.raises(ConfigError, match=r"missing\.cfg: configuration file not found"):
        open_core(missing)
    bad = tmp_path / "bad.cfg"
    bad.write_text("Device,Camera\nhello world\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg: line 2: unknown command") as e:
        open_core(bad)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    nodev = tmp_path / "nodev.cfg"
    nodev.write_text("#py pyDevice,Camera,psf_live.sim,NoSuchCamera\n")
    with pytest.raises(ConfigError, match=r"nodev\.cfg: line 1: .*NoSuchCamera"):
        open_core(nodev)
    badprop = tmp_path / "badprop.cfg"
    text = sim_config_path().read_text().replace("TiltDeg,6.0", "TiltDeg,banana")
    badprop.write_text(text)
    with pytest.raises(ConfigError, match=r"badprop\.cfg: line \d+: .*TiltDeg") as e:
        open_core(badprop)
    assert "\n" not in str(e.value)


def test_simulate_cli(tmp_path: Path) -> None:
    import tifffile

    from psf_live.cli import app

    out = tmp_path / "frame.tif"
    args = ["simulate", "--sample", "grid", "--tilt-deg", "6", "--size", "96", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    frame = tifffile.imread(out)
    depth = tifffile.imread(tmp_path / "frame_depth.tif")
    assert frame.dtype == np.uint16 and frame.shape == (96, 96)
    assert depth.dtype == np.float32 and depth.shape == (96, 96)
    assert depth[0, -1] == pytest.approx(0.64 * 47.5 * np.tan(np.radians(6.0)), rel=1e-4)
    with tifffile.TiffFile(out) as tf:
        xres = tf.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.64, rel=1e-3)
    diag = tmp_path / "diag.tif"
    res = CliRunner().invoke(app, ["simulate", "--axis", "xy", "--size", "32", "-o", str(diag)])
    assert res.exit_code == 0, res.output
    dd = tifffile.imread(tmp_path / "diag_depth.tif")
    assert dd[-1, -1] > 0 > dd[0, 0] and dd[0, -1] == pytest.approx(0.0, abs=1e-4)
    res = CliRunner().invoke(
        app, ["simulate", "--axis", "z", "--size", "32", "-o", str(tmp_path / "f.tif")]
    )
    assert res.exit_code == 1 and "axis must be one of x, y, xy" in res.output


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_fail_at_frame_stops_a_sequence_after_k_frames(core) -> None:
    core.setProperty("Camera", "FailAtFrame", 3)
    core.startSequenceAcquisition(10, 0, True)
    deadline = time.perf_counter() + 20
    while core.isSequenceRunning() and time.perf_counter() < deadline:
        time.sleep(0.01)
    got = 0
    while core.getRemainingImageCount():
        core.popNextImage()
        got += 1
    assert got == 3  # frames 0..2 delivered, frame 3 failed
    assert core.getProperty("Camera", "LastError") == "simulated camera failure at frame 3"
