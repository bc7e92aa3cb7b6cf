"""Record a pymmcore-plus MDA to one OME-Zarr session store without losing a frame.

Threads::

    MDA thread --frameReady--> raw queue (bounded, blocking put = back-pressure)
    writer thread: raw queue -> store "raw" -> index queue
    feeder thread: reads the frame back -> LiveMapper.submit (mode "all", blocking)
    mapper worker (LiveMapper): map -> store "params", "valid" (+ "depth")
    deconvolution worker (optional): reads the raw frame back from the store,
        TV-RL with its map -> store "deconvolved" (may lag; only indices queue up)

Memory bound: at most ``queue_frames`` raw frames wait for the writer and at most
``map_queue`` more wait for the mapper (LiveMapper queue), so the buffered raw data is
``(queue_frames + map_queue + 2) * frame bytes``. The mapper and the deconvolver may
lag behind the disk: their backlogs hold only frame indices (and PSF maps, a few kB
each); they read the raw frames back from the store. When the disk or the mapper is slower than
the camera the MDA thread blocks in ``frameReady`` (back-pressure), it never drops.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RecordResult", "RecordSession", "record"]

_STOP = object()


@dataclass
class RecordResult:
    """Counters of one recording.

    Attributes
    ----------
    acquired, written, mapped, map_failed, deconvolved : int
        Frames received from the camera, raw frames counted in the store, frames
        with a map in the store (a frame whose mapping failed gets an all-invalid
        map and is counted in ``map_failed`` too), deconvolved frames in the store.
    expected : int
        Frames the sequence asked for.
    error : str or None
        One-line reason the recording stopped early (camera, disk, interrupt).
    interrupted : bool
        Stopped by the user (Ctrl-C).
    elapsed_s, write_rate : float
        Seconds from start to all raw frames written; raw frames per second to disk.
    max_queue : int
        Largest raw-queue occupancy seen (frames).
    memory_bound_mb : float
        Worst-case raw frame buffering in MB.
    """

    path: str
    expected: int = 0
    acquired: int = 0
    written: int = 0
    mapped: int = 0
    map_failed: int = 0
    deconvolved: int = 0
    error: str | None = None
    interrupted: bool = False
    elapsed_s: float = 0.0
    write_rate: float = 0.0
    map_elapsed_s: float = 0.0
    deconv_elapsed_s: float = 0.0
    max_queue: int = 0
    memory_bound_mb: float = 0.0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as a dictionary."""
        return asdict(self)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


class RecordSession:
    """Own the store and the worker threads of one recording.

    Parameters
    ----------
    path : str or Path
        Output store (``*.zarr``); must not exist.
    estimator : Estimator
        Maps every frame (never-drop :class:`~psf_live.acquire.LiveMapper`).
    calibration : DepthCalibration, optional
        Depth map (um) of every frame is stored too.
    deconvolve : bool
        Run the TV-RL worker.
    metadata : dict, optional
        Extra metadata (acquisition settings, optics).
    queue_frames : int
        Raw frames that may wait for the disk.
    iterations, lambda_tv : int, float
        TV-RL settings.
    """

    def __init__(
        self,
        path: str | Path,
        estimator: Any,
        *,
        calibration: Any = None,
        deconvolve: bool = False,
        metadata: dict[str, Any] | None = None,
        pixel_size_um: float | None = None,
        frame_interval_s: float | None = None,
        queue_frames: int = 16,
        map_queue: int = 8,
        iterations: int = 10,
        lambda_tv: float = 0.002,
    ) -> None:
        from psf_live.acquire import LiveMapper
        from psf_live.store import SessionWriter

        self.path = Path(path)
        self.estimator = estimator
        self.calibration = calibration
        self.deconvolve = deconvolve
        self.iterations = iterations
        self.lambda_tv = lambda_tv
        meta: dict[str, Any] = {
            "source": "psf-live record",
            "model": dict(getattr(estimator, "meta", {}) or {}),
            "stride": getattr(estimator, "stride", None),
            **(metadata or {}),
        }
        if calibration is not None and hasattr(calibration, "to_dict"):
            meta["depth_calibration"] = calibration.to_dict()
        if deconvolve:
            meta["deconvolution"] = {
                "iterations": iterations,
                "lambda_tv": lambda_tv,
                "method": "TV-RL (Dey 2006)",
            }
        if self.path.exists():
            raise FileExistsError(f"{self.path}: already exists")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(f"{self.path}: directory {parent} does not exist")
        self.writer = SessionWriter(
            self.path, meta, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s
        )
        self.result = RecordResult(path=str(self.path))
        self.queue_frames = queue_frames
        self._raw_q: queue.Queue[Any] = queue.Queue(queue_frames)
        self._dec_q: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()  # SessionWriter is not thread-safe
        self._maps: dict[int, Any] = {}
        self._grid: tuple[int, int, int] | None = None
        self._frame_bytes = 0
        self._map_queue = map_queue
        self._failed = threading.Event()
        self._t0 = time.perf_counter()
        self._t_written = 0.0
        self.mapper = LiveMapper(None, estimator, mode="all", maxsize=map_queue, calibration=None)
        self.mapper.events.mapReady.connect(self._on_map)
        self.mapper.events.mapFailed.connect(self._on_map_failed)
        self.mapper.start()
        self._map_q: queue.Queue[Any] = queue.Queue()  # frame indices only
        self._writer_thread = threading.Thread(target=self._write_loop, name="record-writer")
        self._writer_thread.start()
        self._feed_thread = threading.Thread(target=self._feed_loop, name="record-map-feed")
        self._feed_thread.start()
        self._dec_thread: threading.Thread | None = None
        self._dec_stop = threading.Event()
        if deconvolve:
            self._dec_thread = threading.Thread(target=self._deconv_loop, name="record-deconv")
            self._dec_thread.start()

    # -- producer side (camera / MDA thread) ------------------------------------------
    def submit(self, frame: np.ndarray) -> None:
        """Queue one raw frame (blocks while the queue is full: back-pressure)."""
        if self._failed.is_set():
            return
        a = np.array(frame, copy=True)
        if not self._frame_bytes:
            self._frame_bytes = a.nbytes
            self.result.memory_bound_mb = (
                (self.queue_frames + self._map_queue + 2) * a.nbytes / 1e6
            )
        self.result.acquired += 1
        while not self._failed.is_set():
            try:
                self._raw_q.put(a, timeout=0.2)
                break
            except queue.Full:
                continue
        self.result.max_queue = max(self.result.max_queue, self._raw_q.qsize())

    @property
    def failed(self) -> bool:
        """The writer hit an error (disk full, not writable): stop the acquisition."""
        return self._failed.is_set()

    def _fail(self, msg: str) -> None:
        if self.result.error is None:
            self.result.error = msg
        self._failed.set()

    def _acquisition_error(self, msg: str) -> None:
        """Note why the camera stopped early; what was acquired is still written."""
        if self.result.error is None:
            self.result.error = msg

    # -- writer ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        t = 0
        while True:
            item = self._raw_q.get()
            if item is _STOP:
                break
            if self._failed.is_set():
                continue
            try:
                with self._lock:
                    self.writer.write("raw", t, item)
                self.result.written = t + 1
                self._t_written = time.perf_counter()
            except Exception as exc:
                self._fail(f"{self.path}: writing frame {t} failed: {_one_line(exc)}")
                continue
            self._map_q.put(t)  # the mapper may lag: it reads the frame back from disk
            t += 1
        self._map_q.put(_STOP)

    def _feed_loop(self) -> None:
        while True:
            t = self._map_q.get()
            if t is _STOP:
                break
            with self._lock:
                frame = np.asarray(self.writer._arrays["raw"][t])
            self.mapper.submit(frame, copy=False)  # blocks while the mapper is busy

    # -- mapper callbacks (LiveMapper worker thread) ----------------------------------
    def _on_map(self, index: int, frame: np.ndarray, m: Any, timings: Any) -> None:
        depth = None
        if self.calibration is not None:
            try:
                from psf_live.depth import map_depth

                depth = map_depth(m, self.calibration, full=False).grid
            except Exception:
                depth = np.full(m.valid.shape, np.nan, np.float32)
        params = np.asarray(m.params, np.float32)
        self._grid = (*params.shape,)
        self._store_map(index, params, np.asarray(m.valid, bool), depth, m)

    def _on_map_failed(self, index: int, exc: BaseException) -> None:
        # Defined behaviour for a frame that cannot be mapped (all NaN, too small...):
        # an all-invalid map, so counts stay aligned; the worker thread lives on.
        self.result.map_failed += 1
        if self._grid is None:
            try:
                shape = self.estimator._grid(self._last_shape, self.estimator.stride)
                rows, cols = len(shape[0]), len(shape[1])
                n = len(self.estimator.param_names)
                self._grid = (rows, cols, n)
            except Exception:
                self._fail(f"frame {index} cannot be mapped: {_one_line(exc)}")
                return
        params = np.full(self._grid, np.nan, np.float32)
        valid = np.zeros(self._grid[:2], bool)
        depth = np.full(self._grid[:2], np.nan, np.float32) if self.calibration else None
        self._store_map(index, params, valid, depth, None)

    _last_shape: tuple[int, int] = (0, 0)

    def _store_map(
        self, index: int, params: np.ndarray, valid: np.ndarray, depth: Any, m: Any
    ) -> None:
        try:
            with self._lock:
                if m is not None and "psf_model" not in self.writer.metadata:
                    self.writer.update_metadata(
                        psf_model=m.psf_model,
                        param_names=list(m.param_names),
                        centers_y=np.asarray(m.centers_y).tolist(),
                        centers_x=np.asarray(m.centers_x).tolist(),
                        optics=(m.meta or {}).get("optics", {}),
                    )
                self.writer.write("params", index, params)
                self.writer.write("valid", index, valid)
                if depth is not None:
                    self.writer.write("depth", index, depth)
            self.result.mapped += 1
        except Exception as exc:
            self._fail(f"{self.path}: writing the map of frame {index} failed: {_one_line(exc)}")
            return
        if self.deconvolve:
            self._maps[index] = m
            self._dec_q.put(index)

    # -- deconvolution worker ------------------------------------------------------------
    def _deconv_loop(self) -> None:
        from psf_live.deconv import richardson_lucy_tv

        while not self._dec_stop.is_set():
            try:
                index = self._dec_q.get(timeout=0.1)
            except queue.Empty:
                continue
            if index is _STOP:
                break
            m = self._maps.pop(index, None)
            try:
                with self._lock:
                    raw = np.asarray(self.writer._arrays["raw"][index], np.float32)
                if m is None or not np.isfinite(raw).all():
                    d = np.full(raw.shape, np.nan, np.float32)  # no valid map: marked NaN
                else:
                    d = np.asarray(
                        richardson_lucy_tv(
                            raw, m, num_iter=self.iterations, lambda_tv=self.lambda_tv
                        ),
                        np.float32,
                    )
                with self._lock:
                    self.writer.write("deconvolved", index, d)
                self.result.deconvolved += 1
                self.result.deconv_elapsed_s = time.perf_counter() - self._t0
            except Exception as exc:
                self._fail(f"{self.path}: deconvolving frame {index} failed: {_one_line(exc)}")

    def deconv_backlog(self) -> int:
        """Frames mapped but not yet deconvolved."""
        return self.result.mapped - self.result.deconvolved

    # -- shutdown ----------------------------------------------------------------------
    def finish_acquisition(self) -> None:
        """All frames are in: write and map what is queued (blocks)."""
        self._raw_q.put(_STOP)
        self._writer_thread.join()
        if self._t_written:
            self.result.elapsed_s = self._t_written - self._t0
            self.result.write_rate = self.result.written / max(self.result.elapsed_s, 1e-9)
        self._feed_thread.join()
        self.mapper.stop(drain=True, timeout=3600.0)
        self.result.map_elapsed_s = time.perf_counter() - self._t0

    def finish_deconvolution(self, wait: bool = True) -> None:
        """Wait for (``wait``) or abandon the deconvolution backlog; stop the worker."""
        if self._dec_thread is None:
            return
        if wait:
            self._dec_q.put(_STOP)
        else:
            self._dec_stop.set()
        self._dec_thread.join()
        self._dec_thread = None

    def close(self) -> RecordResult:
        """Close the store (trim, final counters) and return the counters."""
        self.finish_deconvolution(wait=False)
        with self._lock:
            if self.result.error:  # the store says why it is short
                with contextlib.suppress(Exception):
                    self.writer.update_metadata(
                        incomplete=self.result.error, interrupted=self.result.interrupted
                    )
            self.writer.close()
        fr = self.writer.frames
        self.result.written = fr.get("raw", 0)
        self.result.mapped = min(fr.get("params", 0), fr.get("valid", 0))
        self.result.deconvolved = fr.get("deconvolved", 0)
        return self.result


def _sequence(
    frames: int | None,
    interval_ms: float,
    z_range: tuple[float, float] | None,
    z_step: float | None,
    positions: list[tuple[float, float]] | None,
    duration_s: float | None,
) -> Any:
    import useq

    kw: dict[str, Any] = {}
    if duration_s is not None:
        kw["time_plan"] = {"interval": interval_ms / 1000.0, "duration": duration_s}
    else:
        kw["time_plan"] = {"interval": interval_ms / 1000.0, "loops": int(frames or 1)}
    if z_range is not None:
        a, b = z_range
        kw["z_plan"] = {"top": max(a, b), "bottom": min(a, b), "step": z_step or 1.0}
    if positions:
        kw["stage_positions"] = [{"x": x, "y": y} for x, y in positions]
    kw["axis_order"] = "tpzc"
    return useq.MDASequence(**kw)


def record(
    core: Any,
    path: str | Path,
    estimator: Any,
    *,
    frames: int | None = 10,
    duration_s: float | None = None,
    interval_ms: float = 0.0,
    z_range: tuple[float, float] | None = None,
    z_step: float | None = None,
    positions: list[tuple[float, float]] | None = None,
    calibration: Any = None,
    deconvolve: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
    echo: Any = None,
    hardware_sequencing: bool = False,
    **session_kw: Any,
) -> RecordResult:
    """Run an MDA on ``core`` and record every frame, its PSF map (and depth) to ``path``.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core (simulated or real).
    path : str or Path
        Output store (must not exist).
    estimator : Estimator
        The network that maps every frame.
    frames, duration_s, interval_ms : int, float, float
        Time plan (``frames`` loops, or ``duration_s`` seconds) with ``interval_ms``.
    z_range, z_step : (float, float), float, optional
        Z-stack (absolute bottom/top in um) at every time point.
    positions : list of (x, y), optional
        Stage positions.
    calibration : DepthCalibration, optional
        Also store a depth map per frame.
    deconvolve : bool
        TV-RL every frame in a background worker; returns once all are done.
    progress : bool
        tqdm bars (acquisition, deconvolution).
    hardware_sequencing : bool
        Let the camera stream (pymmcore-plus hardware sequencing). Off by default:
        every frame is then acquired only once the previous one is queued, so a
        camera faster than the disk is slowed down (back-pressure) and no frame is
        ever lost. A streaming camera cannot be slowed: the core's sequence buffer
        takes up the difference, and if it overflows the recording stops with an
        error that says so (measured on the simulated scope, 1 ms exposure: the
        camera streamed ~110 frames/s, the store took 82/s, and the 1 GB buffer
        overflowed after 1953 frames).

    Returns
    -------
    RecordResult
        The counters; ``error`` set when the recording stopped early. A
        ``KeyboardInterrupt`` cancels the MDA, closes the store and is re-raised
        with the counters in ``RecordResult`` attached as ``exc.result``.
    """
    seq = _sequence(frames, interval_ms, z_range, z_step, positions, duration_s)
    expected = len(list(seq)) if duration_s is None else 0
    cam = core.getCameraDevice()
    meta = {
        "acquisition": {
            "sequence": seq.model_dump(mode="json", exclude_unset=True),
            "camera": cam,
            "exposure_ms": core.getExposure(),
            "image_size": [core.getImageHeight(), core.getImageWidth()],
            "config": getattr(core, "_psf_live_config", None),
        },
        **(metadata or {}),
    }
    px = core.getPixelSizeUm() or None
    sess = RecordSession(
        path,
        estimator,
        calibration=calibration,
        deconvolve=deconvolve,
        metadata=meta,
        pixel_size_um=px,
        frame_interval_s=(interval_ms / 1000.0) or None,
        **session_kw,
    )
    sess.result.expected = expected
    sess._last_shape = (core.getImageHeight(), core.getImageWidth())
    started = [0]

    def on_frame(img: np.ndarray, *_: Any) -> None:
        sess.submit(img)
        if sess.failed:
            core.mda.cancel()

    def on_event(*_: Any) -> None:
        # an event that started without a frame: the camera failed -> stop the sequence
        if started[0] > sess.result.acquired:
            sess._acquisition_error(_camera_error(core, cam, sess.result.acquired))
            core.mda.cancel()
        started[0] += 1

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=expected or None, desc="record", unit="frame")

        def tick(*_: Any) -> None:
            bar.update(1)

        core.mda.events.frameReady.connect(tick)
    core.mda.events.frameReady.connect(on_frame)
    core.mda.events.eventStarted.connect(on_event)
    interrupted: BaseException | None = None
    engine: Any = getattr(core.mda, "engine", None)
    sequencing = getattr(engine, "use_hardware_sequencing", None)
    if sequencing is not None:
        engine.use_hardware_sequencing = bool(hardware_sequencing)
    try:
        thread = core.run_mda(seq)
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt as exc:
        interrupted = exc
        sess.result.interrupted = True
        sess._fail("interrupted (Ctrl-C)")
        core.mda.cancel()
        with contextlib.suppress(Exception):
            thread.join(10)
    finally:
        if sequencing is not None:
            engine.use_hardware_sequencing = sequencing
        core.mda.events.frameReady.disconnect(on_frame)
        core.mda.events.eventStarted.disconnect(on_event)
        if bar is not None:
            core.mda.events.frameReady.disconnect(tick)
            bar.close()
    if (
        interrupted is None
        and sess.result.error is None
        and (started[0] > sess.result.acquired or sess.result.acquired < expected)
    ):
        sess._acquisition_error(_camera_error(core, cam, sess.result.acquired))
    try:
        # failed / interrupted: _failed is set, so queued frames are dropped by the
        # writer; the frames already counted in the store stay valid.
        if sess.failed and sess.result.error and not sess.result.error.startswith(str(path)):
            sess._failed.clear()  # camera error / Ctrl-C: still write what was acquired
        sess.finish_acquisition()
        if deconvolve and interrupted is None and not sess.failed:
            _wait_deconv(sess, progress)
    except KeyboardInterrupt as exc:
        interrupted = exc
        sess.result.interrupted = True
        sess.result.error = sess.result.error or "interrupted (Ctrl-C)"
    finally:
        res = sess.close()
    if interrupted is not None:
        interrupted.result = res  # type: ignore[attr-defined]
        raise interrupted
    return res


def _wait_deconv(sess: RecordSession, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        with tqdm(total=sess.result.mapped, desc="deconvolve", unit="frame") as bar:
            while sess.result.deconvolved < sess.result.mapped and not sess.failed:
                bar.n = sess.result.deconvolved
                bar.refresh()
                time.sleep(0.2)
            bar.n = sess.result.deconvolved
            bar.refresh()
    sess.finish_deconvolution(wait=True)


def _camera_error(core: Any, cam: str, k: int) -> str:
    with contextlib.suppress(Exception):
        if core.isBufferOverflowed():
            mb = core.getCircularBufferMemoryFootprint()
            return (
                f"the camera outran the recording: the core's {mb} MB sequence buffer "
                f"overflowed after frame {k}; record without --sequence (back-pressure) "
                "or give the core a larger buffer"
            )
    msg = ""
    with contextlib.suppress(Exception):
        if core.hasProperty(cam, "LastError"):
            msg = str(core.getProperty(cam, "LastError"))
    return f"camera {cam!r} failed at frame {k}" + (f": {msg}" if msg else "")
