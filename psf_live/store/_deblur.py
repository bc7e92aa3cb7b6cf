"""Deblur-and-save: image file -> PSF map(s) -> TV-RL -> OME-Zarr store or TIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["deblur_file", "map_from_npz"]


def _model_from_names(names: tuple[str, ...]) -> str:
    from psf_live.psf import PSF_MODELS

    for name, m in PSF_MODELS.items():
        if tuple(m.param_names) == names:
            return name
    raise ValueError(f"no PSF model has the parameters {', '.join(names)}")


def map_from_npz(path: str | Path, frame_shape: tuple[int, int]) -> list[Any]:
    """Read the PSF map(s) written by ``psf-live estimate`` (or made by hand).

    The npz holds ``params`` (rows, cols, N) or (T, rows, cols, N), ``names`` (N),
    ``valid`` (rows, cols) or (T, rows, cols), ``centers_y``, ``centers_x``;
    optional ``psf_model`` and ``view_params`` ([T,] rows, cols, V, N: the views of a map
    made with ``--tta``). Invalid patches are KNN-filled here.

    Returns
    -------
    list of psf_live.estimate.PSFMap
        One map per frame.
    """
    from psf_live.estimate._map import PSFMap, fill_invalid

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        z = dict(np.load(p, allow_pickle=False))
    except Exception as exc:
        raise ValueError(f"{p}: cannot read npz ({type(exc).__name__})") from None
    missing = [k for k in ("params", "names", "centers_y", "centers_x") if k not in z]
    if missing:
        raise ValueError(f"{p}: missing {', '.join(missing)}")
    params = np.asarray(z["params"], np.float32)
    names = tuple(str(n) for n in np.atleast_1d(z["names"]))
    if params.ndim == 3:
        params = params[None]
    if params.ndim != 4 or params.shape[-1] != len(names):
        raise ValueError(f"{p}: params of shape {params.shape} do not match names {names}")
    valid = np.asarray(z.get("valid", np.ones(params.shape[:3], bool)), bool)
    if valid.ndim == 2:
        valid = np.broadcast_to(valid, params.shape[:3])
    if not np.isfinite(params).all():
        raise ValueError(f"{p}: params contain NaN or inf")
    psf_model = str(z["psf_model"]) if "psf_model" in z else _model_from_names(names)
    from psf_live.psf import get_model

    units = tuple(get_model(psf_model).units)
    cy = np.asarray(z["centers_y"], np.float64)
    cx = np.asarray(z["centers_x"], np.float64)
    if params.shape[1:3] != (cy.size, cx.size):
        raise ValueError(
            f"{p}: a {params.shape[1:3]} grid needs {params.shape[1]}x"
            f"{params.shape[2]} centres, got {cy.size}x{cx.size}"
        )
    views = None
    if "view_params" in z:
        views = np.asarray(z["view_params"], np.float32)
        if views.ndim == 4:
            views = views[None]
        if views.ndim != 5 or views.shape[:3] != params.shape[:3] or views.shape[4] != len(names):
            raise ValueError(
                f"{p}: view_params of shape {views.shape} do not match params {params.shape}"
            )
        if not np.isfinite(views).all():
            raise ValueError(f"{p}: view_params contain NaN or inf")
    maps = []
    for t in range(params.shape[0]):
        filled = fill_invalid(params[t], valid[t], cy, cx, param_names=names)
        maps.append(
            PSFMap(
                params=filled,
                valid=np.array(valid[t]),
                valid_prob=valid[t].astype(np.float32),
                centers_y=cy,
                centers_x=cx,
                param_names=names,
                units=units,
                psf_model=psf_model,
                frame_shape=frame_shape,
                patch_size=128,
                stride=int(np.diff(cy)[0]) if cy.size > 1 else 0,
                raw_params=params[t],
                view_params=None if views is None else views[t],
                filled=True,
            )
        )
    return maps


def deblur_file(
    image: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    iterations: int = 20,
    lambda_tv: float = 0.1,
    psf_map: str | Path | None = None,
    stride: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    tta: bool = False,
    shrink: float | str = "auto",
    refine: bool = False,
    gain: float | None = None,
    offset: float = 0.0,
    read_noise: float = 0.0,
) -> dict[str, Any]:
    """Estimate (or read) the PSF map of every frame, deconvolve it and save the result.

    Parameters
    ----------
    image : str or Path
        TIFF (or .npy) 2D image or (T, H, W) stack.
    output : str or Path
        ``*.zarr`` (OME-Zarr session store: raw, deconvolved, params, valid,
        settings) or ``*.tif``/``*.tiff`` (the deconvolved float32 image/stack).
    model : str, optional
        Shipped model name or weights path (ignored with ``psf_map``).
    iterations, lambda_tv : int, float
        TV-RL settings.
    psf_map : str or Path, optional
        npz with the map(s), as written by ``psf-live estimate``.
    stride : int
        Patch stride when estimating.
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show a tqdm bar over frames.
    tta : bool
        Map with test-time augmentation (see :class:`psf_live.estimate.Estimator`).
    shrink : float or "auto"
        Lower the PSF size parameters by this many SDs of the TTA views before
        deconvolving (:func:`psf_live.deconv.shrink_uncertain`); ``"auto"``:
        :func:`psf_live.deconv.default_shrink` (1.5 for Zernike maps with views, else 0).
        The saved ``params`` are the estimates themselves.
    refine : bool
        Rescale each patch's PSF size to what the frame itself predicts best
        (:func:`psf_live.deconv.refine_size`, Poisson-thinning cross-validation;
        up to 16 extra RL runs per frame) before deconvolving; replaces ``shrink`` (whose
        ``"auto"`` then means 0; a number > 0 with it is an error). A ``.zarr``
        output gets the factors as its ``psf_scale`` array.
    gain, offset, read_noise : float
        Camera model for ``refine``: ADU per photo-electron (None: estimated from each
        frame, :func:`psf_live.psf.estimate_noise`), dark offset (ADU), read noise
        (electrons RMS).

    Returns
    -------
    dict
        ``frames``, ``grid``, ``psf_model``, ``param_names``, ``output``, ``settings`` and, with
        ``refine``, ``psf_scale_median`` (the median factor of each frame's valid patches).
    """
    from tqdm import tqdm

    from psf_live.deconv import (
        REFINE_ACCELERATION,
        REFINE_MIN_SNR,
        REFINE_SCALES,
        default_shrink,
        parse_shrink,
        refine_iterations,
        refine_size,
        richardson_lucy_tv,
        shrink_uncertain,
    )
    from psf_live.estimate import check_frame
    from psf_live.estimate._io import load_image

    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise ValueError(f"{out}: output must end in .zarr, .tif or .tiff")
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: already exists")
    shrink_k = parse_shrink(shrink)
    if refine:
        if shrink_k:
            raise ValueError(
                f"refine replaces shrink: give one of them (shrink {shrink_k:g} with refine)"
            )
        shrink_k = 0.0
        if gain is not None and not gain > 0:
            raise ValueError(f"gain must be > 0 ADU per electron, got {gain}")
        if read_noise < 0:
            raise ValueError(f"read noise must be >= 0 electrons, got {read_noise}")
        if gain is None and (offset or read_noise):
            raise ValueError(
                "offset and read noise need the gain too (without it the camera's noise "
                "is estimated from each frame)"
            )
    elif gain is not None or offset or read_noise:
        raise ValueError("gain, offset and read noise are for refine (the PSF size check)")
    if shrink_k and psf_map is None and not tta:
        raise ValueError(
            f"shrink {shrink_k:g} needs the spread of the test-time-augmentation views: "
            "map with tta (--tta)"
        )
    data = load_image(image)
    frames = data[None] if data.ndim == 2 else data
    if psf_map is None:  # the estimator needs whole patches; a given map does not
        for f in frames:
            check_frame(f)
    shape = (int(frames.shape[1]), int(frames.shape[2]))
    if psf_map is not None:
        maps = map_from_npz(psf_map, shape)
        if len(maps) == 1 and len(frames) > 1:
            maps = maps * len(frames)
        if len(maps) != len(frames):
            raise ValueError(f"{psf_map}: {len(maps)} maps for {len(frames)} frames")
        if shrink_k and maps[0].view_params is None:
            raise ValueError(
                f"{psf_map}: shrink {shrink_k:g} needs the views of a map made with "
                "`psf-live estimate --tta`; this file has none"
            )
        est = None
        model_meta: dict[str, Any] = {"source": str(psf_map)}
    else:
        from psf_live.estimate import Estimator

        est = Estimator.load(model, stride=stride, tta=tta)
        maps = []
        model_meta = dict(getattr(est, "meta", {}) or {})
    settings: dict[str, Any] = {
        "iterations": iterations,
        "lambda_tv": lambda_tv,
        "method": "TV-RL (Dey 2006)",
        "shrink": "auto" if shrink_k is None else shrink_k,
    }
    if refine:
        settings["refine"] = {
            "method": "Poisson-thinning cross-validation (psf_live.deconv.refine_size)",
            "scales": list(REFINE_SCALES),
            "min_snr": REFINE_MIN_SNR,
            "acceleration": REFINE_ACCELERATION,
            "camera": "estimated per frame"
            if gain is None
            else {"gain_adu_per_e": gain, "offset_adu": offset, "read_noise_e": read_noise},
        }
    scales: list[float] = []
    writer = None
    results: list[np.ndarray] = []
    if suffix == ".zarr":
        from . import SessionWriter

        writer = SessionWriter(
            out,
            metadata={"source": str(image), "model": model_meta, "deconvolution": settings},
            overwrite=overwrite,
        )
    try:
        for t, frame in enumerate(
            tqdm(frames, desc="deconvolve", unit="frame", disable=not progress)
        ):
            m = est.map(frame) if est is not None else maps[t]
            if est is not None:
                maps.append(m)
            if not np.isfinite(frame).all():
                raise ValueError(f"{image}: frame {t} contains NaN or inf")
            k = default_shrink(m) if shrink_k is None else shrink_k
            settings["shrink_applied"] = k
            used, scale = shrink_uncertain(m, k), None
            if refine:
                settings["refine"]["iterations"] = refine_iterations(m.psf_model)
                with tqdm(
                    total=len(REFINE_SCALES),
                    desc=f"refine PSF size, frame {t}",
                    unit="scale",
                    leave=False,
                    disable=not progress,
                ) as bar:

                    def tick(done: int, total: int, bar: Any = bar) -> None:
                        bar.update(done - bar.n)

                    used, scale = refine_size(
                        frame,
                        m,
                        gain=gain,
                        offset=offset,
                        read_noise=read_noise,
                        seed=t,
                        callback=tick,
                    )
                scales.append(float(np.median(scale[m.valid])) if m.valid.any() else 1.0)
            d = richardson_lucy_tv(
                frame.astype(np.float32),
                used,
                num_iter=iterations,
                lambda_tv=lambda_tv,
            )
            d = np.asarray(d, np.float32)
            if writer is not None:
                if t == 0:
                    writer.update_metadata(
                        psf_model=m.psf_model,
                        param_names=list(m.param_names),
                        centers_y=np.asarray(m.centers_y).tolist(),
                        centers_x=np.asarray(m.centers_x).tolist(),
                        optics=(m.meta or {}).get("optics", {}),
                        deconvolution=settings,
                    )
                writer.append(
                    frame, params=m.params, valid=m.valid, deconvolved=d, psf_scale=scale
                )
            else:
                results.append(d)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        import tifffile

        from .._atomic import atomic_output

        with atomic_output(out) as tmp:
            tifffile.imwrite(tmp, np.stack(results) if data.ndim == 3 else results[0])
    first = maps[0]
    return {
        "frames": len(frames),
        "grid": list(first.shape),
        "psf_model": first.psf_model,
        "param_names": list(first.param_names),
        "output": str(out),
        "settings": settings,
        "psf_scale_median": scales,
    }
