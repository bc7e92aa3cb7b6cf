"""Sharp source images for training data: procedural generators and offline scikit-image images.

Every generator returns ``(n, R, R)`` float32 tensors with values in [0, 1] and draws
all randomness from the ``torch.Generator`` it is given (deterministic streams).

Data types (paper Table I analogues):

- ``syn``:  synthetic cells (ellipses with sharp membranes, textured nuclei, granules)
- ``poi``:  points on black (sparse sub-resolution emitters)
- ``tex``:  procedural textures (fractal 1/f noise, random sharp shapes, fibres)
- ``nat``:  natural images bundled with scikit-image (no download)
- ``micr``: microscopy images bundled with scikit-image (immunohistochemistry, retina, cell)

Image sources are split spatially (large images: the bottom band is held out, its left
half for validation, its right half for test) or by whole image, so validation and
test streams never share source pixels with training.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["SOURCE_TYPES", "image_bank", "make_sources"]

SOURCE_TYPES = ("syn", "poi", "tex", "nat", "micr")

_NAT_IMAGES = {
    # name -> split ("band": spatial split of a large image; or one whole split)
    "astronaut": "band",
    "camera": "band",
    "brick": "band",
    "grass": "band",
    "gravel": "band",
    "hubble_deep_field": "band",
    "coffee": "train",
    "rocket": "train",
    "chelsea": "train",
    "cat": "val",
    "clock": "val",
    "coins": "test",
}
_MICR_IMAGES = {"immunohistochemistry": "band", "retina": "band", "cell": "train"}
_BAND = 224


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _grid(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(r, dtype=torch.float32)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return yy, xx


def _norm01(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def fractal_noise(n: int, r: int, g: torch.Generator, binary: float = 0.3) -> torch.Tensor:
    """1/f^beta noise (beta in [1, 2.2]); a fraction ``binary`` thresholded to sharp edges.

    The amplitude spectrum is ``|f|^-beta`` (power ``|f|^-2 beta``) with random phases: a
    Gaussian random field, rescaled to [0, 1]. ``binary = 0`` keeps every field Gaussian
    and draws the same random numbers (the same fields).
    """
    f = torch.fft.fftfreq(r)
    rad = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp_min(1.0 / r)
    beta = _uniform(n, 1.0, 2.2, g)[:, None, None]
    amp = rad[None] ** (-beta)
    ph = torch.randn(n, r, r, generator=g) + 1j * torch.randn(n, r, r, generator=g)
    x = torch.fft.ifft2(amp * ph).real.float()
    x = _norm01(x)
    thr = torch.rand(n, generator=g) < binary
    if thr.any():
        t = _uniform(n, 0.35, 0.65, g)[:, None, None]
        x = torch.where(thr[:, None, None], (x > t).float() * 0.8 + 0.2 * x, x)
    return x


def random_shapes(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """Overlapping discs, rectangles and rotated bars with sharp edges and random grey levels."""
    yy, xx = _grid(r)
    out = torch.empty(n, r, r)
    for i in range(n):
        img = torch.full((r, r), float(torch.rand(1, generator=g)) * 0.3)
        k = int(torch.randint(8, 40, (1,), generator=g))
        for _ in range(k):
            cy, cx = (torch.rand(2, generator=g) * r).tolist()
            s = float(torch.rand(1, generator=g)) ** 2 * r * 0.25 + 2.0
            v = float(torch.rand(1, generator=g))
            kind = int(torch.randint(0, 3, (1,), generator=g))
            if kind == 0:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 < s * s
            else:
                th = float(torch.rand(1, generator=g)) * math.pi
                u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
                w = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
                ar = 1.0 if kind == 1 else float(torch.rand(1, generator=g)) * 0.3 + 0.05
                m = (u.abs() < s) & (w.abs() < s * ar)
            img = torch.where(m, torch.tensor(v), img)
        out[i] = img
    return out


def fibres(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """Thin bright curved fibres (1-3 px wide) on a dark or dim background."""
    yy, xx = _grid(r)
    out = torch.empty(n, r, r)
    for i in range(n):
        img = torch.zeros(r, r)
        k = int(torch.randint(3, 25, (1,), generator=g))
        for _ in range(k):
            p0 = torch.rand(2, generator=g) * r
            th = float(torch.rand(1, generator=g)) * math.pi
            curv = (float(torch.rand(1, generator=g)) - 0.5) * 0.02
            width = float(torch.rand(1, generator=g)) * 1.2 + 0.4
            dy, dx = yy - p0[0], xx - p0[1]
            u = dx * math.cos(th) + dy * math.sin(th)
            w = -dx * math.sin(th) + dy * math.cos(th) - curv * u * u
            prof = torch.exp(-0.5 * (w / width) ** 2)
            img = torch.maximum(img, prof * (0.3 + 0.7 * float(torch.rand(1, generator=g))))
        out[i] = img + float(torch.rand(1, generator=g)) * 0.1
    return out


def textures(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """[tex]: a mix of fractal noise, random shapes and fibres."""
    kind = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty(n, r, r)
    for k, fn in enumerate((fractal_noise, random_shapes, fibres)):
        idx = (kind == k).nonzero().flatten()
        if len(idx):
            out[idx] = fn(len(idx), r, g)
    return out


def points(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """[poi]: sparse sub-resolution point emitters on black (density varies per image)."""
    out = torch.zeros(n, r * r)
    for i in range(n):
        k = int((0.0005 + 0.006 * float(torch.rand(1, generator=g))) * r * r) + 1
        idx = torch.randint(0, r * r, (k,), generator=g)
        out[i, idx] = 0.2 + 0.8 * torch.rand(k, generator=g)
    return out.reshape(n, r, r)


def cells(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """[syn]: synthetic cells: bright membranes, dimmer cytoplasm, textured nuclei, granules."""
    yy, xx = _grid(r)
    out = torch.empty(n, r, r)
    tex = fractal_noise(n, r, g)
    for i in range(n):
        img = torch.zeros(r, r)
        k = int(torch.randint(2, 10, (1,), generator=g))
        for _ in range(k):
            cy, cx = (torch.rand(2, generator=g) * r).tolist()
            a = float(torch.rand(1, generator=g)) * 30 + 12
            b = a * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
            th = float(torch.rand(1, generator=g)) * math.pi
            u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
            w = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
            d = torch.sqrt((u / a) ** 2 + (w / b) ** 2)
            cyto = (d < 1).float() * 0.3
            memb = torch.exp(-0.5 * ((d - 1) * a / 1.2) ** 2) * 0.7
            nuc = (d < 0.4).float() * (0.3 + 0.5 * tex[i])
            img = torch.maximum(img, cyto + memb + nuc)
        m = int(torch.randint(0, 200, (1,), generator=g))
        if m:
            idx = torch.randint(0, r * r, (m,), generator=g)
            flat = img.reshape(-1)
            flat[idx] = flat[idx] + 0.5 * torch.rand(m, generator=g) * (flat[idx] > 0).float()
        out[i] = img.clamp(0, 1.5)
    return out


@lru_cache(maxsize=4)
def image_bank(kind: str, split: str) -> tuple[torch.Tensor, ...]:
    """Grey-level scikit-image images of ``kind`` (``nat``/``micr``) for ``split``, in [0, 1]."""
    import skimage.data as skd
    from skimage.color import rgb2gray

    table = _NAT_IMAGES if kind == "nat" else _MICR_IMAGES
    out = []
    for name, how in table.items():
        im = np.asarray(getattr(skd, name)())
        if im.ndim == 3:
            im = rgb2gray(im[..., :3])
        im = im.astype(np.float32)
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-8)
        h, w = im.shape
        if how == "band":
            if split == "train":
                im = im[: h - _BAND]
            elif split == "val":
                im = im[h - _BAND :, : w // 2]
            else:
                im = im[h - _BAND :, w // 2 :]
        elif how != split:
            continue
        out.append(torch.from_numpy(np.ascontiguousarray(im)))
    return tuple(out)


def image_crops(
    images: tuple[torch.Tensor, ...], n: int, r: int, g: torch.Generator
) -> torch.Tensor:
    """Random r x r crops (reflect-padded if an image is smaller), some 2x downsampled."""
    out = torch.empty(n, r, r)
    for i in range(n):
        im = images[int(torch.randint(0, len(images), (1,), generator=g))]
        if float(torch.rand(1, generator=g)) < 0.4 and min(im.shape) >= 2 * r:
            # 2x box-downsampled: sharper relative to the pixel grid
            h, w = im.shape
            im = im[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(dim=(1, 3))
        h, w = im.shape
        if h < r or w < r:
            py, px = max(0, r - h), max(0, r - w)
            im = torch.nn.functional.pad(im[None, None], (0, px, 0, py), mode="reflect")[0, 0]
            h, w = im.shape
        y = int(torch.randint(0, h - r + 1, (1,), generator=g))
        x = int(torch.randint(0, w - r + 1, (1,), generator=g))
        out[i] = im[y : y + r, x : x + r]
    return out


def make_sources(
    kind: str, n: int, r: int, g: torch.Generator, split: str = "train"
) -> torch.Tensor:
    """Draw ``n`` sharp r x r source images of data type ``kind`` for ``split``."""
    if kind == "syn":
        return cells(n, r, g)
    if kind == "poi":
        return points(n, r, g)
    if kind == "tex":
        return textures(n, r, g)
    if kind in ("nat", "micr"):
        return image_crops(image_bank(kind, split), n, r, g)
    raise ValueError(f"unknown source type {kind!r}; expected one of {SOURCE_TYPES}")
