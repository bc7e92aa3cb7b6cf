"""Open a pymmcore-plus core from a Micro-Manager ``.cfg`` (real scope or simulator)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

__all__ = ["ConfigError", "declares_python_devices", "default_config", "open_core"]


class ConfigError(ValueError):
    """A configuration file is missing or cannot be loaded (one-line message)."""


_PY_DEVICE = re.compile(r"^\s*(#py\s+)?pyDevice\s*,", re.MULTILINE)


def default_config() -> Path:
    """Return the default configuration: the simulated scope with a cylindrical lens."""
    from ..sim import sim_config_path

    return sim_config_path()


def _resolve(config: str | Path | None) -> Path:
    if config is None:
        return default_config()
    path = Path(config).expanduser()
    if not path.exists() and not path.is_absolute() and path.parent == Path("."):
        # A bare name of a shipped simulator config, e.g. "psf_live_sim_nolens.cfg".
        from ..sim import SIM_CONFIGS, sim_config_path

        if path.stem in SIM_CONFIGS:
            return sim_config_path(path.stem)
    return path


def declares_python_devices(text: str) -> bool:
    """Return True if a ``.cfg`` text declares Python devices (``#py pyDevice,...`` lines)."""
    return _PY_DEVICE.search(text) is not None


def _one_line(message: str) -> str:
    # UniMMCore reports "Error in configuration file '<path>' at line N: '<line>'\n<cause>"
    m = re.search(r"at line (\d+): (.*?)\n(.*)", message, re.DOTALL)
    if m:
        cause = " ".join(m.group(3).split())
        message = f"line {m.group(1)}: {m.group(2)}: {cause}"
    return " ".join(message.split())


def _check_syntax(path: Path, text: str) -> None:
    """Reject lines that are not Micro-Manager configuration commands."""
    from pymmcore_plus import CFGCommand

    known = {c.value for c in CFGCommand} | {"pyDevice"}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#py "):
            line = line[4:].strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise ConfigError(f"{path}: line {n}: binary data, not a Micro-Manager configuration")
        cmd = line.split(",", 1)[0].strip()
        if cmd not in known:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ConfigError(f"{path}: line {n}: unknown command {cmd!r} in {shown!r}")
        if cmd == "pyDevice":
            _check_py_device(path, n, line)


def _check_py_device(path: Path, n: int, line: str) -> None:
    """Check that a ``pyDevice,<label>,<module>,<class>`` line names a loadable device.

    Done before any core exists: a failed Python-device load inside
    ``UniMMCore.loadSystemConfiguration`` (pymmcore-plus 0.18) can abort the
    interpreter at exit.
    """
    import importlib

    args = [a.strip() for a in line.split(",")[1:]]
    if len(args) != 3:
        raise ConfigError(f"{path}: line {n}: pyDevice needs <label>,<module>,<class>")
    _, module_name, cls_name = args
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{path}: line {n}: cannot import Python module {module_name!r} ({e})"
        ) from e
    cls = getattr(module, cls_name, None)
    from pymmcore_plus.experimental.unicore import Device

    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise ConfigError(
            f"{path}: line {n}: {module_name}.{cls_name} is not a pymmcore-plus Python device"
        )


def _declares_cpp_devices(text: str) -> bool:
    """Tell whether the configuration loads C++ device adapters (``Device,`` lines)."""
    return any(ln.strip().startswith("Device,") for ln in text.splitlines())


@contextlib.contextmanager
def _quiet_mm_discovery(quiet: bool) -> Iterator[None]:
    """Raise the pymmcore-plus logger to CRITICAL while ``quiet`` (restored after)."""
    log = logging.getLogger("pymmcore-plus")
    old = log.level
    if quiet:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(old)


@contextlib.contextmanager
def _signals_backend(backend: str | None) -> Iterator[None]:
    """Set pymmcore-plus's ``PYMM_SIGNALS_BACKEND`` while a core is built (restored after)."""
    key = "PYMM_SIGNALS_BACKEND"
    old = os.environ.get(key)
    if backend is not None:
        os.environ[key] = backend
    try:
        yield
    finally:
        if backend is not None:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def open_core(config: str | Path | None = None, *, headless: bool = False) -> CMMCorePlus:
    """Create a core and load a Micro-Manager configuration into it.

    Parameters
    ----------
    headless : bool
        Deliver the core's and the MDA's events with psygnal, on the thread that
        emits them, even if a Qt application exists in this process. pymmcore-plus
        otherwise switches to Qt signals, which reach their listeners only through a
        running Qt event loop: a script that blocks while an MDA runs would never see
        a frame. Command-line jobs (record, monitor, demo) open their core this way.
    config : str or Path, optional
        A ``.cfg`` file. ``None`` loads the default simulated microscope
        (``psf_live_sim.cfg``: tilted printed grid, cylindrical lens); the bare
        names ``psf_live_sim.cfg`` / ``psf_live_sim_nolens.cfg`` find the shipped
        simulator configs. Files that declare Python devices (``#py pyDevice``
        lines) are loaded into pymmcore-plus's ``UniMMCore``, others into a plain
        ``CMMCorePlus`` (which needs Micro-Manager's device adapters installed,
        e.g. ``mmcore install``).

    Returns
    -------
    pymmcore_plus.CMMCorePlus
        The loaded core. When the configuration has no shutter, auto-shutter is
        switched off (acquisitions then never wait on a missing shutter); the
        simulator configs switch it off themselves and keep their shutter open.

    Raises
    ------
    ConfigError
        The file is missing, unreadable or fails to load; the one-line message
        names the file and the problem.
    """
    path = _resolve(config)
    if not path.exists():
        raise ConfigError(f"{path}: configuration file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read configuration ({type(e).__name__})") from e
    if not text.strip():
        raise ConfigError(f"{path}: empty configuration file")
    _check_syntax(path, text)
    from pymmcore_plus import CMMCorePlus

    core: CMMCorePlus
    python_only = declares_python_devices(text) and not _declares_cpp_devices(text)
    try:
        # A scope made only of Python devices needs no Micro-Manager installation:
        # silence pymmcore-plus's "could not find Micro-Manager" error for it.
        with _quiet_mm_discovery(python_only), _signals_backend("psygnal" if headless else None):
            if declares_python_devices(text):
                from pymmcore_plus.experimental.unicore import UniMMCore

                core = UniMMCore()
            else:
                core = CMMCorePlus()
            core.loadSystemConfiguration(str(path))
    except Exception as e:
        msg = _one_line(str(e)) or type(e).__name__
        if "adapter" in msg.lower() or "not a known micro-manager" in msg.lower():
            msg += " (are Micro-Manager's device adapters installed? try `mmcore install`)"
        raise ConfigError(f"{path}: {msg}") from e
    if not core.getShutterDevice():
        core.setAutoShutter(False)
    return core
