"""8-bit integer inference of a trained patch regressor on CPU (post-training quantisation).

The convolutions between the stem and the head run in int8 with per-channel weight scales
and activation scales calibrated once on validation patches (``python -m training.quantize``);
the stem (which sees the normalised patch, up to +-20 SD, where 8 bits would lose the fine
texture the blur is read from) and the head stay in float32. On the shipped compact
zernike3 this halves the network's time on two AVX-512 cores and leaves its test R^2
unchanged to 0.001 (figures in ``training/README.md``).

Built on PyTorch's FX graph-mode quantisation (``torch.ao.quantization``), deprecated in
favour of ``torchao`` but present in every torch this package supports; where it is missing
or the CPU has no quantised engine, :func:`int8_unavailable` says why and the estimator
keeps float32.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "INT8_FLOAT_MODULES",
    "int8_from_state",
    "int8_unavailable",
    "probe_patches",
    "quantize_int8",
]

#: Modules kept in float32, per architecture: what reads the normalised patch (the compact
#: net's stem; the spectral net's FFT front end and first convolution) and the head. Other
#: architectures have no int8 recipe yet.
INT8_FLOAT_MODULES: dict[str, tuple[str, ...]] = {
    "compact": ("features.0", "head"),
    "spectral": ("spectrum", "features.0", "head"),
}

_ENGINES = ("x86", "fbgemm")


def probe_patches(patch_size: int = 128) -> torch.Tensor:
    """Return the fixed probe batch on which reduced-precision networks are checked.

    24 raw patches: white noise, smoothed noise and binary shapes on an offset (the
    bright, flat and sharp extremes a network meets), from a fixed seed.

    Parameters
    ----------
    patch_size : int
        Patch side P.

    Returns
    -------
    torch.Tensor
        (24, 1, P, P) float32, not normalised.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, patch_size, patch_size, generator=g)
    smooth = nn.functional.avg_pool2d(x, 9, stride=1, padding=4)
    return torch.cat([x[:8], smooth[8:16] * 3, (smooth[16:] > 0).float() * 100 + 10])


def int8_unavailable() -> str | None:
    """Why int8 inference cannot run here, or ``None`` when it can.

    Returns
    -------
    str or None
        A reason (no quantised CPU engine, or torch without ``torch.ao.quantization``).
    """
    engines = set(torch.backends.quantized.supported_engines)
    if not engines.intersection(_ENGINES):
        return f"no x86/fbgemm quantised engine in this torch build ({sorted(engines)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("torch.ao.quantization.quantize_fx")
    except ImportError as e:  # removed in some future torch
        return f"torch.ao.quantization is not available ({e})"
    return None


def _set_engine() -> None:
    reason = int8_unavailable()
    if reason is not None:
        raise RuntimeError(f"int8 inference unavailable: {reason}")
    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = next(e for e in _ENGINES if e in engines)


def _prepare(net: nn.Module, float_modules: Sequence[str], patch_size: int) -> Any:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    qmap = get_default_qconfig_mapping(torch.backends.quantized.engine)
    for name in float_modules:
        qmap = qmap.set_module_name(name, None)
    example = torch.zeros(1, 1, patch_size, patch_size)
    # the tracer's per-node stack traces would import torch._dynamo (2 s on first use)
    config = importlib.import_module("torch.fx.config")
    old = getattr(config, "do_not_emit_stack_traces", None)
    if old is not None:
        setattr(config, "do_not_emit_stack_traces", True)  # noqa: B010
    try:
        return prepare_fx(copy.deepcopy(net).cpu().eval(), qmap, (example,))
    finally:
        if old is not None:
            setattr(config, "do_not_emit_stack_traces", old)  # noqa: B010


def _convert(prepared: Any, patch_size: int) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    # float modules in channels_last: oneDNN's stem convolution on NCHW weights is up to
    # 6x slower for some batch sizes (225 patches: 17 ms vs 2.8 ms on two AVX-512 cores)
    q: nn.Module = convert_fx(prepared).to(memory_format=torch.channels_last)
    # one forward here so that torch's once-per-process deprecation notice for quantised
    # tensors is raised (and ignored) now, not in the caller's first map
    with torch.inference_mode():
        q(torch.zeros(1, 1, patch_size, patch_size))
    return q


def quantize_int8(
    net: nn.Module,
    calibration: Iterable[torch.Tensor],
    float_modules: Sequence[str],
    patch_size: int = 128,
) -> nn.Module:
    """Quantise a float network to int8 with activation scales from calibration batches.

    Parameters
    ----------
    net : torch.nn.Module
        The trained float network (not modified; BatchNorm is folded in the copy).
    calibration : iterable of torch.Tensor
        Normalised patch batches (B, 1, P, P) like those it will see (validation data).
    float_modules : sequence of str
        Submodules kept in float32 (see :data:`INT8_FLOAT_MODULES`).
    patch_size : int
        Patch side P.

    Returns
    -------
    torch.nn.Module
        The quantised network (CPU only), input and output float32 as before.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _set_engine()
        prepared = _prepare(net, float_modules, patch_size)
        n = 0
        with torch.inference_mode():
            for x in calibration:
                prepared(x.float().cpu())
                n += 1
        if n == 0:
            raise ValueError("int8 calibration needs at least one batch")
        return _convert(prepared, patch_size)


def int8_from_state(
    net: nn.Module,
    state: dict[str, Any],
    float_modules: Sequence[str],
    patch_size: int = 128,
) -> nn.Module:
    """Rebuild a quantised network from its float original and a saved int8 state_dict.

    ``net``, ``float_modules`` and ``patch_size`` as for :func:`quantize_int8` when the
    state was made; ``state`` is the ``state_dict()`` of the network it returned. The
    layout is rebuilt with a dummy calibration, whose scales the saved ones replace.

    Returns
    -------
    torch.nn.Module
        The quantised network (CPU only).

    Raises
    ------
    RuntimeError
        int8 unavailable here, or the state does not match the network's int8 layout.
    """
    q = quantize_int8(net, [torch.zeros(1, 1, patch_size, patch_size)], float_modules, patch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            q.load_state_dict(state)
        except KeyError as e:  # quantised modules index the state directly
            raise RuntimeError(f"int8 state lacks {e}") from None
    return q
