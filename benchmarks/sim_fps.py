"""Frames per second the simulated microscope delivers through pymmcore-plus.

Continuous sequence acquisition on the default simulator config (tilted grid,
cylindrical lens), 1024 x 1024 uint16, 1 ms exposure (a frame takes at least
the exposure; shorter ones give frames of read noise only), frames popped from
the core's buffer as a consumer would. Target (issue 2): >= 20 frames/s on
2 CPU cores.

    .venv/bin/python benchmarks/sim_fps.py [--seconds 5] [--size 1024] [--exposure-ms 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--exposure-ms", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from psf_live.acquire import open_core

    core = open_core()
    core.setProperty("Camera", "SensorWidth", args.size)
    core.setProperty("Camera", "SensorHeight", args.size)
    core.setExposure(args.exposure_ms)
    t0 = time.perf_counter()
    core.snapImage()  # renders and caches the noiseless image of this state
    first = time.perf_counter() - t0

    core.startContinuousSequenceAcquisition(0)
    n = 0
    nbytes = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds:
        if core.getRemainingImageCount():
            img = core.popNextImage()
            n += 1
            nbytes += img.nbytes
        else:
            time.sleep(0.0005)
    core.stopSequenceAcquisition()
    fps = n / elapsed
    print(f"cores: {os.cpu_count()} (torch threads {torch.get_num_threads()})")
    print(f"frame: {args.size}x{args.size} uint16, exposure {args.exposure_ms} ms")
    print(f"first frame (render + cache): {first:.2f} s")
    print(
        f"delivered: {n} frames in {elapsed:.2f} s -> {fps:.1f} frames/s "
        f"({nbytes / elapsed / 1e6:.0f} MB/s)"
    )
    print(f"target >= 20 frames/s: {'PASS' if fps >= 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
