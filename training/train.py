"""Train a patch-regression network for one PSF model.

Usage::

    python -m training.train --psf-model zernike3 --arch compact --minutes 45 \
        --out psf_live/models/zernike3

    torchrun --nproc-per-node 2 -m training.train --psf-model zernike1 --arch tiny \
        --steps 4 --out /tmp/t

Loss (Eq. 11, gamma = 1): binary cross-entropy of the validity logit a0 plus the mean
squared error of the internal regression targets (see :class:`psf_live.nets.OutputCodec`),
the parameter term masked on invalid patches (a0 = 1) and on already-smooth content.
Adam; the learning rate is chosen on the validation stream by short trial runs
(``--lr-candidates``), then decays with a cosine schedule over the time/step budget;
early stopping on the validation loss keeps the best weights; checkpoints
(``<out>.ckpt``) resume with ``--resume``; ``--init NAME`` starts from a saved
model's weights (a fine-tune, e.g. on another noise recipe); ``--param-range
cylinder=0.15,0.35`` narrows the training draw of a parameter (a network for one
cylindrical lens). Under ``torchrun`` the script uses
DistributedDataParallel (NCCL on CUDA, gloo on CPU); each rank draws its own stream.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import itertools
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from psf_live._atomic import atomic_output
from psf_live.models import ModelCard, load_model, save_model
from psf_live.nets import ARCHS, build_net, get_codec
from psf_live.psf import get_model

from .data import (
    DEFAULT_TYPES,
    REFRESH,
    SNR_MIN,
    TWIN_LABELS,
    Batch,
    DegradeConfig,
    PatchStream,
    dihedral_batch,
    draw_ranges,
)
from .grow import deepen
from .metrics import r2_report

GROWABLE = {("spectral", "spectral-deep")}
"""(trained arch, deeper arch) pairs ``--init`` grows (:func:`training.grow.deepen`)."""


def loss_fn(
    raw: torch.Tensor, targets: torch.Tensor, b: Batch
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 11 (gamma = 1): BCE(a0) + masked MSE of the regression targets."""
    inv = b.invalid.to(raw.device)
    w = b.weight.to(raw.device)
    l_valid = F.binary_cross_entropy_with_logits(raw[:, 0], inv)
    m = (1 - inv) * w
    se = ((raw[:, 1:] - targets) ** 2).mean(dim=1)
    l_par = (se * m).sum() / m.sum().clamp_min(1.0)
    loss = l_valid + l_par
    return loss, {
        "loss": float(loss.detach()),
        "valid": float(l_valid.detach()),
        "param": float(l_par.detach()),
    }


def stream_recipe(extra: dict[str, Any]) -> dict[str, Any]:
    """Card ``data_recipe`` entries for a run's held-out stream options (``extra``).

    Only the options a run set (narrower draw intervals, the twin label convention), so
    that older cards stay as they were; ``training.export`` writes the same entries from a
    checkpoint's ``stream_extra``.
    """
    out: dict[str, Any] = {}
    if extra.get("param_ranges"):
        out["param_ranges"] = {k: list(v) for k, v in extra["param_ranges"].items()}
    if extra.get("twins", "as-drawn") != "as-drawn":
        out["twins"] = extra["twins"]
    return out


WORKER_SEED_STEP = 104_729
"""Seed offset between data-loader workers (ranks are 7,919 apart, so neither overlaps)."""


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __init__(self, kw: dict[str, Any], batch_size: int) -> None:
        self.kw, self.bs = kw, batch_size

    def __iter__(self) -> Iterator[Batch]:
        torch.set_num_threads(1)
        kw = dict(self.kw)
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id > 0:
            # each data-loader worker draws a stream of its own (worker 0 keeps the
            # rank's seed, so one worker gives the same data as before)
            kw["seed"] = kw["seed"] + WORKER_SEED_STEP * info.id
        s = PatchStream(**kw)
        while True:
            yield s.next(self.bs)


def _collate(b: Any) -> Any:
    """Identity: the stream yields whole batches (``batch_size=None``)."""
    return b


@torch.no_grad()
def evaluate_batches(
    net: torch.nn.Module, psf_model: str, batches: list[Batch], device: torch.device
) -> dict[str, Any]:
    """Loss, R^2 report (valid, weighted patches) and validity accuracy over batches."""
    codec = get_codec(psf_model)
    net.eval()
    preds, trues, probs, invs, ws, losses = [], [], [], [], [], []
    for b in batches:
        raw = net(b.x.to(device)).float()
        loss, _ = loss_fn(raw, codec.encode(b.params).to(device), b)
        losses.append(float(loss))
        prob, p = codec.decode(raw.cpu())
        preds.append(p)
        trues.append(b.params)
        probs.append(prob)
        invs.append(b.invalid)
        ws.append(b.weight)
    pred, true = torch.cat(preds), torch.cat(trues)
    prob, inv, w = torch.cat(probs), torch.cat(invs), torch.cat(ws)
    keep = (inv == 0) & (w > 0)
    rep = r2_report(psf_model, pred[keep], true[keep])
    acc = float(((prob >= 0.5) == (inv == 0)).float().mean())
    net.train()
    return {"loss": sum(losses) / len(losses), "r2": rep, "validity_acc": acc}


def _lr_at(lr0: float, frac: float, warm: float = 0.03) -> float:
    if frac < warm:
        return lr0 * max(frac / warm, 0.05)
    f = min(1.0, (frac - warm) / (1 - warm))
    return lr0 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * f)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--psf-model", default="zernike3")
    p.add_argument("--arch", default="compact", choices=list(ARCHS))
    p.add_argument(
        "--out", required=True, help="output path stem (writes .pt, .json, .ckpt, .log.csv)"
    )
    p.add_argument("--name", default=None, help="model name in the card (default: out file stem)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="maximum number of steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="fixed learning rate (skips the search)")
    p.add_argument("--lr-candidates", default="3e-3,1e-3,3e-4")
    p.add_argument("--lr-search-steps", type=int, default=40)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-batches", type=int, default=8)
    p.add_argument("--test-batches", type=int, default=32)
    p.add_argument("--patience", type=int, default=8, help="validations without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="seed of the training stream only (default: --seed); a fine-tune (--init) "
        "with a new one sees fresh patches, scored on the same validation/test streams",
    )
    p.add_argument("--workers", type=int, default=1, help="data-generation processes per rank")
    p.add_argument(
        "--data-device",
        default="cpu",
        choices=["cpu", "train"],
        help="train: generate the training patches on the training device (a GPU) in the "
        "training process instead of --workers CPU processes (validation and test patches "
        "stay CPU-made, the same as every other run's)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads for the training step")
    p.add_argument("--bank-size", type=int, default=2048)
    p.add_argument("--pool", type=int, default=512)
    p.add_argument(
        "--refresh",
        type=float,
        default=REFRESH,
        help="new training source regions per batch, as a fraction of the batch size "
        "(making sources is the stream's CPU cost once patches are degraded on a GPU)",
    )
    p.add_argument(
        "--noise",
        default="standard",
        choices=["standard", "strong"],
        help="strong: down to 4 photons and read noise up to 0.35 of the peak",
    )
    p.add_argument(
        "--types", default=None, help="source types, e.g. 'nat' or 'syn,poi' (default: all)"
    )
    p.add_argument(
        "--reuse", type=int, default=2, help="steps per generated batch (dihedral re-use)"
    )
    p.add_argument(
        "--clean-fraction",
        type=float,
        default=0.0,
        help="fraction of idealised patches: no shot/read noise, no background",
    )
    p.add_argument(
        "--snr-min",
        type=float,
        default=SNR_MIN,
        help="label rule: blurred texture std below this x the noise std is invalid "
        f"(default {SNR_MIN}; recipes before 2026-12-03 used 0.05)",
    )
    p.add_argument(
        "--overshoot",
        type=float,
        default=0.0,
        help="draw training magnitudes (all but the axis) up to this fraction of the "
        "range beyond its top, labelled with their true value (validation/test stay "
        "on the range); measured worse for zernike1, see training/README.md",
    )
    p.add_argument(
        "--twins",
        choices=TWIN_LABELS,
        default="as-drawn",
        help="zernike3 labels: as drawn, or of each pair of astigmatic twins (same blur, "
        "psf_live.psf.astigmatic_twin) the one with less astigmatism (canonical), in "
        "every stream; training/README.md",
    )
    p.add_argument(
        "--param-range",
        action="append",
        default=[],
        metavar="NAME=LO,HI",
        help="draw this parameter from a narrower interval, e.g. cylinder=0.15,0.35 for one "
        "cylindrical lens (repeatable; the outputs keep the model's range)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from this model's weights (shipped name or .pt, same arch); from "
        "another PSF model, all but the output layer (transfer); a spectral model of the "
        "same PSF model grows into --arch spectral-deep (extra blocks start as identities)",
    )
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--amp",
        action="store_true",
        help="on CUDA: bf16 autocast, TF32 and channels_last for the training step "
        "(validation and the test score stay float32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last memory layout (faster convolutions for the ResNets, also on "
        "the CPU: a resnet18-w16 step of 64 patches 191 instead of 266 ms on one core); "
        "implied by --amp",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.minutes is None and a.steps is None:
        p.error("give --minutes and/or --steps")
    if not 0.0 <= a.clean_fraction <= 1.0:
        p.error("--clean-fraction must lie in [0, 1]")
    if not 0.0 <= a.overshoot <= 0.5:
        p.error("--overshoot must lie in [0, 0.5]")
    if a.snr_min < 0:
        p.error("--snr-min must be >= 0")
    if a.twins != "as-drawn" and a.psf_model != "zernike3":
        p.error("--twins is a zernike3 option")
    ranges: dict[str, tuple[float, float]] = {}
    for spec in a.param_range:
        name, _, vals = spec.partition("=")
        try:
            lo, hi = (float(v) for v in vals.split(","))
        except ValueError:
            p.error(f"--param-range {spec!r}: expected NAME=LO,HI, e.g. cylinder=0.15,0.35")
        ranges[name.strip()] = (lo, hi)
    try:
        draw_ranges(a.psf_model, ranges)
    except ValueError as e:
        p.error(f"--param-range: {e}")
    a.param_ranges = ranges
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch.distributed as dist

    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp and device.type != "cuda":
        raise SystemExit("--amp needs a CUDA device")
    if args.data_device == "train" and device.type == "cpu":
        raise SystemExit("--data-device train needs a GPU (on the CPU use --workers)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main_rank = rank == 0
    out = Path(args.out)
    out = out.with_suffix("") if out.suffix in (".pt", ".json") else out
    out.parent.mkdir(parents=True, exist_ok=True)
    pm = get_model(args.psf_model)
    codec = get_codec(pm.name)
    degrade = DegradeConfig()
    train_seed = args.seed if args.train_seed is None else args.train_seed
    if args.noise == "strong":
        degrade = DegradeConfig(peak_photons=(4.0, 20000.0), read_rel=(0.0, 0.35))
    degrade = replace(degrade, clean_fraction=args.clean_fraction, snr_min=args.snr_min)
    types = None
    if args.types:
        types = {t.strip(): 1.0 for t in args.types.split(",") if t.strip()}
    stream_kw: dict[str, Any] = {
        "psf_model": pm.name,
        "split": "train",
        "seed": train_seed + 7919 * rank,
        "degrade": degrade,
        "bank_size": args.bank_size,
        "pool": args.pool,
        "refresh": args.refresh,
        "overshoot": args.overshoot,
    }
    extra: dict[str, Any] = {"types": types} if types else {}
    if args.param_ranges:  # train, validation and test streams alike
        extra["param_ranges"] = args.param_ranges
    if args.twins != "as-drawn":  # likewise
        extra["twins"] = args.twins
    stream_kw.update(extra)
    torch.manual_seed(args.seed)
    net = build_net(args.arch, codec.n_outputs).to(device)
    channels_last = args.amp or args.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def train_forward(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        """Raw outputs for a training step (learning-rate trials too): layout, autocast."""
        x = b.x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not args.amp:
            return m(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return m(x).float()

    if args.init and not (args.resume and out.with_suffix(".ckpt").exists()):
        init_net, init_card = load_model(args.init)
        grow = (init_card.arch, args.arch) in GROWABLE and init_card.psf_model == pm.name
        if init_card.arch != args.arch and not grow:
            raise SystemExit(
                f"--init {args.init}: a {init_card.psf_model}/{init_card.arch} model, "
                f"this run trains {pm.name}/{args.arch}"
            )
        if grow:
            # the deeper network starts as the trained one (training.grow), its extra
            # blocks set up on a batch of training patches of a stream of its own
            probe = PatchStream(
                pm.name,
                "train",
                train_seed + 7_000_003,
                degrade=degrade,
                bank_size=64,
                pool=64,
                **extra,
            )
            added = deepen(net, init_net, probe.next(args.batch_size).x.to(device))
            if main_rank:
                print(
                    f"--init {args.init}: grown from {init_card.arch}, identity blocks "
                    f"at convolutions {added}",
                    flush=True,
                )
        else:
            # same PSF model: every tensor; another one (transfer): all but the output layer
            own = net.state_dict()
            src = {k: v for k, v in init_net.state_dict().items() if v.shape == own[k].shape}
            net.load_state_dict(src, strict=False)
            if main_rank and len(src) < len(own):
                fresh = ", ".join(sorted(set(own) - set(src)))
                print(
                    f"--init {args.init} ({init_card.psf_model}): {len(src)} of {len(own)} "
                    f"tensors transferred, re-initialised: {fresh}",
                    flush=True,
                )

    def held_out(split: str, bank_size: int, pool: int) -> PatchStream:
        """Build the validation or test stream: same data recipe, its own sources."""
        return PatchStream(
            pm.name,
            split,
            args.seed,
            degrade=degrade,
            **extra,
            bank_size=bank_size,
            pool=pool,
            refresh=0.25,
        )

    val: list[Batch] = []
    if main_rank:
        vs = held_out("val", bank_size=min(args.bank_size, 512), pool=256)
        val = [vs.next(args.batch_size) for _ in range(args.val_batches)]

    def loader(seed_shift: int) -> Iterator[Batch]:
        kw = dict(stream_kw, seed=stream_kw["seed"] + seed_shift)
        if args.data_device == "train":
            stream = PatchStream(**kw, device=device)
            return (stream.next(args.batch_size) for _ in itertools.count())
        if args.workers > 0:
            dl = torch.utils.data.DataLoader(
                _Stream(kw, args.batch_size),
                batch_size=None,
                num_workers=args.workers,
                collate_fn=_collate,
                prefetch_factor=4,
                persistent_workers=False,
            )
            return iter(dl)
        return iter(_Stream(kw, args.batch_size))

    # learning-rate choice on the validation stream (short trials from the same init)
    lr = args.lr
    ckpt_path = out.with_suffix(".ckpt")
    resume = args.resume and ckpt_path.exists()
    lr_trials: dict[str, float] = {}
    if lr is None and not resume:
        cands = [float(c) for c in args.lr_candidates.split(",") if c.strip()]
        init = copy.deepcopy(net.state_dict())
        best = (math.inf, cands[0])
        data = loader(10_000_019)
        trial_batches = [next(data) for _ in range(args.lr_search_steps)]
        del data
        for c in cands:
            net.load_state_dict(init)
            opt = torch.optim.Adam(net.parameters(), lr=c)
            for b in trial_batches:
                raw = train_forward(net, b)
                loss, _ = loss_fn(raw, codec.encode(b.params).to(device), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            v = evaluate_batches(net, pm.name, val, device)["loss"] if main_rank else 0.0
            lr_trials[f"{c:g}"] = v
            if v < best[0]:
                best = (v, c)
        lr = best[1]
        if ddp:
            t = torch.tensor([lr], dtype=torch.float64)
            dist.broadcast(t, 0)
            lr = float(t)
        net.load_state_dict(init)
    model: torch.nn.Module = net
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr or 1e-3)
    step, elapsed0, best_val, best_state, bad = 0, 0.0, math.inf, None, 0
    history: list[dict[str, float]] = []
    if resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        step, elapsed0, best_val = ck["step"], ck["elapsed"], ck["best_val"]
        best_state, lr, lr_trials = ck["best_state"], ck["lr"], ck.get("lr_trials", {})
        args.init = args.init or ck.get("init")  # a resumed fine-tune keeps its origin
        history = ck.get("history", [])
    assert lr is not None
    budget_s = args.minutes * 60 if args.minutes else math.inf
    max_steps = args.steps or 10**12
    data = loader(step)
    t0 = time.time()
    log_f = None
    writer = None
    if main_rank:
        new = not (resume and out.with_suffix(".log.csv").exists())
        log_f = open(out.with_suffix(".log.csv"), "w" if new else "a", newline="")
        writer = csv.writer(log_f)
        if new:
            writer.writerow(
                ["step", "elapsed_s", "lr", "train_loss", "val_loss", "val_r2", "val_acc"]
            )
    bar = None
    if main_rank and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(
            total=None if args.steps is None else max_steps,
            initial=step,
            desc=f"{pm.name}/{args.arch}",
            unit="step",
            dynamic_ncols=True,
        )
    run_loss = 0.0
    stop = False
    last: Batch | None = None
    aug_g = torch.Generator().manual_seed(args.seed + 31 * rank + step)
    model.train()
    while not stop:
        elapsed = elapsed0 + time.time() - t0
        frac = max(
            elapsed / budget_s if budget_s < math.inf else 0.0,
            step / max_steps if args.steps else 0.0,
        )
        cur_lr = _lr_at(lr, frac)
        for gp in opt.param_groups:
            gp["lr"] = cur_lr
        if step % args.reuse == 0 or last is None:
            b = last = next(data)
        else:  # re-use the last generated batch under a random flip/transpose (exact)
            b = dihedral_batch(last, pm.name, aug_g)
        raw = train_forward(model, b)
        loss, parts = loss_fn(raw, codec.encode(b.params).to(device), b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run_loss = parts["loss"] if step == 1 else 0.98 * run_loss + 0.02 * parts["loss"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run_loss:.4f}", lr=f"{cur_lr:.1e}")
        done = step >= max_steps or frac >= 1.0
        if step % args.val_every == 0 or done:
            flag = torch.zeros(1)
            if main_rank:
                ev = evaluate_batches(net, pm.name, val, device)
                history.append({"step": step, "val_loss": ev["loss"], "val_r2": ev["r2"]["r2"]})
                assert writer is not None and log_f is not None
                writer.writerow(
                    [
                        step,
                        f"{elapsed:.1f}",
                        f"{cur_lr:.3g}",
                        f"{run_loss:.5f}",
                        f"{ev['loss']:.5f}",
                        f"{ev['r2']['r2']:.4f}",
                        f"{ev['validity_acc']:.4f}",
                    ]
                )
                log_f.flush()
                if bar is not None:
                    bar.write(
                        f"step {step}: train {run_loss:.4f} val {ev['loss']:.4f} "
                        f"R2 {ev['r2']['r2']:.4f} acc {ev['validity_acc']:.4f}"
                    )
                if ev["loss"] < best_val:
                    best_val, bad = ev["loss"], 0
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                with atomic_output(ckpt_path) as tmp:  # a checkpoint is never half-written
                    torch.save(
                        {
                            "net": net.state_dict(),
                            "opt": opt.state_dict(),
                            "step": step,
                            "elapsed": elapsed,
                            "best_val": best_val,
                            "best_state": best_state,
                            "lr": lr,
                            "lr_trials": lr_trials,
                            "init": args.init,
                            "history": history,
                            "arch": args.arch,
                            "psf_model": pm.name,
                            "stream_extra": extra,  # types, param_ranges, twins
                        },
                        tmp,
                    )
                if bad >= args.patience:
                    flag[0] = 1
                    bar.write("early stopping") if bar is not None else None
            if done:
                flag[0] = 1
            if ddp:
                dist.broadcast(flag, 0)
            stop = bool(flag[0])
    if bar is not None:
        bar.close()
    duration = elapsed0 + time.time() - t0
    if main_rank:
        assert log_f is not None
        log_f.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        ts = held_out("test", bank_size=min(args.bank_size, 1024), pool=512)
        test = [ts.next(args.batch_size) for _ in range(args.test_batches)]
        ev = evaluate_batches(net, pm.name, test, device)
        recipe: dict[str, Any] = {
            "sources": stream_kw.get("types") or dict(DEFAULT_TYPES),
            "degrade": degrade.to_dict(),
            "psf_bank_size": args.bank_size,
            "pool": args.pool,
            "invalid_rule": "black: <4 px above 0.1; flat: std<0.02 (sharp content, [0,1]); "
            f"blurred signal std < {args.snr_min:g} x noise std; synthetic black/flat patches; "
            "smooth content (detail ratio<0.04) excluded from the parameter loss",
            "noise": args.noise,
            "reuse": args.reuse,
            "seed": args.seed,
        }
        if train_seed != args.seed:  # only then: older cards stay as they were
            recipe["train_seed"] = train_seed
        if args.refresh != REFRESH:  # only then: older cards stay as they were
            recipe["refresh"] = args.refresh
        if args.overshoot:  # only then: older cards stay as they were
            recipe["overshoot"] = args.overshoot
        if args.data_device != "cpu":  # only then: older cards stay as they were
            recipe["data_device"] = str(device)  # same sources and PSFs, the device's noise
        recipe.update(stream_recipe(extra))
        card = ModelCard.for_psf_model(
            args.name or out.name,
            pm.name,
            args.arch,
            data_recipe=recipe,
            metrics={
                "r2": ev["r2"]["r2"],
                "r2_per_param": {k: v for k, v in ev["r2"].items() if k != "r2"},
                "validity_acc": ev["validity_acc"],
                "test_patches": args.test_batches * args.batch_size,
                "test_stream": f"split=test seed={args.seed}",
            },
            training={
                "command": "python -m training.train "
                + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                "duration_s": round(duration, 1),
                "steps": step,
                "batch_size": args.batch_size,
                "world_size": world,
                "lr": lr,
                "lr_trials": lr_trials,
                "init": args.init,
                "best_val_loss": best_val,
                "device": str(device)
                + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
                "amp": args.amp,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
        )
        pt = save_model(net, card, out)
        print(
            f"wrote {pt} ({duration / 60:.1f} min, {step} steps): test R2 {ev['r2']['r2']:.4f} "
            + " ".join(f"{k}={v:.4f}" for k, v in ev["r2"].items() if k != "r2")
            + f" validity acc {ev['validity_acc']:.4f}"
        )
    if ddp:
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
