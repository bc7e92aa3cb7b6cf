"""Per-patch normalisation shared by training and inference."""

from __future__ import annotations

import torch

__all__ = ["normalize_patches"]

_EPS_REL = 1e-3
_CLIP = 20.0


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Normalise each patch to zero mean and unit standard deviation.

    ``z = (x - mean) / sqrt(var + (eps * (|mean| + std_floor))^2)`` with a small
    relative floor, so black, flat or saturated patches map to (nearly) zero instead
    of NaN, and values are clipped to +-20. Identical in training and inference.

    Parameters
    ----------
    patches : torch.Tensor
        (B, 1, H, W) or (B, H, W), any real dtype, any device.

    Returns
    -------
    torch.Tensor
        float32, same shape and device.
    """
    x = patches.float()
    if x.ndim not in (3, 4):
        raise ValueError(
            f"expected patches of shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}"
        )
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    floor = _EPS_REL * (mean.abs() + 1e-6)
    z = (x - mean) / torch.sqrt(var + floor * floor)
    return z.clamp_(-_CLIP, _CLIP)
