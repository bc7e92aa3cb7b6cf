"""training.evaluate: Table III rows on the held-out test stream, a card's draw intervals."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from psf_live import models, nets

pytest.importorskip("training.evaluate")
from training import evaluate
from training.data import DegradeConfig


def _tiny(tmp_path: Path, recipe: dict) -> Path:
    card = models.ModelCard.for_psf_model("lens-z3", "zernike3", "tiny", data_recipe=recipe)
    torch.manual_seed(0)
    return models.save_model(nets.build_net("tiny", card.n_outputs).eval(), card, tmp_path / "m")


def test_card_ranges_choose_the_test_draw(tmp_path: Path) -> None:
    _, lens = models.load_model(_tiny(tmp_path, {"param_ranges": {"cylinder": [0.2, 0.3]}}))
    assert evaluate.card_ranges(lens) == {"cylinder": (0.2, 0.3)}
    assert evaluate.card_ranges(lens, "full") is None
    _, generic = models.load_model(_tiny(tmp_path / "g", {}))
    assert evaluate.card_ranges(generic) is None
    with pytest.raises(ValueError, match="'card' or 'full'"):
        evaluate.card_ranges(lens, "lens")
    # the test stream really draws from those intervals (and from the full range without)
    evaluate.BANK_SIZE[0] = 32
    cfg = DegradeConfig(invalid_fraction=0.0)
    narrow = evaluate._stream("zernike3", {"tex": 1.0}, 0, cfg, 16, {"cylinder": (0.2, 0.3)})
    cyl = narrow.next(16).params[:, 1]
    assert float(cyl.min()) >= 0.2 - 1e-6 and float(cyl.max()) <= 0.3 + 1e-6
    wide = evaluate._stream("zernike3", {"tex": 1.0}, 0, cfg, 16).next(16).params[:, 1]
    assert float(wide.min()) < 0.2 or float(wide.max()) > 0.3


def test_evaluate_runs_on_the_card_ranges(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tiny(tmp_path, {"param_ranges": {"cylinder": [0.2, 0.3]}})
    out = tmp_path / "eval"
    args = ["--model", str(path), "--batches", "1", "--batch-size", "8", "--bank-size", "16"]
    assert evaluate.main([*args, "--no-sweep", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test PSFs drawn from its training intervals {'cylinder': (0.2, 0.3)}" in text
    assert "Table III-style: lens-z3 (zernike3, tiny)" in text
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]["lens-z3"]["types"]) >= {"syn", "poi", "tex", "nat", "micr"}
    assert evaluate.main([*args, "--no-sweep", "--ranges", "full", "--out", str(out)]) == 0
    assert "training intervals" not in capsys.readouterr().out


def test_images_only_scores_just_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--images DIR --images-only``: a folder of held-out images degraded with known PSFs,
    no test streams (the quick generalisation check of candidate networks)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(folder / f"s{i}.tif", rng.random((256, 256)).astype(np.float32))
    path = _tiny(tmp_path, {})
    out = tmp_path / "eval"
    args = ["--model", str(path), "--batches", "1", "--batch-size", "8", "--bank-size", "16"]
    assert evaluate.main([*args, "--images", str(folder), "--images-only", "--out", str(out)]) == 0
    assert "R^2 on" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]["lens-z3"]) == {"images"}
    assert report["models"]["lens-z3"]["images"]["n"] > 0
    with pytest.raises(SystemExit):
        evaluate.main([*args, "--images-only", "--out", str(out)])


class _AlwaysValid(torch.nn.Module):
    """Raw output 0 everywhere: validity probability 0.5, every patch called valid."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.n) * self.w


def test_validity_is_also_scored_clear_of_the_label_rule() -> None:
    evaluate.BANK_SIZE[0] = 32
    net = _AlwaysValid(models.ModelCard.for_psf_model("z", "zernike1", "tiny").n_outputs)
    s = evaluate._stream("zernike1", dict(evaluate.DEFAULT_TYPES), 0, DegradeConfig(), 64)
    bs = [s.next(32) for _ in range(4)]
    v = evaluate.validity_by_margin(net, "zernike1", bs, snr_min=0.1)
    # an always-valid flag is right on the patches the stream labelled valid
    inv = torch.cat([b.invalid for b in bs]).bool()
    ratio = torch.cat([b.snr for b in bs if b.snr is not None])
    edge = (ratio >= 0.1 / 2**0.5) & (ratio < 0.1 * 2**0.5)
    assert 0 < float(inv.float().mean()) < 1 and 0 < float(edge.float().mean()) < 0.5
    assert v["mix_acc"] == pytest.approx(1 - float(inv.float().mean()))
    assert v["clear_acc"] == pytest.approx(1 - float(inv[~edge].float().mean()))
    assert v["edge_fraction"] == pytest.approx(float(edge.float().mean()))
    # and Table III's run reports it
    rows = evaluate.eval_types(net, "zernike1", n_batches=1, seed=0, bs=16)
    assert {"mix_acc", "clear_acc", "edge_fraction"} <= set(rows["_validity"])


def test_a_canonical_network_is_scored_against_canonical_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _tiny(tmp_path, {"twins": "canonical"})
    assert evaluate.card_twins(models.load_model(path)[1]) == "canonical"
    assert evaluate.card_twins(models.load_model(_tiny(tmp_path / "g", {}))[1]) == "as-drawn"
    args = ["--model", str(path), "--batches", "1", "--batch-size", "8", "--bank-size", "16"]
    try:
        assert evaluate.main([*args, "--no-sweep", "--out", str(tmp_path / "e")]) == 0
        assert "scored against canonical labels" in capsys.readouterr().out
        p = evaluate._stream("zernike3", {"tex": 1.0}, 0, DegradeConfig(), 16).next(16).params
        assert bool((p[:, 1] <= np.sqrt(2) * p[:, 0] + 1e-6).all())
        # and any network's estimates fold likewise when scored against that convention
        b = evaluate._stream("zernike3", {"tex": 1.0}, 0, DegradeConfig(), 16).next(16)
        net = nets.build_net("tiny", 5).eval()
        with torch.no_grad():  # every patch reads (0.05, 0.4, 0.3): its twin has less cylinder
            t = nets.get_codec("zernike3").encode(torch.tensor([[0.05, 0.4, 0.3]]))[0]
            net.head.weight.zero_()
            net.head.bias.copy_(torch.cat([torch.tensor([-5.0]), t]))
        est = evaluate.predict(net, "zernike3", [b])["pred"]
        expect = torch.tensor([0.4 / np.sqrt(2), 0.05 * np.sqrt(2), 0.3], dtype=torch.float32)
        torch.testing.assert_close(est[0], expect)
        generic = _tiny(tmp_path / "h", {})
        assert evaluate.main(["--model", str(generic), *args[2:], "--no-sweep", "--twins",
                              "canonical", "--out", str(tmp_path / "f")]) == 0  # fmt: skip
        assert "scored against canonical labels" in capsys.readouterr().out
    finally:
        evaluate.TWINS[0] = "as-drawn"  # module state shared with the other tests


def test_two_networks_of_one_name_keep_their_own_entries(tmp_path: Path) -> None:
    """A candidate named like the shipped network must not overwrite its report entry."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    tifffile.imwrite(folder / "s.tif", np.random.default_rng(0).random((256, 256)))
    a, b = _tiny(tmp_path / "a", {}), _tiny(tmp_path / "b", {})
    out = tmp_path / "eval"
    args = ["--batches", "1", "--batch-size", "8", "--bank-size", "16", "--images", str(folder)]
    assert evaluate.main(["--model", f"{a},{b}", *args, "--images-only", "--out", str(out)]) == 0
    assert set(json.loads((out / "report.json").read_text())["models"]) == {"lens-z3", "lens-z3-2"}
