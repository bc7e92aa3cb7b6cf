"""TV-RL speed on 2 CPU cores (issue 5 targets) and scikit-image richardson_lucy for scale.

Prints the median wall time of ``richardson_lucy_tv`` (20 iterations, lambda 0.1,
field extension, kernels trimmed to 99 % of their energy, the default) for

* 256x256 with 4 Zernike-defocus PSFs (2x2 grid)      target <= 50 ms
* 1024x1024 with 64 PSFs (8x8 grid, stride 128)       target <= 1.5 s

and ``skimage.restoration.richardson_lucy`` on the same 1024x1024 image with one
PSF and 20 iterations, with the ratio. Kernel rendering is timed separately
(the live path caches kernels). With ``--refine`` it also times, once per size,
``psf_live.deconv.refine_size`` (the blind PSF-size refinement of ``psf-live deconvolve
--refine``: 2 RL runs of 25 accelerated iterations for each factor scored, Zernike maps;
and with plain RL, ``accelerate=False``, 80 iterations) on a zernike1 map of the same image
(the true focus: the factors scored are those around 1).
With ``--device cuda`` TV-RL (and the refinement) run on a GPU; scikit-image stays on the
CPU.
Run: ``.venv/bin/python benchmarks/deconv_speed.py [--refine] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def _median_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    return _median_times([fn], repeats)[0]


def _median_times(fns, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Median times of several functions run in turn.

    Interleaved, so that a shared (virtual) machine's slow spells fall on all alike.
    """
    for fn in fns:
        fn()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t_fn in zip(fns, ts, strict=True):
            t = time.perf_counter()
            fn()
            t_fn.append(time.perf_counter() - t)
    return [float(np.median(t)) for t in ts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-focus", type=float, default=0.6, help="Zernike focus range (waves)")
    ap.add_argument("--refine", action="store_true", help="also time refine_size once per size")
    ap.add_argument("--device", default="cpu", help="where TV-RL runs: cpu or cuda[:N]")
    a = ap.parse_args()
    if a.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: no CUDA device here")
    torch.set_num_threads(a.threads)
    from skimage.restoration import richardson_lucy

    from psf_live.deconv import richardson_lucy_tv, trim_kernels
    from psf_live.psf import get_model, render_psf

    rng = np.random.default_rng(0)
    model = get_model("zernike1")
    print(
        f"torch {torch.__version__}, {a.threads} threads, cpu count {os.cpu_count()}, "
        f"load avg {os.getloadavg()[0]:.1f}, TV-RL on {a.device}"
        + (f" ({torch.cuda.get_device_name(a.device)})" if a.device != "cpu" else "")
    )
    results = {}
    for n, g, target in ((256, 2, 0.050), (1024, 8, 1.5)):
        centers = (np.arange(g) + 0.5) * n / g
        focus = rng.uniform(0.0, a.max_focus, (g * g, 1)).astype(np.float32)
        t = time.perf_counter()
        ks = render_psf(model, focus)
        t_render = time.perf_counter() - t
        img = rng.uniform(50, 200, (n, n)).astype(np.float32)
        k_trim = trim_kernels(ks).shape[-1]
        runs = {
            method: (
                lambda img=img, ks=ks, c=centers, m=method: richardson_lucy_tv(
                    img,
                    ks,
                    num_iter=20,
                    lambda_tv=0.1,
                    centers_y=c,
                    centers_x=c,
                    device=a.device,
                    method=m,
                )
            )
            for method in ("auto", "windows", "frame")
            # whole-frame FFTs of 64 PSFs at 1024x1024 take seconds: not timed
            if n == 256 or method != "frame"
        }
        times = dict(zip(runs, _median_times(list(runs.values()), a.repeats), strict=True))
        dt = times.pop("auto")
        results[n] = dt
        ok = "OK" if dt <= target else "MISSED"
        others = ", ".join(f"{m} {t * 1e3:.0f} ms" for m, t in times.items())
        print(
            f"TV-RL {n}x{n}, {g * g} PSFs (kernels {ks.shape[-1]} -> {k_trim} px), "
            f"20 it: {dt * 1e3:.0f} ms median (target {target * 1e3:.0f} ms) {ok} "
            f"[forced methods in the same run: {others}]; "
            f"rendering {g * g} kernels {t_render * 1e3:.0f} ms"
        )
        if a.refine:
            _time_refine(img, focus.reshape(g, g), centers, a.device)
        if n == 1024:
            one = trim_kernels(ks[:1])[0].numpy().astype(np.float64)
            img64 = (img / img.max()).astype(np.float64)
            dts = _median_time(
                lambda im=img64, k=one: richardson_lucy(im, k, num_iter=20, clip=False),
                max(1, a.repeats // 2),
            )
            dt1 = _median_time(
                lambda im=img, k=one: richardson_lucy_tv(
                    im, k, num_iter=20, lambda_tv=0.1, device=a.device
                ),
                a.repeats,
            )
            print(
                f"skimage richardson_lucy 1024x1024, 1 PSF ({one.shape[0]} px), 20 it: "
                f"{dts * 1e3:.0f} ms; ours 1 PSF {dt1 * 1e3:.0f} ms; "
                f"ours 64 PSFs / skimage 1 PSF = {dt / dts:.2f}x"
            )


def _time_refine(img: np.ndarray, focus: np.ndarray, centers: np.ndarray, device: str) -> None:
    """One timed ``refine_size`` on ``img`` with a zernike1 map of ``focus`` (camera known)."""
    from psf_live.deconv import REFINE_SCALES, refine_iterations, refine_size
    from psf_live.estimate import PSFMap
    from psf_live.psf import get_model

    pm = get_model("zernike1")
    g = focus.shape[0]
    m = PSFMap(
        params=focus[..., None].astype(np.float32),
        valid=np.ones((g, g), bool),
        valid_prob=np.ones((g, g), np.float32),
        centers_y=centers,
        centers_x=centers,
        param_names=pm.param_names,
        units=pm.units,
        psf_model="zernike1",
        frame_shape=img.shape,
        patch_size=128,
        stride=int(img.shape[0] // g),
    )
    for fast in (False, True):
        scored = []
        t = time.perf_counter()
        refine_size(
            img,
            m,
            gain=1.0,
            accelerate=fast,
            device=device,
            callback=lambda d, _: scored.append(d),  # noqa: B023
        )
        dt = time.perf_counter() - t
        n = len(scored)
        print(
            f"refine_size{'' if fast else ' (plain RL)'} {img.shape[0]}x{img.shape[1]}, "
            f"{g * g} PSFs ({n} of {len(REFINE_SCALES)} factors scored, {2 * n} RL runs of "
            f"{refine_iterations('zernike1', fast)} it.{', accelerated' if fast else ''}): "
            f"{dt:.2f} s (once)"
        )


if __name__ == "__main__":
    main()
