"""Load benchmark of `psf-live record`: sim scope 1024x1024 uint16, camera as fast as it can.

Prints frames lost (must be 0), sustained frames/s to disk, peak RSS, and with
``--deconvolve`` the deconvolution rate once every frame is deconvolved.

    .venv/bin/python benchmarks/record_load.py --frames 2000
    .venv/bin/python benchmarks/record_load.py --frames 50 --deconvolve
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--deconvolve", action="store_true")
    ap.add_argument(
        "--sequence",
        action="store_true",
        help="camera streams (hardware sequencing) instead of waiting for queue room",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="Store path (default: a temporary dir).")
    ap.add_argument(
        "--replay",
        action="store_true",
        help="Replay 8 pre-rendered sim frames at full speed (camera faster than the "
        "simulator can render on a loaded CPU) through RecordSession.submit.",
    )
    a = ap.parse_args()
    if a.replay:
        replay(a)
        return

    import torch

    from psf_live.acquire import open_core
    from psf_live.estimate import Estimator
    from psf_live.record import record
    from psf_live.store import verify_store

    torch.set_num_threads(a.threads)
    core = open_core(None)
    cam = core.getCameraDevice()
    core.setProperty(cam, "SensorWidth", a.size)
    core.setProperty(cam, "SensorHeight", a.size)
    core.setExposure(1.0)
    est = Estimator.load("zernike3")
    seq_mb = int(core.getCircularBufferMemoryFootprint())
    tmp = Path(tempfile.mkdtemp(prefix="record_load_"))
    out = Path(a.out) if a.out else tmp / "bench.zarr"
    t0 = time.perf_counter()
    try:
        res = record(
            core,
            out,
            est,
            frames=a.frames,
            interval_ms=0.0,
            deconvolve=a.deconvolve,
            progress=True,
            hardware_sequencing=a.sequence,
        )
        total = time.perf_counter() - t0
        rep = verify_store(out)
    finally:
        core.unloadAllDevices()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "streaming (--sequence)" if a.sequence else "frame by frame with back-pressure"
    print(f"frames requested {a.frames} at {a.size}x{a.size} uint16, camera {mode}")
    print(
        f"acquired {res.acquired}, written {res.written}, mapped {res.mapped}, "
        f"deconvolved {res.deconvolved}; verify frames {rep['frames']} ok={rep['ok']}"
    )
    print(f"frames lost: {a.frames - rep['frames']}")
    print(
        f"sustained to disk: {res.write_rate:.1f} frames/s (raw, {res.elapsed_s:.1f} s); "
        f"with maps: {res.mapped / max(total if not a.deconvolve else res.elapsed_s, 1e-9):.1f}"
        " frames/s end to end"
    )
    ring = (
        (
            f", of which up to {seq_mb} MB is the core's own sequence ring buffer "
            "(UniMMCore default 1024 MB; env UNICORE_SEQUENCE_BUFFER_MB)"
        )
        if a.sequence
        else ""
    )
    print(
        f"max raw queue {res.max_queue} frames (bound {res.memory_bound_mb:.0f} MB); "
        f"peak RSS {rss_mb:.0f} MB{ring}"
    )
    if a.deconvolve:
        print(
            f"deconvolution: {res.deconvolved} frames in {res.deconv_elapsed_s:.1f} s -> "
            f"{res.deconvolved / max(res.deconv_elapsed_s, 1e-9):.2f} frames/s"
        )
    if res.error:
        print(f"error: {res.error}")
    if not a.out:
        shutil.rmtree(tmp, ignore_errors=True)


def replay(a: argparse.Namespace) -> None:
    """Feed the recording pipeline as fast as it accepts frames (no MDA)."""
    import numpy as np
    import torch

    from psf_live.acquire import open_core
    from psf_live.estimate import Estimator
    from psf_live.record import RecordSession
    from psf_live.store import verify_store

    torch.set_num_threads(a.threads)
    core = open_core(None)
    cam = core.getCameraDevice()
    core.setProperty(cam, "SensorWidth", a.size)
    core.setProperty(cam, "SensorHeight", a.size)
    frames = []
    for _ in range(8):
        core.snapImage()
        frames.append(np.asarray(core.getImage()))
    core.unloadAllDevices()
    tmp = Path(tempfile.mkdtemp(prefix="record_load_"))
    sess = RecordSession(tmp / "replay.zarr", Estimator.load("zernike3"), deconvolve=a.deconvolve)
    for i in range(a.frames):
        sess.submit(frames[i % 8])
    sess.finish_acquisition()
    if a.deconvolve:
        sess.finish_deconvolution(wait=True)
    res = sess.close()
    rep = verify_store(tmp / "replay.zarr")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"replay: {a.frames} frames {a.size}x{a.size} uint16 submitted as fast as accepted")
    print(
        f"written {res.written}, mapped {res.mapped}, deconvolved {res.deconvolved}; "
        f"verify frames {rep['frames']} ok={rep['ok']}; frames lost: {a.frames - rep['frames']}"
    )
    print(
        f"sustained to disk: {res.write_rate:.1f} frames/s; maps: "
        f"{res.mapped / max(res.map_elapsed_s, 1e-9):.1f} frames/s; max raw queue "
        f"{res.max_queue} (bound {res.memory_bound_mb:.0f} MB); peak RSS {rss_mb:.0f} MB"
    )
    if a.deconvolve:
        print(f"deconvolution: {res.deconvolved / max(res.deconv_elapsed_s, 1e-9):.2f} frames/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
