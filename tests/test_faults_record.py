"""Faults around a recording run in a subprocess (SIGKILL, Ctrl-C) and bad input at the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from psf_live.cli import app
from psf_live.store import load_store, verify_store

runner = CliRunner()


def _counted(path: Path) -> int:
    """Frames complete in every product (params and valid are counted one after the other)."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        frames = attrs["psf_live"]["frames"]
        return min(int(frames.get(k, 0)) for k in ("raw", "params", "valid"))
    except (OSError, ValueError, KeyError):
        return 0


def _start(out: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "psf_live",
        "record",
        "-o",
        str(out),
        "-n",
        "400",
        "--interval-ms",
        "30",
        "--sim-size",
        "256",
    ]
    # A shell that starts the test run in the background (``cmd &`` without job control)
    # passes SIGINT on as ignored, and Python then installs no KeyboardInterrupt handler:
    # give the recorder the default disposition, as a terminal would.
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_frames(proc: subprocess.Popen[bytes], out: Path, n: int) -> None:
    t0 = time.time()
    while _counted(out) < n:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        assert time.time() - t0 < 60, "recording did not start"
        time.sleep(0.05)


def test_sigkill_mid_recording_keeps_counted_frames(tmp_path: Path) -> None:
    out = tmp_path / "k.zarr"
    proc = _start(out)
    _wait_frames(proc, out, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    rep = verify_store(out)
    assert rep["frames"] >= 4 and rep["ok"], rep["problems"]
    data = load_store(out)
    n = rep["frames"]
    assert data["raw"].shape[0] >= n and data["raw"][:n].reshape(n, -1).max(axis=1).min() > 0
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0 and r.output.strip().splitlines()[-1] == f"frames: {n}"


def test_ctrl_c_closes_the_store_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    proc = _start(out)
    _wait_frames(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"interrupted: store closed" in err
    rep = verify_store(out)
    assert rep["ok"] and rep["frames"] >= 3
    meta = load_store(out)["metadata"]
    assert "closed" in meta  # closed, trimmed: arrays hold exactly the counted frames
    assert all(a["shape"][0] == a["counted"] for a in rep["arrays"].values())


def test_verify_flags_a_damaged_store(tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    r0 = runner.invoke(app, ["record", "-o", str(out), "-n", "3", "--sim-size", "256"])
    assert r0.exit_code == 0
    chunk = out / "raw" / "c" / "1" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    r = runner.invoke(app, ["verify", str(out), "--json"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == "frames: 1"
    assert '"ok": false' in r.output


def test_missing_and_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    out = tmp_path / "w.zarr"
    r = runner.invoke(app, ["record", "-o", str(out), "-n", "1", "-m", str(tmp_path / "no.pt")])
    assert r.exit_code == 1 and "no.pt" in r.output and len(r.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    r = runner.invoke(app, ["record", "-o", str(out), "-n", "1", "-m", str(bad)])
    assert r.exit_code == 1 and "bad.pt" in r.output
    assert not out.exists()  # no partial store left behind


def test_malformed_cfg_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.cfg"
    cfg.write_text("Device,Camera\nthis is not a config\n")
    r = runner.invoke(
        app, ["record", "-o", str(tmp_path / "x.zarr"), "-n", "1", "--config", str(cfg)]
    )
    assert r.exit_code == 1 and "broken.cfg" in r.output
    assert not (tmp_path / "x.zarr").exists()


def test_calibration_from_another_network(tmp_path: Path) -> None:
    from psf_live.depth import DepthCalibration

    cal_path = tmp_path / "cal.json"
    DepthCalibration(
        features="eq14", coef=[0.0, 1.0], network={"name": "gaussian2", "sha256": "0" * 64}
    ).save(cal_path)
    r = runner.invoke(
        app,
        [
            "record",
            "-o",
            str(tmp_path / "y.zarr"),
            "-n",
            "1",
            "-m",
            "zernike3",
            "--calibration",
            str(cal_path),
        ],
    )
    assert r.exit_code == 1 and "cal.json" in r.output


def test_existing_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "e.zarr"
    out.mkdir()
    r = runner.invoke(app, ["record", "-o", str(out), "-n", "1"])
    assert r.exit_code == 1 and "already exists" in r.output
