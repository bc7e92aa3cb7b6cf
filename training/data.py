"""On-the-fly training data: sharp sources -> PSF blur -> illumination -> Eq. 10 noise -> patches.

Pipeline per patch (paper Section II-E1, Fig. 2):

1. a sharp source region of side ``R = 128 + k - 1`` (k = kernel size) of a data type
   (:mod:`training.sources`), randomly rotated by multiples of 90 degrees / flipped;
2. non-uniform illumination: multiplied by a random linear ramp (strength up to 60 %);
3. convolved with a PSF whose parameters are drawn uniformly from the model's ranges
   (Zernike kernels come from a bank rendered once per seed and augmented by the
   dihedral symmetries with the matching parameter transform), then the central
   128 x 128 crop is taken, so the patch border is blurred correctly;
4. scaled to a random photon level and corrupted by Poisson-Gaussian noise (Eq. 10)
   with a random quantum efficiency, read noise and background (a fraction
   ``clean_fraction`` of the patches, 0 by default, is left idealised: no noise, no
   background);
5. normalised with :func:`psf_live.nets.normalize_patches` (same as at inference).

Labels: ``invalid`` (a0 = 1) when the sharp 128 x 128 content is black or flat by the
variance / white-pixel rule (:func:`validity_rule`), when the blurred texture is lost
in the noise (std of the noise-free blurred patch < ``snr_min`` x noise std, default
:data:`SNR_MIN`), and for
the synthetic black and flat patches mixed in (``invalid_fraction``).
Already-smooth content (little detail
at the pixel scale even before blur, e.g. scikit-image's ``moon``/``cell``) cannot be
told from blur; such patches get weight 0 (excluded from the loss and from the
headline R^2) and are scored separately by ``training.evaluate`` (data type
``smooth``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from psf_live.nets import normalize_patches
from psf_live.psf import (
    Optics,
    canonical_twin,
    get_model,
    irfft2,
    next_fast_len,
    render_psf,
)

from .sources import SOURCE_TYPES, make_sources

__all__ = [
    "Batch",
    "DegradeConfig",
    "PSFBank",
    "PatchStream",
    "Truth",
    "dihedral_batch",
    "draw_ranges",
    "valid_blur",
    "validity_rule",
]

PATCH = 128
# validity rule thresholds, on the sharp content in [0, 1] source units
FLAT_STD = 0.02  # below: flat / textureless
WHITE_LEVEL, WHITE_MIN = 0.1, 4  # fewer than 4 pixels above 0.1: black
SMOOTH_DETAIL = 0.04  # fine-detail ratio below: already-smooth content (weight 0)
TWIN_LABELS = ("as-drawn", "canonical")
"""zernike3 label conventions of :class:`PSFBank` (``training.train --twins``)."""
REFRESH = 0.1
"""Default of :attr:`PatchStream.refresh`: new source regions per batch, as a fraction of
the batch size (every shipped model's training stream)."""
SNR_MIN = 0.1
"""Default of :attr:`DegradeConfig.snr_min`: std of the noise-free blurred patch / noise
std below which the texture is lost in the noise (invalid). Measured (2026-12-03, 4,096
test patches per network): patches with a ratio of 0.05-0.1 carry no usable PSF
information (test R^2 0.16 zernike1, 0.23 gaussian1, n = 103-122), those of 0.1-0.15 do
for zernike1 (0.66); the networks called 40-50 % of the first band invalid anyway. Recipes
before 2026-12-03 used 0.05."""


DEFAULT_TYPES: dict[str, float] = {"syn": 1.0, "poi": 0.7, "tex": 1.5, "nat": 1.5, "micr": 1.0}
"""Source types of the training data and their mixing weights (PatchStream's default)."""


@dataclass
class DegradeConfig:
    """Random degradation ranges (uniform unless stated); fixed values for sweeps."""

    peak_photons: tuple[float, float] = (20.0, 20000.0)  # log-uniform
    beta: tuple[float, float] = (0.4, 1.0)  # quantum efficiency (Eq. 10)
    read_rel: tuple[float, float] = (0.0, 0.05)  # read sigma / (beta * peak)
    background_rel: tuple[float, float] = (0.0, 0.2)  # background / peak
    illum_gradient: tuple[float, float] = (0.0, 0.6)  # ramp strength
    invalid_fraction: float = 0.08  # synthetic black/flat patches
    poisson: bool = True
    # idealised patches: no shot noise, no read noise, no background (the strength-0
    # points of the Fig. 7 sweep). 0 keeps the random stream of older recipes unchanged.
    clean_fraction: float = 0.0
    # label rule: blurred texture std < snr_min x noise std -> invalid (see SNR_MIN)
    snr_min: float = SNR_MIN

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def validity_rule(sharp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper's variance / white-pixel rule and the smooth-content detector.

    Parameters
    ----------
    sharp : torch.Tensor
        (B, 128, 128) sharp content in [0, 1] source units (after illumination).

    Returns
    -------
    invalid : torch.Tensor
        (B,) bool, black (fewer than 4 pixels above 0.1) or flat (std < 0.02).
    smooth : torch.Tensor
        (B,) bool, fine-detail ratio ``std(x - box3(x)) / std(x)`` below 0.04.
    """
    std = _std(sharp, (-2, -1))
    white = (sharp > WHITE_LEVEL).sum(dim=(-2, -1))
    invalid = (std < FLAT_STD) | (white < WHITE_MIN)
    low = F.avg_pool2d(sharp[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    detail = _std((sharp - low)[:, 2:-2, 2:-2], (-2, -1)) / std.clamp_min(1e-6)
    smooth = (detail < SMOOTH_DETAIL) & ~invalid
    return invalid, smooth


def valid_blur(src: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Central ``R - k + 1`` pixels of the linear convolution of (B, R, R) with (B, k, k).

    Only output pixels whose kernel support lies entirely inside the source region
    are kept (the "valid" part), so there is no zero-padding artefact at the patch
    border. Computed with circular FFTs of size >= R, which do not alias there.
    """
    r, k = src.shape[-1], kernels.shape[-1]
    n = next_fast_len(r)
    spec = torch.fft.rfft2(src, s=(n, n)) * torch.fft.rfft2(kernels, s=(n, n))
    full = irfft2(spec, (n, n), rows=r)  # torch's irfft2 is several times slower
    return full[..., k - 1 : r, k - 1 : r]


def _std(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Unbiased standard deviation over ``dims`` (two passes; ``Tensor.std`` is ~5x slower)."""
    n = math.prod(x.shape[d] for d in dims)
    dev = x - x.mean(dim=dims, keepdim=True)
    return dev.square_().sum(dim=dims).div_(max(n - 1, 1)).sqrt_()


def _poisson(psi: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Poisson draws; Gaussian approximation above 50 expected counts (cheaper).

    ``g`` is a generator of ``psi``'s device.
    """
    out = psi + psi.sqrt() * torch.randn(psi.shape, generator=g, device=psi.device)
    low = psi < 50
    if low.any():
        out[low] = torch.poisson(psi[low], generator=g)
    return out


def draw_ranges(
    model_name: str,
    param_ranges: Mapping[str, tuple[float, float]] | None = None,
    overshoot: float = 0.0,
) -> tuple[tuple[float, float], ...]:
    """Intervals the training parameters are drawn from: the model's, some narrowed.

    Parameters
    ----------
    model_name : str
        PSF model name.
    param_ranges : mapping of str -> (float, float), optional
        Narrower intervals for some parameters, e.g. ``{"cylinder": (0.15, 0.35)}`` for
        a network made for one cylindrical lens. Each must lie inside the model's range
        (the network's outputs keep the model's full range). An ``axis`` interval is
        followed by the exact flips/transposes of the data (a -> -a, a -> pi/2 - a), so
        the network also sees its mirror images.
    overshoot : float
        Extend the top of every magnitude parameter (all but ``axis``) whose interval
        ends at the model's top by this fraction of the model's range (training
        streams only; 0: none; a narrowed interval stays as given). Such PSFs
        keep their true parameter as the label; the codec clips decoded outputs to
        the model's range, so a patch blurred beyond it is reported at the edge.
        Meant for the regression to the mean at the range's top (zernike1: -0.13 waves
        bias at 0.8-1.0 waves). Measured (training/README.md): it removes that bias
        but moves every uncertain estimate up (the prior's mean moves), so R^2 fell;
        no shipped network uses it.

    Returns
    -------
    tuple of (float, float)
        One closed interval per parameter, in the model's order.
    """
    m = get_model(model_name)
    given = dict(param_ranges or {})
    for name in given:
        if name not in m.param_names:
            raise ValueError(
                f"{model_name} has no parameter {name!r}; it has {', '.join(m.param_names)}"
            )
    out = []
    for name, (lo, hi) in zip(m.param_names, m.ranges, strict=True):
        a, b = (float(v) for v in given.get(name, (lo, hi)))
        if not lo <= a < b <= hi:
            raise ValueError(
                f"range {name}={a:g},{b:g} must be an interval inside the model's [{lo:g}, {hi:g}]"
            )
        if name != "axis" and b == hi:
            b += float(overshoot) * (hi - lo)
        out.append((a, b))
    return tuple(out)


def _dihedral(
    model_name: str,
    kernels: torch.Tensor,
    params: torch.Tensor,
    flip: torch.Tensor,
    transpose: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip rows / transpose kernels and transform their parameters accordingly.

    Zernike astigmatism axis (from +x towards +y): row flip a -> -a, transpose
    a -> pi/2 - a (mod pi). Gaussian-2: transpose swaps the widths.
    """
    k, p = kernels.clone(), params.clone()
    fk, tk = flip.to(k.device), transpose.to(k.device)  # kernels and params may live
    fp, tp = flip.to(p.device), transpose.to(p.device)  # on different devices
    k[fk] = k[fk].flip(-2)
    k[tk] = k[tk].transpose(-2, -1)
    if model_name in ("zernike2", "zernike3"):
        a = p[:, -1]
        a = torch.where(fp, -a, a)
        a = torch.where(tp, math.pi / 2 - a, a)
        p[:, -1] = torch.remainder(a, math.pi)
    elif model_name == "gaussian2":
        p[tp] = p[tp].flip(-1)
    return k, p


def dihedral_batch(b: Batch, psf_model: str, g: torch.Generator) -> Batch:
    """Randomly flip / transpose whole patches and transform their parameters.

    Exact: a flipped or transposed blurred patch is the flipped source blurred by the
    flipped kernel, so this re-uses a generated batch as a new one at no cost.
    """
    n = b.x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    tr = torch.rand(n, generator=g) < 0.5
    x, p = _dihedral(psf_model, b.x, b.params, flip, tr)
    return Batch(x=x, params=p, invalid=b.invalid, weight=b.weight, kind=b.kind, snr=b.snr)


class PSFBank:
    """Kernels with their parameters, rendered once (Zernike) or on demand (Gaussian).

    Parameters
    ----------
    psf_model : str
        PSF model name.
    size : int
        Number of kernels in the bank (Zernike models); Gaussian kernels are cheap
        and rendered fresh for every batch.
    seed : int
        Seed of the parameter draws.
    optics : Optics, optional
    param_ranges : mapping of str -> (float, float), optional
        Narrower draw intervals for some parameters (see :func:`draw_ranges`).
    overshoot : float
        Draw magnitudes beyond the range's top (see :func:`draw_ranges`).
    twins : {"as-drawn", "canonical"}
        zernike3 labels: the parameters the kernels were rendered with, or of each pair
        of astigmatic twins (which blur cannot tell apart) the one with less astigmatism
        (:func:`psf_live.psf.canonical_twin`); the kernels are the same.
    """

    def __init__(
        self,
        psf_model: str,
        size: int = 2048,
        seed: int = 0,
        optics: Optics | None = None,
        param_ranges: Mapping[str, tuple[float, float]] | None = None,
        overshoot: float = 0.0,
        twins: str = "as-drawn",
    ) -> None:
        self.model = get_model(psf_model)
        self.optics = optics or Optics()
        self.k = self.model.kernel_size
        self.fresh = self.model.kind == "gaussian"
        self.param_ranges = dict(param_ranges or {})
        # checked and resolved once: Gaussian banks draw fresh parameters every batch
        if overshoot < 0:
            raise ValueError(f"overshoot must be >= 0, got {overshoot}")
        self.overshoot = float(overshoot)
        if twins not in TWIN_LABELS:
            raise ValueError(f"twins must be one of {TWIN_LABELS}, got {twins!r}")
        if twins != "as-drawn" and self.model.name != "zernike3":
            raise ValueError(f"twins={twins!r} is for zernike3, not {self.model.name}")
        self.twins = twins
        rng = draw_ranges(self.model.name, self.param_ranges, self.overshoot)
        self._lo = torch.tensor([r[0] for r in rng])
        self._hi = torch.tensor([r[1] for r in rng])
        g = torch.Generator().manual_seed(seed)
        self._on_device: torch.Tensor | None = None
        if not self.fresh:
            params = self._sample(size, g)
            chunks = [
                render_psf(self.model, params[i : i + 128], optics=self.optics)
                for i in range(0, size, 128)
            ]
            labels = canonical_twin(params) if twins == "canonical" else params
            self.params, self.kernels = labels, torch.cat(chunks)

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` parameter vectors drawn uniformly from the bank's intervals."""
        return self._lo + torch.rand(n, len(self._lo), generator=g) * (self._hi - self._lo)

    def draw(
        self, n: int, g: torch.Generator, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``n`` (kernels (n, k, k) on ``device``, params (n, N) on the CPU).

        The draws come from ``g`` (a CPU generator) whatever the device, so the same
        kernels are drawn on any device.
        """
        dev = torch.device("cpu") if device is None else device
        if self.fresh:
            p = self._sample(n, g)
            return render_psf(self.model, p).to(dev), p
        idx = torch.randint(0, len(self.params), (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        tr = torch.rand(n, generator=g) < 0.5
        bank = self.kernels
        if dev.type != "cpu":  # one copy of the bank on the device, made on first use
            if self._on_device is None or self._on_device.device != dev:
                self._on_device = self.kernels.to(dev)
            bank = self._on_device
        return _dihedral(self.model.name, bank[idx.to(dev)], self.params[idx], flip, tr)


@dataclass
class Truth:
    """Everything the degradation of a batch knew except the PSF (for non-blind oracles).

    The expected detector counts of a patch are ``beta * peak * (h * src + background)``
    over the central 128 x 128 pixels of the "valid" blur; their variance is ``beta^2``
    times the photons (when ``shot``) plus ``read^2`` (Eq. 10).
    """

    src: torch.Tensor  # (B, R, R) sharp source region after illumination, source units
    peak: torch.Tensor  # (B,) photons per source unit
    beta: torch.Tensor  # (B,) quantum efficiency
    read: torch.Tensor  # (B,) read-noise SD in counts
    background: torch.Tensor  # (B,) background in source units
    shot: torch.Tensor  # (B,) bool: Poisson noise applied (False: idealised or disabled)


@dataclass
class Batch:
    """One batch: normalised patches, public params, labels and bookkeeping."""

    x: torch.Tensor  # (B, 1, 128, 128) float32, normalised
    params: torch.Tensor  # (B, N) public units
    invalid: torch.Tensor  # (B,) float 0/1 (a0)
    weight: torch.Tensor  # (B,) float, 0 for smooth content
    kind: torch.Tensor  # (B,) int index into SOURCE_TYPES (-1: synthetic black/flat)
    raw: torch.Tensor | None = None  # (B, 128, 128) un-normalised noisy patches
    # (B,) std of the noise-free blurred patch / noise std, the quantity the label rule
    # compares with snr_min (without noise: inf, or NaN for a flat patch)
    snr: torch.Tensor | None = None
    truth: Truth | None = None  # kept on request (``keep_truth``): the PSF-free rest


@dataclass
class PatchStream:
    """Deterministic stream of degraded patches for one PSF model and split.

    A pool of sharp source regions is kept and slowly refreshed (source generation is
    the expensive part); each draw re-rotates, re-illuminates, re-blurs and re-noises
    them, so no two patches are the same.

    Parameters
    ----------
    psf_model : str
    split : {"train", "val", "test"}
        Selects the image-source split; procedural sources use disjoint seeds.
    seed : int
    types : dict of str -> float
        Source data types and their mixing weights.
    degrade : DegradeConfig
    pool : int
        Source regions kept in memory.
    refresh : float
        New source regions per batch, as a fraction of the batch size (they replace the
        oldest of the pool).
    bank : PSFBank, optional
        Shared kernel bank (built from ``seed`` if omitted).
    bank_size : int
        Kernels of the bank built when ``bank`` is omitted.
    param_ranges : dict of str -> (float, float), optional
        Narrower draw intervals for that bank (see :func:`draw_ranges`).
    overshoot : float
        Draw magnitudes beyond the range's top for that bank (see :func:`draw_ranges`;
        training streams only, so validation and test stay on the model's range).
    twins : {"as-drawn", "canonical"}
        zernike3 label convention of that bank (see :class:`PSFBank`).
    device : str or torch.device
        Where the pool of sources is kept and the patches are degraded (``"cuda"``:
        generation on the GPU that trains, no CPU worker processes needed). Sources,
        parameters and every per-patch draw come from a CPU generator on any device;
        the per-pixel noise comes from a generator of the device. The first batch of a
        CUDA stream therefore has the CPU stream's sources, PSFs and settings with other
        noise; later batches are other draws of the same recipe, because the CPU stream
        also takes its per-pixel noise from its one generator. The patches come back on
        ``device``.
    """

    psf_model: str
    split: str = "train"
    seed: int = 0
    types: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    pool: int = 512
    refresh: float = REFRESH
    bank: PSFBank | None = None
    bank_size: int = 2048
    param_ranges: dict[str, tuple[float, float]] | None = None
    overshoot: float = 0.0
    twins: str = "as-drawn"
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        if self.refresh < 0:
            raise ValueError(f"refresh must be >= 0, got {self.refresh}")
        off = {"train": 0, "val": 1_000_003, "test": 2_000_003}[self.split]
        self.g = torch.Generator().manual_seed(self.seed + off)
        self._dev = torch.device(self.device)
        # per-pixel noise: the CPU stream's own generator, or one of the device
        self._gd = self.g
        if self._dev.type != "cpu":
            self._gd = torch.Generator(device=self._dev).manual_seed(self.seed + off)
        if self.bank is None:
            self.bank = PSFBank(
                self.psf_model,
                self.bank_size,
                self.seed + off,
                param_ranges=self.param_ranges,
                overshoot=self.overshoot,
                twins=self.twins,
            )
        elif self.bank.twins != self.twins:
            raise ValueError(f"the bank's twins={self.bank.twins!r}, the stream's {self.twins!r}")
        self.k = self.bank.k
        self.r = PATCH + self.k - 1
        names = [t for t in self.types if self.types[t] > 0]
        for t in names:
            if t not in SOURCE_TYPES:
                raise ValueError(f"unknown source type {t!r}")
        self._names = names
        w = torch.tensor([self.types[t] for t in names], dtype=torch.float64)
        self._w = w / w.sum()
        # FIFO pool of source regions kept as a ring: logical item i (0 = oldest) is
        # row (head + i) % size. Refreshing overwrites the oldest rows in place (a
        # concatenation copied the whole ~90 MB pool on every batch).
        self._pool_x = torch.empty(0, self.r, self.r, device=self._dev)
        self._pool_kind = torch.empty(0, dtype=torch.long)
        self._head = 0
        self._fill(self.pool)

    def _new_sources(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.multinomial(self._w, n, replacement=True, generator=self.g)
        xs = torch.empty(n, self.r, self.r)
        kinds = torch.empty(n, dtype=torch.long)
        for j, name in enumerate(self._names):
            idx = (pick == j).nonzero().flatten()
            if len(idx):
                xs[idx] = make_sources(name, len(idx), self.r, self.g, self.split)
                kinds[idx] = SOURCE_TYPES.index(name)
        return xs, kinds

    def _fill(self, n: int) -> None:
        xs, ks = self._new_sources(n)
        xs = xs.to(self._dev)
        size = len(self._pool_x)
        if size < self.pool:  # still growing (the initial fill)
            xs = torch.cat([self._pool_x[self._head :], self._pool_x[: self._head], xs])
            ks = torch.cat([self._pool_kind[self._head :], self._pool_kind[: self._head], ks])
            self._pool_x, self._pool_kind = xs[-self.pool :].clone(), ks[-self.pool :].clone()
            self._head = 0
            return
        xs, ks = xs[-size:], ks[-size:]
        rows = (self._head + torch.arange(len(xs))) % size
        self._pool_x[rows.to(self._dev)] = xs
        self._pool_kind[rows] = ks
        self._head = (self._head + len(xs)) % size

    def next(self, batch_size: int, keep_raw: bool = False, keep_truth: bool = False) -> Batch:
        """Draw one batch of ``batch_size`` degraded, normalised patches.

        ``keep_raw`` keeps the un-normalised noisy patches, ``keep_truth`` those and
        the degradation's :class:`Truth` too; neither changes the random stream.
        """
        g = self.g
        if self.refresh > 0:
            self._fill(max(1, round(self.refresh * batch_size)))
        idx = torch.randint(0, len(self._pool_x), (batch_size,), generator=g)
        rows = (self._head + idx) % len(self._pool_x)
        src = self._pool_x[rows.to(self._dev)]  # advanced indexing: a copy
        kind = self._pool_kind[rows]
        # rotations by multiples of 90 degrees and flips
        rot = torch.randint(0, 4, (batch_size,), generator=g)
        for q in range(1, 4):
            m = rot == q
            if m.any():
                md = m.to(self._dev)
                src[md] = torch.rot90(src[md], q, dims=(-2, -1))
        fl = (torch.rand(batch_size, generator=g) < 0.5).to(self._dev)
        src[fl] = src[fl].flip(-1)
        return self.degrade_sources(src, kind, keep_raw=keep_raw, keep_truth=keep_truth)

    def degrade_sources(
        self,
        src: torch.Tensor,
        kind: torch.Tensor,
        keep_raw: bool = False,
        cfg: DegradeConfig | None = None,
        keep_truth: bool = False,
    ) -> Batch:
        """Degrade sharp source regions (B, R, R) into a :class:`Batch`."""
        g, cfg, dev = self.g, cfg or self.degrade, self._dev
        b, r = src.shape[0], self.r
        src = src.to(dev, copy=True)
        kind = kind.cpu()
        # synthetic black / flat patches
        syn_inv = torch.rand(b, generator=g) < cfg.invalid_fraction
        if syn_inv.any():
            level = torch.rand(b, generator=g)[:, None, None]
            level = torch.where(torch.rand(b, generator=g)[:, None, None] < 0.5, 0.0, level)
            src[syn_inv.to(dev)] = level[syn_inv].expand(-1, r, r).to(dev)
            kind = torch.where(syn_inv, torch.full_like(kind, -1), kind)
        # non-uniform illumination: random linear ramp
        c = torch.linspace(-1, 1, r, device=dev)
        th = (torch.rand(b, generator=g) * 2 * math.pi).to(dev)
        s = cfg.illum_gradient[0] + torch.rand(b, generator=g) * (
            cfg.illum_gradient[1] - cfg.illum_gradient[0]
        )
        s = s.to(dev)
        ramp = 1 + s[:, None, None] * 0.5 * (
            torch.cos(th)[:, None, None] * c[None, None, :]
            + torch.sin(th)[:, None, None] * c[None, :, None]
        )
        src = src * ramp
        h = (r - PATCH) // 2
        sharp = src[:, h : h + PATCH, h : h + PATCH]
        invalid, smooth = validity_rule(sharp)
        invalid |= syn_inv.to(dev)
        assert self.bank is not None
        kernels, params = self.bank.draw(b, g, dev)
        blurred = valid_blur(src, kernels).clamp_min(0)
        # photons and Eq. 10 noise
        lp = torch.log(torch.tensor(cfg.peak_photons, dtype=torch.float32))
        peak = torch.exp(lp[0] + torch.rand(b, generator=g) * (lp[1] - lp[0]))[:, None, None]
        beta = (cfg.beta[0] + torch.rand(b, generator=g) * (cfg.beta[1] - cfg.beta[0]))[
            :, None, None
        ]
        rr = cfg.read_rel[0] + torch.rand(b, generator=g) * (cfg.read_rel[1] - cfg.read_rel[0])
        bg = cfg.background_rel[0] + torch.rand(b, generator=g) * (
            cfg.background_rel[1] - cfg.background_rel[0]
        )
        clean = torch.zeros(b, dtype=torch.bool)
        if cfg.clean_fraction > 0:  # drawn only then: older recipes keep their streams
            clean = torch.rand(b, generator=g) < cfg.clean_fraction
            rr, bg = torch.where(clean, 0.0, rr), torch.where(clean, 0.0, bg)
        peak, beta, rr, bg, clean = (t.to(dev) for t in (peak, beta, rr, bg, clean))
        psi = (blurred + bg[:, None, None]) * peak
        # observed-texture rule: blurred signal buried in the noise -> invalid
        sig = beta[:, 0, 0] * peak[:, 0, 0] * _std(blurred, (-2, -1))
        shot = beta[:, 0, 0] ** 2 * psi.mean(dim=(-2, -1)) * (~clean).float()
        noise = torch.sqrt(
            (shot if cfg.poisson else 0.0) + (rr * beta[:, 0, 0] * peak[:, 0, 0]) ** 2
        )
        invalid |= sig < cfg.snr_min * noise
        counts = _poisson(psi, self._gd) if cfg.poisson else psi
        if clean.any():
            counts = torch.where(clean[:, None, None], psi, counts)
        noisy = beta * counts + (rr[:, None, None] * beta * peak) * torch.randn(
            psi.shape, generator=self._gd, device=dev
        )
        x = normalize_patches(noisy[:, None])
        weight = (~smooth | invalid).float()
        truth = None
        if keep_truth:
            poisson = (~clean) & torch.tensor(cfg.poisson)
            truth = Truth(
                src, peak[:, 0, 0], beta[:, 0, 0], rr * beta[:, 0, 0] * peak[:, 0, 0], bg, poisson
            )
        return Batch(
            x=x,
            params=params.to(dev),
            invalid=invalid.float(),
            weight=weight,
            kind=kind.to(dev),
            raw=noisy if keep_raw or keep_truth else None,
            snr=sig / noise,
            truth=truth,
        )
