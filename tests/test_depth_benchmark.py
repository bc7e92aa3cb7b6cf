"""benchmarks/depth_table6.py --repeats: every image set is calibrated and tested on its
own, and the pooled figures are those of all sets' test patches together (run on
ground-truth maps, which need no network: a few seconds)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "depth_table6.py"), "--ground-truth-maps"]
    cmd += ["--per-tilt", "3", "--n-cal", "2", "--per-extra", "1", "--out", str(tmp_path)]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=300)


def test_repeats_pool_every_set(tmp_path: Path) -> None:
    run = _run(tmp_path, "--repeats", "3", "--gt-focus-noise", "0.03")
    assert run.returncode in (0, 1), run.stderr
    out = run.stdout
    assert "3 image sets (seeds 0-2" in out
    rows = re.findall(
        r"^\| ([+-]\d+) \| ([\d. /]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M
    )
    assert [r[0] for r in rows] == ["+3", "+6", "+10", "+4", "+8", "-6"]
    for _, per, pooled, lowest, pooled_r2 in rows:
        sets = [float(v) for v in per.split(" / ")]
        assert len(sets) == 3 and len(set(sets)) > 1  # three sets, with their own noise
        # a pooled mean lies within its parts; the pooled R^2 is no lower than the worst set's
        assert min(sets) - 0.01 <= float(pooled) <= max(sets) + 0.01
        assert float(pooled_r2) >= float(lowest) - 1e-4
    # every set's images' plane tilts, averaged: ground-truth maps read them closely
    pooled = out.split("image sets (seeds")[1]
    tilts = re.findall(
        r"^\| ([+-]\d+) \| .* \| ([+-][\d.]+) \+- [\d.]+ \| \d+/\d+ \|$", pooled, re.M
    )
    assert len(tilts) == 6
    for t, est in tilts:
        assert float(est) == pytest.approx(float(t), abs=0.3)
    # the verdict and the exit status follow the pooled figures
    ok = re.search(
        r"pooled targets: rel\. error <= 1\.0 % (met|MISSED); R\^2 >= 0\.99 (met|MISSED)", out
    )
    assert ok is not None
    met = ok.group(1) == "met" and ok.group(2) == "met"
    assert (run.returncode == 0) == (
        met and "sign always right met" in out.split("pooled targets")[1]
    )
    # the first set is the main table's: its 3 deg error is the first of the row
    first = re.search(
        r"^\| \+3 \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \+- [\d.]+ \| ([\d.]+) \+-", out, re.M
    )
    assert first is not None and float(first.group(1)) == pytest.approx(
        float(rows[0][1].split(" / ")[0])
    )


def test_repeats_must_be_positive(tmp_path: Path) -> None:
    run = _run(tmp_path, "--repeats", "0")
    assert run.returncode == 2 and "--repeats must be >= 1" in run.stderr
