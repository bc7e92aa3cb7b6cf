"""The estimator: a trained patch regressor turned into per-frame PSF maps (Section II-F)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._map import PSFMap, fill_invalid
from ._patches import DEFAULT_STRIDE, check_frame, gather_patches, patch_centers, patch_starts

if TYPE_CHECKING:
    import torch

__all__ = ["Estimator"]

_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# int8 outputs on the probe vs those recorded when the int8 weights were measured: RMS of
# each parameter / its range, largest validity-probability difference
_INT8_TOL = (0.01, 0.05)


def _card_meta(card: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(card) and not isinstance(card, type):
        return dataclasses.asdict(card)
    if isinstance(card, dict):
        return dict(card)
    return dict(getattr(card, "__dict__", {}))


def _cpu_has_native_bf16() -> bool:
    """Return True on CPUs with AMX-bf16 or AVX512-bf16 (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return np.asarray(x.detach().float().cpu().numpy())
    return np.asarray(x)


class Estimator:
    """Maps camera frames to spatially-variant PSF parameter maps.

    The frame is cut into 128 x 128 patches (stride 64 by default, last row/column
    aligned to the frame edge), all patches go through the network as one batch, the
    outputs are decoded to PSF parameters and a validity probability, and invalid
    patches are filled by inverse-distance KNN regression over valid neighbours.

    Parameters
    ----------
    net : torch.nn.Module
        Patch regressor, input (B, 1, P, P), output (B, n_outputs) raw codes.
    card : ModelCard
        Its model card (``psf_model``, ``param_names``, ``units``, ``patch_size``,
        ``optics``, ...), see :mod:`psf_live.models`.
    device : str or torch.device, optional
        ``"cuda"`` when available by default, else ``"cpu"``.
    stride : int
        Default patch stride in pixels.
    threshold : float
        A patch is valid when its validity probability is >= ``threshold``.
    precision : {"auto", "fp32", "bf16", "fp16", "int8"}
        Arithmetic of the network. ``"auto"``: fp16 (bf16 where supported) on CUDA; on
        CPU, the model's int8 weights when it ships them (``card.int8``, made and scored
        against float32 by ``python -m training.quantize``; convolutions in int8, stem and
        head in float32) and a check at load time finds that they reproduce the outputs
        recorded then on a probe batch (RMS within 1 % of each parameter's range,
        validity probabilities within 0.05); else
        bf16 when the CPU computes it natively (AMX / AVX512-bf16) *and* its outputs on
        the probe are within 1 % of each parameter's range (max; validity within 0.02);
        else fp32. The outcome is in :attr:`precision_check`. ``"int8"`` demands the
        int8 weights (CPU only) and raises when they are missing or fail the check.
    num_threads : int, optional
        Set torch's (process-wide) intra-op CPU thread count.
    fill : bool
        Fill invalid patches by inverse-distance KNN (Section II-F).
    k : int
        Neighbours for the fill.
    optimize : bool
        Fold BatchNorm into convolutions and use channels_last (checked against the
        unoptimised network on a random batch; kept only when they agree).
    compile : bool
        Wrap the network with ``torch.compile`` (first calls are slow).
    cuda_graphs : bool
        On CUDA, capture the network once per batch size in a CUDA graph and replay
        it (removes kernel-launch overhead for small networks; falls back to eager
        execution if capture fails).
    tta : bool or int
        Test-time augmentation for offline accuracy: every patch also goes through
        the network in its 8 rotated/transposed versions, and the outputs are averaged with
        the parameters transformed back (:func:`psf_live.nets.dihedral_mean`). Eight
        times the inference time; the live mapper leaves it off. An int picks fewer
        views (:func:`psf_live.nets.dihedral_views`): 2 (the patch and its transpose)
        or 4 (its quarter turns), at 2 or 4 times the inference. Recorded in
        ``meta["tta"]`` and ``meta["tta_views"]``, so a depth calibration made with it
        refuses maps made otherwise.
        The maps then also carry each view's estimate (``PSFMap.view_params``), whose
        disagreement measures how far a patch's estimate can be trusted.
    weights : str or Path, optional
        Where ``card`` came from (a shipped name or a ``.pt`` path), to find its int8
        weights; the shipped model named ``card.name`` by default. :meth:`load` sets it.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        card: Any,
        device: str | torch.device | None = None,
        *,
        stride: int = DEFAULT_STRIDE,
        threshold: float = 0.5,
        precision: str = "auto",
        num_threads: int | None = None,
        fill: bool = True,
        k: int = 4,
        optimize: bool = True,
        compile: bool = False,
        cuda_graphs: bool = False,
        tta: bool | int = False,
        weights: str | Path | None = None,
    ) -> None:
        import torch

        from psf_live.models import get_codec
        from psf_live.nets import TTA_VIEWS, normalize_patches

        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.card = card
        self.meta = _card_meta(card)
        views = (8 if tta else 1) if isinstance(tta, bool) else int(tta)
        if views not in TTA_VIEWS:
            raise ValueError(f"tta must be a bool or one of {TTA_VIEWS} views, got {tta!r}")
        self.tta_views = views
        self.tta = views > 1
        self.meta["tta"] = self.tta
        self.meta["tta_views"] = views
        self.psf_model: str = str(card.psf_model)
        self.param_names: tuple[str, ...] = tuple(card.param_names)
        self.units: tuple[str, ...] = tuple(card.units)
        self.patch_size: int = int(getattr(card, "patch_size", 128))
        self.stride = int(stride)
        self.threshold = float(threshold)
        self.fill = fill
        self.k = int(k)
        self.codec = get_codec(self.psf_model)
        self._normalize = normalize_patches
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("precision='int8' runs on the CPU only")
        if self.device.type == "cuda":
            if precision == "auto":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            torch.backends.cudnn.benchmark = True
        auto_cpu = self.device.type == "cpu" and precision == "auto"
        want_int8 = precision == "int8" or (auto_cpu and bool(getattr(card, "int8", None)))
        if auto_cpu or want_int8:
            precision = "fp32"
        self.precision = precision
        self.precision_check: dict[str, Any] = {}
        net = net.to(self.device).eval()
        float_net = net
        self.channels_last = False
        if optimize:
            net = self._optimize(net)
        if compile:
            net = torch.compile(net)  # type: ignore[assignment]
        self.net = net
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        if want_int8:
            self.precision_check = self._use_int8(float_net, weights, required=not auto_cpu)
        if auto_cpu and self.precision == "fp32" and _cpu_has_native_bf16():
            self.precision_check.update(self._check_bf16())
            if self.precision_check["ok"]:
                self.precision = "bf16"
        self.meta["precision"] = self.precision
        self._graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._pinned: dict[tuple[int, int], torch.Tensor] = {}
        self._patch_buf: dict[tuple[int, int, int], torch.Tensor] = {}
        self._geometry: dict[tuple[int, int, int], tuple[Any, ...]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Estimator:
        """Load a shipped model by name (default ``zernike3``) or a weights path.

        Raises
        ------
        psf_live.models.ModelLoadError
            Unknown name, missing or corrupt weights.
        """
        import torch

        from psf_live.models import DEFAULT_MODEL, load_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        spec = str(model) if model is not None else DEFAULT_MODEL
        net, card = load_model(spec, device)
        kwargs.setdefault("weights", spec)
        return cls(net, card, device, **kwargs)

    # ------------------------------------------------------------- optimisation
    def _optimize(self, net: torch.nn.Module) -> torch.nn.Module:
        import torch

        probe = torch.randn(4, 1, self.patch_size, self.patch_size, device=self.device)
        with torch.inference_mode():
            ref = net(self._normalize(probe)).float()
        candidate = net
        with contextlib.suppress(Exception):
            from torch.fx.experimental.optimization import fuse

            candidate = fuse(net)
        cl = False
        with contextlib.suppress(Exception):
            candidate = candidate.to(memory_format=torch.channels_last)
            cl = True
        try:
            with torch.inference_mode():
                x = self._normalize(probe)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = candidate(x).float()
            ok = bool(
                torch.allclose(out, ref, rtol=1e-3, atol=1e-3 * (1 + float(ref.abs().max())))
            )
        except Exception:
            ok = False
        if ok:
            self.channels_last = cl
            return candidate
        return net

    def _use_int8(
        self, float_net: torch.nn.Module, weights: str | Path | None, required: bool
    ) -> dict[str, Any]:
        """Switch to the model's int8 weights when they load and pass the probe check."""
        from psf_live.models import ModelLoadError, load_int8

        try:
            source = weights if weights is not None else self.card.name
            qnet = load_int8(source, float_net, self.card)
        except (ModelLoadError, RuntimeError) as e:
            if required:
                raise
            return {"int8": False, "int8_reason": str(e)}
        probe = self.card.int8.get("probe") or {}
        if "valid_prob" not in probe or "params" not in probe:
            reason = f"the int8 entry of {self.card.name!r} has no probe outputs to check"
            if required:
                raise ValueError(reason)
            return {"int8": False, "int8_reason": reason}
        ref = (
            np.asarray(probe["valid_prob"], dtype=np.float32),
            np.asarray(probe["params"], dtype=np.float32),
        )
        fp32 = (self.net, self.channels_last)
        self.net, self.channels_last, self.precision = qnet, True, "int8"
        check = self._compare(ref, self._probe_outputs(), rms=True)
        ok = bool(
            check["max_rel_param_diff"] <= _INT8_TOL[0]
            and check["max_valid_prob_diff"] <= _INT8_TOL[1]
        )
        result = {"int8": ok, **{f"int8_{k}": v for k, v in check.items()}}
        if not ok:
            (self.net, self.channels_last), self.precision = fp32, "fp32"
            if required:
                raise ValueError(
                    f"int8 weights of {self.card.name!r} do not reproduce the outputs recorded "
                    f"when they were measured ({check}, tolerance {_INT8_TOL})"
                )
        return result

    def _probe_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Run the fixed probe batch (:func:`psf_live.nets.probe_patches`).

        Once per patch through the network: no test-time augmentation, as
        ``training.quantize`` recorded it.
        """
        import torch

        from psf_live.nets import probe_patches

        with torch.inference_mode():
            x = self._normalize(probe_patches(self.patch_size).to(self.device))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            prob, params = self.codec.decode(self._forward(x).float())
        n = x.shape[0]
        return (
            _to_numpy(prob).astype(np.float32).reshape(n),
            _to_numpy(params).astype(np.float32).reshape(n, -1),
        )

    def _check_bf16(self) -> dict[str, Any]:
        """Compare bf16 and fp32 outputs on the probe batch (max difference)."""
        self.precision = "fp32"
        ref = self._probe_outputs()
        self.precision = "bf16"
        check = self._compare(ref, self._probe_outputs(), rms=False)
        self.precision = "fp32"
        check["ok"] = bool(
            check["max_rel_param_diff"] <= 0.01 and check["max_valid_prob_diff"] <= 0.02
        )
        return check

    def _compare(
        self,
        ref: tuple[np.ndarray, np.ndarray],
        other: tuple[np.ndarray, np.ndarray],
        rms: bool,
    ) -> dict[str, float]:
        """Compare two sets of probe outputs.

        Returns the largest parameter difference relative to its range (max or RMS over
        the probe; astigmatism in Cartesian form) and the largest validity-probability
        difference.
        """
        (v32, p32), (v16, p16) = ref, other
        lo = np.array([r[0] for r in self.meta.get("ranges", [])] or [0.0] * p32.shape[1])
        hi = np.array([r[1] for r in self.meta.get("ranges", [])] or [1.0] * p32.shape[1])
        width = np.maximum(hi - lo, 1e-6)
        names = self.param_names
        a32, a16 = p32.astype(np.float64), p16.astype(np.float64)
        if "cylinder" in names and "axis" in names:
            ic, ia = names.index("cylinder"), names.index("axis")
            for arr in (a32, a16):
                c, a = arr[:, ic].copy(), arr[:, ia].copy()
                arr[:, ic], arr[:, ia] = c * np.cos(2 * a), c * np.sin(2 * a)
            width[ia] = width[ic]
        d = np.abs(a16 - a32)
        rel = (np.sqrt(np.mean(d**2, axis=0)) if rms else d.max(axis=0)) / width
        dv = float(np.abs(v16 - v32).max())
        return {"max_rel_param_diff": float(rel.max()), "max_valid_prob_diff": dv}

    # ---------------------------------------------------------------- geometry
    def _grid(self, shape: tuple[int, int], stride: int) -> tuple[Any, ...]:
        key = (shape[0], shape[1], stride)
        g = self._geometry.get(key)
        if g is None:
            import torch

            p = self.patch_size
            sy = patch_starts(shape[0], p, stride)
            sx = patch_starts(shape[1], p, stride)
            ar = np.arange(p)
            ry = torch.as_tensor(sy[:, None] + ar[None, :], device=self.device)
            rx = torch.as_tensor(sx[:, None] + ar[None, :], device=self.device)
            g = (sy, sx, patch_centers(sy, p), patch_centers(sx, p), ry, rx)
            self._geometry[key] = g
        return g

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network forward under autocast (replaying a CUDA graph when enabled)."""
        if self.cuda_graphs:
            try:
                return self._graph_forward(x)
            except Exception:
                self.cuda_graphs = False  # capture unsupported: stay eager
        with self._autocast():
            return self.net(x)

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw outputs of normalised patches: the mean over flips when ``tta`` is on.

        Returns the (B, 1 + T) output and, with ``tta``, the (V, B, 1 + T) views.
        """
        if not self.tta:
            return self._forward(x), None
        from psf_live.nets import dihedral_views

        # each view is made contiguous there; with one channel that is already the
        # channels_last layout, so no conversion is needed
        views = dihedral_views(self._forward, x, self.codec, self.tta_views)
        return views.mean(0), views

    def _graph_forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        b = int(x.shape[0])
        entry = self._graphs.get(b)
        if entry is None:
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), self._autocast():
                for _ in range(3):
                    self.net(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self._autocast():
                static_out = self.net(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[b] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    # ------------------------------------------------------------------ mapping
    def predict_patches(self, patches: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Run a batch of raw patches (B, 1, P, P) through normalisation, net and codec.

        Returns
        -------
        valid_prob : numpy.ndarray
            (B,) float32.
        params : numpy.ndarray
            (B, N) float32 in public units.
        """
        import torch

        with torch.inference_mode():
            x = self._normalize(patches)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            raw, _ = self._infer(x)
            prob, params = self.codec.decode(raw.float())
        return (
            _to_numpy(prob).astype(np.float32).reshape(-1),
            _to_numpy(params).astype(np.float32).reshape(patches.shape[0], -1),
        )

    def map(
        self, frame: npt.ArrayLike, stride: int | None = None, fill: bool | None = None
    ) -> PSFMap:
        """Compute the PSF map of one frame.

        Parameters
        ----------
        frame : array_like
            2D image, any real dtype (uint8, uint16, float, ...), at least one patch.
        stride : int, optional
            Patch stride; defaults to the estimator's.
        fill : bool, optional
            Fill invalid patches; defaults to the estimator's setting.

        Returns
        -------
        PSFMap
            With ``timings`` in seconds: ``transfer`` (patch extraction and upload),
            ``inference`` (normalisation and network), ``post`` (decode, download, fill).

        Raises
        ------
        ValueError
            Not 2D, too small, NaN/inf, unsupported dtype.
        """
        import torch

        t0 = time.perf_counter()
        a = check_frame(frame, self.patch_size)
        stride = self.stride if stride is None else int(stride)
        if stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        fill = self.fill if fill is None else fill
        p = self.patch_size
        sy, sx, cy, cx, ry, rx = self._grid((a.shape[0], a.shape[1]), stride)
        rows, cols = sy.size, sx.size
        inplace = False
        if self.device.type == "cuda":
            key = (a.shape[0], a.shape[1])
            buf = self._pinned.get(key)
            if buf is None:
                buf = torch.empty(key, dtype=torch.float32).pin_memory()
                self._pinned[key] = buf
            np.copyto(buf.numpy(), a, casting="unsafe")
            dev = buf.to(self.device, non_blocking=True)
            patches = dev[ry[:, None, :, None], rx[None, :, None, :]].reshape(-1, 1, p, p)
        else:
            # copy the patches straight from the frame into a float32 buffer reused for
            # this geometry (a fresh 15 MB tensor costs page faults)
            bkey = (rows, cols, threading.get_ident())  # one buffer per calling thread
            cached = self._patch_buf.get(bkey)
            if cached is None:
                cached = torch.empty((rows, cols, p, p), dtype=torch.float32)
                if len(self._patch_buf) >= 4:
                    self._patch_buf.clear()
                self._patch_buf[bkey] = cached
            patches = gather_patches(a, sy, sx, p, cached).reshape(-1, 1, p, p)
            inplace = True
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = self._normalize(patches, inplace=inplace)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            raw, views = self._infer(x)
        self._sync()
        t2 = time.perf_counter()
        with torch.inference_mode():
            prob_t, params_t = self.codec.decode(raw.float())
            view_params = None
            if views is not None:
                _, vp = self.codec.decode(views.reshape(-1, views.shape[-1]))
                n = len(self.param_names)
                vp_np = _to_numpy(vp).astype(np.float32).reshape(-1, rows, cols, n)
                view_params = np.ascontiguousarray(vp_np.transpose(1, 2, 0, 3))
        prob = _to_numpy(prob_t).astype(np.float32).reshape(rows, cols)
        raw_params = _to_numpy(params_t).astype(np.float32).reshape(rows, cols, -1)
        valid = prob >= self.threshold
        params = (
            fill_invalid(raw_params, valid, cy, cx, self.k, self.param_names)
            if fill
            else raw_params
        )
        t3 = time.perf_counter()
        return PSFMap(
            params=params,
            valid=valid,
            valid_prob=prob,
            centers_y=cy,
            centers_x=cx,
            param_names=self.param_names,
            units=self.units,
            psf_model=self.psf_model,
            frame_shape=(int(a.shape[0]), int(a.shape[1])),
            patch_size=p,
            stride=stride,
            meta=self.meta,
            raw_params=raw_params,
            view_params=view_params,
            filled=bool(fill),
            timings={"transfer": t1 - t0, "inference": t2 - t1, "post": t3 - t2},
        )

    def map_stack(self, stack: npt.ArrayLike, stride: int | None = None) -> Iterator[PSFMap]:
        """Map every frame of a (T, H, W) stack, lazily."""
        s = np.asarray(stack)
        if s.ndim != 3:
            raise ValueError(f"expected a (T, H, W) stack, got {s.ndim}D data of shape {s.shape}")
        for t in range(s.shape[0]):
            yield self.map(s[t], stride)

    def warmup(self, shape: tuple[int, int] = (1024, 1024), stride: int | None = None) -> None:
        """Run a few dummy maps so that allocators, cuDNN and the caches are ready."""
        frame = np.zeros(shape, np.float32)
        frame[::7] = 1.0
        for _ in range(3):
            self.map(frame, stride)

    def __repr__(self) -> str:
        name = self.meta.get("name", "?")
        return (
            f"Estimator(model={name!r}, psf_model={self.psf_model!r}, device={self.device}, "
            f"precision={self.precision!r}, stride={self.stride}, "
            f"tta={self.tta_views if self.tta else False})"
        )
