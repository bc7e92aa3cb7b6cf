"""Speed of the shipped default network vs ResNet-34: 64 patches (1x128x128) on 2 CPU cores.

Prints the median time per batch of 64 normalised patches (the 64 patches of a
1024 x 1024 frame at stride 128) for the shipped default model (fp32 and bf16
autocast, BatchNorm folded, channels_last; int8 when it ships int8 weights, see
``training.quantize``), both of our own architectures
(``compact``: spatial CNN, ``spectral``: CNN on the log power spectrum, its FFT front
end included) and an untrained ResNet-34 in the same run, and the ratio to ResNet-34.
Target (issue 3): the shipped default <= 6 ms median.

    .venv/bin/python benchmarks/model_speed.py [--threads 2] [--repeats 50] [--model zernike3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

OURS = ("compact", "spectral")


def _prepare(net: torch.nn.Module) -> torch.nn.Module:
    from torch.fx.experimental.optimization import fuse

    net = net.eval()
    with contextlib.suppress(Exception):
        net = fuse(net)
    return net.to(memory_format=torch.channels_last)


def _time(net: torch.nn.Module, x: torch.Tensor, repeats: int, bf16: bool = False) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    ts = []
    with torch.inference_mode(), ctx:
        for i in range(repeats + 5):
            t0 = time.perf_counter()
            net(x)
            if i >= 5:
                ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--model", default="zernike3")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from psf_live.models import available_models, load_int8, load_model
    from psf_live.nets import build_net, get_codec, int8_unavailable, normalize_patches

    int8 = None
    if a.model in available_models() or a.model.endswith(".pt"):
        net, card = load_model(a.model)
        label = f"{card.name} ({card.arch})"
        if card.int8 and int8_unavailable() is None:
            int8 = load_int8(a.model, net, card)
    else:
        net = build_net("compact", get_codec("zernike3").n_outputs)
        label = "compact (untrained, no shipped weights found)"
    x = normalize_patches(torch.rand(64, 1, 128, 128) * 1000).contiguous(
        memory_format=torch.channels_last
    )
    n_out = get_codec("zernike3").n_outputs
    shipped = _prepare(net)
    resnet = _prepare(build_net("resnet34", n_out))
    t_c = _time(shipped, x, a.repeats)
    t_cb = _time(shipped, x, a.repeats, bf16=True)
    t_c8 = _time(int8, x, a.repeats) if int8 is not None else float("nan")
    t_arch = {arch: _time(_prepare(build_net(arch, n_out)), x, a.repeats) for arch in OURS}
    t_r = _time(resnet, x, max(5, a.repeats // 5))
    print(f"threads: {torch.get_num_threads()}, batch: 64 x 1 x 128 x 128, median of runs")
    print(
        f"{label:<40s} fp32 {t_c:8.2f} ms   bf16 {t_cb:8.2f} ms   int8 {t_c8:8.2f} ms"
        "   (target <= 6 ms)"
    )
    for arch, t in t_arch.items():
        print(f"{arch + ' (architecture)':<40s} fp32 {t:8.2f} ms")
    print(f"{'resnet34 (paper)':<40s} fp32 {t_r:8.2f} ms")
    print(f"ratio resnet34 / {label} (fp32): {t_r / t_c:.1f}x")


if __name__ == "__main__":
    main()
