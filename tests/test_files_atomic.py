"""Result files appear whole under their name or not at all (``psf_live._atomic``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from psf_live._atomic import atomic_output
from psf_live.cli import app


def test_atomic_output_replaces_on_success(tmp_path: Path) -> None:
    out = tmp_path / "a.tif"
    out.write_bytes(b"old")
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tif" and tmp != out
        tifffile.imwrite(tmp, np.arange(6, dtype=np.uint16).reshape(2, 3))
        assert out.read_bytes() == b"old"  # the old file stays until the new one is whole
    np.testing.assert_array_equal(tifffile.imread(out), np.arange(6).reshape(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_output_failure_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "b.npz"
    out.write_bytes(b"previous result")
    with pytest.raises(type(error)), atomic_output(out) as tmp:
        tmp.write_bytes(b"half a fi")
        raise error
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]


def test_simulate_interrupted_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that fails mid-file (here: the disk fills) leaves no TIFF behind."""
    real = tifffile.imwrite

    def failing(path: object, data: np.ndarray, **kw: object) -> None:
        real(path, data[: data.shape[0] // 2], **kw)  # half the rows reach the disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", failing)
    out = tmp_path / "frame.tif"
    r = CliRunner().invoke(app, ["simulate", "-o", str(out), "--size", "128"])
    assert r.exit_code != 0
    assert list(tmp_path.iterdir()) == []
