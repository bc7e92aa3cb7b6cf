"""The live panel (qtpy + pyqtgraph): the only package of psf-live that imports Qt."""

from ._app import run_gui
from ._panel import PSFLivePanel

__all__ = ["PSFLivePanel", "run_gui"]
