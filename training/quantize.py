"""Make the int8 weights of a trained model and measure what they cost in accuracy.

Usage::

    python -m training.quantize --model zernike3            # shipped name or .pt path

Calibrates the activation scales on patches of the validation split (the model's own
source mix and parameter ranges), scores float32 and int8 on the same test-stream patches
(R^2 of Eq. 15 per parameter, validity accuracy, RMS of the int8 - float32 difference),
then writes ``<model>.int8.pt`` beside the weights and records it, with those figures, in
the card's ``int8`` entry. The estimator uses it on CPU with ``precision="auto"`` or
``"int8"`` (:class:`psf_live.estimate.Estimator`). ``--dry-run`` measures without writing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import torch

from psf_live.models import load_model, model_path, save_int8
from psf_live.nets import (
    INT8_FLOAT_MODULES,
    get_codec,
    normalize_patches,
    probe_patches,
    quantize_int8,
)

from .data import DEFAULT_TYPES, DegradeConfig, PatchStream, PSFBank
from .evaluate import TWINS, card_ranges, card_twins, predict, score
from .metrics import axis_period


def _streams(card: Any, seed: int, bank_size: int, pool: int) -> tuple[PatchStream, PatchStream]:
    """Return the validation (calibration) and test streams of the model's recipe."""
    pm = card.psf_model
    ranges, twins = card_ranges(card), card_twins(card)
    types = {k: float(v) for k, v in (card.data_recipe.get("sources") or DEFAULT_TYPES).items()}
    out = []
    for split, off in (("val", 1_000_003), ("test", 2_000_003)):
        bank = PSFBank(pm, bank_size, seed + off, param_ranges=ranges, twins=twins)
        out.append(
            PatchStream(
                pm,
                split,
                seed,
                types=types,
                degrade=DegradeConfig(),
                bank=bank,
                pool=pool,
                refresh=0.0,
                twins=twins,
            )
        )
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__)
    p.add_argument("--model", default="zernike3", help="shipped name or .pt path")
    p.add_argument("--calib-batches", type=int, default=8, help="validation batches")
    p.add_argument("--test-batches", type=int, default=16, help="test batches")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank-size", type=int, default=512, help="kernels rendered per stream")
    p.add_argument(
        "--float-modules",
        default=None,
        help="comma-separated submodules kept in float32 (default: the architecture's, "
        "psf_live.nets.INT8_FLOAT_MODULES)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dry-run", action="store_true", help="measure, write nothing")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    net, card = load_model(a.model)
    TWINS[0] = card_twins(card)  # estimates scored in the labels' convention
    if a.float_modules is not None:
        modules = tuple(m for m in a.float_modules.split(",") if m)
    elif card.arch in INT8_FLOAT_MODULES:
        modules = INT8_FLOAT_MODULES[card.arch]
    else:
        print(
            f"error: no int8 recipe for architecture {card.arch!r}; give --float-modules",
            file=sys.stderr,
        )
        return 2
    bs = a.batch_size
    val, test = _streams(card, a.seed, a.bank_size, pool=max(4 * bs, 16))
    print(f"{card.name} ({card.arch}): calibrating on {a.calib_batches} x {bs} validation patches")
    qnet = quantize_int8(
        net, (val.next(bs).x for _ in range(a.calib_batches)), modules, card.patch_size
    )
    batches = [test.next(bs) for _ in range(a.test_batches)]
    r32 = predict(net, card.psf_model, batches)
    r8 = predict(qnet, card.psf_model, batches)
    s32, s8 = score(card.psf_model, r32), score(card.psf_model, r8)
    keep = (r32["inv"] == 0) & (r32["w"] > 0)
    diff = (r8["pred"] - r32["pred"])[keep]
    names = list(card.param_names)
    if "axis" in names:  # an axis and its half-turn are the same: wrap to the period
        i, period = names.index("axis"), axis_period(card.psf_model)
        diff[:, i] = torch.remainder(diff[:, i] + period / 2, period) - period / 2
    rms = {n: float(diff[:, i].square().mean().sqrt()) for i, n in enumerate(names)}
    flips = int(((r8["prob"] >= 0.5) != (r32["prob"] >= 0.5)).sum())

    def row(s: dict[str, float]) -> str:
        cells = [f"{s.get(n, math.nan):.4f}" for n in names]
        return " | ".join([f"{s.get('r2', math.nan):.4f}", *cells, f"{s['validity_acc']:.4f}"])

    print(f"\ntest stream: {int(keep.sum())} textured patches of {bs * a.test_batches}")
    print(f"| arithmetic | R^2 | {' | '.join(names)} | validity |")
    print("|---|" + "---|" * (len(names) + 2))
    print(f"| float32 | {row(s32)} |")
    print(f"| int8 | {row(s8)} |")
    print(
        "RMS int8 - float32: "
        + ", ".join(f"{n} {v:.4f}" for n, v in rms.items())
        + f"; validity decisions changed: {flips}"
    )
    with torch.inference_mode():  # what the estimator checks a rebuilt int8 net against
        vp, pp = get_codec(card.psf_model).decode(
            qnet(normalize_patches(probe_patches(card.patch_size))).float()
        )
    info = {
        "float_modules": list(modules),
        "probe": {
            "valid_prob": [round(float(v), 6) for v in vp.flatten()],
            "params": [[round(float(v), 6) for v in r] for r in pp.reshape(len(vp), -1)],
        },
        "engine": torch.backends.quantized.engine,
        "torch": torch.__version__.split("+")[0],
        "calibration": {"split": "val", "patches": bs * a.calib_batches, "seed": a.seed},
        "metrics": {
            "test_patches": bs * a.test_batches,
            "r2_fp32": s32.get("r2"),
            "r2_int8": s8.get("r2"),
            "r2_per_param_fp32": {n: s32.get(n) for n in names},
            "r2_per_param_int8": {n: s8.get(n) for n in names},
            "rms_diff": rms,
            "validity_changed": flips,
        },
        "command": "python -m training.quantize " + " ".join(argv or sys.argv[1:]),
        "duration_s": round(time.time() - t0, 1),
    }
    if a.dry_run:
        print("dry run: nothing written")
        return 0
    out = save_int8(qnet, model_path(a.model), info)
    print(f"wrote {out} and its entry in {model_path(a.model).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
