"""The live panel: camera, focus / astigmatism / depth heatmaps, tilt readouts and trends."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtGui, QtWidgets

from ._views import HeatmapView, hatch_rgba, patch_rect

__all__ = ["PSFLivePanel"]

_NO_MODEL = "no model"


class _Latest:
    """The newest mapped frame, written by the mapper's worker thread, read by the GUI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: tuple[int, np.ndarray, Any, Any] | None = None
        self.count = 0

    def put(self, index: int, frame: np.ndarray, psf_map: Any, timings: Any) -> None:
        with self._lock:
            self._item = (index, frame, psf_map, timings)
            self.count += 1

    def take(self) -> tuple[int, np.ndarray, Any, Any] | None:
        with self._lock:
            item, self._item = self._item, None
            return item


class PSFLivePanel(QtWidgets.QWidget):
    """Live PSF monitoring panel for any pymmcore-plus core (embeddable widget).

    Shows the live camera image, a focus heatmap (signed defocus for zernike3 with a
    cylindrical lens), an astigmatism heatmap (cylinder magnitude, axis as short
    segments) and a depth map in micrometres when a calibration is loaded, over the
    patch grid; invalid patches are hatched grey. Colour levels are fixed and only
    change when the user drags a colour bar. Readouts: global focus, tilt about x and
    y in degrees, flatness residual, focus and tilt trends, map rate, latency, dropped
    frames, device and model.

    The live mapper emits its maps from a worker thread; the panel only stores the
    newest one there and redraws from a ``QTimer`` on the GUI thread, so it stays
    responsive when inference is slower than the camera. Closing the panel (or
    :meth:`shutdown`, also run when the application quits) stops the camera and
    joins the mapper's threads.

    Parameters
    ----------
    mmcore : CMMCorePlus, optional
        The core to use; None opens the default simulated scope (tilted grid,
        cylindrical lens), which the panel then unloads on close.
    model : str, Path or estimator, optional
        Shipped model name, weights path or an object with ``map(frame)``; default
        the shipped default model. If none can be loaded the panel runs the camera
        and says "no model".
    stride : int
        Patch stride in pixels.
    calibration : str or Path, optional
        Depth calibration JSON (``psf-live calibrate-depth``).
    refresh_ms : int
        Display refresh period.
    trend_seconds : float
        Span of the focus / tilt trend plots.
    parent : QWidget, optional
        Qt parent.
    """

    def __init__(
        self,
        mmcore: Any = None,
        model: Any = None,
        stride: int = 64,
        calibration: str | Path | None = None,
        refresh_ms: int = 50,
        trend_seconds: float = 300.0,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("psf-live")
        self._owns_core = mmcore is None
        if mmcore is None:
            from psf_live.acquire import open_core

            mmcore = open_core()
        self.core = mmcore
        self.estimator: Any = None
        self.model_error = ""
        self.model_name = _NO_MODEL
        self.calibration: Any = None
        self.calibration_path: str | None = None
        self.mapper: Any = None
        self.recorder: Any = None
        self._latest = _Latest()
        self._last_map: Any = None
        self._last_frame: np.ndarray | None = None
        self._cam_levels: tuple[float, float] | None = None
        self._t0 = time.perf_counter()
        self._trend: deque[tuple[float, float, float, float]] = deque()
        self.trend_seconds = float(trend_seconds)
        self.maps_shown = 0
        self._closed = False
        self._stride = int(stride)

        self._build_ui()
        self._load_model(model)
        if calibration is not None:
            self.load_calibration(calibration)
        else:
            self._show_calibration()
        self._sync_hardware_controls()

        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(int(refresh_ms))
        self._timer.timeout.connect(self._refresh)
        self._timer.start()
        app = QtWidgets.QApplication.instance()
        if app is not None:  # embedded: the host may quit without closing us
            app.aboutToQuit.connect(self.shutdown)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        font = self.font()
        font.setPointSize(9)
        self.setFont(font)
        root = QtWidgets.QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)
        root.addWidget(self._build_controls())

        body = QtWidgets.QHBoxLayout()
        root.addLayout(body, 1)
        grid = QtWidgets.QGridLayout()
        grid.setSpacing(4)
        body.addLayout(grid, 1)

        self.camera_view = pg.GraphicsLayoutWidget()
        self.camera_view.setBackground("#1e1e1e")
        self.camera_plot = self.camera_view.addPlot(title="Camera")
        self.camera_plot.setAspectLocked(True)
        self.camera_plot.invertY(True)
        self.camera_plot.hideButtons()
        self.camera_plot.setMenuEnabled(False)
        self.camera_image = pg.ImageItem(axisOrder="row-major")
        self.overlay_image = pg.ImageItem(axisOrder="row-major")
        self.overlay_image.setOpacity(0.4)
        self.overlay_hatch = pg.ImageItem(axisOrder="row-major")
        self.overlay_hatch.setOpacity(0.6)
        for item in (self.camera_image, self.overlay_image, self.overlay_hatch):
            self.camera_plot.addItem(item)

        self.focus_view = HeatmapView("Focus", "CET-D1", (-0.6, 0.6), "signed defocus (waves RMS)")
        self.astig_view = HeatmapView(
            "Astigmatism (lines: axis)", "viridis", (0.0, 0.5), "cylinder (waves RMS)"
        )
        self.axis_lines = pg.PlotDataItem(connect="pairs", pen=pg.mkPen("#ffffff", width=1.5))
        self.axis_lines.setZValue(6)
        self.astig_view.plot.addItem(self.axis_lines)
        self.depth_view = HeatmapView("Depth", "CET-D1", (-40.0, 40.0), "depth (um)")
        self._frame_rect: QtCore.QRectF | None = None
        self._set_range(QtCore.QRectF(0, 0, 1024, 1024))
        grid.addWidget(self.camera_view, 0, 0)
        grid.addWidget(self.focus_view, 0, 1)
        grid.addWidget(self.astig_view, 1, 0)
        grid.addWidget(self.depth_view, 1, 1)

        side_widget = QtWidgets.QWidget()
        side_widget.setMaximumWidth(400)
        side = QtWidgets.QVBoxLayout(side_widget)
        side.setContentsMargins(0, 0, 0, 0)
        body.addWidget(side_widget, 0)
        side.addWidget(self._build_readouts())
        self.focus_trend = pg.PlotWidget(title="Focus trend")
        self.tilt_trend = pg.PlotWidget(title="Tilt trend (deg)")
        for pw in (self.focus_trend, self.tilt_trend):
            pw.setBackground("#1e1e1e")
            pw.setLabel("bottom", "seconds ago")
            pw.showGrid(x=True, y=True, alpha=0.3)
            pw.setMinimumWidth(260)
            pw.setMaximumHeight(190)
            pw.getPlotItem().setMenuEnabled(False)
            pw.getPlotItem().hideButtons()
            pw.getPlotItem().invertX(True)
            for ax in ("left", "bottom"):
                pw.getPlotItem().getAxis(ax).enableAutoSIPrefix(False)
        self.focus_trend.setLabel("left", "focus")
        self.focus_curve = self.focus_trend.plot(pen=pg.mkPen("#f0c419", width=2))
        self.tilt_trend.addLegend(offset=(5, 5))
        self.tilt_x_curve = self.tilt_trend.plot(pen=pg.mkPen("#4fc3f7", width=2), name="x")
        self.tilt_y_curve = self.tilt_trend.plot(pen=pg.mkPen("#ef5350", width=2), name="y")
        side.addWidget(self.focus_trend)
        side.addWidget(self.tilt_trend)
        side.addStretch(1)

        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

    def _build_controls(self) -> QtWidgets.QWidget:
        box = QtWidgets.QGroupBox("Controls")
        lay = QtWidgets.QGridLayout(box)
        lay.setContentsMargins(6, 4, 6, 4)
        self.live_button = QtWidgets.QPushButton("Start live")
        self.live_button.setCheckable(True)
        self.live_button.toggled.connect(self._on_live_toggled)
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setMinimumContentsLength(12)
        self.model_combo.setToolTip("Shipped model name or path to a .pt weights file")
        self.model_combo.activated.connect(lambda _=0: self._on_model_chosen())
        self.stride_spin = QtWidgets.QSpinBox()
        self.stride_spin.setRange(16, 128)
        self.stride_spin.setSingleStep(16)
        self.stride_spin.setValue(self._stride)
        self.stride_spin.setSuffix(" px")
        self.stride_spin.valueChanged.connect(self._on_stride)
        self.exposure_spin = QtWidgets.QDoubleSpinBox()
        self.exposure_spin.setRange(0.1, 10000.0)
        self.exposure_spin.setDecimals(1)
        self.exposure_spin.setSuffix(" ms")
        self.exposure_spin.valueChanged.connect(self._on_exposure)
        self.z_spin = QtWidgets.QDoubleSpinBox()
        self.z_spin.setRange(-10000.0, 10000.0)
        self.z_spin.setDecimals(2)
        self.z_spin.setSingleStep(1.0)
        self.z_spin.setSuffix(" um")
        self.z_spin.valueChanged.connect(self._on_z)
        self.calib_button = QtWidgets.QPushButton("Calibration...")
        self.calib_button.clicked.connect(self._choose_calibration)
        self.calib_label = QtWidgets.QLabel("")
        self.depth_smooth_spin = QtWidgets.QSpinBox()
        self.depth_smooth_spin.setRange(0, 3)
        self.depth_smooth_spin.setSuffix(" patches")
        self.depth_smooth_spin.setToolTip(
            "Depth map: local planes over this many patches around each (0: none); "
            "1 halves the per-patch error of a smooth sample for a coarser map"
        )
        self.record_path = QtWidgets.QLineEdit("recording.zarr")
        self.record_path.setToolTip("OME-Zarr path to record raw frames and PSF maps to")
        self.record_button = QtWidgets.QPushButton("Record")
        self.record_button.setCheckable(True)
        self.record_button.toggled.connect(self._on_record_toggled)
        if importlib.util.find_spec("psf_live.store") is None:
            self.record_button.setEnabled(False)
            self.record_button.setToolTip("recording needs psf_live.store (not in this build)")
        self.overlay_combo = QtWidgets.QComboBox()
        self.overlay_combo.addItems(["none", "focus", "astigmatism", "depth"])
        self.overlay_combo.setToolTip("Heatmap drawn over the camera image")
        self.overlay_combo.currentIndexChanged.connect(lambda _=0: self._draw_overlay())

        def pair(text: str, w: QtWidgets.QWidget) -> QtWidgets.QWidget:
            c = QtWidgets.QWidget()
            h = QtWidgets.QHBoxLayout(c)
            h.setContentsMargins(0, 0, 0, 0)
            h.addWidget(QtWidgets.QLabel(text))
            h.addWidget(w, 1)
            return c

        lay.addWidget(self.live_button, 0, 0)
        lay.addWidget(pair("Model", self.model_combo), 0, 1)
        lay.addWidget(pair("Stride", self.stride_spin), 0, 2)
        lay.addWidget(pair("Exposure", self.exposure_spin), 0, 3)
        lay.addWidget(pair("Z", self.z_spin), 0, 4)
        lay.addWidget(pair("Overlay", self.overlay_combo), 0, 5)
        lay.addWidget(self.calib_button, 1, 0)
        lay.addWidget(self.calib_label, 1, 1)
        lay.addWidget(pair("Depth smoothing", self.depth_smooth_spin), 1, 2)
        lay.addWidget(pair("Record to", self.record_path), 1, 3, 1, 2)
        lay.addWidget(self.record_button, 1, 5)
        return box

    def _build_readouts(self) -> QtWidgets.QWidget:
        box = QtWidgets.QGroupBox("Readouts")
        form = QtWidgets.QFormLayout(box)
        form.setLabelAlignment(QtCore.Qt.AlignmentFlag.AlignRight)
        names = [
            ("focus", "Global focus"),
            ("tilt_x", "Tilt along x"),
            ("tilt_y", "Tilt along y"),
            ("residual", "Flatness residual"),
            ("valid", "Valid patches"),
            ("rate", "Map rate"),
            ("latency", "Map latency"),
            ("dropped", "Dropped frames"),
            ("device", "Device"),
            ("model", "Model"),
        ]
        self.readouts: dict[str, QtWidgets.QLabel] = {}
        big = QtGui.QFont(self.font())
        big.setPointSize(11)
        big.setBold(True)
        for key, text in names:
            lab = QtWidgets.QLabel("-")
            lab.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            if key in ("focus", "tilt_x", "tilt_y"):
                lab.setFont(big)
            self.readouts[key] = lab
            if key == "dropped":
                lab.setToolTip("frames not mapped because a newer one arrived (newest wins)")
            form.addRow(text, lab)
        return box

    # --------------------------------------------------------------- model
    def _load_model(self, model: Any) -> None:
        from psf_live.estimate import Estimator

        names: list[str] = []
        with contextlib.suppress(Exception):
            from psf_live.models import available_models

            names = list(available_models())
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.estimator = None
        self.model_error = ""
        if model is not None and hasattr(model, "map"):
            self.estimator = model
            label = str(getattr(model, "meta", {}).get("name", type(model).__name__))
        else:
            if model is None:
                from psf_live.models import DEFAULT_MODEL

                model = DEFAULT_MODEL
            label = str(model)
            try:
                self.estimator = Estimator.load(model, stride=self._stride)
                label = str(self.estimator.meta.get("name", label))
            except Exception as exc:
                self.model_error = f"{exc}"
        if self.estimator is not None and hasattr(self.estimator, "stride"):
            self.estimator.stride = self._stride
        self.model_name = label if self.estimator is not None else _NO_MODEL
        if self.model_combo.findText(label) < 0:
            self.model_combo.addItem(label)
        self.model_combo.setCurrentText(label)
        self.model_combo.blockSignals(False)
        self.readouts["model"].setText(self.model_name)
        dev = getattr(self.estimator, "device", None)
        prec = getattr(self.estimator, "precision", None)  # the arithmetic the maps come from
        where = str(dev).upper() if dev is not None else "-"
        self.readouts["device"].setText(f"{where} {prec}" if dev is not None and prec else where)
        if self.estimator is None:
            msg = f"{_NO_MODEL}: {self.model_error}" if self.model_error else _NO_MODEL
            self.status.setText(msg)
            for v in (self.focus_view, self.astig_view):
                v.clear_map(_NO_MODEL)
        else:
            self.status.setText(f"model {self.model_name} on {self.readouts['device'].text()}")
        self._show_calibration()

    def set_model(self, model: Any) -> None:
        """Switch model (name, path or estimator); restarts mapping if live."""
        live = self.is_live()
        if live:
            self.stop_live()
        self._load_model(model)
        if live:
            self.start_live()

    def _on_model_chosen(self) -> None:
        text = self.model_combo.currentText().strip()
        if text and text != self.model_name:
            self.set_model(text)

    def _on_stride(self, value: int) -> None:
        self._stride = int(value)
        if self.estimator is not None and hasattr(self.estimator, "stride"):
            self.estimator.stride = self._stride

    # --------------------------------------------------------- calibration
    def load_calibration(self, path: str | Path | None) -> bool:
        """Load a depth calibration JSON (None unloads); False (and a message) if refused."""
        if path is None:
            self.calibration, self.calibration_path = None, None
            self._show_calibration()
            return True
        from psf_live.depth import DepthCalibration

        try:
            cal = DepthCalibration.load(path)
            if self.estimator is not None and getattr(self.estimator, "meta", None):
                cal.check_network(self.estimator.meta, str(path))
        except Exception as exc:
            self.status.setText(f"calibration refused: {exc}")
            return False
        self.calibration, self.calibration_path = cal, str(path)
        if self.mapper is not None:
            self.mapper.calibration = cal
        self._show_calibration()
        return True

    def _show_calibration(self) -> None:
        if self.calibration is None:
            self.calib_label.setText("not calibrated")
            self.depth_view.clear_map("not calibrated")
        else:
            self.calib_label.setText(Path(str(self.calibration_path)).name)
            self.depth_view.show_message("")

    def _choose_calibration(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Depth calibration", "", "Calibration (*.json)"
        )
        if path:
            self.load_calibration(path)

    # ------------------------------------------------------------ hardware
    def _sync_hardware_controls(self) -> None:
        core = self.core
        self.exposure_spin.blockSignals(True)
        with contextlib.suppress(Exception):
            self.exposure_spin.setValue(float(core.getExposure()))
        self.exposure_spin.blockSignals(False)
        focus = ""
        with contextlib.suppress(Exception):
            focus = core.getFocusDevice()
        self.z_spin.setEnabled(bool(focus))
        self.z_spin.setToolTip(f"Z stage {focus}" if focus else "no Z stage in this config")
        if focus:
            self.z_spin.blockSignals(True)
            with contextlib.suppress(Exception):
                self.z_spin.setValue(float(core.getPosition()))
            self.z_spin.blockSignals(False)

    def _on_exposure(self, value: float) -> None:
        try:
            self.core.setExposure(float(value))
        except Exception as exc:
            self.status.setText(f"exposure: {exc}")

    def _on_z(self, value: float) -> None:
        try:
            self.core.setPosition(float(value))
        except Exception as exc:
            self.status.setText(f"Z stage: {exc}")

    def set_z(self, z_um: float) -> None:
        """Move the focus stage (updates the control)."""
        self.z_spin.setValue(float(z_um))
        self._on_z(float(z_um))

    # ---------------------------------------------------------------- live
    def is_live(self) -> bool:
        """Whether the camera is streaming."""
        return bool(self.live_button.isChecked())

    def start_live(self) -> None:
        """Start continuous acquisition and (with a model) live mapping."""
        if not self.live_button.isChecked():
            self.live_button.setChecked(True)  # -> _on_live_toggled
            return
        self._start()

    def stop_live(self) -> None:
        """Stop mapping and the camera (joins the mapper's threads)."""
        if self.live_button.isChecked():
            self.live_button.setChecked(False)
        else:
            self._stop()

    def _on_live_toggled(self, on: bool) -> None:
        self.live_button.setText("Stop live" if on else "Start live")
        if on:
            self._start()
        else:
            self._stop()

    def _start(self) -> None:
        if self.estimator is not None and self.mapper is None:
            from psf_live.acquire import LiveMapper

            self.mapper = LiveMapper(
                self.core, self.estimator, mode="latest", calibration=self.calibration
            )
            self.mapper.events.mapReady.connect(self._latest.put)
            self.mapper.start()
        if not self.core.isSequenceRunning():
            self.core.startContinuousSequenceAcquisition(0)

    def _stop(self) -> None:
        self.stop_recording()
        if self.mapper is not None:
            mapper, self.mapper = self.mapper, None
            try:
                mapper.stop()
            finally:
                with contextlib.suppress(Exception):
                    mapper.events.mapReady.disconnect(self._latest.put)
        with contextlib.suppress(Exception):
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()

    # ------------------------------------------------------------ recording
    def _on_record_toggled(self, on: bool) -> None:
        if on:
            try:
                self.start_recording(self.record_path.text())
            except Exception as exc:
                self.status.setText(f"recording: {exc}")
                self._set_record_checked(False)
        else:
            self.stop_recording()

    def start_recording(self, path: str | Path) -> None:
        """Record raw frames and PSF maps to an OME-Zarr store (needs psf_live.store)."""
        from psf_live.gui._record import Recorder

        if self.mapper is None:
            raise RuntimeError("start live mapping (with a model) before recording")
        px = None
        with contextlib.suppress(Exception):
            px = float(self.core.getPixelSizeUm()) or None
        rec = Recorder(path, self.mapper, self.estimator, self.calibration, px)
        rec.start()
        self.recorder = rec
        self._set_record_checked(True)
        self.status.setText(f"recording to {path}")

    def _set_record_checked(self, on: bool) -> None:
        self.record_button.blockSignals(True)
        self.record_button.setChecked(on)
        self.record_button.blockSignals(False)
        self.record_button.setText("Stop recording" if on else "Record")

    def stop_recording(self) -> None:
        """Stop and close the recording, if any."""
        rec, self.recorder = self.recorder, None
        self._set_record_checked(False)
        if rec is not None:
            n = rec.stop()
            msg = f"recorded {n} frames to {rec.path}"
            if rec.dropped:
                msg += f" ({rec.dropped} dropped: disk too slow)"
            if rec.error:
                msg += f"; error: {rec.error}"
            self.status.setText(msg)

    # ------------------------------------------------------------- display
    def _refresh(self) -> None:
        if self._closed:
            return
        frame = None
        if self.core.isSequenceRunning():
            with contextlib.suppress(Exception):
                frame = self.core.getLastImage()
        item = self._latest.take()
        if item is not None:
            _index, mframe, psf_map, timings = item
            if frame is None:
                frame = mframe
            self._show_map(psf_map, timings)
        if frame is not None:
            self._show_frame(np.asarray(frame))
        self._show_stats()

    def _show_frame(self, frame: np.ndarray) -> None:
        self._last_frame = frame
        if self._cam_levels is None:
            lo, hi = np.percentile(frame[::4, ::4], (0.5, 99.8))
            self._cam_levels = (float(lo), float(max(hi, lo + 1)))
            self.camera_image.setImage(frame, levels=self._cam_levels)
            rect = QtCore.QRectF(0, 0, frame.shape[1], frame.shape[0])
            self.camera_image.setRect(rect)
            if rect != self._frame_rect:
                self._set_range(rect)
        else:
            self.camera_image.setImage(frame, autoLevels=False, levels=self._cam_levels)

    def _set_range(self, rect: QtCore.QRectF) -> None:
        """Show the whole frame in the camera view and in every heatmap."""
        self._frame_rect = rect
        for plot in (
            self.camera_plot,
            self.focus_view.plot,
            self.astig_view.plot,
            self.depth_view.plot,
        ):
            plot.setRange(rect=rect, padding=0.02)

    def auto_contrast(self) -> None:
        """Re-derive the camera display levels from the next frame."""
        self._cam_levels = None

    def _focus_values(self, m: Any) -> tuple[np.ndarray, str, str, tuple[float, float]] | None:
        """Focus map, its label, colour map and default levels."""
        from psf_live.estimate import focus_map, signed_defocus

        names = m.param_names
        if "focus" in names and "axis" in names:
            vals = signed_defocus(m.param("focus"), m.param("axis"))
            return vals, "signed defocus (waves RMS)", "CET-D1", (-0.6, 0.6)
        fm = focus_map(m)
        if fm is None:
            return None
        return fm[0], f"{fm[1]} ({fm[2]})", "viridis", _param_range(m, fm[1])

    def _show_map(self, m: Any, timings: Any) -> None:
        self._last_map = m
        self.maps_shown += 1
        rect = patch_rect(m.centers_y, m.centers_x, int(m.stride))
        valid = np.asarray(m.valid, bool)
        fv = self._focus_values(m)
        if fv is None:
            self.focus_view.clear_map(f"{m.psf_model}: no focus parameter")
        else:
            self.focus_view.configure(fv[1], fv[2], fv[3])
            self.focus_view.set_map(fv[0], valid, rect)
        if "cylinder" in m.param_names:
            cyl = m.param("cylinder")
            self.astig_view.configure("cylinder (waves RMS)", "viridis", (0.0, 0.5))
            self.astig_view.set_map(cyl, valid, rect)
            self._draw_axes(m, valid)
        elif "width_x" in m.param_names:
            aniso = m.param("width_x") - m.param("width_y")
            self.axis_lines.setData([], [])
            self.astig_view.configure("width_x - width_y (px)", "CET-D1", (-2.0, 2.0))
            self.astig_view.set_map(aniso, valid, rect)
        else:
            self.axis_lines.setData([], [])
            self.astig_view.clear_map(f"{m.psf_model}: no astigmatism")
        if self.calibration is not None:
            try:
                from psf_live.depth import map_depth

                k = self.depth_smooth_spin.value()
                depth = map_depth(m, self.calibration, full=False, smooth=k).grid
                self.depth_view.set_map(depth, valid, rect)
            except Exception as exc:
                self.depth_view.clear_map(f"depth: {exc}")
        self._draw_overlay()
        self._update_summary(m)

    def _draw_axes(self, m: Any, valid: np.ndarray) -> None:
        cyl = m.param("cylinder")
        ax = m.param("axis")
        yy, xx = np.meshgrid(m.centers_y, m.centers_x, indexing="ij")
        _lo, hi = self.astig_view.levels()
        frac = np.clip(cyl / max(hi, 1e-6), 0.15, 1.0)
        half = 0.45 * float(m.stride) * frac
        dx, dy = half * np.cos(ax), half * np.sin(ax)  # axis from +x towards +y (rows)
        sel = valid.ravel()
        x0 = (xx - dx).ravel()[sel]
        x1 = (xx + dx).ravel()[sel]
        y0 = (yy - dy).ravel()[sel]
        y1 = (yy + dy).ravel()[sel]
        px = np.stack([x0, x1], 1).ravel()
        py = np.stack([y0, y1], 1).ravel()
        self.axis_lines.setData(px, py)

    def _draw_overlay(self) -> None:
        which = self.overlay_combo.currentText()
        view = {
            "focus": self.focus_view,
            "astigmatism": self.astig_view,
            "depth": self.depth_view,
        }.get(which)
        m = self._last_map
        if view is None or m is None or view.image.image is None:
            self.overlay_image.clear()
            self.overlay_hatch.clear()
            return
        self.overlay_image.setImage(view.image.image, autoLevels=False, levels=view.levels())
        self.overlay_image.setColorMap(view.cbar.colorMap())
        rect = patch_rect(m.centers_y, m.centers_x, int(m.stride))
        self.overlay_image.setRect(rect)
        self.overlay_hatch.setImage(hatch_rgba(~np.asarray(m.valid, bool)), autoLevels=False)
        self.overlay_hatch.setRect(rect)

    def _tilts(self, s: Any, m: Any) -> tuple[float, float, str]:
        """Tilt (deg) about y and x: calibrated, or from the optics' defocus scale."""
        if s.tilt_x_deg is not None and s.tilt_y_deg is not None:
            return float(s.tilt_x_deg), float(s.tilt_y_deg), "calibrated"
        from psf_live.estimate import optics_tilt_deg
        from psf_live.psf import Optics

        od = m.meta.get("optics") if isinstance(m.meta, dict) else None
        est = optics_tilt_deg(s, Optics.from_dict(od) if isinstance(od, dict) else None)
        if est is not None:
            return est[0], est[1], "optics estimate"
        return math.nan, math.nan, f"needs calibration ({s.plane_quantity} is unsigned)"

    def _update_summary(self, m: Any) -> None:
        s = m.summary
        if s is None:
            from psf_live.estimate import summarize

            try:
                s = summarize(m, self.calibration)
            except Exception:  # calibration from another network: the depth view says so
                s = summarize(m, None)
        tx, ty, how = self._tilts(s, m)
        self.last_tilt = (tx, ty)
        r = self.readouts
        r["focus"].setText(f"{s.focus:.3f} {s.focus_unit}")
        r["tilt_x"].setText(f"{tx:+.2f} deg")
        r["tilt_y"].setText(f"{ty:+.2f} deg")
        r["tilt_x"].setToolTip(f"{how}: depth change along x (rotation about the y axis)")
        r["tilt_y"].setToolTip(f"{how}: depth change along y (rotation about the x axis)")
        r["residual"].setText(f"{s.residual:.3f} {s.plane_unit}  ({how})")
        r["valid"].setText(f"{s.n_valid} / {s.n_patches}")
        self.focus_trend.setLabel("left", f"{s.focus_name} ({s.focus_unit})")
        now = time.perf_counter() - self._t0
        self._trend.append((now, s.focus, tx, ty))
        while self._trend and self._trend[0][0] < now - self.trend_seconds:
            self._trend.popleft()
        t = np.array([p[0] for p in self._trend])
        ago = now - t
        self.focus_curve.setData(ago, np.array([p[1] for p in self._trend]))
        self.tilt_x_curve.setData(ago, np.array([p[2] for p in self._trend]))
        self.tilt_y_curve.setData(ago, np.array([p[3] for p in self._trend]))

    def _show_stats(self) -> None:
        r = self.readouts
        if self.mapper is None:
            if self.estimator is None:
                r["rate"].setText("camera only (no model)")
            return
        st = self.mapper.stats()
        r["rate"].setText(f"{st.map_rate:.1f} maps/s (camera {st.input_rate:.0f} fps)")
        lat = st.latency_median
        r["latency"].setText("-" if math.isnan(lat) else f"{lat * 1e3:.0f} ms (median)")
        r["dropped"].setText(f"{st.frames_dropped} of {st.frames_in}")

    # ---------------------------------------------------------------- close
    def shutdown(self) -> None:
        """Stop live mapping and the camera, join threads; unload a core we opened."""
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        with contextlib.suppress(Exception):
            self.stop_recording()
        self._stop()
        if self._owns_core:
            with contextlib.suppress(Exception):
                self.core.unloadAllDevices()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        """Close cleanly: threads joined, camera stopped."""
        self.shutdown()
        super().closeEvent(event)


def _param_range(m: Any, name: str) -> tuple[float, float]:
    """Default colour levels for a parameter: its training range, else (0, 1)."""
    with contextlib.suppress(Exception):
        from psf_live.psf import get_model

        pm = get_model(m.psf_model)
        key = name if name in pm.param_names else pm.param_names[0]
        lo, hi = pm.ranges[pm.param_names.index(key)]
        return float(lo), float(hi)
    return 0.0, 1.0
