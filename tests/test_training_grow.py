"""Growing a trained spectral network deeper keeps what it computes (training.grow)."""

from pathlib import Path

import pytest
import torch

from psf_live.models import ModelCard, load_model, save_model
from psf_live.nets import build_net, normalize_patches

pytest.importorskip("training.grow")
from training.grow import deepen


def _trained(seed: int = 0) -> torch.nn.Module:
    """A spectral net with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    net = build_net("spectral", 2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _patches(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize_patches(torch.rand(n, 1, 128, 128, generator=g).cumsum(-1))


def test_deepen_computes_what_the_trained_net_did() -> None:
    old = _trained()
    new = build_net("spectral-deep", 2)
    x = _patches(16, 0)
    added = deepen(new, old, x)
    assert added == [2, 4, 6]  # one extra block after each of three stages
    # the probe pass left the running statistics of the copied blocks as trained
    trained_bn = [m for m in old.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    grown_bn = [m for m in new.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    kept = [b for i, b in enumerate(grown_bn) if i not in added]
    for a, b in zip(trained_bn, kept, strict=True):
        assert torch.equal(a.running_mean, b.running_mean)
    new.eval()
    with torch.no_grad():
        # eval mode: the identity blocks hold for any input, not only the probe batch
        other = _patches(8, 1)
        assert torch.allclose(new(other), old(other), atol=1e-4)
        # training mode (batch statistics) on the probe batch, as fine-tuning starts
        new.train()
        old.train()
        assert torch.allclose(new(x), old(x), atol=1e-4)
    # control: a freshly built deep net does not compute the same
    fresh = build_net("spectral-deep", 2).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(other), old.eval()(other), atol=1e-2)


def test_deepen_refuses_networks_that_do_not_fit() -> None:
    def block(cin: int, cout: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout)]

    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="no place"):  # a trained layer would be lost
        deepen(
            torch.nn.Sequential(*block(1, 4)), torch.nn.Sequential(*block(1, 4), *block(4, 4)), x
        )
    with pytest.raises(ValueError, match="matches no trained layer"):  # not an identity
        deepen(build_net("spectral", 2), build_net("spectral-deep", 2), _patches(4, 0))
    with pytest.raises(ValueError, match="matches no trained layer"):
        deepen(build_net("spectral-deep", 2), build_net("compact", 2), _patches(4, 0))


def test_train_grows_a_spectral_model_into_the_deep_one(tmp_path: Path) -> None:
    from training.train import main

    card = ModelCard.for_psf_model("g1-spectral", "gaussian1", "spectral")
    old = _trained()
    save_model(old, card, tmp_path / "g1.pt")
    fast = ["--batch-size", "8", "--val-batches", "1", "--test-batches", "1", "--pool", "16",
            "--bank-size", "16", "--workers", "0", "--no-progress", "--threads", "1"]  # fmt: skip
    args = ["--psf-model", "gaussian1", "--arch", "spectral-deep", "--steps", "1"]
    out = tmp_path / "grown"
    assert main([*args, "--lr", "1e-12", "--init", str(tmp_path / "g1.pt"), "--out", str(out),
                 *fast]) == 0  # fmt: skip
    grown, grown_card = load_model(out.with_suffix(".pt"))
    assert grown_card.arch == "spectral-deep"
    assert grown_card.training["init"] == str(tmp_path / "g1.pt")
    # the trained convolutions in their new places (a step at lr 1e-12 moves nothing but
    # the BatchNorm running statistics), the extra ones Dirac kernels
    convs = [m.weight for m in grown.modules() if isinstance(m, torch.nn.Conv2d)]
    trained = [m.weight for m in old.modules() if isinstance(m, torch.nn.Conv2d)]
    for i, j in zip([0, 1, 3, 5], range(4), strict=True):
        assert torch.allclose(convs[i], trained[j], atol=1e-6)
    for i in (2, 4, 6):
        assert torch.allclose(
            convs[i], torch.nn.init.dirac_(torch.empty_like(convs[i])), atol=1e-6
        )
    # another PSF model is not grown (only a transfer of the same architecture is)
    with pytest.raises(SystemExit, match="gaussian1/spectral model, this run trains zernike1"):
        main(["--psf-model", "zernike1", "--arch", "spectral-deep", "--steps", "1",
              "--init", str(tmp_path / "g1.pt"), "--out", str(tmp_path / "x"), *fast])  # fmt: skip
