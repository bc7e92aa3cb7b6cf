"""Sliding-window patch geometry (Section II-F, Fig. 3) and frame validation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = ["check_frame", "extract_patches", "gather_patches", "patch_centers", "patch_starts"]

PATCH_SIZE = 128
DEFAULT_STRIDE = 64


def patch_starts(
    length: int, patch_size: int = PATCH_SIZE, stride: int = DEFAULT_STRIDE
) -> np.ndarray:
    """First pixel of every patch along one axis.

    Patch ``i`` starts at ``i * stride`` for ``i = 0 .. floor((length - patch_size) / stride)``
    (Section II-F). When the last of these does not reach the frame edge, one more patch,
    aligned to the edge (starting at ``length - patch_size``), is appended so that the
    patches cover the whole frame.

    Parameters
    ----------
    length : int
        Frame size along the axis, in pixels.
    patch_size : int
        Patch size in pixels (128 for the shipped networks).
    stride : int
        Step between patches in pixels.

    Returns
    -------
    numpy.ndarray
        Strictly increasing start offsets, int64.
    """
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if patch_size < 1:
        raise ValueError(f"patch size must be a positive integer, got {patch_size}")
    if length < patch_size:
        raise ValueError(f"frame size {length} is smaller than a patch ({patch_size} px)")
    n = (length - patch_size) // stride + 1
    starts = np.arange(n, dtype=np.int64) * stride
    if starts[-1] + patch_size < length:
        starts = np.append(starts, length - patch_size)
    return starts


def patch_centers(starts: npt.ArrayLike, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Pixel coordinate of the centre of each patch, ``start + (patch_size - 1) / 2``."""
    return np.asarray(starts, dtype=np.float64) + (patch_size - 1) / 2.0


def check_frame(frame: npt.ArrayLike, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Validate a camera frame and return it as a 2D numpy array (dtype unchanged).

    Parameters
    ----------
    frame : array_like
        2D image of a real dtype (uint8, uint16, int, float).
    patch_size : int
        The frame must be at least this large along both axes.

    Returns
    -------
    numpy.ndarray
        The frame as a 2D array (no copy when already one).

    Raises
    ------
    ValueError
        Wrong number of dimensions, empty, too small, non-real dtype, NaN or infinity.
    """
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D frame, got {a.ndim}D data of shape {a.shape}")
    if a.size == 0:
        raise ValueError("the frame is empty")
    if a.dtype == np.bool_ or a.dtype.kind not in "uif":
        raise ValueError(f"unsupported frame dtype {a.dtype}; use an integer or float image")
    if a.shape[0] < patch_size or a.shape[1] < patch_size:
        raise ValueError(
            f"frame of shape {a.shape} is smaller than one {patch_size}x{patch_size} patch"
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError("the frame contains NaN or infinite values")
    return a


def extract_patches(
    frame: npt.ArrayLike, patch_size: int = PATCH_SIZE, stride: int = DEFAULT_STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a frame into overlapping square patches (Fig. 3).

    Parameters
    ----------
    frame : array_like
        2D image of any real dtype (validated with :func:`check_frame`).
    patch_size : int
        Patch size in pixels.
    stride : int
        Step between patches; the last row/column of patches is aligned to the frame
        edge when the size does not divide (see :func:`patch_starts`).

    Returns
    -------
    patches : numpy.ndarray
        Shape (rows, cols, patch_size, patch_size), float32. Patch ``(i, j)`` is
        ``frame[sy[i]:sy[i]+patch_size, sx[j]:sx[j]+patch_size]``.
    centers_y, centers_x : numpy.ndarray
        Pixel coordinates of the patch centres along rows and columns, float64.

    References
    ----------
    .. [1] A. Shajkofci and M. Liebling, "Spatially-variant CNN-based point spread
       function estimation for blind deconvolution and depth estimation in optical
       microscopy", IEEE Trans. Image Process. 29 (2020), Section II-F.
    """
    a = check_frame(frame, patch_size)
    sy = patch_starts(a.shape[0], patch_size, stride)
    sx = patch_starts(a.shape[1], patch_size, stride)
    windows = np.lib.stride_tricks.sliding_window_view(a, (patch_size, patch_size))
    patches = np.empty((sy.size, sx.size, patch_size, patch_size), dtype=np.float32)
    for i, y in enumerate(sy):
        patches[i] = windows[y, sx]
    return patches, patch_centers(sy, patch_size), patch_centers(sx, patch_size)


def _blocks(starts: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split patch starts into runs of constant step: (first index, count, start, step)."""
    s = [int(v) for v in starts]
    out: list[tuple[int, int, int, int]] = []
    i = 0
    while i < len(s):
        step = s[i + 1] - s[i] if i + 1 < len(s) else 0
        n = 1
        while i + n < len(s) and s[i + n] - s[i + n - 1] == step:
            n += 1
        out.append((i, n, s[i], step if n > 1 else 0))
        i += n
    return out


def gather_patches(
    frame: np.ndarray,
    starts_y: np.ndarray,
    starts_x: np.ndarray,
    patch_size: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Copy the patches of a frame into a float32 tensor, converting in the same pass.

    Equal to :func:`extract_patches` for the same starts, without the float32 copy of the
    whole frame and the gather that follows it: each run of equally spaced starts is one
    strided view of the frame, copied (and converted) straight into ``out``. For the 64
    patches of a 1024 x 1024 uint16 frame this takes about a third of the time.

    Parameters
    ----------
    frame : numpy.ndarray
        2D frame (validated by :func:`check_frame`), any real dtype torch can view.
    starts_y, starts_x : numpy.ndarray
        Patch starts along rows and columns (:func:`patch_starts`).
    patch_size : int
        Patch side in pixels.
    out : torch.Tensor
        CPU float32 tensor of shape (rows, cols, patch_size, patch_size), filled in place.

    Returns
    -------
    torch.Tensor
        ``out``.
    """
    import torch

    a = frame
    if not (a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")  # views need it
    try:
        src = torch.from_numpy(a)
    except TypeError:  # a dtype this torch cannot view (uint16 before torch 2.3)
        src = torch.from_numpy(a.astype(np.float32))
    w, base, p = int(a.shape[1]), src.storage_offset(), patch_size
    for i, ni, y, dy in _blocks(starts_y):
        for j, nj, x, dx in _blocks(starts_x):
            view = src.as_strided((ni, nj, p, p), (dy * w, dx, w, 1), base + y * w + x)
            out[i : i + ni, j : j + nj].copy_(view)
    return out
