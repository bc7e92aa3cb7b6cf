"""Live PSF mapping on any pymmcore-plus core: camera frames -> bounded queue -> worker."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from psygnal import Signal, SignalGroup

from psf_live.estimate import DEFAULT_LENS_AXIS, DepthCalibration, PSFMap, summarize

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FrameMapper", "LiveMapper", "LiveMapperSignals", "LiveStats", "MapTimings"]


class FrameMapper(Protocol):
    """Anything with ``map(frame) -> PSFMap`` (an :class:`~psf_live.estimate.Estimator`)."""

    def map(self, frame: np.ndarray) -> PSFMap:
        """Return the PSF map of one 2D frame."""
        ...


@dataclass(frozen=True)
class MapTimings:
    """Seconds spent on one frame.

    Attributes
    ----------
    wait : float
        In the queue: arrival to the worker picking it up.
    transfer : float
        Patch extraction and upload to the device.
    inference : float
        Normalisation and network.
    post : float
        Decoding, download, KNN fill and the frame summary.
    latency : float
        Arrival to map ready (the sum of the above plus bookkeeping).
    """

    wait: float
    transfer: float
    inference: float
    post: float
    latency: float

    def to_dict(self) -> dict[str, float]:
        """Return the timings as a dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class LiveStats:
    """A snapshot of the live mapper's counters.

    Attributes
    ----------
    frames_in : int
        Frames received from the camera / MDA / :meth:`LiveMapper.submit`.
    frames_mapped : int
        Frames whose map was emitted.
    frames_dropped : int
        Frames discarded unmapped because a newer one arrived ("latest" mode) or the
        mapper stopped before reaching them.
    frames_failed : int
        Frames whose mapping raised (reported by ``mapFailed``).
    latency_median, latency_last : float
        Arrival to map ready, seconds (median over the last 100 maps, and the last).
    map_rate : float
        Maps per second over the last 30 maps.
    input_rate : float
        Frames received per second over the last 30 arrivals.
    max_input_gap : float
        Longest interval between two arrivals since start, seconds (a camera stall
        shows here).
    elapsed : float
        Seconds since :meth:`LiveMapper.start`.
    """

    frames_in: int
    frames_mapped: int
    frames_dropped: int
    frames_failed: int
    latency_median: float
    latency_last: float
    map_rate: float
    input_rate: float
    max_input_gap: float
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        """Return the statistics as a dictionary."""
        return asdict(self)


class LiveMapperSignals(SignalGroup):
    """Signals of :class:`LiveMapper`, emitted from its worker thread.

    Connect Qt widgets with ``thread="main"`` (psygnal) or a queued connection.
    """

    mapReady = Signal(int, object, object, object)
    """``(index, frame, psf_map, timings)``: frame ``index`` (0-based arrival order),
    the frame (numpy array), its :class:`~psf_live.estimate.PSFMap` (with ``summary``
    set) and its :class:`MapTimings`."""

    mapFailed = Signal(int, object)
    """``(index, exception)``: mapping frame ``index`` raised."""


_RATE_WINDOW = 30
_LATENCY_WINDOW = 100


def _rate(stamps: deque[float]) -> float:
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return 0.0
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class LiveMapper:
    """Map camera frames live, off the camera thread.

    Frames come from continuous / sequence acquisition (a grabber thread pops the
    core's circular buffer while no MDA runs), from MDA (``core.mda.events.frameReady``)
    and from :meth:`submit`. The receiving side only copies the frame into a bounded
    ``queue.Queue``; a worker thread maps frames with the estimator, adds the frame
    summary (focus, tilt) and emits ``events.mapReady(index, frame, psf_map, timings)``.

    Parameters
    ----------
    core : pymmcore_plus.CMMCorePlus, optional
        The core to listen to (a real Micro-Manager configuration or ``UniMMCore``);
        None to feed frames only through :meth:`submit`.
    estimator : FrameMapper
        Usually a :class:`~psf_live.estimate.Estimator`.
    mode : {"latest", "all"}
        ``"latest"`` (live display): when the queue is full the oldest waiting frame
        is dropped (counted) so the newest wins and the camera is never held back.
        ``"all"`` (recording): never drop; a full queue blocks the producer
        (back-pressure on the grabber / MDA thread) and :meth:`stop` maps what is
        still queued.
    maxsize : int
        Queue capacity in frames (default 1 for "latest", 8 for "all").
    sources : tuple of str
        Which frames to take from ``core``: ``"sequence"`` (circular buffer), ``"mda"``
        and/or ``"snap"`` (``imageSnapped`` outside MDA).
    calibration : DepthCalibration, optional
        Passed to :func:`~psf_live.estimate.summarize` (tilt in degrees). It must have
        been made with ``estimator``'s network (and its ``tta`` mode): a
        :class:`~psf_live.depth.CalibrationError` here, not a failure on every frame.
    lens_axis : float
        Cylindrical lens axis for the signed defocus.
    poll_interval : float
        Grabber sleep when the circular buffer is empty, seconds.
    """

    def __init__(
        self,
        core: Any,
        estimator: FrameMapper,
        *,
        mode: str = "latest",
        maxsize: int | None = None,
        sources: tuple[str, ...] = ("sequence", "mda"),
        calibration: DepthCalibration | None = None,
        lens_axis: float = DEFAULT_LENS_AXIS,
        poll_interval: float = 0.001,
    ) -> None:
        if mode not in ("latest", "all"):
            raise ValueError(f"mode must be 'latest' or 'all', got {mode!r}")
        unknown = set(sources) - {"sequence", "mda", "snap"}
        if unknown:
            raise ValueError(f"unknown frame sources: {sorted(unknown)}")
        self.core = core
        self.estimator = estimator
        self.mode = mode
        self.maxsize = int(maxsize if maxsize is not None else (1 if mode == "latest" else 8))
        if self.maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.sources = tuple(sources)
        check = getattr(calibration, "check_network", None)
        if check is not None:  # another network would fail every frame, silently
            check(dict(getattr(estimator, "meta", {}) or {}))
        self.calibration = calibration
        self.lens_axis = lens_axis
        self.poll_interval = poll_interval
        self.events = LiveMapperSignals()
        self._queue: queue.Queue[tuple[int, float, np.ndarray]] = queue.Queue(self.maxsize)
        self._put_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._drain = False
        self._threads: list[threading.Thread] = []
        self._connected: list[tuple[Any, Any]] = []
        self._running = False
        self._reset_stats()

    # ---------------------------------------------------------------- state
    def _reset_stats(self) -> None:
        self._n_in = 0
        self._n_mapped = 0
        self._n_dropped = 0
        self._n_failed = 0
        self._t_start = time.perf_counter()
        self._arrivals: deque[float] = deque(maxlen=_RATE_WINDOW)
        self._ready: deque[float] = deque(maxlen=_RATE_WINDOW)
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._last_arrival: float | None = None
        self._max_gap = 0.0

    @property
    def running(self) -> bool:
        """Whether the mapper is started."""
        return self._running

    def stats(self) -> LiveStats:
        """Return a consistent snapshot of the counters and rates."""
        with self._stats_lock:
            lat = list(self._latencies)
            return LiveStats(
                frames_in=self._n_in,
                frames_mapped=self._n_mapped,
                frames_dropped=self._n_dropped,
                frames_failed=self._n_failed,
                latency_median=float(np.median(lat)) if lat else math.nan,
                latency_last=lat[-1] if lat else math.nan,
                map_rate=_rate(self._ready),
                input_rate=_rate(self._arrivals),
                max_input_gap=self._max_gap,
                elapsed=time.perf_counter() - self._t_start,
            )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> LiveMapper:
        """Connect to the core and start the worker (and grabber) threads."""
        if self._running:
            raise RuntimeError("LiveMapper is already running")
        self._stop.clear()
        self._drain = False
        self._queue = queue.Queue(self.maxsize)
        self._reset_stats()
        worker = threading.Thread(target=self._work, name="psf-live-mapper", daemon=True)
        self._threads = [worker]
        if self.core is not None:
            if "mda" in self.sources:
                self._connect(self.core.mda.events.frameReady, self._on_mda_frame)
            if "snap" in self.sources:
                self._connect(self.core.events.imageSnapped, self._on_snap)
            if "sequence" in self.sources:
                grab = threading.Thread(target=self._grab, name="psf-live-grabber", daemon=True)
                self._threads.append(grab)
        self._running = True
        for t in self._threads:
            t.start()
        return self

    def stop(self, drain: bool | None = None, timeout: float = 10.0) -> None:
        """Stop listening, finish the frame in progress and join the threads.

        Parameters
        ----------
        drain : bool, optional
            Map the frames still queued before returning (default: True in "all"
            mode, False in "latest" mode, where they count as dropped).
        timeout : float
            Seconds to wait for each thread.
        """
        if not self._running:
            return
        for sig, slot in self._connected:
            with contextlib.suppress(Exception):
                sig.disconnect(slot)
        self._connected = []
        self._drain = (self.mode == "all") if drain is None else drain
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._running = False  # producers blocked on a full queue give up now
        time.sleep(0.06)  # ... within one put timeout
        # frames still queued (not drained) are dropped, never half-processed
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            with self._stats_lock:
                self._n_dropped += 1
        if alive:
            raise RuntimeError(f"threads did not stop within {timeout} s: {alive}")

    def __enter__(self) -> LiveMapper:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _connect(self, signal: Any, slot: Any) -> None:
        signal.connect(slot)
        self._connected.append((signal, slot))

    # ------------------------------------------------------------- producers
    def submit(self, frame: np.ndarray, copy: bool = True) -> int:
        """Enqueue one frame (from any thread) and return its index.

        In "latest" mode this never blocks; in "all" mode it blocks while the queue is
        full (back-pressure) and raises ``RuntimeError`` if the mapper stops meanwhile.
        """
        if not self._running:
            raise RuntimeError("LiveMapper is not running; call start() first")
        arr = np.array(frame, copy=True) if copy else np.asarray(frame)
        now = time.perf_counter()
        with self._stats_lock:
            index = self._n_in
            self._n_in += 1
            self._arrivals.append(now)
            if self._last_arrival is not None:
                self._max_gap = max(self._max_gap, now - self._last_arrival)
            self._last_arrival = now
        item = (index, now, arr)
        if self.mode == "latest":
            with self._put_lock:
                while True:
                    try:
                        self._queue.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            self._queue.get_nowait()
                        except queue.Empty:
                            continue
                        with self._stats_lock:
                            self._n_dropped += 1
        else:
            while True:
                if (self._stop.is_set() and not self._drain) or not self._running:
                    with self._stats_lock:
                        self._n_dropped += 1
                    raise RuntimeError("LiveMapper stopped while waiting for queue space")
                try:
                    self._queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
        return index

    def _on_mda_frame(self, img: np.ndarray, event: Any = None, meta: Any = None) -> None:
        with contextlib.suppress(RuntimeError):
            self.submit(img, copy=False)  # MDA frames are owned arrays already

    def _on_snap(self, *_: Any) -> None:
        if self.core.mda.is_running():
            return  # the MDA frame arrives through frameReady
        with contextlib.suppress(Exception):
            self.submit(self.core.getImage())

    def _grab(self) -> None:
        core = self.core
        while not self._stop.is_set():
            try:
                if core.mda.is_running() or core.getRemainingImageCount() == 0:
                    time.sleep(self.poll_interval)
                    continue
                img = core.popNextImage()
            except Exception:
                time.sleep(self.poll_interval)
                continue
            try:
                self.submit(img, copy=True)  # the core may reuse its buffer
            except RuntimeError:
                break

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            if self._stop.is_set() and (not self._drain or self._queue.empty()):
                break
            try:
                index, t_arrival, frame = self._queue.get(timeout=0.02)
            except queue.Empty:
                continue
            t_pick = time.perf_counter()
            try:
                psf_map = self.estimator.map(frame)
                t_map = time.perf_counter()
                psf_map.summary = summarize(psf_map, self.calibration, self.lens_axis)
            except Exception as exc:  # reported, the loop goes on
                with self._stats_lock:
                    self._n_failed += 1
                self.events.mapFailed.emit(index, exc)
                continue
            t_done = time.perf_counter()
            tm = psf_map.timings
            transfer = float(tm.get("transfer", 0.0))
            inference = float(tm.get("inference", t_map - t_pick))
            post = float(tm.get("post", 0.0)) + (t_done - t_map)
            timings = MapTimings(
                wait=t_pick - t_arrival,
                transfer=transfer,
                inference=inference,
                post=post,
                latency=t_done - t_arrival,
            )
            with self._stats_lock:
                self._n_mapped += 1
                self._ready.append(t_done)
                self._latencies.append(timings.latency)
            self.events.mapReady.emit(index, frame, psf_map, timings)
