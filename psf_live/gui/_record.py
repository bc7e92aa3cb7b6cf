"""Record the panel's mapped frames to an OME-Zarr session store, off the GUI thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Recorder"]

_STOP = object()


class Recorder:
    """Write every map the live mapper emits (raw frame, parameters, validity, depth).

    ``mapReady`` arrives on the mapper's worker thread; the slot only puts the frame
    into a bounded queue, a writer thread appends it to a
    :class:`psf_live.store.SessionWriter` (one frame per chunk). When the disk falls
    behind, frames are dropped (counted in :attr:`dropped`), never the camera.

    Parameters
    ----------
    path : str or Path
        Store directory (``*.zarr``); must not exist.
    mapper : LiveMapper
        The running live mapper.
    estimator : Any
        Its estimator (model card and stride go into the metadata).
    calibration : DepthCalibration, optional
        When given, the depth map (um) of every frame is stored too.
    pixel_size_um : float, optional
        For the NGFF scale transform.
    maxsize : int
        Frames that may wait for the writer.
    """

    def __init__(
        self,
        path: str | Path,
        mapper: Any,
        estimator: Any,
        calibration: Any = None,
        pixel_size_um: float | None = None,
        maxsize: int = 8,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: already exists")
        self.mapper = mapper
        self.estimator = estimator
        self.calibration = calibration
        self.pixel_size_um = pixel_size_um
        self.written = 0
        self.dropped = 0
        self.error: str | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._writer: Any = None

    def start(self) -> Recorder:
        """Open the store and start listening and writing."""
        from psf_live.store import SessionWriter

        meta: dict[str, Any] = {
            "source": "psf-live gui",
            "model": dict(getattr(self.estimator, "meta", {}) or {}),
            "stride": getattr(self.estimator, "stride", None),
        }
        if self.calibration is not None and hasattr(self.calibration, "to_dict"):
            meta["depth_calibration"] = self.calibration.to_dict()
        self._writer = SessionWriter(self.path, meta, pixel_size_um=self.pixel_size_um)
        self._thread = threading.Thread(target=self._run, name="psf-live-recorder", daemon=True)
        self._thread.start()
        self.mapper.events.mapReady.connect(self._on_map)
        return self

    def _on_map(self, index: int, frame: np.ndarray, psf_map: Any, timings: Any) -> None:
        try:
            self._queue.put_nowait((frame, psf_map))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            frame, m = item
            depth = None
            if self.calibration is not None:
                with contextlib.suppress(Exception):
                    from psf_live.depth import map_depth

                    depth = map_depth(m, self.calibration, full=False).grid
            try:
                self._writer.append(raw=frame, params=m.params, valid=m.valid, depth=depth)
                self.written += 1
            except Exception as exc:  # reported by stop(); keep draining the queue
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> int:
        """Stop listening, write what is queued, close the store; return frames written."""
        with contextlib.suppress(Exception):
            self.mapper.events.mapReady.disconnect(self._on_map)
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.written
