"""Recording sessions: every frame written, mapped (and deconvolved), counts agree."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from psf_live.cli import app
from psf_live.store import SessionWriter, load_store, verify_store

runner = CliRunner()


@pytest.fixture(scope="module")
def estimator():  # type: ignore[no-untyped-def]
    import torch

    from psf_live.estimate import Estimator

    torch.set_num_threads(1)
    return Estimator.load("zernike3")


@pytest.fixture(scope="module")
def sim_frame() -> np.ndarray:
    from psf_live.acquire import open_core

    core = open_core(None)
    cam = core.getCameraDevice()
    core.setProperty(cam, "SensorWidth", 256)
    core.setProperty(cam, "SensorHeight", 256)
    core.snapImage()
    img = np.asarray(core.getImage()).astype(np.float32)
    core.unloadAllDevices()
    return img


def _last(out: str) -> str:
    return [ln for ln in out.strip().splitlines() if ln.strip()][-1]


def test_record_cli_counts_agree_and_verify(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    r = runner.invoke(app, ["record", "-o", str(out), "-n", "4", "--sim-size", "256"])
    assert r.exit_code == 0, r.output
    assert "frames acquired 4, written 4, mapped 4" in r.output
    data = load_store(out)
    assert data["raw"].shape == (4, 256, 256) and data["raw"].dtype == np.uint16
    assert data["params"].shape[:3] == (4, 3, 3) and data["valid"].shape == (4, 3, 3)
    meta = data["metadata"]
    assert meta["acquisition"]["image_size"] == [256, 256]
    assert meta["model"] and meta["psf_model"] == "zernike3" and "closed" in meta
    # the raw frames differ (noise): four distinct frames, not one written four times
    assert len({data["raw"][i].tobytes() for i in range(4)}) == 4
    v = runner.invoke(app, ["verify", str(out)])
    assert v.exit_code == 0 and _last(v.output) == "frames: 4"


def test_record_deconvolve_zstack(tmp_path: Path) -> None:
    out = tmp_path / "d.zarr"
    r = runner.invoke(
        app,
        [
            "record",
            "-o",
            str(out),
            "-n",
            "1",
            "--z-range",
            "-2",
            "2",
            "--z-step",
            "2",
            "--deconvolve",
            "--sim-size",
            "256",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "written 3, mapped 3, deconvolved 3" in r.output
    rep = verify_store(out)
    assert rep["ok"] and rep["frames"] == 3 and rep["deconvolved"] == 3
    d = load_store(out)["deconvolved"]
    assert np.isfinite(d).all() and d.std() > 0


# the sequence thread of pymmcore-plus reports the camera error as an unhandled exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_camera_failure_at_frame_k(tmp_path: Path) -> None:
    out = tmp_path / "f.zarr"
    r = runner.invoke(
        app, ["record", "-o", str(out), "-n", "6", "--sim-size", "256", "--sim-fail-at", "3"]
    )
    assert r.exit_code == 1
    assert "camera" in _last(r.output) and "frame 3" in _last(r.output)
    rep = verify_store(out)
    assert rep["ok"] and rep["frames"] == 3


def test_output_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = runner.invoke(app, ["record", "-o", str(ro / "s.zarr"), "-n", "1"])
        import os

        if os.geteuid() != 0:
            assert r.exit_code == 1 and "not writable" in r.output
        r2 = runner.invoke(app, ["record", "-o", str(tmp_path / "no" / "s.zarr"), "-n", "1"])
        assert r2.exit_code == 1 and "does not exist" in r2.output
    finally:
        ro.chmod(0o700)


def test_disk_full_is_reported_and_store_marked(
    tmp_path: Path,
    estimator,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from psf_live.record import RecordSession

    orig = SessionWriter.write
    calls = {"raw": 0}

    def write(self, name, index, data):  # type: ignore[no-untyped-def]
        if name == "raw":
            calls["raw"] += 1
            if calls["raw"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, name, index, data)

    monkeypatch.setattr(SessionWriter, "write", write)
    sess = RecordSession(tmp_path / "full.zarr", estimator)
    rng = np.random.default_rng(0)
    for _ in range(5):
        sess.submit(rng.integers(0, 4000, (256, 256), dtype=np.uint16))
    sess.finish_acquisition()
    res = sess.close()
    assert res.error is not None and "No space left" in res.error and "full.zarr" in res.error
    assert res.written == 2
    rep = verify_store(tmp_path / "full.zarr")
    assert rep["ok"] and rep["frames"] == 2  # the counters mark exactly what is complete
    assert "No space left" in rep["metadata"]["incomplete"]  # and the store says why


@pytest.mark.parametrize("kind", ["zero", "saturated", "nan", "inf"])
def test_bad_frames_give_invalid_maps_not_dead_workers(
    tmp_path: Path,
    estimator,
    sim_frame,
    kind: str,  # type: ignore[no-untyped-def]
) -> None:
    from psf_live.record import RecordSession

    good = sim_frame
    bad = {
        "zero": np.zeros((256, 256), np.float32),
        "saturated": np.full((256, 256), 65535, np.float32),
        "nan": np.full((256, 256), np.nan, np.float32),
        "inf": np.where(good > 2000, np.inf, good).astype(np.float32),
    }[kind]
    sess = RecordSession(tmp_path / f"{kind}.zarr", estimator, deconvolve=True, iterations=2)
    for f in (good, bad, good):
        sess.submit(f)
    sess.finish_acquisition()
    sess.finish_deconvolution(wait=True)
    res = sess.close()
    assert res.error is None, res.error
    assert res.written == res.mapped == res.deconvolved == 3
    d = load_store(tmp_path / f"{kind}.zarr")
    assert d["valid"][0].any() and d["valid"][2].any()  # the worker went on after the bad one
    if kind in ("zero", "nan", "saturated"):
        assert not d["valid"][1].any()


def test_frame_smaller_than_patch_is_a_clear_error(
    tmp_path: Path,
    estimator,  # type: ignore[no-untyped-def]
) -> None:
    from psf_live.record import RecordSession

    sess = RecordSession(tmp_path / "small.zarr", estimator)
    sess.submit(np.ones((64, 64), np.uint16))
    sess.finish_acquisition()
    res = sess.close()
    assert res.written == 1 and (res.error is not None or res.map_failed == 1)
    assert sess.mapper.stats().frames_in == 1  # the mapper took it and did not die


_FIX = [HealthCheck.function_scoped_fixture]


@settings(max_examples=8, deadline=None, suppress_health_check=_FIX)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64"]),
    n=st.integers(1, 4),
)
def test_writer_roundtrip_property(tmp_path: Path, h: int, w: int, dtype: str, n: int) -> None:
    import uuid

    p = tmp_path / f"{uuid.uuid4().hex}.zarr"
    rng = np.random.default_rng(h * w)
    frames = (rng.random((n, h, w)) * 200).astype(dtype)
    with SessionWriter(p, grow=3) as wr:
        for f in frames:
            wr.append(f)
    rep = verify_store(p)
    assert rep["frames"] == n
    got = load_store(p)["raw"]
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, frames)


_FIX = [HealthCheck.function_scoped_fixture]


@settings(max_examples=6, deadline=None, suppress_health_check=_FIX)
@given(
    h=st.integers(100, 300),
    w=st.integers(100, 300),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
)
def test_mapper_shapes_dtypes_property(
    estimator,
    h: int,
    w: int,
    dtype: str,  # type: ignore[no-untyped-def]
) -> None:
    f = (np.random.default_rng(0).random((h, w)) * 200 + 10).astype(dtype)
    if h < 128 or w < 128:
        with pytest.raises(ValueError):
            estimator.map(f)
        return
    m = estimator.map(f)
    assert m.params.shape[:2] == m.valid.shape and np.isfinite(m.params[m.valid]).all()


def test_headless_core_records_while_a_qt_app_exists(
    qapp: object, tmp_path: Path, estimator
) -> None:  # type: ignore[no-untyped-def]
    """With a QApplication alive, pymmcore-plus would pick Qt signals; a blocking
    recording would then never receive a frame. ``open_core(headless=True)`` keeps
    psygnal delivery, so the recording completes."""
    from psf_live.acquire import open_core
    from psf_live.record import record

    core = open_core(None, headless=True)
    try:
        assert "qsignals" not in type(core.mda.events).__module__
        cam = core.getCameraDevice()
        core.setProperty(cam, "SensorWidth", 256)
        core.setProperty(cam, "SensorHeight", 256)
        res = record(core, tmp_path / "q.zarr", estimator, frames=3)
    finally:
        core.unloadAllDevices()
    assert res.error is None
    assert res.acquired == res.written == res.mapped == 3


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 640 kB filesystem (tmpfs), where the machine lets us mount one."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_on_a_small_tmpfs(  # type: ignore[no-untyped-def]
    small_tmpfs: Path, estimator
) -> None:
    """ENOSPC from a real filesystem: a one-line error naming the store, the counted
    frames are complete and readable, nothing half-written is counted."""
    from psf_live.record import RecordSession

    path = small_tmpfs / "full.zarr"
    sess = RecordSession(path, estimator)
    rng = np.random.default_rng(1)
    for _ in range(12):  # ~120 kB per compressed noise frame: the disk fills mid-way
        sess.submit(rng.integers(0, 60000, (256, 256), dtype=np.uint16))
        if sess.failed:
            break
    sess.finish_acquisition()
    res = sess.close()
    assert res.error is not None and "No space left" in res.error and "full.zarr" in res.error
    assert "\n" not in res.error and 0 < res.written < 12
    rep = verify_store(path)
    assert rep["ok"], rep
    assert rep["frames"] == res.written
    raw = np.asarray(load_store(path)["raw"])
    assert raw.shape[0] == res.written and raw.dtype == np.uint16


@pytest.fixture
def headless_core():  # type: ignore[no-untyped-def]
    """The simulated scope with psygnal events (a QApplication may exist in the run)."""
    from psf_live.acquire import open_core

    c = open_core(None, headless=True)
    yield c
    c.unloadAllDevices()


@pytest.mark.parametrize("streaming", [False, True])
def test_record_paces_the_camera_unless_asked_to_stream(
    tmp_path: Path,
    estimator,
    headless_core,
    streaming: bool,  # type: ignore[no-untyped-def]
) -> None:
    """By default every frame is its own acquisition (back-pressure reaches the camera);
    --sequence lets it stream. The engine's own setting is restored afterwards."""
    from psf_live.record import record

    core = headless_core
    cam = core.getCameraDevice()
    core.setProperty(cam, "SensorWidth", 256)
    core.setProperty(cam, "SensorHeight", 256)
    seen: list[bool] = []
    core.mda.events.frameReady.connect(lambda *_: seen.append(bool(core.isSequenceRunning())))
    before = core.mda.engine.use_hardware_sequencing
    res = record(core, tmp_path / "p.zarr", estimator, frames=4, hardware_sequencing=streaming)
    assert res.error is None and res.acquired == res.written == 4
    assert len(seen) == 4 and any(seen) is streaming
    assert core.mda.engine.use_hardware_sequencing == before


def test_buffer_overflow_is_named_not_blamed_on_the_camera(core) -> None:  # type: ignore[no-untyped-def]
    from psf_live.record._session import _camera_error

    cam = core.getCameraDevice()
    assert "failed at frame 7" in _camera_error(core, cam, 7)
    core.isBufferOverflowed = lambda: True
    msg = _camera_error(core, cam, 7)
    assert "sequence buffer overflowed after frame 7" in msg and "--sequence" in msg
