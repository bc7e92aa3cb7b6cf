"""int8 inference: quantisation, the int8 weights file beside a model, and the estimator's use.

The untrained compact net stands in for a trained one (the int8 layout and the checks do not
depend on what it learned); the shipped zernike3's int8 maps are compared with its float32
maps on the simulated scope in ``test_estimate_sim.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from psf_live.estimate import Estimator
from psf_live.models import ModelCard, ModelLoadError, int8_path, load_int8, load_model, save_model
from psf_live.nets import (
    INT8_FLOAT_MODULES,
    build_net,
    get_codec,
    int8_from_state,
    int8_unavailable,
    normalize_patches,
    probe_patches,
    quantize_int8,
)

pytestmark = pytest.mark.skipif(int8_unavailable() is not None, reason=str(int8_unavailable()))

FLOAT = INT8_FLOAT_MODULES["compact"]


def _textures(n: int, seed: int) -> torch.Tensor:
    """Normalised smooth random textures, like blurred patches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 128, 128, generator=g)
    return normalize_patches(torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2))


@pytest.fixture(scope="module")
def compact() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_net("compact", 5).eval()


def test_quantized_net_follows_the_float_one(compact: torch.nn.Module) -> None:
    q = quantize_int8(compact, [_textures(32, s) for s in range(3)], FLOAT)
    x = _textures(32, 10)
    with torch.inference_mode():
        ref, out = compact(x), q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # quantisation noise, not a different function: small against the outputs' spread
    err = (out - ref).square().mean().sqrt()
    assert err < 0.1 * ref.std(0).mean()
    with pytest.raises(ValueError, match="at least one batch"):
        quantize_int8(compact, [], FLOAT)


def test_int8_state_round_trip_is_exact(compact: torch.nn.Module) -> None:
    q = quantize_int8(compact, [_textures(16, 1)], FLOAT)
    rebuilt = int8_from_state(compact, q.state_dict(), FLOAT)
    x = _textures(8, 3)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), q(x))
    # calibrated on other data, the same layout computes something else: the scales matter
    other = quantize_int8(compact, [_textures(16, 2) * 5], FLOAT)
    with torch.inference_mode():
        assert not torch.equal(other(x), q(x))
    bad = dict(q.state_dict())
    bad.pop(next(k for k in bad if k.endswith("scale")))
    with pytest.raises(RuntimeError, match="lacks"):
        int8_from_state(compact, bad, FLOAT)


@pytest.fixture
def saved(tmp_path: Path, compact: torch.nn.Module) -> Path:
    """A compact zernike3 model with int8 weights recorded as training.quantize does."""
    card = ModelCard.for_psf_model("c", "zernike3", "compact")
    pt = save_model(compact, card, tmp_path / "c")
    q = quantize_int8(compact, [_textures(32, 4)], FLOAT)
    with torch.inference_mode():
        vp, pp = get_codec("zernike3").decode(q(normalize_patches(probe_patches())))
    from psf_live.models import save_int8

    probe = {"valid_prob": vp.tolist(), "params": pp.tolist()}
    out = save_int8(q, pt, {"float_modules": list(FLOAT), "probe": probe})
    assert out == int8_path(pt) and out.name == "c.int8.pt"
    return pt


def _edit_card(pt: Path, edit: Callable[[dict], None]) -> None:
    js = pt.with_suffix(".json")
    d = json.loads(js.read_text())
    edit(d)
    js.write_text(json.dumps(d))


def test_estimator_uses_int8_weights_on_cpu(saved: Path) -> None:
    auto = Estimator.load(saved, device="cpu")
    assert auto.precision == "int8" and auto.precision_check["int8"] is True
    assert auto.meta["precision"] == "int8"
    # the probe goes through the network once per patch, with test-time augmentation too
    assert Estimator.load(saved, device="cpu", tta=True).precision == "int8"
    fp32 = Estimator.load(saved, device="cpu", precision="fp32")
    assert fp32.precision == "fp32"
    frame = np.random.default_rng(0).poisson(200, (384, 384)).astype(np.uint16)
    a, b = auto.map(frame, fill=False), fp32.map(frame, fill=False)
    assert a.params.shape == b.params.shape and np.isfinite(a.params).all()
    net, card = load_model(saved)
    with pytest.raises(ValueError, match="CPU only"):  # refused before anything moves
        Estimator(net, card, "cuda", precision="int8", weights=saved)


def test_int8_file_problems_fall_back_or_raise(saved: Path) -> None:
    q = int8_path(saved)
    q.write_bytes(q.read_bytes()[:-10])  # truncated: sha256 no longer matches
    auto = Estimator.load(saved, device="cpu")
    assert auto.precision in ("fp32", "bf16")
    assert str(q) in auto.precision_check["int8_reason"]
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as e:
        Estimator.load(saved, device="cpu", precision="int8")
    assert str(q) in str(e.value)
    # a corrupt file whose hash was recorded anyway
    q.write_bytes(b"not a zip")
    digest = hashlib.sha256(b"not a zip").hexdigest()
    _edit_card(saved, lambda d: d["int8"].update(sha256=digest))
    with pytest.raises(ModelLoadError, match="corrupt int8"):
        Estimator.load(saved, device="cpu", precision="int8")
    q.unlink()
    with pytest.raises(ModelLoadError, match="not found"):
        Estimator.load(saved, device="cpu", precision="int8")


def test_int8_of_other_weights_is_refused(saved: Path) -> None:
    _edit_card(saved, lambda d: d["int8"].update(weights_sha256="0" * 64))
    net, card = load_model(saved)
    with pytest.raises(ModelLoadError, match="other float weights"):
        load_int8(saved, net, card)
    assert Estimator.load(saved, device="cpu").precision != "int8"


def test_int8_must_reproduce_its_recorded_probe(saved: Path) -> None:
    def shift(d: dict) -> None:
        d["int8"]["probe"]["params"] = [[v + 0.2 for v in r] for r in d["int8"]["probe"]["params"]]

    _edit_card(saved, shift)
    auto = Estimator.load(saved, device="cpu")
    assert auto.precision != "int8" and auto.precision_check["int8"] is False
    with pytest.raises(ValueError, match="do not reproduce"):
        Estimator.load(saved, device="cpu", precision="int8")


def test_models_without_int8_weights(tmp_path: Path) -> None:
    card = ModelCard.for_psf_model("n", "zernike3", "compact")
    torch.manual_seed(1)
    pt = save_model(build_net("compact", card.n_outputs), card, tmp_path / "n")
    assert Estimator.load(pt, device="cpu").precision in ("fp32", "bf16")
    with pytest.raises(ModelLoadError, match="no int8 weights"):
        Estimator.load(pt, device="cpu", precision="int8")


def test_unavailable_int8_keeps_float(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psf_live.nets

    monkeypatch.setattr(psf_live.nets, "int8_unavailable", lambda: "no engine here")
    auto = Estimator.load(saved, device="cpu")
    assert auto.precision != "int8" and "no engine here" in auto.precision_check["int8_reason"]
    with pytest.raises(RuntimeError, match="no engine here"):
        Estimator.load(saved, device="cpu", precision="int8")


def test_training_quantize_writes_a_usable_int8_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("training.quantize")
    from training import quantize

    card = ModelCard.for_psf_model("g", "gaussian1", "compact")
    torch.manual_seed(2)
    pt = save_model(build_net("compact", card.n_outputs).eval(), card, tmp_path / "g")
    args = ["--model", str(pt), "--calib-batches", "2", "--test-batches", "1"]
    args += ["--batch-size", "16", "--bank-size", "8"]
    assert quantize.main([*args, "--dry-run"]) == 0
    assert not int8_path(pt).exists()
    assert quantize.main(args) == 0
    out = capsys.readouterr().out
    assert "| float32 |" in out and "| int8 |" in out and "wrote" in out
    _, loaded = load_model(pt)
    assert loaded.int8["weights_sha256"] == loaded.sha256
    assert loaded.int8["metrics"]["test_patches"] == 16
    assert Estimator.load(pt, device="cpu").precision == "int8"
    # and training.evaluate scores the int8 network itself
    from training import evaluate

    out = tmp_path / "eval"
    ev = ["--model", str(pt), "--int8", "--batches", "1", "--batch-size", "8"]
    assert evaluate.main([*ev, "--bank-size", "8", "--no-sweep", "--out", str(out)]) == 0
    assert "Table III-style: g-int8 (gaussian1, compact)" in capsys.readouterr().out
    assert "g-int8" in json.loads((out / "report.json").read_text())["models"]
    tiny = ModelCard.for_psf_model("t", "gaussian1", "tiny")
    tpt = save_model(build_net("tiny", tiny.n_outputs), tiny, tmp_path / "t")
    assert quantize.main(["--model", str(tpt)]) == 2  # no int8 recipe for that architecture
