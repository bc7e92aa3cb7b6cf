"""The PSF map of one frame: per-patch parameters, validity, KNN fill, interpolation, kernels."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["KernelBank", "PSFMap", "fill_invalid", "interpolate_map", "psf_kernels"]


@dataclass
class PSFMap:
    """Spatially-variant PSF parameters of one frame (Section II-F).

    Attributes
    ----------
    params : numpy.ndarray
        (rows, cols, N) float32, PSF parameters per patch in public units (see
        ``param_names`` / ``units``). Where ``valid`` is False the values are the
        inverse-distance KNN fill from valid neighbours when ``filled`` is True,
        else the raw network output.
    valid : numpy.ndarray
        (rows, cols) bool, True where the patch is usable (validity flag a0
        predicted 0, i.e. ``valid_prob >= threshold``).
    valid_prob : numpy.ndarray
        (rows, cols) float32, the network's probability that the patch is usable.
    centers_y, centers_x : numpy.ndarray
        Pixel coordinates (float64) of the patch centres along rows / columns.
    param_names, units : tuple of str
        Names and units of the N parameters.
    psf_model : str
        PSF model name (``zernike3``, ``gaussian1``, ...).
    frame_shape : tuple of int
        (height, width) of the frame the map was computed from.
    patch_size, stride : int
        Patch geometry.
    meta : dict
        Model metadata (model card as a dict: name, arch, optics, sha256, ...).
    raw_params : numpy.ndarray or None
        The network output before the KNN fill (same shape as ``params``).
    view_params : numpy.ndarray or None
        (rows, cols, V, N) float32: with test-time augmentation, the estimate of each
        of the V (8, 4 or 2) rotated/transposed views of every patch (mapped back to
        the frame, the patch itself first); ``params`` is decoded from their mean raw
        output. None without it.
    filled : bool
        Whether invalid patches were filled.
    timings : dict
        Seconds spent per stage (``transfer``, ``inference``, ``post``) when produced
        by :class:`~psf_live.estimate.Estimator`.
    summary : FrameSummary or None
        Global focus and tilt (:func:`~psf_live.estimate.summarize`), filled in by the
        live mapper.
    """

    params: np.ndarray
    valid: np.ndarray
    valid_prob: np.ndarray
    centers_y: np.ndarray
    centers_x: np.ndarray
    param_names: tuple[str, ...]
    units: tuple[str, ...]
    psf_model: str
    frame_shape: tuple[int, int]
    patch_size: int
    stride: int
    meta: dict[str, Any] = field(default_factory=dict)
    raw_params: np.ndarray | None = None
    view_params: np.ndarray | None = None
    filled: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    summary: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return (int(self.params.shape[0]), int(self.params.shape[1]))

    @property
    def n_valid(self) -> int:
        """Number of valid patches."""
        return int(self.valid.sum())

    def param(self, name: str) -> np.ndarray:
        """Return the (rows, cols) map of one parameter, by name."""
        try:
            k = self.param_names.index(name)
        except ValueError:
            raise KeyError(
                f"{name!r} is not a parameter of {self.psf_model} ({', '.join(self.param_names)})"
            ) from None
        return self.params[:, :, k]

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for ``numpy.savez``: params, names, units, valid, valid_prob, centres.

        With test-time augmentation also ``view_params`` (rows, cols, V, N).
        """
        out = {
            "params": self.params,
            "names": np.array(self.param_names),
            "units": np.array(self.units),
            "valid": self.valid,
            "valid_prob": self.valid_prob,
            "centers_y": self.centers_y,
            "centers_x": self.centers_x,
        }
        if self.view_params is not None:
            out["view_params"] = self.view_params
        return out


def _axis_pair(names: tuple[str, ...]) -> tuple[int, int] | None:
    if "cylinder" in names and "axis" in names:
        return names.index("cylinder"), names.index("axis")
    return None


def _to_linear(params: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Replace (cylinder, axis) by (C cos 2a, C sin 2a), which has no wrap-around."""
    pair = _axis_pair(names)
    out = params.astype(np.float64, copy=True)
    if pair is not None:
        c, a = params[..., pair[0]], params[..., pair[1]]
        out[..., pair[0]] = c * np.cos(2 * a)
        out[..., pair[1]] = c * np.sin(2 * a)
    return out


def _from_linear(lin: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    pair = _axis_pair(names)
    out = lin.copy()
    if pair is not None:
        u, v = lin[..., pair[0]], lin[..., pair[1]]
        out[..., pair[0]] = np.hypot(u, v)
        out[..., pair[1]] = np.mod(0.5 * np.arctan2(v, u), math.pi)
    return out.astype(np.float32)


def fill_invalid(
    params: npt.ArrayLike,
    valid: npt.ArrayLike,
    centers_y: npt.ArrayLike,
    centers_x: npt.ArrayLike,
    k: int = 4,
    param_names: tuple[str, ...] = (),
) -> np.ndarray:
    """Fill invalid patches by inverse-distance-weighted K-nearest-neighbour regression.

    Every invalid patch receives ``sum_j w_j a_j / sum_j w_j`` over its ``k`` nearest
    valid patches ``j`` (Euclidean distance between patch centres, ``w_j = 1 / d_j``), as
    in Section II-F, so that the later overlap-add deconvolution has no boxing artefacts.
    Valid patches are returned unchanged. When ``param_names`` holds ``cylinder`` and
    ``axis``, the astigmatism is averaged as the vector ``(C cos 2a, C sin 2a)`` so that
    axes near 0 and near pi (the same orientation) do not average to pi/2.

    Parameters
    ----------
    params : array_like
        (rows, cols, N) parameters.
    valid : array_like
        (rows, cols) bool.
    centers_y, centers_x : array_like
        Patch centre coordinates along rows and columns.
    k : int
        Number of neighbours (4 in the paper); fewer when fewer valid patches exist.
    param_names : tuple of str, optional
        Parameter names, to recognise the astigmatism axis.

    Returns
    -------
    numpy.ndarray
        (rows, cols, N) float32. Unchanged when every patch is valid or none is.

    References
    ----------
    .. [1] Shajkofci and Liebling, IEEE TIP 29 (2020), Section II-F.
    """
    p = np.asarray(params, dtype=np.float32)
    v = np.asarray(valid, dtype=bool)
    if p.ndim != 3 or v.shape != p.shape[:2]:
        raise ValueError(f"params {p.shape} and valid {v.shape} do not match")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if v.all() or not v.any():
        return p.copy()
    yy, xx = np.meshgrid(
        np.asarray(centers_y, dtype=np.float64),
        np.asarray(centers_x, dtype=np.float64),
        indexing="ij",
    )
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    vf = v.ravel()
    src, dst = pts[vf], pts[~vf]
    lin = _to_linear(p, param_names).reshape(-1, p.shape[2])
    src_vals = lin[vf]
    d = np.sqrt(((dst[:, None, :] - src[None, :, :]) ** 2).sum(-1))  # (n_invalid, n_valid)
    kk = min(k, src.shape[0])
    idx = np.argpartition(d, kk - 1, axis=1)[:, :kk]
    dk = np.take_along_axis(d, idx, axis=1)
    w = 1.0 / np.maximum(dk, 1e-9)
    filled = (w[:, :, None] * src_vals[idx]).sum(1) / w.sum(1, keepdims=True)
    lin[~vf] = filled
    out = _from_linear(lin.reshape(p.shape), param_names)
    out[v] = p[v]
    return out


def interpolate_map(psf_map: PSFMap, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Interpolate the per-patch parameters to every pixel.

    Bilinear between patch centres (the hat weights of
    :func:`psf_live.psf.bilinear_weights`, the same that weight the local PSFs in the
    overlap-add model, Eq. 12), constant beyond the outermost centres. The astigmatism
    is interpolated as ``(C cos 2a, C sin 2a)``.

    Parameters
    ----------
    psf_map : PSFMap
        The map (use a filled map, or invalid patches leak raw predictions).
    shape : (int, int), optional
        Output (height, width); defaults to the frame shape of the map.

    Returns
    -------
    numpy.ndarray
        (height, width, N) float32.
    """
    from psf_live.psf import bilinear_weights

    h, w = shape or psf_map.frame_shape
    wy = bilinear_weights(h, psf_map.centers_y).astype(np.float64)  # (rows, h)
    wx = bilinear_weights(w, psf_map.centers_x).astype(np.float64)  # (cols, w)
    lin = _to_linear(psf_map.params, psf_map.param_names)  # (rows, cols, N)
    full = np.einsum("ry,rcn,cx->yxn", wy, lin, wx, optimize=True)
    return _from_linear(full, psf_map.param_names)


def _model_optics(psf_map: PSFMap, optics: Any) -> Any:
    from psf_live.psf import Optics

    if optics is not None:
        return optics
    od = psf_map.meta.get("optics")
    return Optics.from_dict(od) if isinstance(od, dict) and od else Optics()


class KernelBank:
    """A cache of rendered PSF kernels keyed by quantised parameters.

    Rendering Zernike kernels costs milliseconds each on a CPU; live maps change
    little from frame to frame, so kernels are rendered once per quantisation cell
    and reused. Parameters are first clipped to the model ranges.

    Parameters
    ----------
    psf_model : str
        PSF model name.
    size : int, optional
        Odd kernel size; the model's ``kernel_size`` by default.
    optics : psf_live.psf.Optics, optional
        Optics for Zernike models.
    device : torch.device or str, optional
        Where kernels are rendered and kept.
    step : float or sequence of float, optional
        Quantisation step per parameter, in its unit (default 0.01 for waves and
        pixels, 1 degree for axes).
    max_items : int
        Most kernels kept (least recently used are evicted).
    """

    def __init__(
        self,
        psf_model: str,
        size: int | None = None,
        optics: Any = None,
        device: Any = None,
        step: float | tuple[float, ...] | None = None,
        max_items: int = 4096,
    ) -> None:
        from psf_live.psf import Optics, get_model

        self.model = get_model(psf_model)
        self.size = int(size or self.model.kernel_size)
        self.optics = optics or Optics()
        self.device = device
        n = self.model.n_params
        if step is None:
            steps = [math.radians(1.0) if u == "rad" else 0.01 for u in self.model.units]
        elif isinstance(step, (int, float)):
            steps = [float(step)] * n
        else:
            steps = [float(x) for x in step]
        if len(steps) != n or min(steps) <= 0:
            raise ValueError(f"need {n} positive quantisation steps, got {steps}")
        self.steps = np.asarray(steps, dtype=np.float64)
        self.lo = np.array([r[0] for r in self.model.ranges], dtype=np.float64)
        self.hi = np.array([r[1] for r in self.model.ranges], dtype=np.float64)
        self.max_items = int(max_items)
        self._cache: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, params: npt.ArrayLike) -> Any:
        """Return kernels (M, size, size) for parameters (M, N), from the cache if possible."""
        import torch

        from psf_live.psf import render_psf

        p = np.asarray(params, dtype=np.float64).reshape(-1, self.model.n_params)
        if not np.isfinite(p).all():
            raise ValueError("PSF parameters contain NaN or infinity")
        q = np.rint(np.clip(p, self.lo, self.hi) / self.steps).astype(np.int64)
        keys = [tuple(int(v) for v in row) for row in q]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            vals = np.asarray(missing, dtype=np.float64) * self.steps
            vals = np.clip(vals, self.lo, self.hi)
            if self.model.kind == "gaussian":
                vals = np.maximum(vals, 1e-3)
            ks = render_psf(
                self.model, vals.astype(np.float32), self.size, self.optics, self.device
            )
            with self._lock:
                for k, kern in zip(missing, ks, strict=True):
                    self._cache[k] = kern
                while len(self._cache) > self.max_items:
                    self._cache.popitem(last=False)
        with self._lock:
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
            out = []
            for k in keys:
                kern = self._cache.get(k)
                if kern is None:  # evicted meanwhile (tiny cache): render it alone
                    kern = render_psf(
                        self.model,
                        (np.asarray(k, np.float64) * self.steps).astype(np.float32),
                        self.size,
                        self.optics,
                        self.device,
                    )[0]
                else:
                    self._cache.move_to_end(k)
                out.append(kern)
        return torch.stack(out)


def psf_kernels(
    psf_map: PSFMap,
    size: int | None = None,
    optics: Any = None,
    device: Any = None,
    bank: KernelBank | None = None,
) -> Any:
    """Render one PSF kernel per patch (batched).

    Parameters
    ----------
    psf_map : PSFMap
        The map; invalid patches should have been filled first.
    size : int, optional
        Odd kernel size; defaults to the PSF model's ``kernel_size``.
    optics : psf_live.psf.Optics, optional
        Optics for Zernike models; defaults to the optics stored with the model
        (``psf_map.meta["optics"]``) or :class:`Optics()`.
    device : torch.device or str, optional
        Where to render.
    bank : KernelBank, optional
        Use (and fill) this cache of quantised kernels instead of rendering exactly;
        ``size``, ``optics`` and ``device`` are then the bank's.

    Returns
    -------
    torch.Tensor
        (rows, cols, size, size) float32 kernels, each summing to one. Parameters
        are clipped to the model's ranges first.
    """
    from psf_live.psf import get_model, render_psf

    model = get_model(psf_map.psf_model)
    rows, cols = psf_map.shape
    flat = psf_map.params.reshape(-1, model.n_params)
    if bank is not None:
        if bank.model.name != model.name:
            raise ValueError(f"kernel bank is for {bank.model.name}, map is {model.name}")
        k = bank(flat)
    else:
        lo = np.array([r[0] for r in model.ranges], dtype=np.float32)
        hi = np.array([r[1] for r in model.ranges], dtype=np.float32)
        p = np.clip(flat, lo, hi)
        if model.kind == "gaussian":
            p = np.maximum(p, 1e-3)
        k = render_psf(model, p, size=size, optics=_model_optics(psf_map, optics), device=device)
    return k.reshape(rows, cols, k.shape[-2], k.shape[-1])


def with_params(psf_map: PSFMap, params: np.ndarray, **changes: Any) -> PSFMap:
    """Return a copy of ``psf_map`` with new parameters (and other fields changed)."""
    return replace(psf_map, params=params, **changes)
