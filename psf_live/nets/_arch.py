"""Patch-regression networks: a compact CPU-fast CNN, ResNet-34/ResNeXt-50 and a tiny test net."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHS", "LogPowerSpectrum", "SlimResNet", "SpectralNet", "build_net"]

ARCHS = (
    "compact",
    "spectral",
    "spectral-wide",
    "spectral-deep",
    "resnet18-w16",
    "resnet18-w32",
    "resnet34",
    "resnext50",
    "tiny",
)


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


class LogPowerSpectrum(nn.Module):
    """Fixed front end: Hann-windowed log power spectrum, (B, 1, P, P) -> (B, 1, P/2, P/4).

    ``log(avg_pool_2x2(|FFT(w . x)|^2 / P^2) + eps)`` over the half plane of
    non-negative column frequencies (the spectrum of a real patch is centrosymmetric),
    rows shifted so that zero frequency sits at row P/4 of the output. Blur multiplies the
    spectrum by the squared OTF, so in this domain it becomes an additive, position-fixed
    pattern (defocus rings, elliptical astigmatic rings along the axis) that does not
    depend on where the texture lies in the patch. The window removes the leakage cross of
    the patch edges; pooling 2 x 2 bins before the log averages the periodogram's
    speckle (Welch) at the window's own resolution. No learned parameters.

    Parameters
    ----------
    size : int
        Patch side P (a multiple of 4).
    eps : float
        Floor added before the log, relative to the mean power of a unit-variance
        patch (the patches are normalised by :func:`normalize_patches`).
    """

    window: torch.Tensor

    def __init__(self, size: int = 128, eps: float = 1e-2) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"patch size must be a multiple of 4, got {size}")
        h = torch.hann_window(size, periodic=False, dtype=torch.float32)
        self.register_buffer("window", (h[:, None] * h[None, :]) / h.square().mean())
        self.size, self.eps = size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.rfft2(x.float() * self.window, norm="ortho")
        p = f.real.square() + f.imag.square()
        p = torch.fft.fftshift(p, dim=-2)[..., : self.size // 2]
        return torch.log(nn.functional.avg_pool2d(p, 2) + self.eps)


class SpectralNet(nn.Module):
    """CNN on the log power spectrum of the patch.

    :class:`LogPowerSpectrum` (P x P -> P/2 x P/4), then 3 x 3 conv/BN/ReLU stages with
    three stride-2 reductions (64 x 32 -> 8 x 4 for P = 128) and a fully connected head on
    the flattened features: unlike a spatial CNN the head keeps *where* in frequency a
    feature lies, which is what encodes the blur size (ring radii) and the astigmatism
    axis (ring elongation). At equal training data it learned gaussian1 / zernike3 faster
    than :class:`CompactNet` (validation R^2 0.75 vs 0.66 and 0.41 vs 0.25 after 450
    steps on the same 9,600 patches) at about 1.25x its inference time; the shipped
    zernike1 uses it. Weaknesses measured so far: it is less robust than the spatial net
    to noise stronger than it was trained on, and it fails on idealised patches with no
    shot noise, read noise or background at all (see ``training/README.md``).

    Parameters
    ----------
    n_outputs : int
        Output width (validity logit + regression targets).
    width : int
        Channels of the first stage; later stages use 2x and 4x.
    size : int
        Patch side.
    deep : bool
        One more 3 x 3 conv/BN/ReLU block (same channels, stride 1) after each of the
        last three stages.
    """

    def __init__(
        self, n_outputs: int, width: int = 16, size: int = 128, deep: bool = False
    ) -> None:
        super().__init__()
        w = width
        self.spectrum = LogPowerSpectrum(size)
        self.features = nn.Sequential(
            *_cbr(1, w, stride=2),  # 64 x 32 -> 32 x 16
            *_cbr(w, 2 * w),
            *(_cbr(2 * w, 2 * w) if deep else []),
            *_cbr(2 * w, 4 * w, stride=2),  # 16 x 8
            *(_cbr(4 * w, 4 * w) if deep else []),
            *_cbr(4 * w, 4 * w, stride=2),  # 8 x 4
            *(_cbr(4 * w, 4 * w) if deep else []),
        )
        n_flat = 4 * w * (size // 16) * (size // 32)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(n_flat, 128), nn.ReLU(inplace=True), nn.Linear(128, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.spectrum(x)))


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


class SlimResNet(nn.Module):
    """ResNet-18's layout at a chosen width, for weights of a few MB trained on a GPU.

    torchvision's basic residual blocks, two per stage, stage widths ``w, 2w, 4w, 8w``
    (ResNet-18 itself: ``w = 64``), the same 7 x 7 stride-2 stem and max pooling (one
    input channel), global mean pooling and a linear head. Why: the paper's ResNet-34,
    trained on a GPU, read zernike1 far better than the small nets trained on 2 CPU cores
    (``training/README.md``, "The paper's ResNet-34 on a GPU"), but its 85 MB of weights
    do not ship. ``w = 32``: 2.8 M parameters (11 MB), ``w = 16``: 0.7 M (2.8 MB).

    Parameters
    ----------
    n_outputs : int
        Output width (validity logit + regression targets).
    width : int
        Channels of the first stage.
    """

    def __init__(self, n_outputs: int, width: int = 32) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        w = width
        layers: list[nn.Module] = [
            nn.Conv2d(1, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),  # 128 -> 32
        ]
        cin = w
        for i in range(4):
            cout, stride = w * 2**i, 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            layers += [BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_SLIM_WIDTHS = {"resnet18-w16": 16, "resnet18-w32": 32}


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
    arch : str
        One of :data:`ARCHS`.
        ``"compact"``: spatial CNN for live use (~78k parameters); ``"spectral"``:
        CNN on the patch's log power spectrum (:class:`SpectralNet`, ~330k parameters);
        ``"spectral-deep"``: the same with one more 3 x 3 block after each of its last
        three stages (~410k; a trained ``"spectral"`` net grows into it, ``training.grow``);
        ``"spectral-wide"``: twice the channels (~770k); ``"resnet18-w32"`` /
        ``"resnet18-w16"``: :class:`SlimResNet` (2.8 M / 0.7 M); ``"resnet34"`` /
        ``"resnext50"``: torchvision models with a 1-channel stem and ``n_outputs``
        outputs, as in the paper; ``"tiny"``: for tests.
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
    if arch == "spectral":
        return SpectralNet(n_outputs)
    if arch == "spectral-wide":
        return SpectralNet(n_outputs, width=32)
    if arch == "spectral-deep":
        return SpectralNet(n_outputs, deep=True)
    if arch == "tiny":
        return TinyNet(n_outputs)
    if arch in _SLIM_WIDTHS:
        return SlimResNet(n_outputs, width=_SLIM_WIDTHS[arch])
    if arch in ("resnet34", "resnext50"):
        return _torchvision(arch, n_outputs)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
