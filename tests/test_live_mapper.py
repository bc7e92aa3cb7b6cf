"""LiveMapper: frames flow from a pymmcore-plus core through the queue to mapReady."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore

from psf_live.acquire._live import LiveMapper, MapTimings
from psf_live.estimate import PSFMap, patch_centers, patch_starts


class PacedCamera(SimpleCameraDevice):
    """A small uint16 camera that paces itself by its exposure (like the sim scope)."""

    _exposure = 5.0

    def __init__(self) -> None:
        super().__init__()
        self._n = 0

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        self._exposure = exposure

    def sensor_shape(self) -> tuple[int, int]:
        return (256, 256)

    def dtype(self) -> Any:
        return np.uint16

    def snap(self, buffer: np.ndarray) -> Mapping:
        time.sleep(self._exposure / 1000)
        buffer[:] = self._n % 60000
        self._n += 1
        return {}


class FakeEstimator:
    """map(frame) -> constant PSFMap whose focus equals the frame's first pixel / 1000."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.busy = threading.Event()

    def map(self, frame: np.ndarray) -> PSFMap:
        self.busy.set()
        time.sleep(self.delay)
        self.calls += 1
        sy = patch_starts(frame.shape[0], 128, 64)
        sx = patch_starts(frame.shape[1], 128, 64)
        p = np.zeros((sy.size, sx.size, 3), np.float32)
        p[..., 0] = float(frame.flat[0]) / 1000
        p[..., 2] = np.pi / 4
        self.busy.clear()
        return PSFMap(
            params=p,
            valid=np.ones(p.shape[:2], bool),
            valid_prob=np.ones(p.shape[:2], np.float32),
            centers_y=patch_centers(sy),
            centers_x=patch_centers(sx),
            param_names=("focus", "cylinder", "axis"),
            units=("waves", "waves", "rad"),
            psf_model="zernike3",
            frame_shape=frame.shape,
            patch_size=128,
            stride=64,
            timings={"transfer": 0.0, "inference": self.delay, "post": 0.0},
        )


@pytest.fixture
def core() -> Iterator[UniMMCore]:
    c = UniMMCore()
    c.loadPyDevice("Cam", PacedCamera())
    c.initializeDevice("Cam")
    c.setCameraDevice("Cam")
    c.setExposure(5.0)
    c.setAutoShutter(False)
    yield c
    if c.isSequenceRunning():
        c.stopSequenceAcquisition()
    c.unloadAllDevices()


def _mapper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("psf-live")]


def _wait(cond: Any, timeout: float = 10.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.005)


def test_frames_flow_and_stats_add_up(core: UniMMCore) -> None:
    got: list[tuple[int, float, MapTimings]] = []
    mapper = LiveMapper(core, FakeEstimator(), mode="all")
    mapper.events.mapReady.connect(
        lambda i, frame, m, t: got.append((i, float(m.summary.focus), t))
    )
    with mapper:
        core.startSequenceAcquisition(20, 0, True)
        _wait(lambda: mapper.stats().frames_mapped >= 20)
    assert not _mapper_threads()
    s = mapper.stats()
    assert s.frames_in == 20 and s.frames_mapped == 20
    assert s.frames_dropped == 0 and s.frames_failed == 0
    assert [g[0] for g in got] == list(range(20))
    # frame n has every pixel == n, so focus (first pixel / 1000) identifies the frame
    np.testing.assert_allclose([g[1] for g in got], np.arange(20) / 1000, atol=1e-6)
    t = got[-1][2]
    assert t.latency >= t.wait + t.inference - 1e-6
    assert s.latency_median > 0 and s.map_rate > 0


def test_slow_estimator_drops_frames_not_camera(core: UniMMCore) -> None:
    est = FakeEstimator(delay=0.1)
    mapper = LiveMapper(core, est, mode="latest")
    with mapper:
        core.startContinuousSequenceAcquisition(0)
        time.sleep(1.0)
        core.stopSequenceAcquisition()
        s = mapper.stats()
    s_end = mapper.stats()
    assert not _mapper_threads()
    # camera at ~5 ms/frame keeps its pace while maps take 100 ms (<= 11 maps in 1 s)
    assert s_end.frames_mapped <= 12
    assert s.frames_in >= 3 * s_end.frames_mapped
    assert s_end.frames_mapped + s_end.frames_dropped == s_end.frames_in
    assert s_end.frames_dropped >= s.frames_in - 12


def test_stop_finishes_frame_in_progress(core: UniMMCore) -> None:
    est = FakeEstimator(delay=0.3)
    done: list[int] = []
    mapper = LiveMapper(None, est, mode="latest")
    mapper.events.mapReady.connect(lambda i, *_: done.append(i))
    mapper.start()
    mapper.submit(np.zeros((256, 256), np.uint16))
    assert est.busy.wait(2.0)
    mapper.submit(np.ones((256, 256), np.uint16))  # queued, dropped at stop
    mapper.stop()
    assert done == [0]
    s = mapper.stats()
    assert (s.frames_in, s.frames_mapped, s.frames_dropped) == (2, 1, 1)
    assert not _mapper_threads()
    with pytest.raises(RuntimeError, match="not running"):
        mapper.submit(np.zeros((256, 256)))


def test_never_drop_mode_drains_on_stop() -> None:
    est = FakeEstimator(delay=0.02)
    mapper = LiveMapper(None, est, mode="all", maxsize=2)
    mapper.start()
    for k in range(8):  # blocks while the queue is full: back-pressure, nothing dropped
        mapper.submit(np.full((128, 128), k, np.uint16))
    mapper.stop()
    s = mapper.stats()
    assert (s.frames_in, s.frames_mapped, s.frames_dropped) == (8, 8, 0)


def test_mda_frames_are_mapped(core: UniMMCore) -> None:
    from useq import MDASequence

    got: list[int] = []
    mapper = LiveMapper(core, FakeEstimator(), mode="all")
    mapper.events.mapReady.connect(lambda i, *_: got.append(i))
    with mapper:
        core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 5}))
        _wait(lambda: len(got) >= 5)
    assert got == [0, 1, 2, 3, 4]
    assert mapper.stats().frames_in == 5


def test_failures_are_reported() -> None:
    class Broken(FakeEstimator):
        def map(self, frame: np.ndarray) -> PSFMap:
            raise ValueError("bad frame")

    errors: list[tuple[int, Exception]] = []
    mapper = LiveMapper(None, Broken(), mode="all")
    mapper.events.mapFailed.connect(lambda i, e: errors.append((i, e)))
    with mapper:
        mapper.submit(np.zeros((128, 128)))
    assert len(errors) == 1 and "bad frame" in str(errors[0][1])
    assert mapper.stats().frames_failed == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        LiveMapper(None, FakeEstimator(), mode="sometimes")
    with pytest.raises(ValueError, match="sources"):
        LiveMapper(None, FakeEstimator(), sources=("telepathy",))
