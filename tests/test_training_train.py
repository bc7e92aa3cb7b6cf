import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psf_live.models import load_model

pytest.importorskip("training.train")
from training.train import main

FAST = [
    "--arch",
    "tiny",
    "--batch-size",
    "8",
    "--val-batches",
    "1",
    "--test-batches",
    "2",
    "--pool",
    "16",
    "--bank-size",
    "16",
    "--workers",
    "0",
    "--no-progress",
    "--threads",
    "1",
]


def test_train_smoke_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = [
        "--psf-model",
        "gaussian1",
        "--steps",
        "4",
        "--val-every",
        "2",
        "--lr-search-steps",
        "1",
        "--lr-candidates",
        "1e-3,3e-3",
        "--out",
        str(out),
        *FAST,
    ]
    assert main(args) == 0
    net, card = load_model(out.with_suffix(".pt"))
    assert card.arch == "tiny" and card.psf_model == "gaussian1"
    assert card.training["steps"] == 4 and "training.train" in card.training["command"]
    assert set(card.training["lr_trials"]) == {"0.001", "0.003"}
    assert "width" in card.metrics["r2_per_param"] and 0 <= card.metrics["validity_acc"] <= 1
    assert out.with_suffix(".ckpt").exists()
    log = out.with_suffix(".log.csv").read_text().splitlines()
    assert log[0].startswith("step") and len(log) == 3
    # resume continues from the checkpoint to the new step budget
    assert (
        main(
            [
                "--psf-model",
                "gaussian1",
                "--steps",
                "6",
                "--val-every",
                "2",
                "--resume",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    _, card2 = load_model(out.with_suffix(".pt"))
    assert card2.training["steps"] == 6
    assert len(out.with_suffix(".log.csv").read_text().splitlines()) == 4
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 128, 128)).shape == (1, 2)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not found",
)
def test_train_ddp_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training.train",
        "--psf-model",
        "gaussian1",
        "--steps",
        "3",
        "--val-every",
        "3",
        "--lr",
        "1e-3",
        "--out",
        str(out),
        "--device",
        "cpu",
        *FAST,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _, card = load_model(out.with_suffix(".pt"))
    assert card.training["world_size"] == 2 and card.training["steps"] == 3


def test_train_param_range_is_recorded_and_checked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    args = ["--psf-model", "gaussian1", "--steps", "1", "--lr", "1e-3", "--out", str(out)]
    assert main([*args, "--param-range", "width=2,3", *FAST, "--val-every", "1"]) == 0
    _, card = load_model(out.with_suffix(".pt"))
    assert card.data_recipe["param_ranges"] == {"width": [2.0, 3.0]}
    assert card.ranges == [[0.5, 8.0]]  # the outputs keep the model's range
    for bad, msg in (("width=2", "expected NAME=LO,HI"), ("width=0.1,3", "inside the model's")):
        with pytest.raises(SystemExit):
            main([*args, "--param-range", bad, *FAST])
        assert msg in capsys.readouterr().err


def test_train_init_starts_from_saved_weights(tmp_path: Path) -> None:
    base = [*FAST, "--val-every", "2", "--lr-search-steps", "1"]
    assert (
        main(["--psf-model", "gaussian1", "--steps", "2", "--out", str(tmp_path / "a"), *base])
        == 0
    )
    a, _ = load_model(tmp_path / "a.pt")
    # a fine-tune with a vanishing learning rate keeps the starting weights
    args = ["--psf-model", "gaussian1", "--steps", "1", "--lr", "1e-12", "--clean-fraction", "0.2"]
    assert (
        main([*args, "--init", str(tmp_path / "a.pt"), "--out", str(tmp_path / "b"), *base]) == 0
    )
    b, card = load_model(tmp_path / "b.pt")
    assert card.training["init"] == str(tmp_path / "a.pt")
    assert card.data_recipe["degrade"]["clean_fraction"] == 0.2
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    # resuming the fine-tune without --init keeps its origin in the card
    resumed = [
        "--psf-model",
        "gaussian1",
        "--steps",
        "2",
        "--resume",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main([*resumed, *base]) == 0
    assert load_model(tmp_path / "b.pt")[1].training["init"] == str(tmp_path / "a.pt")
    # control: the same run without --init does not land on those weights
    assert main([*args, "--out", str(tmp_path / "c"), *base]) == 0
    c, _ = load_model(tmp_path / "c.pt")
    assert not all(
        torch.allclose(pa, pc, atol=1e-6)
        for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )
    # transfer to another PSF model: everything but the output layer (2 -> 3 outputs)
    d = tmp_path / "d"
    assert main(["--psf-model", "gaussian2", "--steps", "1", "--lr", "1e-12",
                 "--init", str(tmp_path / "a.pt"), "--out", str(d), *base]) == 0  # fmt: skip
    t, _ = load_model(d.with_suffix(".pt"))
    same = [
        torch.allclose(pa, pt, atol=1e-6)
        for pa, pt in zip(a.parameters(), t.parameters(), strict=True)
        if pa.shape == pt.shape
    ]
    assert all(same) and len(same) == len(list(a.parameters())) - 2  # output weight, bias
    # another architecture is refused (the last --arch wins over FAST's)
    e = ["--psf-model", "zernike1", "--steps", "1", "--out", str(tmp_path / "e")]
    with pytest.raises(SystemExit, match="gaussian1/tiny model, this run trains zernike1/compact"):
        main([*e, "--init", str(tmp_path / "a.pt"), *base, "--arch", "compact"])


def test_train_seed_draws_a_fresh_stream_and_keeps_the_held_out_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.train as train_mod

    seen: list[tuple[str, float]] = []

    class Recording(train_mod.PatchStream):  # type: ignore[misc,name-defined]
        def next(self, n):
            b = super().next(n)
            seen.append((self.split, float(b.x.double().sum())))
            return b

    monkeypatch.setattr(train_mod, "PatchStream", Recording)
    base = ["--psf-model", "gaussian1", "--steps", "2", "--val-every", "2", "--lr", "1e-2", *FAST]

    def run(name: str, *extra: str):
        seen.clear()
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0
        net, card = load_model(tmp_path / f"{name}.pt")
        return net, card, {s: [v for k, v in seen if k == s] for s in ("train", "val", "test")}

    a, card_a, pa = run("a")
    same, _, ps = run("same", "--train-seed", "0")  # the default is --seed
    b, card_b, pb = run("b", "--train-seed", "5")
    assert "train_seed" not in card_a.data_recipe and card_b.data_recipe["train_seed"] == 5
    assert pa == ps and pa["train"] and pa["val"] and pa["test"]
    for wa, ws in zip(a.parameters(), same.parameters(), strict=True):
        assert torch.equal(wa, ws)
    # another training seed: other training patches, the same validation and test patches
    assert pb["val"] == pa["val"] and pb["test"] == pa["test"]
    assert not set(pb["train"]) & set(pa["train"])
    assert not all(
        torch.allclose(wa, wb) for wa, wb in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_train_overshoot_is_recorded_and_checked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    args = ["--psf-model", "gaussian1", "--steps", "1", "--lr", "1e-3", "--out", str(out)]
    assert main([*args, "--overshoot", "0.2", *FAST, "--val-every", "1"]) == 0
    _, card = load_model(out.with_suffix(".pt"))
    assert card.data_recipe["overshoot"] == 0.2
    assert card.data_recipe["degrade"]["snr_min"] == 0.1  # the label rule is recorded
    assert card.ranges == [[0.5, 8.0]]  # the outputs keep the model's range
    with pytest.raises(SystemExit):
        main([*args, "--overshoot", "0.8", *FAST])
    assert "--overshoot must lie in [0, 0.5]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--snr-min", "-0.1", *FAST])
    assert "--snr-min must be >= 0" in capsys.readouterr().err


def test_data_loader_workers_draw_streams_of_their_own() -> None:
    """With several workers each draws its own patches; one worker gives the rank's stream."""
    from training.data import PatchStream
    from training.train import _collate, _Stream

    kw = {"psf_model": "gaussian1", "split": "train", "seed": 3, "bank_size": 16, "pool": 16}

    def first(workers: int, n: int) -> list[torch.Tensor]:
        dl = torch.utils.data.DataLoader(
            _Stream(kw, 4), batch_size=None, num_workers=workers, collate_fn=_collate
        )
        it = iter(dl)
        return [next(it).x for _ in range(n)]

    two = first(2, 2)  # the loader takes batches from the workers in turn
    assert not torch.equal(two[0], two[1])
    direct = PatchStream(**kw).next(4).x
    torch.testing.assert_close(first(1, 1)[0], direct)
    torch.testing.assert_close(two[0], direct)


def test_data_on_the_training_device_needs_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA smoke below runs instead")
    with pytest.raises(SystemExit, match="needs a GPU"):
        main(
            [
                "--psf-model",
                "gaussian1",
                "--steps",
                "1",
                "--lr",
                "1e-3",
                "--out",
                str(tmp_path / "g"),
                "--data-device",
                "train",
                *FAST,
            ]
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_with_data_made_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    args = ["--psf-model", "zernike1", "--steps", "4", "--val-every", "2", "--lr", "1e-3"]
    main([*args, "--out", str(out), "--device", "cuda", "--data-device", "train", "--amp", *FAST])
    _, card = load_model(out.with_suffix(".pt"))
    assert card.training["steps"] == 4 and card.training["amp"]
    assert card.data_recipe["data_device"].startswith("cuda")


def test_train_twins_is_recorded_and_checked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    args = ["--psf-model", "zernike3", "--steps", "1", "--lr", "1e-3"]
    lens = ["--param-range", "cylinder=0.2,0.3"]
    assert main([*args, "--twins", "canonical", *lens, "--out", str(out), *FAST]) == 0
    _, card = load_model(out.with_suffix(".pt"))
    assert card.data_recipe["twins"] == "canonical"
    # an export of the checkpoint (training.export, mid-run) keeps both in its card
    from training.export import main as export

    assert export(["--ckpt", str(out.with_suffix(".ckpt")), "--out", str(tmp_path / "x"),
                   "--test-batches", "1"]) == 0  # fmt: skip
    _, xcard = load_model(tmp_path / "x.pt")
    assert xcard.data_recipe["twins"] == "canonical"
    assert xcard.data_recipe["param_ranges"] == {"cylinder": [0.2, 0.3]}
    assert main([*args, "--out", str(tmp_path / "d"), *FAST]) == 0
    assert "twins" not in load_model(tmp_path / "d.pt")[1].data_recipe  # older cards alike
    with pytest.raises(SystemExit):
        main(["--psf-model", "gaussian1", "--steps", "1", "--twins", "canonical", "--out",
              str(tmp_path / "g"), *FAST])  # fmt: skip
    assert "--twins is a zernike3 option" in capsys.readouterr().err
