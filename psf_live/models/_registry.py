"""Registry of shipped network weights: model cards, saving and checked loading."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_output

__all__ = [
    "DEFAULT_MODEL",
    "ModelCard",
    "ModelLoadError",
    "available_models",
    "int8_path",
    "load_int8",
    "load_model",
    "model_path",
    "save_int8",
    "save_model",
]

DEFAULT_MODEL = "zernike3"
_HERE = Path(__file__).resolve().parent


class ModelLoadError(RuntimeError):
    """Weights could not be loaded (missing, corrupt, hash mismatch, inconsistent card)."""


@dataclass
class ModelCard:
    """Everything needed to use and audit a set of weights (the JSON sidecar).

    Attributes
    ----------
    name, psf_model : str
        Model name and PSF model (see :data:`psf_live.psf.PSF_MODELS`).
    param_names, units : list of str
        Public parameters and their units.
    ranges : list of [lo, hi]
        The PSF model's parameter ranges; outputs are clipped to them. A recipe that
        drew some parameters from narrower intervals lists those in
        ``data_recipe["param_ranges"]``.
    arch : str
        Architecture passed to :func:`psf_live.nets.build_net`.
    n_outputs : int
        1 validity logit + internal targets (:class:`psf_live.nets.OutputCodec`).
    patch_size : int
        Patch side in pixels (128).
    optics : dict
        :class:`psf_live.psf.Optics` the Zernike kernels were rendered with.
    normalization : str
        Per-patch normalisation (:func:`psf_live.nets.normalize_patches`).
    data_recipe, metrics, training : dict
        Training data recipe, measured test metrics (``r2``, ``r2_per_param``, ...)
        and how the weights were trained (command, duration_s, steps, ...).
    sha256 : str
        SHA-256 of the weights file.
    int8 : dict
        The int8 companion of the weights, empty when there is none
        (``python -m training.quantize``): ``file`` (beside the weights), ``sha256``,
        ``float_modules`` (kept in float32), how it was calibrated and what it measured
        against float32 on the test stream.
    """

    name: str
    psf_model: str
    param_names: list[str]
    units: list[str]
    ranges: list[list[float]]
    arch: str
    n_outputs: int
    patch_size: int = 128
    optics: dict[str, Any] = field(default_factory=dict)
    normalization: str = "per-patch zero mean / unit std (psf_live.nets.normalize_patches)"
    data_recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    int8: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the card as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def for_psf_model(cls, name: str, psf_model: str, arch: str, **extra: Any) -> ModelCard:
        """Build a card whose parameters, ranges, outputs and optics come from the PSF model.

        Parameters
        ----------
        name : str
            Model name.
        psf_model : str
            PSF model (see :data:`psf_live.psf.PSF_MODELS`).
        arch : str
            Architecture passed to :func:`psf_live.nets.build_net`.
        **extra
            Other card fields (``data_recipe``, ``metrics``, ``training``...).
        """
        from psf_live.nets import get_codec
        from psf_live.psf import Optics, get_model

        pm = get_model(psf_model)
        return cls(
            name=name,
            psf_model=pm.name,
            param_names=list(pm.param_names),
            units=list(pm.units),
            ranges=[list(r) for r in pm.ranges],
            arch=arch,
            n_outputs=get_codec(pm.name).n_outputs,
            optics=Optics().to_dict(),
            **extra,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Build a card from a dict (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [
            n
            for n in ("name", "psf_model", "param_names", "units", "ranges", "arch", "n_outputs")
            if n not in d
        ]
        if missing:
            raise KeyError(f"model card lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".pt", ".json") else p


def _read_card(js: Path) -> ModelCard:
    try:
        return ModelCard.from_dict(json.loads(js.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{js}: invalid model card ({e})") from None


def _write_card(card: ModelCard, js: Path) -> None:
    with atomic_output(js) as tmp:
        tmp.write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def save_model(net: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``<path>.pt`` (state_dict) and ``<path>.json`` (card with sha256).

    Parameters
    ----------
    net : torch.nn.Module
        The network (a DistributedDataParallel wrapper is unwrapped).
    card : ModelCard
        Its card; ``sha256`` is filled in (the object is updated).
    path : str or Path
        Destination, with or without the ``.pt`` suffix.

    Returns
    -------
    Path
        The weights file.
    """
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(net, "module", net)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    pt = stem.with_suffix(".pt")
    with atomic_output(pt) as tmp:
        torch.save(state, tmp)
    card.sha256 = _sha256(pt)
    _write_card(card, stem.with_suffix(".json"))
    return pt


def model_path(name_or_path: str | Path) -> Path:
    """Resolve a shipped model name or a path to the weights file (``.pt``)."""
    s = str(name_or_path)
    p = Path(s)
    if p.suffix in (".pt", ".json") or p.parent != Path(".") or p.exists():
        return _stem(p).with_suffix(".pt")
    return _HERE / f"{s}.pt"


def available_models() -> list[str]:
    """Names of the shipped models (weights and card present in the package)."""
    return sorted(p.stem for p in _HERE.glob("*.pt") if p.with_suffix(".json").exists())


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelCard]:
    """Load weights by shipped name (e.g. ``"zernike3"``) or path, checking them.

    Parameters
    ----------
    name_or_path : str or Path
        A name from :func:`available_models` or a path to ``.pt`` (the ``.json``
        card must sit beside it).
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    net : torch.nn.Module
        In ``eval()`` mode on ``device``.
    card : ModelCard

    Raises
    ------
    ModelLoadError
        Missing or corrupt file, SHA-256 mismatch, unknown architecture or a state
        dict that does not match the card; the message names the file.
    """
    from psf_live.nets import build_net, get_codec

    pt = model_path(name_or_path)
    js = pt.with_suffix(".json")
    if not pt.exists():
        hint = f" (shipped: {', '.join(available_models()) or 'none'})"
        raise ModelLoadError(f"{pt}: weights file not found{hint}")
    if not js.exists():
        raise ModelLoadError(f"{js}: model card (JSON sidecar) not found")
    card = _read_card(js)
    digest = _sha256(pt)
    if card.sha256 and digest != card.sha256:
        raise ModelLoadError(
            f"{pt}: sha256 mismatch (file {digest[:12]}, card {card.sha256[:12]})"
        )
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{pt}: corrupt weights file ({type(e).__name__})") from None
    try:
        codec = get_codec(card.psf_model)
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{js}: unknown PSF model {card.psf_model!r} ({e})") from None
    if codec.n_outputs != card.n_outputs:
        raise ModelLoadError(
            f"{js}: card has n_outputs={card.n_outputs}, {card.psf_model} needs {codec.n_outputs}"
        )
    try:
        net = build_net(card.arch, card.n_outputs)
    except ValueError as e:
        raise ModelLoadError(f"{js}: {e}") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{pt}: not a state_dict")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise ModelLoadError(
            f"{pt}: state_dict does not match arch {card.arch!r} ({first})"
        ) from None
    return net.to(device).eval(), card


def int8_path(name_or_path: str | Path) -> Path:
    """Return the int8 weights file of a model (``<name>.int8.pt`` beside its weights)."""
    pt = model_path(name_or_path)
    return pt.with_name(pt.stem + ".int8.pt")


def save_int8(qnet: torch.nn.Module, name_or_path: str | Path, info: dict[str, Any]) -> Path:
    """Write a model's int8 weights beside it and record them in its card.

    Parameters
    ----------
    qnet : torch.nn.Module
        The quantised network (:func:`psf_live.nets.quantize_int8`).
    name_or_path : str or Path
        The float model it was made from (shipped name or path to its ``.pt``).
    info : dict
        What goes into the card's ``int8`` entry besides ``file`` and ``sha256``; must
        hold ``float_modules``.

    Returns
    -------
    Path
        The int8 weights file.
    """
    if "float_modules" not in info:
        raise ValueError("info must give the float_modules the network was quantised with")
    pt = model_path(name_or_path)
    js = pt.with_suffix(".json")
    card = _read_card(js)
    q = int8_path(pt)
    with atomic_output(q) as tmp:
        torch.save(qnet.state_dict(), tmp)
    card.int8 = {"file": q.name, "sha256": _sha256(q), "weights_sha256": card.sha256, **info}
    _write_card(card, js)
    return q


def load_int8(name_or_path: str | Path, net: torch.nn.Module, card: ModelCard) -> torch.nn.Module:
    """Load a model's int8 weights (CPU), checking them like :func:`load_model`.

    Parameters
    ----------
    name_or_path : str or Path
        The model (shipped name or path to its ``.pt``).
    net : torch.nn.Module
        Its float network as :func:`load_model` returned it (not modified).
    card : ModelCard
        Its card, whose ``int8`` entry names the file.

    Returns
    -------
    torch.nn.Module
        The quantised network.

    Raises
    ------
    ModelLoadError
        The card has no int8 weights, they were made from other float weights, or their
        file is missing, corrupt, altered, or does not fit the network; the message names
        the file.
    RuntimeError
        int8 inference is unavailable on this machine
        (:func:`psf_live.nets.int8_unavailable`).
    """
    from psf_live.nets import int8_from_state, int8_unavailable

    if not card.int8:
        raise ModelLoadError(
            f"{model_path(name_or_path).with_suffix('.json')}: model {card.name!r} has no "
            "int8 weights (make them with python -m training.quantize)"
        )
    q = model_path(name_or_path).with_name(str(card.int8.get("file", "")))
    if card.int8.get("weights_sha256") != card.sha256:
        raise ModelLoadError(
            f"{q}: int8 weights were made from other float weights (sha256 "
            f"{str(card.int8.get('weights_sha256'))[:12]}, the card's are {card.sha256[:12]})"
        )
    if not q.is_file():
        raise ModelLoadError(f"{q}: int8 weights file not found")
    digest = _sha256(q)
    if digest != card.int8.get("sha256"):
        raise ModelLoadError(
            f"{q}: sha256 mismatch (file {digest[:12]}, card {str(card.int8.get('sha256'))[:12]})"
        )
    reason = int8_unavailable()
    if reason is not None:
        raise RuntimeError(f"int8 inference unavailable: {reason}")
    try:
        with warnings.catch_warnings():  # torch's deprecation notices for quantised tensors
            warnings.simplefilter("ignore")
            state = torch.load(q, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{q}: corrupt int8 weights file ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{q}: not a state_dict")
    modules = [str(m) for m in card.int8.get("float_modules", [])]
    try:
        return int8_from_state(net, state, modules, card.patch_size)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise ModelLoadError(f"{q}: int8 weights do not fit {card.arch!r} ({first})") from None
