"""Open the panel as a window (``psf-live gui``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run_gui"]


def run_gui(
    config: str | Path | None = None,
    model: str | None = None,
    stride: int = 64,
    calibration: str | Path | None = None,
    start: bool = True,
) -> int:
    """Open :class:`~psf_live.gui.PSFLivePanel` on a core and run the Qt event loop.

    Parameters
    ----------
    config : str or Path, optional
        Micro-Manager ``.cfg``; None opens the simulated scope (tilted grid,
        cylindrical lens).
    model : str, optional
        Shipped model name or weights path (default: the shipped default).
    stride : int
        Patch stride in pixels.
    calibration : str or Path, optional
        Depth calibration JSON.
    start : bool
        Start live acquisition and mapping right away.

    Returns
    -------
    int
        The Qt application's exit code.
    """
    from qtpy import QtWidgets

    from psf_live.acquire import open_core

    from ._panel import PSFLivePanel

    core = open_core(config)  # ConfigError before any window opens
    app: Any = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    panel = PSFLivePanel(core, model=model, stride=stride, calibration=calibration)
    panel._owns_core = True  # unload the devices we loaded on close
    panel.resize(1400, 900)
    panel.show()
    if start:
        panel.start_live()
    code = int(app.exec())
    panel.shutdown()
    return code
