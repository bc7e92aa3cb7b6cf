"""Evaluate a trained model: R^2 tables (Tables III/IV), Fig. 7 robustness sweep, validity.

Usage::

    python -m training.evaluate --model zernike3                 # shipped name or .pt path
    python -m training.evaluate --model zernike1 --images DIR    # + a user's TIFF/PNG folder
    python -m training.evaluate --model a.pt,b.pt --table4-only  # Table IV: models x test types

All test data come from the ``test`` split (held-out source crops and seeds). R^2 is
Eq. 15 over textured patches (a0 = 0); see :func:`training.metrics.r2_report` for the
axis. The sweep degrades the mixed test stream at strengths 0..0.5 (see ``SWEEP``) and
writes ``<out>/robustness_<model>.png`` with a dependency-free PNG plotter.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import struct
import sys
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psf_live.models import load_int8, load_model
from psf_live.nets import dihedral_mean, get_codec
from psf_live.psf import canonical_twin

from .data import DEFAULT_TYPES, TWIN_LABELS, Batch, DegradeConfig, PatchStream, PSFBank
from .metrics import r2_report
from .sources import SOURCE_TYPES

STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
CLEAN = DegradeConfig(
    peak_photons=(1e5, 1e5),
    beta=(1.0, 1.0),
    read_rel=(0.0, 0.0),
    background_rel=(0.0, 0.0),
    illum_gradient=(0.0, 0.0),
    invalid_fraction=0.0,
    poisson=False,
)


def sweep_config(kind: str, s: float) -> tuple[DegradeConfig, float | None]:
    """Degradation of type ``kind`` at strength ``s`` in [0, 0.5] (Fig. 7).

    Returns the config and, for ``illumination``, the 8-bit dynamic-range factor.

    - ``illumination``: brightness scaled to (1 - 1.8 s) of an 8-bit range and quantised;
    - ``nonuniform``: linear illumination ramp of strength 2 s (max/min up to 3);
    - ``gaussian``: read noise sigma = s x peak signal;
    - ``poisson``: peak photons 1 / s^2 (relative shot noise s at the peak);
    - ``mixed``: both, each of relative strength s / sqrt(2).
    """
    if kind == "illumination":
        return CLEAN, max(1.0 - 1.8 * s, 0.05)
    if kind == "nonuniform":
        return replace(CLEAN, illum_gradient=(2 * s, 2 * s)), None
    if kind == "gaussian":
        return replace(CLEAN, read_rel=(s, s)), None
    if kind == "poisson":
        peak = 1e5 if s == 0 else 1 / s**2
        return replace(CLEAN, peak_photons=(peak, peak), poisson=True), None
    if kind == "mixed":
        r = s / math.sqrt(2)
        peak = 1e5 if s == 0 else 1 / r**2
        return replace(CLEAN, peak_photons=(peak, peak), read_rel=(r, r), poisson=True), None
    raise ValueError(f"unknown degradation {kind!r}")


SWEEP = ("illumination", "nonuniform", "gaussian", "poisson", "mixed")


class DihedralMean(torch.nn.Module):
    """A network whose output is averaged over the 8 symmetries of each patch."""

    def __init__(self, net: torch.nn.Module, psf_model: str) -> None:
        super().__init__()
        self.net = net
        self.codec = get_codec(psf_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean raw output over the patch symmetries (see ``dihedral_mean``)."""
        return dihedral_mean(self.net, x, self.codec)


@torch.no_grad()
def predict(net: torch.nn.Module, psf_model: str, batches: list[Batch]) -> dict[str, torch.Tensor]:
    codec = get_codec(psf_model)
    first = next(net.parameters(), None)  # an int8 network has no float parameters: CPU
    dev = first.device if first is not None else torch.device("cpu")
    out: dict[str, list[torch.Tensor]] = {"pred": [], "true": [], "prob": [], "inv": [], "w": []}
    for b in batches:
        prob, p = codec.decode(net(b.x.to(dev)).float().cpu())
        if TWINS[0] == "canonical" and psf_model == "zernike3":
            p = canonical_twin(p)  # the estimate in the labels' convention
        out["pred"].append(p)
        out["true"].append(b.params)
        out["prob"].append(prob)
        out["inv"].append(b.invalid)
        out["w"].append(b.weight)
        if b.snr is not None:
            out.setdefault("snr", []).append(b.snr)
    return {k: torch.cat(v) for k, v in out.items() if len(v) == len(batches)}


def score(psf_model: str, r: dict[str, torch.Tensor], use_weight: bool = True) -> dict[str, float]:
    keep = r["inv"] == 0
    if use_weight:
        keep &= r["w"] > 0
    rep = r2_report(psf_model, r["pred"][keep], r["true"][keep]) if int(keep.sum()) > 2 else {}
    rep["n"] = float(keep.sum())
    rep["validity_acc"] = float(((r["prob"] >= 0.5) == (r["inv"] == 0)).float().mean())
    return rep


_BANKS: dict[tuple[Any, ...], PSFBank] = {}  # (model, seed, intervals, labels) -> kernel bank
BANK_SIZE = [512]
SNR_RULE: list[float | None] = [None]  # --snr-min: the label rule of older recipes
TWINS = ["as-drawn"]  # zernike3 label convention of the network scored (card_twins)


Ranges = dict[str, tuple[float, float]] | None


def _stream(
    psf_model: str,
    types: dict[str, float],
    seed: int,
    cfg: DegradeConfig,
    pool: int,
    ranges: Ranges = None,
) -> PatchStream:
    key = (psf_model, seed, tuple(sorted((ranges or {}).items())), TWINS[0])
    if key not in _BANKS:  # one kernel bank per model, seed, intervals, labels (slow part)
        _BANKS[key] = PSFBank(
            psf_model, BANK_SIZE[0], seed + 2_000_003, param_ranges=ranges, twins=TWINS[0]
        )
    if SNR_RULE[0] is not None:
        cfg = replace(cfg, snr_min=SNR_RULE[0])
    return PatchStream(
        psf_model,
        "test",
        seed,
        types=types,
        degrade=cfg,
        bank=_BANKS[key],
        pool=pool,
        refresh=0.0,
        twins=TWINS[0],
    )


def card_twins(card: Any) -> str:
    """Return the zernike3 label convention a network was trained with (``--twins``)."""
    return str((getattr(card, "data_recipe", None) or {}).get("twins", "as-drawn"))


def card_ranges(card: Any, which: str = "card") -> Ranges:
    """Draw intervals to test a model on: its card's ``param_ranges`` (``"card"``), if any.

    A network trained for one set-up (``training.train --param-range``, e.g. the cylinder of
    one cylindrical lens) is scored on the parameters it was made for; ``"full"`` scores it
    on the PSF model's whole ranges like every other network (off its prior).
    """
    if which not in ("card", "full"):
        raise ValueError(f"ranges must be 'card' or 'full', got {which!r}")
    rec = (getattr(card, "data_recipe", None) or {}).get("param_ranges") or {}
    if which == "full" or not rec:
        return None
    return {k: (float(v[0]), float(v[1])) for k, v in rec.items()}


def _quantise(b: Batch, level: float) -> Batch:
    from psf_live.nets import normalize_patches

    assert b.raw is not None
    raw = b.raw / b.raw.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-9)
    q = torch.round(raw * 255 * level)
    return replace(b, x=normalize_patches(q[:, None]))


def eval_types(
    net: torch.nn.Module,
    psf_model: str,
    n_batches: int,
    seed: int,
    bs: int,
    ranges: Ranges = None,
) -> dict[str, dict[str, float]]:
    """Table III row: R^2 per test data type (+ smooth content, + validity on black/flat)."""
    rows: dict[str, dict[str, float]] = {}
    cfg = DegradeConfig(invalid_fraction=0.0)
    pool = max(64, n_batches * bs // 2)
    for t in SOURCE_TYPES:
        s = _stream(psf_model, {t: 1.0}, seed, cfg, pool, ranges)
        r = predict(net, psf_model, [s.next(bs) for _ in range(n_batches)])
        rows[t] = score(psf_model, r)
        if t in ("nat", "micr", "tex"):
            sm = r["w"] == 0
            if int(sm.sum()) > 8:
                rs = {k: v[sm] for k, v in r.items()}
                rows.setdefault("smooth*", {})
                rows["smooth*"] = score(psf_model, rs, use_weight=False)
    # validity on textured vs synthetic black/flat patches
    s = _stream(
        psf_model,
        {"tex": 1.0, "nat": 1.0},
        seed,
        DegradeConfig(invalid_fraction=0.5),
        pool=128,
        ranges=ranges,
    )
    r = predict(net, psf_model, [s.next(bs) for _ in range(n_batches)])
    textured = (r["inv"] == 0) & (r["w"] > 0)
    rows["_validity"] = {
        "textured_acc": float((r["prob"][textured] >= 0.5).float().mean()),
        "black_flat_acc": float((r["prob"][r["inv"] == 1] < 0.5).float().mean()),
    }
    # validity on the training mix, also away from the noise label rule's edge
    mix = _stream(psf_model, dict(DEFAULT_TYPES), seed, DegradeConfig(), pool, ranges)
    batches = [mix.next(bs) for _ in range(n_batches)]
    rows["_validity"].update(validity_by_margin(net, psf_model, batches, mix.degrade.snr_min))
    return rows


def validity_by_margin(
    net: torch.nn.Module,
    psf_model: str,
    batches: list[Batch],
    snr_min: float,
    margin: float = math.sqrt(2.0),
) -> dict[str, float]:
    """Score the validity flag on the training mix, and clear of the label rule's edge.

    A patch is labelled invalid when its noise-free blurred texture has an SD below
    ``snr_min`` x the noise SD. Near that line the label is a convention the patch
    itself can hardly show: at a ratio of 0.1 the texture adds 1 % to the variance of
    the patch, and a 128 x 128 patch estimates its own variance to about 1 %. So the
    accuracy is also given over the patches whose ratio lies more than a factor
    ``margin`` from the rule (the rest: ``edge_fraction``). ``batches`` must come from a
    :class:`~training.data.PatchStream` labelled with ``snr_min`` (they carry ``snr``).
    """
    r = predict(net, psf_model, batches)
    right = (r["prob"] >= 0.5) == (r["inv"] == 0)
    ratio = r["snr"]
    edge = (ratio >= snr_min / margin) & (ratio < snr_min * margin)
    return {
        "mix_acc": float(right.float().mean()),
        "clear_acc": float(right[~edge].float().mean()),
        "edge_fraction": float(edge.float().mean()),
    }


def eval_sweep(
    net: torch.nn.Module,
    psf_model: str,
    n_batches: int,
    seed: int,
    bs: int,
    ranges: Ranges = None,
) -> dict[str, list[float]]:
    """Fig. 7: R^2 vs degradation strength for each degradation type (mixed test stream)."""
    types = dict(DEFAULT_TYPES)
    out: dict[str, list[float]] = {}
    for kind in SWEEP:
        vals = []
        for s_ in STRENGTHS:
            cfg, level = sweep_config(kind, s_)
            st = _stream(psf_model, types, seed, cfg, max(64, n_batches * bs // 2), ranges)
            bl = [st.next(bs, keep_raw=level is not None) for _ in range(n_batches)]
            if level is not None:
                bl = [_quantise(b, level) for b in bl]
            vals.append(score(psf_model, predict(net, psf_model, bl)).get("r2", float("nan")))
        out[kind] = vals
    return out


def eval_images(
    net: torch.nn.Module,
    psf_model: str,
    folder: Path,
    n_batches: int,
    seed: int,
    bs: int,
    ranges: Ranges = None,
) -> dict[str, float]:
    """Degrade crops of a user's TIFF/PNG images with known PSFs and score them."""
    from . import sources

    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")
    )
    if not files:
        raise SystemExit(f"error: {folder}: no TIFF/PNG/JPEG images found")
    ims = []
    for f in files:
        if f.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = np.asarray(tifffile.imread(f), dtype=np.float32)
        else:
            from skimage.io import imread

            a = np.asarray(imread(f), dtype=np.float32)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3].mean(-1)
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
        ims.append(torch.from_numpy(np.ascontiguousarray(a)))
    s = _stream(psf_model, {"tex": 1.0}, seed, DegradeConfig(invalid_fraction=0.0), 8, ranges)
    g = torch.Generator().manual_seed(seed)
    bl = []
    for _ in range(n_batches):
        src = sources.image_crops(tuple(ims), bs, s.r, g)
        bl.append(s.degrade_sources(src, torch.full((bs,), -2)))
    return score(psf_model, predict(net, psf_model, bl))


# ------------------------------------------------------------------ tiny PNG plotter
_FONT = {  # 3x5 bitmap digits and a few letters
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
}
_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
]


def _text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2) -> None:
    for i, ch in enumerate(s):
        bits = _FONT.get(ch)
        if bits is None:
            continue
        for k, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(k, 3)
                y0, x0 = y + r * scale, x + (i * 4 + c) * scale
                img[y0 : y0 + scale, x0 : x0 + scale] = 0


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as PNG (zlib + struct only)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def plot_sweep(path: Path, sweep: dict[str, list[float]]) -> None:
    """Line plot: R^2 (y, 0..1) vs strength (x, 0..0.5), one colour per degradation.

    Legend order = colour order: illumination (blue), nonuniform (orange), gaussian
    (green), poisson (red), mixed (purple).
    """
    w, h, m = 520, 360, 50
    img = np.full((h, w, 3), 255, np.uint8)
    x0, x1, y0, y1 = m, w - 20, h - m, 20
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(y0 + (y1 - y0) * v)
        img[y, x0:x1] = 220
        _text(img, 8, y - 5, f"{v:.2f}")
    for s in STRENGTHS:
        x = int(x0 + (x1 - x0) * s / STRENGTHS[-1])
        img[y1:y0, x] = 235
        _text(img, x - 8, y0 + 8, f"{s:.1f}")
    img[y1:y0, x0] = 0
    img[y0, x0:x1] = 0
    for ci, (_name, vals) in enumerate(sweep.items()):
        col = np.array(_COLORS[ci % len(_COLORS)], np.uint8)
        pts = []
        for s, v in zip(STRENGTHS, vals, strict=True):
            vv = 0.0 if not math.isfinite(v) else min(max(v, 0.0), 1.0)
            pts.append((x0 + (x1 - x0) * s / STRENGTHS[-1], y0 + (y1 - y0) * vv))
        for (xa, ya), (xb, yb) in itertools.pairwise(pts):
            n = int(max(abs(xb - xa), abs(yb - ya))) + 1
            for t in np.linspace(0, 1, n):
                xx, yy = round(xa + t * (xb - xa)), round(ya + t * (yb - ya))
                img[yy - 1 : yy + 2, xx - 1 : xx + 2] = col
        for xx, yy in pts:
            img[int(yy) - 3 : int(yy) + 4, int(xx) - 3 : int(xx) + 4] = col
        img[y1 + 4 + 12 * ci : y1 + 12 + 12 * ci, x1 - 40 : x1 - 10] = col
    write_png(path, img)


def _fmt_table(title: str, rows: dict[str, dict[str, float]], cols: list[str]) -> str:
    lines = [
        f"### {title}",
        "",
        "| data | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in rows.items():
        cells = [f"{r[c]:.3f}" if c in r and math.isfinite(r[c]) else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model", default="zernike3", help="shipped name(s) or .pt path(s), comma-separated"
    )
    p.add_argument("--images", type=Path, default=None, help="folder of TIFF/PNG images to score")
    p.add_argument(
        "--images-only",
        action="store_true",
        help="with --images: score only the folder (no test streams, no sweep)",
    )
    p.add_argument(
        "--batches", type=int, default=8, help="batches of 64 per data type / sweep point"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--table4-only", action="store_true")
    p.add_argument("--out", type=Path, default=Path("eval_out"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where the networks run: cpu or cuda[:N]")
    p.add_argument(
        "--tta", action="store_true", help="score with test-time augmentation (8 symmetries)"
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="score the model's int8 weights (training.quantize; the CPU default where shipped)",
    )
    p.add_argument(
        "--bank-size", type=int, default=512, help="Zernike kernels rendered for the test"
    )
    p.add_argument(
        "--snr-min",
        type=float,
        default=None,
        help="label rule of the test patches: blurred texture std below this x the noise "
        "std is invalid (default training.data.SNR_MIN; 0.05 for recipes before 2026-12-03)",
    )
    p.add_argument(
        "--twins",
        choices=["card", *TWIN_LABELS],
        default="card",
        help="zernike3 label convention to score against: the network's own (card), or "
        "canonical for every network (estimates folded likewise: astigmatic twins, which "
        "blur cannot tell apart, count as one)",
    )
    p.add_argument(
        "--ranges",
        choices=["card", "full"],
        default="card",
        help="draw the test PSFs from the card's param_ranges when it has them (a network "
        "made for one set-up) or from the PSF model's full ranges",
    )
    a = p.parse_args(argv)
    if a.images_only and a.images is None:
        p.error("--images-only needs --images DIR")
    if a.int8 and a.device != "cpu":
        p.error("--int8 weights run on the CPU only")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    BANK_SIZE[0] = a.bank_size
    SNR_RULE[0] = a.snr_min
    report: dict[str, Any] = {}
    table4: dict[str, dict[str, float]] = {}
    for i, spec in enumerate(a.model.split(",")):
        net, card = load_model(spec.strip(), a.device)
        if a.int8:
            net = load_int8(spec.strip(), net, card)
            card.name = f"{card.name}-int8"
        if card.name in report or any(k.startswith(f"{card.name} [") for k in table4):
            # a candidate carrying the shipped network's name: its own entry and plot
            card.name = f"{card.name}-{i + 1}"
        pm = card.psf_model
        if a.tta:
            net = DihedralMean(net, pm)
        ranges = card_ranges(card, a.ranges)
        TWINS[0] = card_twins(card) if a.twins == "card" else a.twins
        if TWINS[0] != "as-drawn":
            print(f"{card.name}: scored against {TWINS[0]} labels (astigmatic twins)")
        if ranges:
            print(f"{card.name}: test PSFs drawn from its training intervals {ranges}")
        if a.images_only:
            cols = [*card.param_names, "r2", "validity_acc", "n"]
            img = eval_images(net, pm, a.images, a.batches, a.seed, a.batch_size, ranges)
            title = f"R^2 on {a.images}: {card.name} ({pm}, {card.arch})"
            print(_fmt_table(title, {f"images:{a.images.name}": img}, cols))
            report[card.name] = {"images": img}
            continue
        rows = eval_types(net, pm, a.batches, a.seed, a.batch_size, ranges)
        validity = rows.pop("_validity")
        train_types = card.data_recipe.get("sources", {})
        tag = "+".join(k for k, v in train_types.items() if v) or "?"
        table4[f"{card.name} [{tag}]"] = {t: rows[t].get("r2", float("nan")) for t in SOURCE_TYPES}
        if a.table4_only:
            continue
        cols = [*card.param_names]
        if pm in ("zernike2", "zernike3"):
            cols += ["astig_c", "astig_s"]
        cols += ["r2", "validity_acc", "n"]
        if a.images is not None:
            rows[f"images:{a.images.name}"] = eval_images(
                net, pm, a.images, a.batches, a.seed, a.batch_size, ranges
            )
        print(
            _fmt_table(
                f"Table III-style: {card.name} ({pm}, {card.arch}), R^2 by test data", rows, cols
            )
        )
        print("smooth*: already-smooth content, excluded from training/headline R^2\n")
        print(
            f"validity: textured patches called valid {validity['textured_acc']:.4f}, "
            f"black/flat called invalid {validity['black_flat_acc']:.4f}; training mix "
            f"{validity['mix_acc']:.4f}, {validity['clear_acc']:.4f} on the "
            f"{1 - validity['edge_fraction']:.1%} of its patches more than a factor sqrt(2) "
            "from the noise label rule\n"
        )
        entry: dict[str, Any] = {"types": rows, "validity": validity}
        if not a.no_sweep:
            sw = eval_sweep(net, pm, a.batches, a.seed, a.batch_size, ranges)
            lines = [
                "### Fig. 7-style robustness: R^2 vs degradation strength",
                "",
                "| degradation | " + " | ".join(f"{s:.1f}" for s in STRENGTHS) + " |",
                "|---|" + "---|" * len(STRENGTHS),
            ]
            for k, v in sw.items():
                lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
            print("\n".join(lines))
            png = a.out / f"robustness_{card.name}.png"
            plot_sweep(png, sw)
            print(
                f"\nplot: {png} (blue illumination, orange non-uniform, green gaussian, "
                "red poisson, purple mixed; x strength 0..0.5, y R^2 0..1)\n"
            )
            entry["sweep"] = sw
        report[card.name] = entry
    if len(table4) > 1 or a.table4_only:
        print(
            _fmt_table(
                "Table IV-style: R^2, models (training data) x test data",
                table4,
                list(SOURCE_TYPES),
            )
        )
    (a.out / "report.json").write_text(json.dumps({"models": report, "table4": table4}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
