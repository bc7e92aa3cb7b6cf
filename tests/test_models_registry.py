import json
from pathlib import Path

import pytest
import torch

from psf_live.models import (
    DEFAULT_MODEL,
    ModelCard,
    ModelLoadError,
    available_models,
    load_model,
    save_model,
)
from psf_live.nets import build_net


def _card(psf_model: str = "zernike3", arch: str = "tiny") -> ModelCard:
    return ModelCard.for_psf_model("t", psf_model, arch)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    card = _card()
    net = build_net("tiny", card.n_outputs)
    return save_model(net, card, tmp_path / "m"), net


def test_save_load_roundtrip(saved: tuple[Path, torch.nn.Module]) -> None:
    pt, net = saved
    assert pt.suffix == ".pt" and pt.with_suffix(".json").exists()
    loaded, card = load_model(pt)
    assert not loaded.training and card.psf_model == "zernike3" and len(card.sha256) == 64
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x))
    assert ModelCard.from_dict(card.to_dict()) == card


def test_load_errors_name_the_file(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    pt, _ = saved
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("no_such_shipped_model")
    data = bytearray(pt.read_bytes())
    pt.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="sha256 mismatch") as e:
        load_model(pt)
    assert str(pt) in str(e.value)
    # corrupt file whose hash is re-recorded in the card -> corrupt, not a crash
    pt.write_bytes(b"not a zip")
    js = pt.with_suffix(".json")
    card = json.loads(js.read_text())
    card["sha256"] = ""
    js.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(pt)


def test_load_mismatched_arch(tmp_path: Path) -> None:
    card = _card()
    pt = save_model(build_net("tiny", card.n_outputs), card, tmp_path / "m")
    js = pt.with_suffix(".json")
    d = json.loads(js.read_text())
    d["arch"] = "compact"
    js.write_text(json.dumps(d))
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(pt)
    d["arch"] = "alexnet"
    js.write_text(json.dumps(d))
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model(pt)


def test_registry_names() -> None:
    assert DEFAULT_MODEL == "zernike3"
    names = available_models()
    assert isinstance(names, list)
    for n in names:
        _, card = load_model(n)
        assert card.psf_model in n or card.name == n
