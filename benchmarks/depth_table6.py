"""Table VI: depth of a tilted printed grid through a cylindrical lens (Section III-E).

Simulated scope (psf_live.sim): 1024 x 1024 px of 0.64 um (655 um field), 10x / 0.25 NA,
cylindrical lens 0.25 waves RMS at 45 deg, printed grid (200 um squares), tilted along the
field diagonal (``--tilt-axis xy``, the default) with the in-focus line through the centre,
so that the depth ranges are the paper's (Section III-E: 48.2, 94.7 and 159.9 um at 3, 6
and 10 deg; here 48.5, 97.4 and 163.3 um); ``--tilt-axis x`` tilts along x (34.3, 68.8 and
115.4 um, the benchmark of the earlier stops). Every image gets fresh camera noise and a
fresh random grid offset. The calibration (psf_live.depth.fit_calibration) is fitted on
some images of the 3, 6 and 10 deg tilts and tested on the others, and on tilts never
used for calibration (4, 8 and -6 deg).

Per tilt (test images only): R^2 of estimated vs true depth over the valid patches,
absolute error (um, mean +- sd), relative error (% of the depth range of the field, from
corner to corner along the tilt) and whether the fitted plane has the right tilt sign (its
tilt along the tilt axis, ``PlaneTilt.along``).

    .venv/bin/python benchmarks/depth_table6.py                     # trained zernike3
    .venv/bin/python benchmarks/depth_table6.py --ground-truth-maps # pipeline check
    .venv/bin/python benchmarks/depth_table6.py --model zernike3-lens45 --tta --clean \
        --smooth 1 --curved 3000,-3000 --curved-tilt 3 --cache DIR  # README's figures
    .venv/bin/python benchmarks/depth_table6.py ... --tilt-axis x   # tilted along x

A table of the error against the smoothing radius (``smooth_depth``, the ``depth``
command's ``--smooth``) follows the main one, on the test planes and, with ``--curved``,
on grids bent to those radii of curvature (um), where the smoothing's bias shows.

A specimen is not the grid: ``--other-samples cells,points`` maps tilted fields of the
simulator's other samples with the grid's calibration, and ``--rescale-steps`` adds the
calibration rescaled for each from focus steps of one flat field of it (``psf-live
rescale-depth``); ``--sample`` runs the whole benchmark on another sample.

    .venv/bin/python benchmarks/depth_table6.py --model zernike3-lens45 --tta --clean \
        --smooth 1 --cache DIR --other-samples grid,cells,points \
        --rescale-steps=-15,-10,-5,0,5,10,15                          # README, "On a specimen"

One image set's verdict can flip with its noise: ``--repeats N`` repeats the whole
experiment (fresh images, calibration and test) with seeds ``--seed`` to ``--seed + N - 1``
and prints each tilt's error on every set, their pooled figures and the verdict on the
pooled ones (the exit status then follows the pooled verdict).

    .venv/bin/python benchmarks/depth_table6.py --model zernike3-lens45 --tta --clean \
        --smooth 2 --repeats 4 --cache DIR                            # README, repeats

PNGs (``--out``): the depth map of one test image next to the truth, and estimated vs
true depth for all test patches.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from psf_live.depth import (
    FEATURE_SETS,
    DepthCalibration,
    beyond_reach,
    beyond_spread,
    clean_depth,
    depth_full,
    depth_map,
    fit_calibration,
    sample_plane,
    smooth_depth,
    synthetic_psf_map,
    true_depth_grid,
)
from psf_live.estimate import patch_centers, patch_starts
from psf_live.psf import TILT_AXES, TiltAxis, tilt_direction

PX = 0.64
SHAPE = (1024, 1024)
CAL_TILTS = (3.0, 6.0, 10.0)
EXTRA_TILTS = (4.0, 8.0, -6.0)


# -- tiny PNG plotter (PIL only) ---------------------------------------------------------


def _colormap(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Diverging blue-white-red map; NaN -> grey. Returns uint8 RGB."""
    t = np.clip((v - lo) / max(hi - lo, 1e-9), 0, 1)
    r = np.where(t < 0.5, 2 * t, 1.0)
    g = np.where(t < 0.5, 2 * t, 2 - 2 * t)
    b = np.where(t < 0.5, 1.0, 2 - 2 * t)
    rgb = np.stack([r, g, b], -1) * 255
    rgb[~np.isfinite(v)] = 128
    return rgb.astype(np.uint8)


def _text(draw: Any, xy: tuple[int, int], s: str) -> None:
    draw.text(xy, s, fill=(0, 0, 0))


def save_depth_pair(est: np.ndarray, truth: np.ndarray, path: Path, title: str) -> None:
    """Estimated and true depth maps side by side with one colour scale."""
    from PIL import Image, ImageDraw

    lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))
    s = 2  # downsample 1024 -> 512
    a = _colormap(est[::s, ::s], lo, hi)
    b = _colormap(truth[::s, ::s], lo, hi)
    h, w = a.shape[:2]
    bar = _colormap(np.linspace(hi, lo, h)[:, None].repeat(20, 1), lo, hi)
    canvas = Image.new("RGB", (2 * w + 120, h + 40), "white")
    canvas.paste(Image.fromarray(a), (0, 30))
    canvas.paste(Image.fromarray(b), (w + 10, 30))
    canvas.paste(Image.fromarray(bar), (2 * w + 30, 30))
    d = ImageDraw.Draw(canvas)
    _text(d, (5, 5), f"estimated depth (um) - {title}")
    _text(d, (w + 15, 5), "true depth (um)")
    _text(d, (2 * w + 55, 30), f"{hi:+.0f}")
    _text(d, (2 * w + 55, 30 + h - 12), f"{lo:+.0f}")
    _text(d, (2 * w + 55, 30 + h // 2 - 6), "0")
    canvas.save(path)


def save_scatter(
    groups: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, size: int = 560
) -> None:
    """Estimated vs true depth, one colour per tilt, with the identity line."""
    from PIL import Image, ImageDraw

    allv = np.concatenate([np.concatenate([t, e]) for t, e in groups.values()])
    lim = float(np.nanmax(np.abs(allv))) * 1.05
    m = 50
    img = Image.new("RGB", (size + 160, size + 2 * m), "white")
    d = ImageDraw.Draw(img)

    def xy(t: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return m + (t + lim) / (2 * lim) * size, m + (lim - e) / (2 * lim) * size

    d.rectangle([m, m, m + size, m + size], outline=(0, 0, 0))
    d.line([m, m + size, m + size, m], fill=(160, 160, 160))
    for v in np.linspace(-lim, lim, 5):
        px, py = xy(np.array([v]), np.array([v]))
        d.line([px[0], m + size, px[0], m + size + 5], fill=(0, 0, 0))
        _text(d, (int(px[0]) - 12, m + size + 8), f"{v:.0f}")
        d.line([m - 5, py[0], m, py[0]], fill=(0, 0, 0))
        _text(d, (5, int(py[0]) - 6), f"{v:.0f}")
    _text(d, (m + size // 2 - 40, m + size + 25), "true depth (um)")
    _text(d, (m, 15), "estimated depth (um)")
    colors = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
    ]
    for k, (name, (t, e)) in enumerate(groups.items()):
        c = colors[k % len(colors)]
        px, py = xy(t, e)
        for x0, y0 in zip(
            px[:: max(1, px.size // 1500)], py[:: max(1, py.size // 1500)], strict=True
        ):
            d.ellipse([x0 - 1.5, y0 - 1.5, x0 + 1.5, y0 + 1.5], fill=c)
        d.rectangle([size + m + 15, m + 18 * k, size + m + 25, m + 18 * k + 10], fill=c)
        _text(d, (size + m + 30, m + 18 * k - 1), name)
    img.save(path)


# -- data --------------------------------------------------------------------------------


def _curved_truth(full: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> dict[str, Any]:
    """Return the true depth of a curved sample at the patch centres and its range."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    grid = map_coordinates(np.asarray(full, dtype=np.float64), [yy, xx], order=1)
    return {"truth_grid": grid, "range_um": float(np.ptp(full))}


def sim_scope(args: Any, sample: str, seed: int, **scene: Any) -> Any:
    """Return the benchmark's simulated scope, with its lens and tilt axis.

    The cylindrical lens at ``--lens-axis-deg``, tilts along ``--tilt-axis``, and
    ``scene`` set on top (``SimMicroscope.update``).
    """
    import torch

    from psf_live.sim import SimMicroscope, SimSettings

    torch.set_num_threads(args.threads)
    scope = SimMicroscope(SimSettings(shape=SHAPE, sample=sample), seed=seed)
    scope.update(
        cylinder=0.25,
        cylinder_axis=math.radians(args.lens_axis_deg),
        tilt_axis=args.tilt_axis,
        **scene,
    )
    return scope


def make_images(
    tilts: list[float],
    seed: int,
    ground_truth: bool,
    args: Any,
    curvature_um: float = 0.0,
    sample: str = "grid",
) -> list[dict[str, Any]]:
    """Images (or ground-truth maps) of the tilted grid with fresh noise and offsets.

    ``curvature_um``: radius of curvature of the grid (0: a plane); the true depth at
    the patch centres (``truth_grid``) and its range over the field then come along.
    ``sample``: the simulator's sample in place of the grid (``cells``, ``points``).
    """
    rng = np.random.default_rng(seed)
    cy = patch_centers(patch_starts(SHAPE[0]))
    cx = patch_centers(patch_starts(SHAPE[1]))
    out = []
    if ground_truth:
        meta = {"name": "ground-truth", "sha256": ""}
        for t in tilts:
            d = true_depth_grid(cy, cx, t, args.tilt_axis, PX, SHAPE)
            extra: dict[str, Any] = {}
            if curvature_um:
                from psf_live.sim import Scene
                from psf_live.sim import depth_map as sim_depth

                scene = Scene(
                    tilt_deg=t, tilt_axis=args.tilt_axis, curvature_radius_um=curvature_um
                )
                extra = _curved_truth(sim_depth(SHAPE, 0.0, scene, PX), cy, cx)
                d = extra["truth_grid"]
            m = synthetic_psf_map(
                d,
                cy,
                cx,
                SHAPE,
                focus_noise=args.gt_focus_noise,
                axis_noise=args.gt_axis_noise,
                invalid_fraction=0.05,
                outlier_fraction=args.gt_outliers,
                lens_axis=math.radians(args.lens_axis_deg),
                rng=rng,
                meta=meta,
            )
            out.append({"tilt": t, "map": m, **extra})
        return out
    from psf_live.estimate import Estimator

    scope = sim_scope(args, sample, seed, curvature_radius_um=curvature_um)
    tta = args.tta_views if args.tta else False
    est = None if args.render_only else Estimator.load(args.model, tta=tta, stride=args.stride)
    try:
        from tqdm import tqdm

        it: Any = tqdm(tilts, desc="images", file=sys.stderr)
    except ImportError:
        it = tilts
    cache = Path(args.cache) if args.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(it):
        off = (float(rng.uniform(0, 200)), float(rng.uniform(0, 200)))
        sseed = int(rng.integers(1_000_000))
        curved = f"_c{curvature_um:g}" if curvature_um else ""
        along = "" if args.tilt_axis == "x" else f"_{args.tilt_axis}"
        lens = "" if args.lens_axis_deg == 45 else f"_lens{args.lens_axis_deg:g}"
        kind = "" if sample == "grid" else f"_{sample}"
        name = f"s{seed}_{i:03d}_{t:+g}_{args.exposure_ms:g}{curved}{along}{lens}{kind}.npy"
        f = cache / name if cache else None
        scope.update(tilt_deg=float(t), sample_offset_um=off, sample_seed=sseed)
        if f is not None and f.exists():
            frame = np.load(f)
        else:
            frame = scope.snap(0.0, args.exposure_ms)
            if f is not None:
                np.save(f, frame)
        m = est.map(frame) if est is not None else None
        item = {"tilt": t, "map": m, "frame": frame, "truth_full": scope.depth_map(0.0)}
        if curvature_um:
            item.update(_curved_truth(item["truth_full"], cy, cx))
        out.append(item)
    return out


def depth_range_um(tilt: float, axis: TiltAxis) -> float:
    """Depth range of a plane over the whole field, corner to corner along the tilt."""
    corners = true_depth_grid([0, SHAPE[0] - 1], [0, SHAPE[1] - 1], tilt, axis, PX, SHAPE)
    return float(np.ptp(corners))


def profile_bins(shape: tuple[int, int], axis: TiltAxis) -> np.ndarray:
    """Index of each patch along the tilt (x: its column, y: its row, xy: row + column)."""
    dy, dx = tilt_direction(axis)
    rows, cols = np.indices(shape)
    return np.asarray(rows * (dy != 0) + cols * (dx != 0))


def evaluate(
    items: list[dict[str, Any]],
    cal: DepthCalibration,
    clean: bool = False,
    smooth: int = 0,
    axis: TiltAxis = "xy",
    edges: Literal["shift", "cut"] = "shift",
) -> dict[float, dict[str, Any]]:
    """Per-tilt figures over the test items (``smooth``: local planes, smooth_depth)."""
    res: dict[float, dict[str, Any]] = {}
    for it in items:
        m = it["map"]
        est = depth_map(m, cal, limits=not clean)  # as psf_live.depth.frame_depth
        if clean:  # every valid patch checked against its neighbours, then the limits
            est = clean_depth(est, m.centers_y, m.centers_x)
            est = np.where(beyond_reach(m, cal) | beyond_spread(m, cal), np.nan, est)
        if smooth:
            est = smooth_depth(est, m.centers_y, m.centers_x, radius=smooth, edges=edges)
        truth = it.get("truth_grid")
        if truth is None:
            truth = true_depth_grid(m.centers_y, m.centers_x, it["tilt"], axis, PX, SHAPE)
        ok = np.isfinite(est)
        plane = sample_plane(est, m.centers_y, m.centers_x, cal, SHAPE)  # as map_depth
        r = res.setdefault(
            it["tilt"], {"t": [], "e": [], "tilt_est": [], "sign_ok": 0, "n": 0, "n_all": 0}
        )
        if "range_um" in it:  # a curved sample: the truth's range over the field
            r["range_um"] = it["range_um"]
        r["n_all"] += est.size
        r["t"].append(truth[ok])
        r["e"].append(est[ok])
        # the paper's Fig. 5 (f): depth projected across the tilt (mean per column for a
        # tilt along x, per anti-diagonal of the patch grid for xy)
        bins = profile_bins(est.shape, axis)
        for b in np.unique(bins[ok]):
            sel = ok & (bins == b)
            r.setdefault("pt", []).append(float(truth[sel].mean()))
            r.setdefault("pe", []).append(float(est[sel].mean()))
        along = plane.along(axis)
        r["tilt_est"].append(along)
        r["sign_ok"] += int(np.sign(along) == np.sign(it["tilt"]))
        r["n"] += 1
        it["est"] = est
    for tilt, r in res.items():
        t = np.concatenate(r["t"])
        e = np.concatenate(r["e"])
        err = np.abs(e - t)
        rng_um = r.get("range_um") or depth_range_um(tilt, axis)
        perr = np.abs(np.asarray(r["pe"]) - np.asarray(r["pt"]))
        r.update(
            prof_abs=float(perr.mean()),
            prof_sd=float(perr.std()),
            prof_rel=100 * float(perr.mean()) / rng_um,
        )
        r.update(
            T=t,
            E=e,
            r2=1 - float(np.sum((t - e) ** 2)) / float(np.sum((t - t.mean()) ** 2)),
            abs_mean=float(err.mean()),
            abs_sd=float(err.std()),
            rel_mean=100 * float(err.mean()) / rng_um,
            rel_sd=100 * float(err.std()) / rng_um,
            range_um=rng_um,
            n_patches=int(t.size),
            coverage=100 * t.size / r["n_all"],
        )
    return res


def evaluate_as_asked(
    items: list[dict[str, Any]], cal: DepthCalibration, args: Any
) -> dict[float, dict[str, Any]]:
    """:func:`evaluate` with the command line's cleaning, smoothing, axis and edges."""
    return evaluate(
        items,
        cal,
        clean=args.clean,
        smooth=args.smooth,
        axis=args.tilt_axis,
        edges=args.smooth_edges,
    )


def smoothing_table(items: list[dict[str, Any]], cal: DepthCalibration, args: Any) -> None:
    """Per-patch error vs smoothing radius on the test planes and on curved grids."""
    rows: list[tuple[str, list[dict[str, Any]], float]] = [
        ("planes 3/6/10/4/8/-6 deg", items, 0.0)
    ]
    for rc in (float(v) for v in args.curved.split(",") if v.strip()):
        curved = make_images(
            [args.curved_tilt] * args.per_curved,
            args.seed + 1,
            args.ground_truth_maps,
            args,
            rc,
            sample=args.sample,
        )
        label = f"{args.curved_tilt:+g} deg, curvature radius {rc / 1000:+g} mm"
        rows.append((label, curved, rc))
    print(
        "\nsmoothing (smooth_depth, local planes over R patches around each; the `depth` "
        "command's --smooth R): mean per-patch relative error (%), R^2 (lowest)"
    )
    span = [f"{2 * k + 1}x{2 * k + 1}, {(2 * k + 1) * args.stride * PX:.0f} um" for k in (1, 2)]
    print(f"| sample | range (um) | R = 0 | R = 1 ({span[0]}) | R = 2 ({span[1]}) |")
    print("|---|---|---|---|---|")
    for label, its, rc in rows:
        cells = []
        for k in (0, 1, 2):
            ev = evaluate(
                its, cal, clean=args.clean, smooth=k, axis=args.tilt_axis, edges=args.smooth_edges
            )
            rel = np.mean([r["rel_mean"] for r in ev.values()])
            r2 = min(r["r2"] for r in ev.values())
            cells.append(f"{rel:.2f} % (R^2 {r2:.4f})")
        rng = np.mean([it.get("range_um", 0.0) for it in its]) if rc else float("nan")
        rng_txt = f"{rng:.1f}" if rc else "per tilt"
        print(f"| {label} | {rng_txt} | " + " | ".join(cells) + " |")


def specimen_rescale(
    cal: DepthCalibration, kind: str, steps: list[float], args: Any
) -> DepthCalibration:
    """Rescale the grid's calibration from focus steps of a flat specimen of ``kind``.

    As a user would (``psf-live rescale-depth``): one field of the specimen, untilted and
    at another position than the test images, imaged at each focal-plane step.
    """
    from psf_live.depth import rescale_frames
    from psf_live.estimate import Estimator

    scope = sim_scope(
        args,
        kind,
        args.seed + 3,
        tilt_deg=0.0,
        sample_seed=args.seed + 3,
        sample_offset_um=(37.0, 91.0),
    )
    est = Estimator.load(args.model, tta=cal.tta_views)
    frames = [scope.snap(dz, args.exposure_ms) for dz in steps]
    return rescale_frames(est, frames, steps, cal)


def other_samples_table(cal: DepthCalibration, args: Any) -> None:
    """Depth of other samples with the grid's calibration, as a user measures a specimen.

    The calibration is made on the printed grid; a specimen shows other texture, and the
    network's reading of the same blur may differ with it. Every tilt of the main table,
    ``--per-other`` images each, fresh noise and sample positions; with
    ``--rescale-steps``, also with the calibration rescaled for each sample from focus
    steps of one flat field of it (:func:`specimen_rescale`).
    """
    kinds = [k.strip() for k in args.other_samples.split(",") if k.strip()]
    if not kinds:
        return
    if args.ground_truth_maps:
        print("\nother samples: skipped (ground-truth maps do not depend on the sample)")
        return
    steps = [float(v) for v in args.rescale_steps.split(",") if v.strip()]
    tilts = [t for t in (*CAL_TILTS, *EXTRA_TILTS) for _ in range(args.per_other)]
    print(
        f"\nother samples, with the grid's calibration ({args.per_other} images per tilt; "
        f"R^2, abs. error and tilt with R = {args.smooth}):"
    )
    print(
        "| sample | calibration | tilt | patches used (%) | R^2 | abs. error (um) | "
        "rel. error (%), R = 0 / 1 / 2 | est. tilt (deg) | sign right |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for kind in kinds:
        items = make_images(tilts, args.seed + 2, False, args, sample=kind)
        cals = [("grid", cal)]
        if steps:
            rc = specimen_rescale(cal, kind, steps, args)
            cals.append((f"rescaled x{rc.rescaled['factor']:.3f}", rc))
        for label, c in cals:
            evs = [
                evaluate(
                    items,
                    c,
                    clean=args.clean,
                    smooth=k,
                    axis=args.tilt_axis,
                    edges=args.smooth_edges,
                )
                for k in (0, 1, 2)
            ]
            for tilt in (*CAL_TILTS, *EXTRA_TILTS):
                r = evs[min(args.smooth, 2)][tilt]
                rel = " / ".join(f"{ev[tilt]['rel_mean']:.2f}" for ev in evs)
                te = np.asarray(r["tilt_est"])
                print(
                    f"| {kind} | {label} | {tilt:+g} | {evs[0][tilt]['coverage']:.0f} | "
                    f"{r['r2']:.4f} | {r['abs_mean']:.2f} +- {r['abs_sd']:.2f} | {rel} | "
                    f"{te.mean():+.2f} +- {te.std():.2f} | {r['sign_ok']}/{r['n']} |"
                )
            means = " / ".join(
                f"{np.mean([r['rel_mean'] for r in ev.values()]):.2f}" for ev in evs
            )
            ratio = np.mean(
                [np.mean(r["tilt_est"]) / t for t, r in evs[min(args.smooth, 2)].items()]
            )
            summary.append(f"| {kind} | {label} | {means} | {ratio:.3f} |")
    print("\nmean over the tilts:")
    print("| sample | calibration | rel. error (%), R = 0 / 1 / 2 | est. / true tilt |")
    print("|---|---|---|---|")
    print("\n".join(summary))


def split_items(
    items: list[dict[str, Any]], args: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Calibration, test and unseen-tilt items of one image set (``make_images`` order)."""
    n_main = len(CAL_TILTS) * args.per_tilt
    cal_items: list[dict[str, Any]] = []
    test_items: list[dict[str, Any]] = []
    for t in CAL_TILTS:
        group = [it for it in items[:n_main] if it["tilt"] == t]
        cal_items += group[: args.n_cal]
        test_items += group[args.n_cal :]
    return cal_items, test_items, items[n_main:]


def calibrate(
    cal_items: list[dict[str, Any]], args: Any, features: str, fit: str
) -> DepthCalibration:
    """Fit the benchmark's calibration of one model and fit on the calibration items."""
    return fit_calibration(
        [it["map"] for it in cal_items],
        [it["tilt"] for it in cal_items],
        features=features,
        pixel_size_um=PX,
        min_r2=0.0,
        fit=fit,
        axis=args.tilt_axis,
        spread_quantile=args.spread_quantile,
        deadzone=args.deadzone if args.deadzone == "auto" else float(args.deadzone),
        max_metric="auto" if args.reach == "auto" else None,
        reach_ratio=args.reach_ratio,
        lens_axis=math.radians(args.lens_axis_deg),
    )


def image_tilts(args: Any) -> list[float]:
    """Return the tilt of every image of one set: calibration tilts, then unseen ones."""
    return [t for t in CAL_TILTS for _ in range(args.per_tilt)] + [
        t for t in EXTRA_TILTS for _ in range(args.per_extra)
    ]


def repeats_table(first: dict[float, dict[str, Any]], args: Any) -> bool:
    """Repeat the experiment on ``args.repeats - 1`` more image sets; print and judge.

    ``first``: the main table's per-tilt results (seed ``args.seed``). Each further set
    has its own images (seed + k), calibration and test, as the main one. Returns whether
    the pooled figures meet the targets.
    """
    runs = [first]
    for k in range(1, args.repeats):
        items = make_images(image_tilts(args), args.seed + k, args.ground_truth_maps, args)
        cal_items, test_items, extra_items = split_items(items, args)
        cal = calibrate(cal_items, args, args.features, args.fit)
        runs.append(evaluate_as_asked(test_items + extra_items, cal, args))
    seeds = f"seeds {args.seed}-{args.seed + args.repeats - 1}"
    print(
        f"\n{args.repeats} image sets ({seeds}; each calibrated and tested on its own, "
        f"R = {args.smooth}): rel. error (%) per set, and pooled over the sets"
    )
    print(
        "| tilt | rel. error per set (%) | pooled rel. error (%) | R^2 per set (lowest) "
        "| pooled R^2 | sets <= 1 % | est. tilt (deg) | sign right |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ok_rel = ok_r2 = ok_sign = True
    for tilt in (*CAL_TILTS, *EXTRA_TILTS):
        rs = [r[tilt] for r in runs]
        t = np.concatenate([r["T"] for r in rs])
        e = np.concatenate([r["E"] for r in rs])
        rel = 100 * float(np.abs(e - t).mean()) / rs[0]["range_um"]
        r2 = 1 - float(np.sum((t - e) ** 2)) / float(np.sum((t - t.mean()) ** 2))
        n_sign = sum(r["sign_ok"] for r in rs)
        n_img = sum(r["n"] for r in rs)
        ok_rel &= rel <= 1.0
        ok_r2 &= r2 >= 0.99
        ok_sign &= n_sign == n_img
        per = " / ".join(f"{r['rel_mean']:.2f}" for r in rs)
        te = np.concatenate([r["tilt_est"] for r in rs])
        print(
            f"| {tilt:+g} | {per} | {rel:.2f} | {min(r['r2'] for r in rs):.4f} | {r2:.4f} | "
            f"{sum(r['rel_mean'] <= 1.0 for r in rs)}/{len(rs)} | {te.mean():+.2f} +- "
            f"{te.std():.2f} | {n_sign}/{n_img} |"
        )
    means = [float(np.mean([r[t]["rel_mean"] for t in r])) for r in runs]
    print("mean over the tilts per set: " + " / ".join(f"{m:.2f} %" for m in means))
    print(
        f"pooled targets: rel. error <= 1.0 % {'met' if ok_rel else 'MISSED'}; "
        f"R^2 >= 0.99 {'met' if ok_r2 else 'MISSED'}; "
        f"tilt sign always right {'met' if ok_sign else 'MISSED'}"
    )
    return ok_rel and ok_r2 and ok_sign


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ground-truth-maps",
        action="store_true",
        help="skip the network: ideal zernike3 maps + noise (pipeline check)",
    )
    ap.add_argument("--model", default="zernike3")
    ap.add_argument(
        "--tilt-axis",
        default="xy",
        choices=list(TILT_AXES),
        help="direction of the tilt: xy (field diagonal, the paper's depth ranges; default), "
        "x or y",
    )
    ap.add_argument("--tta", action="store_true", help="map with test-time augmentation")
    ap.add_argument(
        "--tta-views",
        type=int,
        default=8,
        choices=[2, 4, 8],
        help="with --tta: views per patch (8 all, 4 quarter turns, 2 patch + transpose)",
    )
    ap.add_argument("--features", default="signed", choices=list(FEATURE_SETS))
    ap.add_argument("--fit", default="forward", choices=["inverse", "forward"])
    ap.add_argument(
        "--spread-quantile",
        type=float,
        default=0.9,
        help="with --tta: keep patches whose views agree as well as this share of the "
        "calibration patches (fit_calibration's spread_quantile; 1 keeps all)",
    )
    ap.add_argument(
        "--clean",
        action="store_true",
        help="drop patches that disagree with their neighbours (clean_depth)",
    )
    ap.add_argument(
        "--deadzone",
        default="auto",
        help="dead zone of the calibration: auto (fitted, the default) or a width (0: none)",
    )
    ap.add_argument(
        "--reach",
        default="auto",
        choices=["auto", "none"],
        help="leave out patches beyond the network's reach (fit_calibration's max_metric: "
        "auto, the default) or keep them (none)",
    )
    ap.add_argument(
        "--reach-ratio",
        type=float,
        default=0.5,
        help="with --reach auto: fit_calibration's reach_ratio (0.5: where the metric turns "
        "flat; 0.85: where it first bends)",
    )
    ap.add_argument(
        "--stride",
        type=int,
        default=64,
        help="patch stride of the maps (px; the live default 64); calibration and test alike",
    )
    ap.add_argument(
        "--smooth",
        type=int,
        default=0,
        help="local-plane smoothing of the depth maps over this many patches (smooth_depth; "
        "the `depth` command's --smooth) for the main table",
    )
    ap.add_argument(
        "--curved",
        default="",
        help="radii of curvature (um, comma-separated, e.g. 2000,-2000): also image curved "
        "grids and print what the smoothing costs on them",
    )
    ap.add_argument("--curved-tilt", type=float, default=6.0, help="tilt of the curved grids")
    ap.add_argument("--per-curved", type=int, default=3, help="images per curvature")
    ap.add_argument("--per-tilt", type=int, default=10, help="images per calibration tilt")
    ap.add_argument("--n-cal", type=int, default=4, help="of which used for calibration")
    ap.add_argument("--per-extra", type=int, default=3, help="images per extra tilt")
    ap.add_argument(
        "--sample",
        default="grid",
        choices=["grid", "cells", "points"],
        help="the simulator's sample for calibration and the main table (default: the "
        "printed grid, as the paper)",
    )
    ap.add_argument(
        "--other-samples",
        default="",
        help="simulator samples (comma-separated: cells, points) to map with the grid's "
        "calibration at every tilt: the depth of a specimen, not of the calibration target",
    )
    ap.add_argument("--per-other", type=int, default=3, help="images per tilt and other sample")
    ap.add_argument(
        "--rescale-steps",
        default="",
        help="with --other-samples: focal-plane steps (um, e.g. -15,-10,-5,0,5,10,15) of a "
        "flat field of each sample that rescale the grid's calibration for it "
        "(psf-live rescale-depth); its rows follow the grid calibration's",
    )
    ap.add_argument("--exposure-ms", type=float, default=10.0)
    ap.add_argument(
        "--lens-axis-deg",
        type=float,
        default=45.0,
        help="axis of the simulated cylindrical lens (degrees from +x; the grid's lines run "
        "along x and y)",
    )
    ap.add_argument(
        "--smooth-edges",
        choices=("shift", "cut"),
        default="shift",
        help="smoothing windows at the map's border: shifted inwards to their full size "
        "(smooth_depth's default) or cut by the border (before 2026-12-04's ninth stop)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="image sets (seeds --seed, --seed + 1, ...), each calibrated and tested on its "
        "own; with more than one, the pooled figures are printed and judged",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gt-focus-noise", type=float, default=0.01, help="waves RMS")
    ap.add_argument("--gt-axis-noise", type=float, default=0.05, help="radians")
    ap.add_argument("--gt-outliers", type=float, default=0.0, help="fraction of wild patches")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the PNGs")
    ap.add_argument("--cache", default="", help="folder to keep/reuse the rendered frames")
    ap.add_argument("--render-only", action="store_true", help="only fill --cache")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.repeats > 1 and args.sample != "grid":
        ap.error("--repeats repeats the grid's experiment; drop --sample")

    t0 = time.perf_counter()
    items = make_images(
        image_tilts(args), args.seed, args.ground_truth_maps, args, sample=args.sample
    )
    t_img = time.perf_counter() - t0
    if args.render_only:
        for k in range(1, args.repeats):
            items += make_images(image_tilts(args), args.seed + k, args.ground_truth_maps, args)
        print(f"rendered {len(items)} frames into {args.cache} ({time.perf_counter() - t0:.0f} s)")
        return 0
    cal_items, test_items, extra_items = split_items(items, args)

    src = "ground-truth maps" if args.ground_truth_maps else f"network {args.model!r}"
    if args.tta and not args.ground_truth_maps:
        src += f" with test-time augmentation ({args.tta_views} views)"
    print(f"Depth from astigmatism (Table VI) on the simulated scope, {src}")
    print(
        f"{len(items)} images: {len(cal_items)} for calibration (tilts 3/6/10), "
        f"{len(test_items)} test at 3/6/10, {len(extra_items)} at unseen tilts 4/8/-6 "
        f"({t_img:.0f} s to make the maps)"
    )
    # model comparison on the test images (same split)
    print("\ncalibration model, fit    cal R^2   test rel. error (mean over 3/6/10/4/8/-6)")
    cals: dict[str, DepthCalibration] = {}
    variants = [
        (f, fit)
        for f in FEATURE_SETS
        for fit in ("inverse", "forward")
        if fit == "forward" or not f.endswith("-cubic")
    ]
    for f, fit in variants:
        try:
            c = calibrate(cal_items, args, f, fit)
        except Exception as exc:  # non-monotone cubic etc.
            print(f"  {f + ' ' + fit:<22}  refused: {exc}")
            continue
        cals[f"{f} {fit}"] = c
        ev = evaluate(test_items + extra_items, c, axis=args.tilt_axis)
        rel = np.mean([r["rel_mean"] for r in ev.values()])
        evc = evaluate(test_items + extra_items, c, clean=True, axis=args.tilt_axis)
        relc = np.mean([r["rel_mean"] for r in evc.values()])
        cov = np.mean([r["coverage"] for r in evc.values()])
        tl = np.mean([abs(np.mean(r["tilt_est"]) / t) for t, r in ev.items()])
        print(
            f"  {f + ' ' + fit:<22}  {c.report['r2']:.4f}    {rel:.2f} %   (cleaned: "
            f"{relc:.2f} %, {cov:.0f} % kept); est./true tilt {tl:.2f}; "
            f"dead zone {c.deadzone:.3f}"
        )
    chosen = f"{args.features} {args.fit}"
    if chosen not in cals:  # e.g. a network trained for another lens axis: the reason is above
        print(f"error: the {chosen} calibration was refused", file=sys.stderr)
        return 2
    cal = cals[chosen]
    print(f"\nusing {args.features}, {args.fit} fit: {FEATURE_SETS[args.features]}")
    coefs = ", ".join(f"{c:.4g}" for c in cal.coef)
    print(
        f"coefficients [{coefs}], dead zone {cal.deadzone:.3f}, calibration R^2 "
        f"{cal.report['r2']:.4f}, residual {cal.report['rms_um']:.2f} um RMS"
    )
    reach = cal.reach_um()
    if reach is not None:
        print(
            f"patches beyond the network's reach (|metric| > {cal.max_metric:.3f}, about "
            f"{reach:.1f} um from focus, where its focus output stops growing) are left out"
        )
    if cal.max_spread_um is not None:
        print(
            f"patches whose TTA views disagree by more than {cal.max_spread_um:.2f} um (SD) "
            f"are left out (quantile {args.spread_quantile:g} of the calibration patches)"
        )

    res = evaluate_as_asked(test_items + extra_items, cal, args)
    smoothed = f", smoothed over {args.smooth} patches (smooth_depth)" if args.smooth else ""
    print(
        f"\ndepth maps {'cleaned (clean_depth)' if args.clean else 'as mapped'}{smoothed}; "
        f"patches used: {np.mean([r['coverage'] for r in res.values()]):.0f} %"
    )
    print(
        "\n| tilt | images | range (um) | R^2 | abs. error (um) | rel. error (%) "
        "| est. tilt (deg) | sign right |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for tilt in (*CAL_TILTS, *EXTRA_TILTS):
        r = res[tilt]
        seen = "" if tilt in CAL_TILTS else " (unseen)"
        te = np.asarray(r["tilt_est"])
        print(
            f"| {tilt:+g}{seen} | {r['n']} | {r['range_um']:.1f} | {r['r2']:.4f} | "
            f"{r['abs_mean']:.2f} +- {r['abs_sd']:.2f} | {r['rel_mean']:.2f} +- "
            f"{r['rel_sd']:.2f} | {te.mean():+.2f} +- {te.std():.2f} | "
            f"{r['sign_ok']}/{r['n']} |"
        )
    across = "per patch column" if args.tilt_axis == "x" else "across the tilt"
    print(f"\nprojected {across} (mean depth, as the paper's Fig. 5 (f)):")
    print("| tilt | abs. error (um) | rel. error (%) |")
    print("|---|---|---|")
    for tilt in (*CAL_TILTS, *EXTRA_TILTS):
        r = res[tilt]
        print(f"| {tilt:+g} | {r['prof_abs']:.2f} +- {r['prof_sd']:.2f} | {r['prof_rel']:.2f} |")
    smoothing_table(test_items + extra_items, cal, args)
    other_samples_table(cal, args)
    ok_rel = all(r["rel_mean"] <= 1.0 for r in res.values())  # per patch, not projected
    ok_r2 = all(r["r2"] >= 0.99 for r in res.values())
    ok_sign = all(r["sign_ok"] == r["n"] for r in res.values())
    print(
        f"\ntargets: rel. error <= 1.0 % {'met' if ok_rel else 'MISSED'}; "
        f"R^2 >= 0.99 {'met' if ok_r2 else 'MISSED'}; "
        f"tilt sign always right {'met' if ok_sign else 'MISSED'}"
    )
    verdict = ok_rel and ok_r2 and ok_sign
    if args.repeats > 1:
        verdict = repeats_table(res, args)
    print(
        "paper (ResNet-34, real grid): 3 deg 0.61 +- 0.41 um (1.26 %), 6 deg 1.31 +- 1.15 um "
        "(1.38 %), 10 deg 3.50 +- 2.62 um (2.18 %)"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gt" if args.ground_truth_maps else "cnn"
    show = next(it for it in test_items if it["tilt"] == 6.0)
    m = show["map"]
    full = depth_full(show["est"], m.centers_y, m.centers_x, SHAPE)
    truth = show.get("truth_full")
    if truth is None:
        truth = true_depth_grid(
            np.arange(SHAPE[0]), np.arange(SHAPE[1]), 6.0, args.tilt_axis, PX, SHAPE
        )
    save_depth_pair(full, np.asarray(truth), out / f"depth_map_{tag}.png", "tilt 6 deg")
    save_scatter(
        {f"{t:+g} deg": (res[t]["T"], res[t]["E"]) for t in (*CAL_TILTS, *EXTRA_TILTS)},
        out / f"depth_scatter_{tag}.png",
    )
    if "frame" in show:
        from PIL import Image

        f = show["frame"].astype(np.float32)
        f = (255 * (f - f.min()) / max(float(np.ptp(f)), 1.0)).astype(np.uint8)
        Image.fromarray(f[::2, ::2]).save(out / f"depth_frame_{tag}.png")
    print(f"figures: {out}/depth_map_{tag}.png, {out}/depth_scatter_{tag}.png")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
