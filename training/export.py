"""Export the best weights of a (running or finished) training checkpoint as a model.

Usage::

    python -m training.export --ckpt runs/zernike3.ckpt --out psf_live/models/zernike3 \
        --name zernike3 --test-batches 8

Writes ``<out>.pt`` + ``<out>.json`` (card with test R^2 measured here, marked as an
intermediate checkpoint) so that others can integrate before training ends.
"""

from __future__ import annotations

import argparse
import time

import torch

from psf_live.models import ModelCard, save_model
from psf_live.nets import build_net, get_codec
from psf_live.psf import get_model

from .data import DegradeConfig, PatchStream
from .train import evaluate_batches, stream_recipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--test-batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    ck = torch.load(a.ckpt, map_location="cpu", weights_only=False)
    pm = get_model(ck["psf_model"])
    codec = get_codec(pm.name)
    net = build_net(ck["arch"], codec.n_outputs)
    net.load_state_dict(ck["best_state"] or ck["net"])
    net.eval()
    # the run's draw intervals and label convention (checkpoints since 2026-12-04)
    extra = {k: v for k, v in (ck.get("stream_extra") or {}).items() if k != "types"}
    ts = PatchStream(
        pm.name,
        "test",
        a.seed,
        degrade=DegradeConfig(),
        bank_size=512,
        pool=256,
        refresh=0.25,
        **extra,
    )
    ev = evaluate_batches(
        net, pm.name, [ts.next(64) for _ in range(a.test_batches)], torch.device("cpu")
    )
    recipe = {
        "degrade": DegradeConfig().to_dict(),
        "note": "see training/data.py",
        **stream_recipe(extra),
    }
    card = ModelCard.for_psf_model(
        a.name or pm.name,
        pm.name,
        ck["arch"],
        data_recipe=recipe,
        metrics={
            "r2": ev["r2"]["r2"],
            "r2_per_param": {k: v for k, v in ev["r2"].items() if k != "r2"},
            "validity_acc": ev["validity_acc"],
            "test_patches": 64 * a.test_batches,
        },
        training={
            "intermediate_checkpoint": True,
            "steps": ck["step"],
            "duration_s": round(ck["elapsed"], 1),
            "lr": ck["lr"],
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    pt = save_model(net, card, a.out)
    print(
        f"wrote {pt}: step {ck['step']}, test R2 {ev['r2']['r2']:.4f} "
        + " ".join(f"{k}={v:.3f}" for k, v in ev["r2"].items() if k != "r2")
        + f" validity {ev['validity_acc']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
