"""The simulated microscope's Micro-Manager configuration files (shipped in the package).

``psf_live/sim/configs/*.cfg`` is the single source of truth; the copies in the
repository's ``hardware_configs/`` folder are kept identical by a test.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_SIM_CONFIG", "SIM_CONFIGS", "sim_config_path"]

_DIR = Path(__file__).parent / "configs"

SIM_CONFIGS: dict[str, str] = {
    "psf_live_sim": "tilted printed grid, cylindrical lens (0.25 waves RMS at 45 deg)",
    "psf_live_sim_nolens": "tilted printed grid, no cylindrical lens",
}
"""Names of the shipped simulator configurations and what they contain."""

DEFAULT_SIM_CONFIG = "psf_live_sim"


def sim_config_path(name: str = DEFAULT_SIM_CONFIG) -> Path:
    """Path of a shipped simulator configuration.

    Parameters
    ----------
    name : str
        ``psf_live_sim`` (default: tilted grid with cylindrical lens) or
        ``psf_live_sim_nolens``; a trailing ``.cfg`` is accepted.

    Returns
    -------
    pathlib.Path
        The ``.cfg`` file inside the installed package.
    """
    stem = name[:-4] if name.endswith(".cfg") else name
    if stem not in SIM_CONFIGS:
        known = ", ".join(SIM_CONFIGS)
        raise ValueError(f"unknown simulator config {name!r}; choose one of: {known}")
    return _DIR / f"{stem}.cfg"
