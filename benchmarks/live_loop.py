"""Live loop on the simulated scope at 1024x1024 (issue 4 targets).

Targets: sustained mapped rate >= 30 frames/s and median map latency <= 50 ms at
stride 128; the camera never stalls when inference is slower than the camera
(stride 64 phase: input rate unchanged, surplus frames dropped and counted).
Run: ``.venv/bin/python benchmarks/live_loop.py [--seconds 10] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psf_live.acquire import open_core
from psf_live.acquire._live import LiveMapper, MapTimings
from psf_live.estimate import Estimator, PSFMap

sys.path.insert(0, str(Path(__file__).parent))


def _estimator() -> tuple[Estimator, str]:
    from psf_live.models import DEFAULT_MODEL

    try:
        return Estimator.load(DEFAULT_MODEL, device=None), f"{DEFAULT_MODEL} (shipped)"
    except Exception as exc:
        from map_speed import _untrained

        print(f"note: no shipped weights ({exc}); using an untrained 'compact' net")
        return _untrained("compact"), "compact (untrained)"


def run(core: object, est: Estimator, stride: int, seconds: float) -> dict[str, float]:
    est.stride = stride
    est.warmup((core.getImageHeight(), core.getImageWidth()), stride)  # type: ignore[attr-defined]
    lat: list[float] = []
    stages: list[MapTimings] = []

    def on_map(i: int, frame: np.ndarray, m: PSFMap, t: MapTimings) -> None:
        lat.append(t.latency)
        stages.append(t)

    mapper = LiveMapper(core, est, mode="latest")
    mapper.events.mapReady.connect(on_map)
    with mapper:
        core.startContinuousSequenceAcquisition(0)  # type: ignore[attr-defined]
        time.sleep(1.0)  # settle
        s0 = mapper.stats()
        t0 = time.perf_counter()
        time.sleep(seconds)
        s1 = mapper.stats()
        t1 = time.perf_counter()
        core.stopSequenceAcquisition()  # type: ignore[attr-defined]
    dt = t1 - t0
    tail = stages[len(stages) // 5 :]
    return {
        "camera_fps": (s1.frames_in - s0.frames_in) / dt,
        "mapped_fps": (s1.frames_mapped - s0.frames_mapped) / dt,
        "dropped": float(s1.frames_dropped - s0.frames_dropped),
        "latency_ms": statistics.median(lat[len(lat) // 5 :]) * 1e3,
        "wait_ms": statistics.median(t.wait for t in tail) * 1e3,
        "transfer_ms": statistics.median(t.transfer for t in tail) * 1e3,
        "inference_ms": statistics.median(t.inference for t in tail) * 1e3,
        "post_ms": statistics.median(t.post for t in tail) * 1e3,
        "max_gap_ms": s1.max_input_gap * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exposure", type=float, default=10.0, help="camera exposure, ms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    est, label = _estimator()
    core = open_core()
    core.setExposure(args.exposure)
    h, w = core.getImageHeight(), core.getImageWidth()
    print(
        f"live loop: sim scope {w}x{h}, exposure {args.exposure} ms, {label}, "
        f"{est.device}, torch threads {torch.get_num_threads()}"
    )
    for stride in (128, 64):
        r = run(core, est, stride, args.seconds)
        print(
            f"stride {stride:3d}: camera {r['camera_fps']:5.1f} fps, "
            f"mapped {r['mapped_fps']:5.1f}/s, dropped {r['dropped']:.0f}, "
            f"median latency {r['latency_ms']:.1f} ms "
            f"(wait {r['wait_ms']:.1f}, transfer {r['transfer_ms']:.1f}, inference "
            f"{r['inference_ms']:.1f}, post {r['post_ms']:.1f}), longest camera gap "
            f"{r['max_gap_ms']:.1f} ms"
        )
    print(
        "targets (stride 128): mapped >= 30/s, median latency <= 50 ms; camera fps "
        "unchanged when inference is slower (stride 64)"
    )
    core.unloadAllDevices()


if __name__ == "__main__":
    main()
