"""Table V style deconvolution benchmark (issue 5): SNR/SSIM gain over the blurry image.

Test images: 256x256 procedural fluorescence-like scenes generated here (cells with
textured cytoplasm and nuclei, filaments, puncta) - a source the training data
(training/sources.py: scikit-image photographs) never sees. Each quadrant gets its
own random PSF drawn uniformly over the degradation model's range (Z-1: focus in
waves RMS; G-1: Gaussian width in px), interpolated between quadrants by the
bilinear overlap-add model (Eq. 12), then Poisson-Gaussian noise (Eq. 10).

Methods (all 20 iterations; TV-RL with lambda 0.1 and field extension):
  gt       TV-RL with the four true PSFs
  ours     TV-RL with the CNN-estimated map (blind; only when a shipped model loads),
           with the PSF size lowered by ``--shrink`` SDs of the TTA views (``auto``, the
           default of ``psf-live deconvolve``: 1.5 for Zernike maps made with ``--tta``,
           else 0; psf_live.deconv.shrink_uncertain).
           The map has stride 128 by default: four PSFs for 256x256, as the paper did
           ("four PSFs detected with a 128x128 stride", Section III-D); ``--stride 64``
           gives 3x3 overlapping patches whose middle ones straddle quadrants
  refined  (with ``--refine known|auto``) TV-RL with the CNN map whose PSF sizes were then
           rescaled per patch by Poisson-thinning cross-validation on the frame itself
           (psf_live.deconv.refine_size; ``known``: the camera model of the benchmark's
           noise, gain 1 and the read noise; ``auto``: estimated from each image;
           ``--refine-plain``: plain RL for the scoring instead of the accelerated default)
  global   TV-RL with one PSF: the median of the CNN map (blind; needs a model)
  rl1      skimage.restoration.richardson_lucy with the true PSF of the top-left quadrant
  wiener   skimage.restoration.unsupervised_wiener with that same PSF
  gt x1.15 (with ``--psf-scales 0.85,1.15``) TV-RL with the true PSFs whose parameter is
           scaled by that factor: the error budget, i.e. how accurate a PSF estimate must
           be to keep a given share of the GT gain
Detection models (for ours/global) are crossed with degradation models as in Table V.

Run: ``.venv/bin/python benchmarks/deconv_table5.py [--n 100] [--png before_after.png]``;
``--write-scenes DIR`` writes the sharp scenes alone, for ``training.evaluate --images``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEGRADATIONS = {"Z-1": "zernike1", "G-1": "gaussian1"}
# Detection model -> shipped model names to try, first that loads wins.
DETECTIONS = {"Z-1": ("zernike1", "zernike3"), "G-1": ("gaussian1", "gaussian2")}


def scene(rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """Draw a random fluorescence-like scene in [0, 1] (float64)."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    img = np.zeros((n, n))
    tex = gaussian_filter(rng.standard_normal((n, n)), 2.0)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-12)
    for _ in range(rng.integers(4, 12)):  # cells: ellipses with textured cytoplasm + nucleus
        cy, cx = rng.uniform(0, n, 2)
        a, b = rng.uniform(12, 40, 2)
        t = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
        v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
        r2 = u**2 + v**2
        img += (r2 < 1) * rng.uniform(0.2, 0.5) * (0.5 + tex)
        img += (r2 < 0.12) * rng.uniform(0.3, 0.6)
    for _ in range(rng.integers(5, 20)):  # filaments
        p0 = rng.uniform(0, n, 2)
        d = rng.standard_normal(2)
        d /= np.linalg.norm(d)
        s = np.linspace(0, rng.uniform(30, 150), 400)
        pts = p0[None] + s[:, None] * d[None] + np.cumsum(rng.normal(0, 0.3, (400, 2)), 0)
        ok = (pts >= 0).all(1) & (pts < n).all(1)
        pi = pts[ok].astype(int)
        img[pi[:, 0], pi[:, 1]] += rng.uniform(0.3, 0.8)
    for _ in range(rng.integers(20, 80)):  # puncta
        i, j = rng.integers(0, n, 2)
        img[i, j] += rng.uniform(0.5, 2.0)
    img = gaussian_filter(img, 0.7) + 0.02
    return np.asarray(img / img.max())


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - est) ** 2).sum()))


def ssim(ref: np.ndarray, est: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, est, data_range=float(ref.max() - ref.min())))


def load_estimators(
    tta: bool = False, stride: int = 128, detect: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return one estimator per degradation.

    The model ``detect`` names for it (which must load), else the first of DETECTIONS
    that loads.
    """
    out: dict[str, Any] = {}
    try:
        from psf_live.estimate import Estimator
    except Exception:
        return out
    for det, names in DETECTIONS.items():
        if detect and det in detect:
            out[det] = Estimator.load(detect[det], stride=stride, tta=tta)
            continue
        for name in names:
            try:
                out[det] = Estimator.load(name, stride=stride, tta=tta)
                break
            except Exception:
                continue
    return out


def run(
    n_images: int,
    seed: int,
    peak: float,
    read_sigma: float,
    png: str | None,
    tta: bool = False,
    stride: int = 128,
    psf_scales: tuple[float, ...] = (),
    shrink: str = "auto",
    refine: str = "none",
    refine_plain: bool = False,
    detect: dict[str, str] | None = None,
) -> None:
    from skimage.restoration import richardson_lucy, unsupervised_wiener

    from psf_live.deconv import (
        default_shrink,
        parse_shrink,
        refine_size,
        richardson_lucy_tv,
        shrink_uncertain,
    )
    from psf_live.estimate._map import psf_kernels
    from psf_live.psf import OverlapAdd, add_noise, get_model, render_psf

    torch.set_num_threads(1)  # quality benchmark: one thread, no oversubscription
    ests = load_estimators(tta, stride, detect)
    names = ", ".join(f"{k}={v.meta.get('name', '?')}" for k, v in ests.items())
    print(
        f"{n_images} images 256x256, peak {peak} photons, read noise {read_sigma}; "
        f"CNN models: {names or 'none (ours/global skipped)'} (stride {stride})"
        f"{' with --tta' if tta else ''}; shrink {shrink}; refine {refine}"
        f"{' (plain RL scoring)' if refine_plain else ''}"
    )
    camera: dict[str, Any] = {"gain": 1.0, "read_noise": read_sigma} if refine == "known" else {}
    shrink_k = parse_shrink(shrink)  # refuse a bad --shrink before any work
    centers = np.array([64.0, 192.0])
    rows = []
    for deg, model_name in DEGRADATIONS.items():
        model = get_model(model_name)
        lo, hi = model.ranges[0]
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        scores: dict[str, list[tuple[float, float]]] = {}
        ratios: dict[str, list[float]] = {}  # CNN estimate / true parameter, per quadrant
        t0 = time.perf_counter()
        for i in range(n_images):
            x = scene(rng) * peak
            p = rng.uniform(max(lo, 0.5 if model.kind == "gaussian" else lo), hi, (4, 1))
            ks = render_psf(model, p.astype(np.float32))
            op = OverlapAdd((256, 256), centers, centers, ks)
            blurred = op.forward(torch.as_tensor(x, dtype=torch.float32)).clamp_min(0)
            y = add_noise(blurred, 1.0, read_sigma, gen).numpy()
            res: dict[str, np.ndarray] = {"blurry": y}
            res["gt"] = richardson_lucy_tv(
                y, ks, centers_y=centers, centers_x=centers, device="cpu"
            )
            for f in psf_scales:  # the true PSFs with a relative parameter error
                kf = render_psf(model, (p * f).astype(np.float32), size=ks.shape[-1])
                res[f"gt x{f:g}"] = richardson_lucy_tv(
                    y, kf, centers_y=centers, centers_x=centers, device="cpu"
                )
            s = max(float(y.max()), 1e-9)
            k0 = ks[0].numpy().astype(np.float64)
            yn = np.clip(y / s, 0, None).astype(np.float64)
            # Baselines get a reflect-padded image (their FFTs/convolutions would
            # otherwise darken or wrap the borders) and are cropped back.
            r0 = k0.shape[0] // 2
            yp = np.pad(yn, r0, mode="reflect")
            crop = (slice(r0, r0 + 256), slice(r0, r0 + 256))
            res["rl1"] = richardson_lucy(yp, k0, num_iter=20, clip=False)[crop] * s
            wien = unsupervised_wiener(yp, k0, clip=False, rng=int(rng.integers(1 << 30)))[0]
            res["wiener"] = np.asarray(wien)[crop] * s
            for det, est in ests.items():
                m = est.map(y)
                if est.psf_model == model_name and m.params.shape[:2] == (2, 2):
                    ratios.setdefault(det, []).extend(m.params[..., 0].ravel() / p[:, 0])
                sd = default_shrink(m) if shrink_k is None else shrink_k
                res[f"ours[{det}]"] = richardson_lucy_tv(y, shrink_uncertain(m, sd), device="cpu")
                if refine != "none":
                    mr, _ = refine_size(y, m, seed=i, accelerate=not refine_plain, **camera)
                    res[f"refined[{det}]"] = richardson_lucy_tv(y, mr, device="cpu")
                    if est.psf_model == model_name and m.params.shape[:2] == (2, 2):
                        ratios.setdefault(f"refined[{det}]", []).extend(
                            mr.params[..., 0].ravel() / p[:, 0]
                        )
                g = m.params.reshape(-1, m.params.shape[-1])
                gk = psf_kernels(m)
                med = np.median(g, 0)
                one = render_psf(
                    get_model(m.psf_model), med[None].astype(np.float32), size=gk.shape[-1]
                )[0]
                res[f"global[{det}]"] = richardson_lucy_tv(y, one, device="cpu")
            b_snr, b_ssim = snr_db(x, y), ssim(x, y)
            for method, out in res.items():
                if method == "blurry":
                    continue
                scores.setdefault(method, []).append(
                    (snr_db(x, out) - b_snr, ssim(x, out) - b_ssim)
                )
            if (i + 1) % 10 == 0:
                run_means = "  ".join(
                    f"{k} {np.mean([q[0] for q in v]):+.2f}" for k, v in scores.items()
                )
                print(f"  [{deg} {i + 1}/{n_images}] dSNR so far: {run_means}", flush=True)
            if png and i == 0 and deg == "Z-1":
                _png(png, x, y, res["gt"], res.get(f"ours[{next(iter(ests), '')}]"))
        dt = time.perf_counter() - t0
        print(f"\n{deg} degradation, {n_images} images ({dt:.0f} s):")
        print(f"  {'method':<14} {'dSNR (dB)':>16} {'dSSIM':>16}")
        for method, gains in scores.items():
            a = np.array(gains)
            print(
                f"  {method:<14} {a[:, 0].mean():7.2f} +- {a[:, 0].std():5.2f}"
                f"  {a[:, 1].mean():7.3f} +- {a[:, 1].std():5.3f}"
            )
            rows.append((deg, method, a[:, 0].mean(), a[:, 1].mean()))
        for key, rs in ratios.items():
            r = np.array(rs)
            name = key if "[" in key else f"ours[{key}]"
            print(
                f"  {name} parameter estimate / truth per quadrant: median "
                f"{np.median(r):.2f}, median |error| {100 * np.median(np.abs(r - 1)):.0f} %"
            )
        gt = next(r[2] for r in rows if r[0] == deg and r[1] == "gt")
        for det in ests:
            others = [
                r[2] for r in rows if r[0] == deg and r[1] in ("rl1", "wiener", f"global[{det}]")
            ]
            for kind in ("ours", "refined"):
                got = [r[2] for r in rows if r[0] == deg and r[1] == f"{kind}[{det}]"]
                if got:
                    print(
                        f"  {kind}[{det}] reaches {100 * got[0] / gt:.0f} % of the GT gain "
                        f"(target >= 90 %), beats baselines: {all(got[0] > o for o in others)}"
                    )


def _png(path: str, x: np.ndarray, y: np.ndarray, gt: np.ndarray, ours: Any) -> None:
    import imageio.v3 as iio

    panels = [x, y, gt] + ([ours] if ours is not None else [])
    hi = float(np.percentile(x, 99.8))
    row = np.concatenate(
        [np.pad(np.clip(p / hi, 0, 1), ((4, 4), (4, 4)), constant_values=1) for p in panels], 1
    )
    iio.imwrite(path, (row * 255).astype(np.uint8))
    names = "object | blurry (Z-1 per quadrant) | TV-RL true PSFs" + (
        " | TV-RL CNN map" if ours is not None else ""
    )
    print(f"wrote {path}: {names}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--peak", type=float, default=300.0, help="photons at the brightest pixel")
    ap.add_argument("--read-sigma", type=float, default=2.0)
    ap.add_argument("--png", default=str(Path(__file__).with_name("deconv_before_after.png")))
    ap.add_argument("--tta", action="store_true", help="CNN maps with test-time augmentation")
    ap.add_argument("--stride", type=int, default=128, help="patch stride of the CNN map")
    ap.add_argument(
        "--psf-scales",
        default="",
        help="comma-separated factors, e.g. 0.85,1.15: also TV-RL with the true PSF "
        "parameter scaled by each (the accuracy a blind estimate needs)",
    )
    ap.add_argument(
        "--shrink",
        default="auto",
        help="ours: lower the PSF size by this many SDs of the TTA views (needs --tta "
        "unless 0); auto: 1.5 for Zernike maps with --tta, else 0",
    )
    ap.add_argument(
        "--refine-plain",
        action="store_true",
        help="with --refine: plain RL for the scoring (refine_size(..., accelerate=False), "
        "the default of the 26th stop)",
    )
    ap.add_argument(
        "--refine",
        choices=("none", "known", "auto"),
        default="none",
        help="also TV-RL with the map's PSF sizes refined on each image by Poisson-thinning "
        "cross-validation (psf-live deconvolve --refine), with the benchmark's camera model "
        "(known) or one estimated from the image (auto)",
    )
    ap.add_argument(
        "--detect",
        default="",
        metavar="DEG=MODEL,...",
        help="the network that maps each degradation, e.g. Z-1=zernike3 or Z-1=runs/x.pt "
        "(default: zernike1 for Z-1, gaussian1 for G-1)",
    )
    ap.add_argument(
        "--write-scenes",
        default="",
        metavar="DIR",
        help="only write --n sharp scenes (float32 TIFF) to DIR and stop: held-out images "
        "for `python -m training.evaluate --images DIR --images-only`",
    )
    a = ap.parse_args()
    if a.write_scenes:
        import tifffile

        out = Path(a.write_scenes)
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(a.seed)
        for i in range(a.n):
            tifffile.imwrite(out / f"scene_{i:03d}.tif", scene(rng).astype(np.float32))
        print(f"wrote {a.n} scenes to {out}")
        return
    scales = tuple(float(v) for v in a.psf_scales.split(",") if v.strip())
    pairs = [kv.partition("=") for kv in a.detect.split(",") if kv.strip()]
    detect = {deg.strip(): name.strip() for deg, _, name in pairs}
    if not set(detect) <= set(DEGRADATIONS) or not all(detect.values()):
        ap.error(
            f"--detect: expected DEG=MODEL with DEG in {', '.join(DEGRADATIONS)}, got {a.detect!r}"
        )
    run(
        a.n,
        a.seed,
        a.peak,
        a.read_sigma,
        a.png or None,
        a.tta,
        a.stride,
        scales,
        a.shrink,
        a.refine,
        a.refine_plain,
        detect,
    )


if __name__ == "__main__":
    main()
