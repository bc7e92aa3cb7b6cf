"""pyqtgraph building blocks: an image view with a fixed-level colour bar and patch heatmaps."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore

__all__ = ["HeatmapView", "hatch_rgba", "patch_rect"]

_HATCH_PERIOD = 8
"""Pixels per hatch stripe period in the invalid-patch overlay (per patch cell: 16 px)."""


def patch_rect(centers_y: np.ndarray, centers_x: np.ndarray, stride: int) -> QtCore.QRectF:
    """Rectangle (frame pixels) covered by a patch grid drawn as one cell per patch.

    Each patch is drawn as a ``stride`` x ``stride`` cell centred on its centre, so the
    heatmap lines up with the camera image underneath.
    """
    x0 = float(centers_x[0]) - stride / 2
    y0 = float(centers_y[0]) - stride / 2
    w = float(centers_x[-1] - centers_x[0]) + stride
    h = float(centers_y[-1] - centers_y[0]) + stride
    return QtCore.QRectF(x0, y0, w, h)


def hatch_rgba(invalid: np.ndarray, cell: int = 16) -> np.ndarray:
    """RGBA image (rows*cell, cols*cell, 4) with grey diagonal hatching on invalid patches.

    Valid patches are fully transparent, so the overlay only marks what is not data.
    """
    rows, cols = invalid.shape
    yy, xx = np.mgrid[0 : rows * cell, 0 : cols * cell]
    stripes = ((xx + yy) % _HATCH_PERIOD) < _HATCH_PERIOD // 2
    mask = np.kron(invalid.astype(np.uint8), np.ones((cell, cell), np.uint8)).astype(bool)
    out = np.zeros((rows * cell, cols * cell, 4), np.uint8)
    out[mask] = (70, 70, 70, 255)
    out[mask & stripes] = (150, 150, 150, 255)
    return out


class HeatmapView(pg.GraphicsLayoutWidget):  # type: ignore[misc]
    """A titled image plot with a fixed-level, draggable colour bar.

    The levels are set once (``levels``) and changed only by the user (drag the bar
    ends or call :meth:`set_levels`); they are never auto-scaled per frame.

    Parameters
    ----------
    title : str
        Plot title.
    cmap : str
        pyqtgraph / matplotlib colour map name.
    levels : tuple of float
        Initial (low, high) colour levels.
    label : str
        Colour bar label (quantity and unit).
    """

    def __init__(
        self,
        title: str,
        cmap: str,
        levels: tuple[float, float],
        label: str,
        parent: object = None,
    ) -> None:
        super().__init__(parent=parent)
        self.setBackground("#1e1e1e")
        self.plot = self.addPlot(title=title)
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        for ax in ("left", "bottom"):
            self.plot.getAxis(ax).setStyle(tickFont=_small_font())
        self.image = pg.ImageItem(axisOrder="row-major")
        self.hatch = pg.ImageItem(axisOrder="row-major")
        self.hatch.setZValue(5)
        for item in (self.image, self.hatch):
            self.plot.addItem(item)
        self.cbar = pg.ColorBarItem(
            values=levels,
            colorMap=pg.colormap.get(cmap, source=_cmap_source(cmap)),
            label=label,
            interactive=True,
            rounding=_rounding(levels),
            width=14,
        )
        self.cbar.setImageItem(self.image, insert_in=self.plot)
        self.quantity = label
        self.message = pg.TextItem("", color="#dddddd", anchor=(0.5, 0.5))
        self.message.setFont(_small_font(11))
        self.message.setZValue(10)
        self.plot.addItem(self.message)
        self.plot.vb.sigRangeChanged.connect(lambda *_: self._place_message())

    def levels(self) -> tuple[float, float]:
        """Return the current (low, high) colour levels."""
        lo, hi = self.cbar.levels()
        return float(lo), float(hi)

    def configure(self, label: str, cmap: str, levels: tuple[float, float]) -> None:
        """Switch quantity: label, colour map and default levels (once, not per frame)."""
        if label == self.quantity:
            return
        self.quantity = label
        self.set_label(label)
        self.cbar.setColorMap(pg.colormap.get(cmap, source=_cmap_source(cmap)))
        self.cbar.rounding = _rounding(levels)
        self.set_levels(*levels)

    def set_label(self, text: str) -> None:
        """Set the colour bar label (quantity and unit)."""
        self.cbar.getAxis("left").setLabel(text)

    def set_levels(self, low: float, high: float) -> None:
        """Set the colour levels (the user's choice; frames never change them)."""
        self.cbar.setLevels((low, high))

    def set_map(self, values: np.ndarray, valid: np.ndarray, rect: QtCore.QRectF) -> None:
        """Show a (rows, cols) map; invalid patches are hatched grey, not coloured."""
        data = np.where(valid, values, np.nan).astype(np.float32)
        self.image.setImage(data, autoLevels=False, levels=self.levels())
        self.image.setRect(rect)
        self.hatch.setImage(hatch_rgba(~valid), autoLevels=False)
        self.hatch.setRect(rect)
        self.show_message("")

    def show_message(self, text: str) -> None:
        """Centre a message (e.g. "not calibrated") over the plot; "" hides it."""
        self.message.setText(text)
        self._place_message()

    def _place_message(self) -> None:
        self.message.setPos(self.plot.vb.viewRect().center())

    def clear_map(self, text: str) -> None:
        """Remove the heatmap and say why."""
        self.image.clear()
        self.hatch.clear()
        self.show_message(text)


def _small_font(size: int = 8):  # type: ignore[no-untyped-def]
    from qtpy import QtGui

    f = QtGui.QFont()
    f.setPointSize(size)
    return f


def _cmap_source(name: str) -> str | None:
    return None if name in pg.colormap.listMaps() else "matplotlib"


def _rounding(levels: tuple[float, float]) -> float:
    span = abs(levels[1] - levels[0]) or 1.0
    return float(10 ** math.floor(math.log10(span / 100)))
