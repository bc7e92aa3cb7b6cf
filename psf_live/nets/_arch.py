"""Patch-regression networks: a compact CPU-fast CNN, ResNet-34/ResNeXt-50 and a tiny test net."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHS", "build_net"]

ARCHS = ("compact", "resnet34", "resnext50", "tiny")


class MeanMaxPool(nn.Module):
    """Global mean and max pooling concatenated: (B, C, H, W) -> (B, 2C).

    The max branch keeps the strongest local responses, so sparse content (isolated
    points on black) is not diluted by the empty background as in mean pooling.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 if k % 2 else 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CompactNet(nn.Module):
    """Plain CNN for 128 x 128 patches, fast on a few CPU cores.

    A 4 x 4 stride-4 patch-embedding stem (every pixel of the patch is seen, so
    fine, in-focus texture survives), then 3 x 3 conv/BN/ReLU stages with two
    early stride-2 reductions (32 -> 16 -> 8; ~0.9 GFLOP per 64 patches), mean+max
    global pooling and a small MLP head.

    Parameters
    ----------
    n_outputs : int
        Output width (validity logit + regression targets).
    width : int
        Channels of the first stage; later stages use 2x and 4x.
    """

    def __init__(self, n_outputs: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_cbr(1, w, 4, 4),  # 128 -> 32
            *_cbr(w, 2 * w, stride=2),  # 32 -> 16
            *_cbr(2 * w, 2 * w),
            *_cbr(2 * w, 4 * w, stride=2),  # 16 -> 8
            *_cbr(4 * w, 4 * w),
        )
        self.pool = MeanMaxPool()
        self.head = nn.Sequential(
            nn.Linear(8 * w, 64), nn.ReLU(inplace=True), nn.Linear(64, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


class TinyNet(nn.Module):
    """A few-thousand-parameter network for tests (untrained use only)."""

    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_cbr(1, 8, 8, 8),  # 128 -> 16
            *_cbr(8, 16, stride=2),  # 16 -> 8
        )
        self.pool = MeanMaxPool()
        self.head = nn.Linear(32, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def _torchvision(arch: str, n_outputs: int) -> nn.Module:
    from torchvision import models as tvm

    net: nn.Module
    if arch == "resnet34":
        net = tvm.resnet34(weights=None, num_classes=n_outputs)
    else:
        net = tvm.resnext50_32x4d(weights=None, num_classes=n_outputs)
    # one input channel (paper: grey-level patches), same stem geometry
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def build_net(arch: str, n_outputs: int) -> nn.Module:
    """Build an (untrained) patch-regression network.

    Parameters
    ----------
    arch : {"compact", "resnet34", "resnext50", "tiny"}
        ``"compact"``: the shipped default for live use (~70k parameters);
        ``"resnet34"`` / ``"resnext50"``: torchvision models with a 1-channel stem
        and ``n_outputs`` outputs, as in the paper; ``"tiny"``: for tests.
    n_outputs : int
        Number of outputs (1 validity logit + regression targets, see
        :class:`OutputCodec`).

    Returns
    -------
    torch.nn.Module
        Input (B, 1, 128, 128) float32 (normalised with :func:`normalize_patches`),
        output (B, n_outputs).
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    if arch == "compact":
        return CompactNet(n_outputs)
    if arch == "tiny":
        return TinyNet(n_outputs)
    if arch in ("resnet34", "resnext50"):
        return _torchvision(arch, n_outputs)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
