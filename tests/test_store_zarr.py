"""Session store: layout, NGFF 0.5 validity, write-then-count, verify after damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psf_live.store import SessionWriter, load_store, verify_store


def _write(path: Path, n: int = 4, deconv: int = 4) -> None:
    with SessionWriter(
        path, metadata={"optics": {"na": 0.25}, "iterations": 20}, pixel_size_um=0.64
    ) as w:
        for t in range(n):
            w.append(
                np.full((32, 40), t, np.uint16),
                params=np.full((2, 3, 3), t, np.float32),
                valid=np.ones((2, 3), bool),
            )
        for t in range(deconv):
            w.write("deconvolved", t, np.full((32, 40), t + 0.5))


def test_layout_roundtrip_and_ngff(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    _write(p)
    root = zarr.open_group(str(p), mode="r")
    assert root["raw"].shape == (4, 32, 40) and root["raw"].dtype == np.uint16
    assert root["raw"].chunks == (1, 32, 40)
    assert root["deconvolved"].dtype == np.float32
    assert root["params"].shape == (4, 2, 3, 3) and root["valid"].shape == (4, 2, 3)
    assert root.attrs["ome"]["version"] == "0.5"
    from ome_zarr_models.v05.image import Image

    img = Image.from_zarr(root)
    assert [d.path for d in img.ome_attributes.multiscales[0].datasets] == ["raw"]
    data = load_store(p)
    np.testing.assert_array_equal(data["raw"][:, 0, 0], np.arange(4))
    assert data["metadata"]["iterations"] == 20
    rep = verify_store(p)
    assert rep["ok"] and rep["frames"] == 4 and rep["deconvolved"] == 4 and rep["ngff"] == "valid"


def test_counter_is_truth_after_crash(tmp_path: Path) -> None:
    p = tmp_path / "crash.zarr"
    w = SessionWriter(p, grow=8)
    for t in range(3):
        w.append(np.ones((16, 16), np.uint8) * t, valid=np.ones((1, 1), bool))
    # Simulated kill: a chunk of frame 3 hits the disk but its count never does.
    w._arrays["raw"][3] = np.ones((16, 16), np.uint8)
    del w  # never closed
    rep = verify_store(p)
    assert rep["ok"], rep["problems"]
    assert rep["frames"] == 3
    assert rep["arrays"]["raw"]["shape"][0] == 8  # grown in blocks, not trimmed


def test_missing_chunk_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "dmg.zarr"
    _write(p)
    (p / "raw" / "c" / "2" / "0" / "0").unlink()
    rep = verify_store(p)
    assert not rep["ok"] and rep["frames"] == 2
    assert any("raw" in m and "missing" in m for m in rep["problems"])


def test_lagging_out_of_order_worker(tmp_path: Path) -> None:
    p = tmp_path / "lag.zarr"
    w = SessionWriter(p)
    for _t in range(3):
        w.append(np.zeros((8, 8), np.uint16))
    w.write("deconvolved", 1, np.ones((8, 8)))
    assert w.frames["deconvolved"] == 0  # frame 0 not done yet
    w.write("deconvolved", 0, np.ones((8, 8)))
    assert w.frames["deconvolved"] == 2
    w.update_metadata(note="x")
    w.close()
    rep = verify_store(p)
    assert rep["frames"] == 3 and rep["deconvolved"] == 2 and rep["metadata"]["note"] == "x"


def test_errors(tmp_path: Path) -> None:
    p = tmp_path / "e.zarr"
    _write(p, 1, 0)
    with pytest.raises(FileExistsError):
        SessionWriter(p)
    w = SessionWriter(p, overwrite=True)
    w.append(np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="shape"):
        w.append(np.zeros((9, 8), np.uint16))
    w.close()
    with pytest.raises(RuntimeError):
        w.append(np.zeros((8, 8), np.uint16))
    shutil.rmtree(p / "raw")
    rep = verify_store(p)
    assert not rep["ok"]
    assert not verify_store(tmp_path / "nope.zarr")["ok"]
    json.dumps(rep)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "int32"]),
    n=st.integers(1, 4),
)
def test_property_shapes_dtypes(tmp_path: Path, h: int, w: int, dtype: str, n: int) -> None:
    p = tmp_path / f"p_{h}_{w}_{dtype}_{n}.zarr"
    frames = np.random.default_rng(0).integers(0, 200, (n, h, w)).astype(dtype)
    with SessionWriter(p, overwrite=True, grow=3) as wr:
        for f in frames:
            wr.append(f)
    got = load_store(p)["raw"]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, frames)
    assert verify_store(p)["frames"] == n
