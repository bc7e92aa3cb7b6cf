"""Render the live panel on the simulated scope offscreen to a PNG (the README screenshot).

Usage::

    QT_QPA_PLATFORM=offscreen python -m psf_live.gui._screenshot -o docs/images/panel.png
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["render_screenshot"]


def render_screenshot(
    output: str | Path,
    model: Any = None,
    stride: int = 64,
    maps: int = 12,
    size: tuple[int, int] = (1400, 900),
    overlay: str = "focus",
    calibration: str | Path | None = None,
    timeout: float = 120.0,
) -> Path:
    """Run :class:`~psf_live.gui.PSFLivePanel` on the simulated scope and grab it.

    Parameters
    ----------
    output : str or Path
        PNG to write.
    model : str, Path or estimator, optional
        Model (default: the shipped default; "no model" is shown if none loads).
    stride : int
        Patch stride.
    maps : int
        Wait for this many displayed maps (so the trends have points).
    size : tuple of int
        Window (width, height) in pixels.
    overlay : str
        Heatmap drawn over the camera image ("none", "focus", "astigmatism", "depth").
    calibration : str or Path, optional
        Depth calibration JSON.
    timeout : float
        Give up waiting for maps after this many seconds (the grab is still written).

    Returns
    -------
    Path
        The PNG written.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy import QtWidgets

    from ._panel import PSFLivePanel

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    panel = PSFLivePanel(model=model, stride=stride, calibration=calibration)
    panel.resize(*size)
    panel.overlay_combo.setCurrentText(overlay)
    panel.show()
    panel.start_live()
    t0 = time.perf_counter()
    waiting = panel.estimator is not None
    while time.perf_counter() - t0 < timeout:
        app.processEvents()
        if waiting and panel.maps_shown >= maps:
            break
        if not waiting and time.perf_counter() - t0 > 5.0:
            break
        time.sleep(0.01)
    for _ in range(5):  # let the last refresh paint
        app.processEvents()
        time.sleep(0.06)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(out)):
        raise OSError(f"{out}: could not write PNG")
    panel.close()
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m psf_live.gui._screenshot -o PNG``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="docs/images/panel.png")
    p.add_argument("-m", "--model", default=None)
    p.add_argument("-s", "--stride", type=int, default=64)
    p.add_argument("-n", "--maps", type=int, default=12)
    p.add_argument("--overlay", default="focus")
    p.add_argument("--calibration", default=None)
    a = p.parse_args(argv)
    out = render_screenshot(
        a.output,
        model=a.model,
        stride=a.stride,
        maps=a.maps,
        overlay=a.overlay,
        calibration=a.calibration,
    )
    print(out)


if __name__ == "__main__":
    main()
