"""Image formation: padded FFT convolution and the spatially-variant overlap-add operator.

The spatially-variant model is Eq. (12) of the paper in its forward form,

    y = H x = sum_m h_m * (phi_m . x),

with bilinear masks phi_m centred on a grid of points (they sum to one at every
pixel) and one kernel h_m per grid point. Its exact adjoint is

    H^T r = sum_m phi_m . (h~_m * r),   h~_m(s) = h_m(-s)  (correlation),

so <H x, r> = <x, H^T r> holds to float precision. Every convolution is linear
(zero "field extension" padding, no wrap-around) and touches only the support
of its mask plus the kernel margin, so the cost grows with the frame area and
not with (frame area) x (number of kernels). For a handful of kernels, whose
supports cover most of the frame anyway, whole-frame FFTs that sum the kernels'
products in the Fourier domain transform fewer points, and are used instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from ._render import next_fast_len

__all__ = ["OverlapAdd", "bilinear_weights", "convolve", "irfft2"]


def _fast_len(n: int) -> int:
    """Smallest ``8 * 2^a 3^b 5^c >= n``: an FFT length that is fast on CPU and GPU.

    Any 5-smooth length is valid, but on CPU (torch 2.14 / MKL, 2 threads, batches of
    4 real 2D windows through ``rfft2`` and :func:`irfft2`) lengths with fewer than
    three factors of two cost more per point: per window 0.136 ms at 270 px vs 0.103 ms
    at 288 px, 0.146 ms at 225 vs 0.058 ms at 216, 0.199 ms at 243 vs 0.083 ms at
    256, 0.368 ms at 375 vs 0.214 ms at 384. Multiples of 8 ran at 0.07-0.11 ns per
    ``N log2 N`` from 144 to 432 px, odd lengths at 0.15-0.25 ns.
    """
    return 8 * next_fast_len(max(1, -(-n // 8)))


def irfft2(spec: torch.Tensor, size: tuple[int, int], rows: int | None = None) -> torch.Tensor:
    """Inverse of ``torch.fft.rfft2`` as two 1D transforms, keeping the first ``rows`` rows.

    Same result as ``torch.fft.irfft2(spec, s=size)[..., :rows, :]``, but about 5x faster
    on CPU for stacks of a few windows (``torch.fft.irfft2`` copies and transposes its input
    internally; measured with torch 2.14 / MKL on 2 cores: 4 x 320 x 320 in 0.25 ms
    instead of 1.4 ms), and rows that are cropped away are never finished.
    """
    cols = torch.fft.ifft(spec, n=size[0], dim=-2)
    if rows is not None:
        cols = cols[..., :rows, :]
    return torch.fft.irfft(cols, n=size[1], dim=-1)


def convolve(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Linear 2D convolution, same-size output, zeros outside the image.

    Parameters
    ----------
    image : torch.Tensor
        Shape (H, W) or (B, H, W), float.
    kernel : torch.Tensor
        Shape (k, k) or (B, k, k) with odd ``k``, centred on its middle pixel.
        A single kernel is applied to every image of the batch.

    Returns
    -------
    torch.Tensor
        The blurred image(s), same shape and dtype as ``image``. The FFT is
        padded by the kernel radius ("field extension") so nothing wraps around.
    """
    squeeze = image.ndim == 2
    x = image[None] if squeeze else image
    h = kernel[None] if kernel.ndim == 2 else kernel
    if x.ndim != 3 or h.ndim != 3:
        raise ValueError(
            "convolve expects (H, W) or (B, H, W) images and (k, k) or (B, k, k) kernels"
        )
    kh, kw = h.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kh}x{kw}")
    H, W = x.shape[-2:]
    fh, fw = _fast_len(H + kh - 1), _fast_len(W + kw - 1)
    h = h.to(device=x.device, dtype=torch.float32)
    X = torch.fft.rfft2(x.float(), s=(fh, fw))
    K = torch.fft.rfft2(h, s=(fh, fw))
    full = irfft2(X * K, (fh, fw), rows=kh // 2 + H)
    out = full[..., kh // 2 : kh // 2 + H, kw // 2 : kw // 2 + W]
    out = out.to(image.dtype) if image.is_floating_point() else out
    return out[0] if squeeze else out


def bilinear_weights(n: int, centers: Sequence[float] | np.ndarray) -> np.ndarray:
    """One-dimensional bilinear (hat) weights that sum to one.

    Parameters
    ----------
    n : int
        Number of pixels along the axis.
    centers : sequence of float
        Increasing pixel coordinates of the grid points.

    Returns
    -------
    numpy.ndarray
        Array of shape (len(centers), n), float32: row ``i`` is 1 at
        ``centers[i]``, falls linearly to 0 at the neighbouring centres and is 1
        beyond the first/last centre for the first/last row, so the rows sum to
        one at every pixel.
    """
    c = np.asarray(centers, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("centers must be a non-empty 1D sequence")
    if np.any(np.diff(c) <= 0):
        raise ValueError("centers must be strictly increasing")
    pos = np.arange(n, dtype=np.float64)
    w = np.zeros((c.size, n), dtype=np.float64)
    if c.size == 1:
        w[0] = 1.0
        return w.astype(np.float32)
    cl = np.clip(pos, c[0], c[-1])
    idx = np.clip(np.searchsorted(c, cl, side="right") - 1, 0, c.size - 2)
    t = (cl - c[idx]) / (c[idx + 1] - c[idx])
    w[idx, np.arange(n)] += 1.0 - t
    w[idx + 1, np.arange(n)] += t
    return w.astype(np.float32)


class OverlapAdd:
    """Spatially-variant blur ``H x = sum_m h_m * (phi_m . x)`` and its adjoint.

    Parameters
    ----------
    shape : (int, int)
        Image shape (H, W).
    centers_y, centers_x : sequence of float
        Increasing row and column coordinates of the kernel grid (R and C
        points). Kernel ``m = i * C + j`` sits at ``(centers_y[i], centers_x[j])``.
    kernels : torch.Tensor
        Shape (R, C, k, k) or (R * C, k, k), odd ``k``, one kernel per grid point.
    device : torch.device or str, optional
        Where to compute; defaults to the kernels' device.
    method : {"auto", "windows", "frame"}
        How the local convolutions are done (same result to float precision).
        ``"windows"``: one FFT per kernel on a window covering its mask support
        plus the kernel radius. ``"frame"``: FFTs of the whole frame; the
        forward model sums the kernels' products in the Fourier domain (one
        inverse transform instead of one per kernel) and the adjoint transforms
        its input once, so ``n + 1`` transforms per application instead of
        ``2 n``, each larger; the masks are separable, so of the ``n`` transforms
        only the column halves are per kernel and the row halves per grid
        column (C instead of R x C). ``"auto"`` picks the one with fewer
        transformed points, counting ``n + 1`` whole transforms for the frame:
        the frame for a few kernels (a 2x2 grid on 256x256: 5 x 300^2 vs 8 x
        288^2 points; TV-RL took 0.73-0.86x the time of the windows,
        ``benchmarks/deconv_speed.py`` times both), the windows whenever the
        grid has more than about 8 kernels (a live map's 8x8 grid). The count
        with the row halves shared would pick the frame for a 4x4 grid on
        512x512, where TV-RL took 2.4x the windows' time (column FFTs of the
        whole frame height per kernel cost more than the count says), so the
        rule stays the plain count, which picked the faster method at 2x2 /
        512, 3x3 / 384 and 4x4 / 256 and 512 too.

    Notes
    -----
    The masks are separable bilinear hats (:func:`bilinear_weights`), the 2D
    version of Eq. (12)'s phi_m. Every FFT is long enough that nothing wraps
    around; content blurred outside the frame is discarded, which the adjoint
    mirrors exactly.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        centers_y: Sequence[float] | np.ndarray,
        centers_x: Sequence[float] | np.ndarray,
        kernels: torch.Tensor,
        device: torch.device | str | None = None,
        method: str = "auto",
    ) -> None:
        if method not in ("auto", "windows", "frame"):
            raise ValueError(f"method must be 'auto', 'windows' or 'frame', got {method!r}")
        H, W = (int(shape[0]), int(shape[1]))
        wy = bilinear_weights(H, centers_y)
        wx = bilinear_weights(W, centers_x)
        R, C = wy.shape[0], wx.shape[0]
        k = kernels.reshape(-1, *kernels.shape[-2:])
        if k.shape[0] != R * C:
            raise ValueError(f"expected {R * C} kernels for a {R}x{C} grid, got {k.shape[0]}")
        kh = k.shape[-1]
        if k.shape[-2] != kh or kh % 2 == 0:
            raise ValueError("kernels must be square with an odd side")
        self.device = torch.device(device) if device is not None else k.device
        self.shape = (H, W)
        self.grid = (R, C)
        self.radius = r = kh // 2
        # Support of each 1D hat: [start, stop) where the weight is non-zero.
        ys = [_support(row) for row in wy]
        xs = [_support(row) for row in wx]
        self._sy = max(b - a for a, b in ys)
        self._sx = max(b - a for a, b in xs)
        # Window = support + kernel margin on both sides; FFT of that size is a
        # linear convolution of the support content (no wrap).
        self._wh, self._ww = self._sy + 2 * r, self._sx + 2 * r
        self._fh, self._fw = _fast_len(self._wh), _fast_len(self._ww)
        # Window origins in padded coordinates (image padded by r + slack so
        # every window fits); supports shorter than the max start at their own
        # start and extend to the right (extra content is masked to zero).
        # Minimal padding (r before, enough after for the last window): the
        # padded frame is barely larger than the frame, so the per-call
        # allocations stay proportional to the frame area.
        self._pad_y = r
        self._pad_x = r
        self._oy = [a - r + self._pad_y for a, _ in ys]
        self._ox = [a - r + self._pad_x for a, _ in xs]
        self._hi_y = max(max(self._oy) + self._wh - (H + self._pad_y), r)
        self._hi_x = max(max(self._ox) + self._ww - (W + self._pad_x), r)
        dev = self.device
        wy_t = torch.as_tensor(wy, device=dev)
        wx_t = torch.as_tensor(wx, device=dev)
        # Mask windows (R, wh) and (C, ww) taken from the padded weights.
        wy_p = torch.nn.functional.pad(wy_t, (self._pad_y, self._pad_y + self._wh))
        wx_p = torch.nn.functional.pad(wx_t, (self._pad_x, self._pad_x + self._ww))
        self._my = torch.stack([wy_p[i, o : o + self._wh] for i, o in enumerate(self._oy)])
        self._mx = torch.stack([wx_p[j, o : o + self._ww] for j, o in enumerate(self._ox)])
        kk = k.to(device=dev, dtype=torch.float32)
        # Mask windows, made on first use (RL applies the operator twice per iteration).
        self._M: torch.Tensor | None = None
        # window m = i * C + j as a (rows, cols) slice pair of the padded image
        self._boxes = [
            (slice(oy, oy + self._wh), slice(ox, ox + self._ww))
            for oy in self._oy
            for ox in self._ox
        ]
        # windows per FFT batch: ~4 MB of complex spectra
        self._chunk = max(1, int(4e6 // (self._fh * (self._fw // 2 + 1) * 8)))
        # Kernel spectra (and their conjugates, materialised: a lazy conj view
        # multiplies slower) at the windows' or the frame's FFT size, made on
        # first use; only the chosen method's are ever made.
        self._kernels = kk
        self._spectra_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # the same for the whole-frame method, transposed (columns contiguous)
        self._spectra_t_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._wy, self._wx = wy_t, wx_t
        self._buffers: dict[tuple[str | int, ...], torch.Tensor] = {}
        n = R * C
        window_points = 2 * n * self._fh * self._fw
        frame_points = (n + 1) * next_fast_len(H + r) * next_fast_len(W + r)
        self.method = (
            method
            if method != "auto"
            else ("frame" if frame_points < window_points else "windows")
        )

    def _masks(self) -> torch.Tensor:
        if self._M is None:
            self._M = (self._my[:, None, :, None] * self._mx[None, :, None, :]).reshape(
                -1, self._wh, self._ww
            )
        return self._M

    def _check(self, x: torch.Tensor, margin: int = 0) -> None:
        """Refuse an input that is not the operator's shape less ``margin`` per side."""
        H, W = self.shape
        want = (H - 2 * margin, W - 2 * margin)
        if tuple(x.shape) != want:
            raise ValueError(f"expected an image of shape {want}, got {tuple(x.shape)}")

    def _pad(self, x: torch.Tensor, margin: int = 0) -> torch.Tensor:
        """Zero-pad ``x`` into the working frame.

        ``x`` may be smaller than the operator's shape by ``margin`` on every side;
        it is then placed inside with zeros around (one copy instead of two pads).
        """
        self._check(x, margin)
        m = margin
        return torch.nn.functional.pad(
            x.to(self.device, torch.float32),
            (self._pad_x + m, self._hi_x + m, self._pad_y + m, self._hi_y + m),
        )

    def _apply(self, x: torch.Tensor, adjoint: bool, margin: int = 0) -> torch.Tensor:
        """``sum_m h_m * (phi_m x)`` or, if ``adjoint``, ``sum_m phi_m (h~_m * x)``.

        Windows go through the FFTs a few at a time (``self._chunk``, a few MB of
        spectra): one batch of all windows allocates tens of MB per step, and the
        fresh pages cost more than the transforms (1024x1024, 64 PSFs, 20 TV-RL
        iterations on 2 cores: 2.2 s in one batch, 1.3 s in chunks of 4-8).
        """
        H, W = self.shape
        img = self._pad(x, margin)
        acc = torch.zeros_like(img)
        masks = self._masks()
        size = (self._fh, self._fw)
        K, Kc = self._spectra(size)
        spectra = Kc if adjoint else K
        n = masks.shape[0]
        wh, ww = self._wh, self._ww
        for lo in range(0, n, self._chunk):
            hi = min(n, lo + self._chunk)
            boxes = self._boxes[lo:hi]
            # windows written (masked) straight into a zero-padded FFT buffer
            # reused across calls: no stack, no pad copy, no fresh pages
            buf = self._buffer("windows", (hi - lo, self._fh, self._fw))
            for j, b in enumerate(boxes):
                if adjoint:
                    buf[j, :wh, :ww].copy_(img[b])
                else:
                    torch.mul(img[b], masks[lo + j], out=buf[j, :wh, :ww])
            spec = torch.fft.rfft2(buf)
            spec.mul_(spectra[lo:hi])
            out = irfft2(spec, size, rows=wh)[..., :ww]
            if adjoint:
                for j, (b, o) in enumerate(zip(boxes, out, strict=True)):
                    acc[b].addcmul_(o, masks[lo + j])
            else:
                for b, o in zip(boxes, out, strict=True):
                    acc[b] += o
        return acc[self._pad_y : self._pad_y + H, self._pad_x : self._pad_x + W]

    def _buffer(
        self, use: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Zeroed FFT input buffer, reused across calls (one per use and thread).

        Each ``use`` writes only the same block of it every time, so the zero
        padding around that block is never touched.
        """
        key: tuple[str | int, ...] = (use, *shape, threading.get_ident())
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= 8:
                self._buffers.clear()
            buf = torch.zeros(shape, device=self.device, dtype=dtype)
            self._buffers[key] = buf
        return buf

    def _spectra(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel spectra at an FFT size (kernel centre at the origin), and conjugates."""
        if size not in self._spectra_cache:
            K = self._kernel_spectra(size)
            self._spectra_cache[size] = (K, K.conj().resolve_conj())
        return self._spectra_cache[size]

    def _kernel_spectra(self, size: tuple[int, int]) -> torch.Tensor:
        """``rfft2`` of the kernels zero-padded to ``size``, centre at the origin."""
        k = self._kernels
        r = self.radius
        kpad = torch.zeros((k.shape[0], *size), device=self.device)
        kpad[:, : k.shape[-2], : k.shape[-1]] = k
        return torch.fft.rfft2(torch.roll(kpad, shifts=(-r, -r), dims=(-2, -1)))

    def _spectra_t(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel spectra at a frame FFT size, (n, fw // 2 + 1, fh): columns contiguous."""
        if size not in self._spectra_t_cache:
            KT = self._kernel_spectra(size).transpose(-1, -2).contiguous()
            self._spectra_t_cache[size] = (KT, KT.conj().resolve_conj())
        return self._spectra_t_cache[size]

    def _frame_size(self, trim: int) -> tuple[int, int]:
        # Linear convolution restricted to an inner region (output cropped, or
        # input zero, by `trim` px on every side) does not wrap for FFT lengths
        # >= side + radius - trim.
        H, W = self.shape
        extra = max(0, self.radius - trim)
        return next_fast_len(H + extra), next_fast_len(W + extra)

    def _forward_frame(self, x: torch.Tensor, crop: int) -> torch.Tensor:
        """Whole-frame forward model, the masks' separability used.

        ``phi_m = wy_i(y) wx_j(x)``, so the row transforms of the R x C masked images
        are ``wy_i`` times the row transforms of the C images ``wx_j x``: C real row
        FFTs instead of R x C. Column transforms run on a transposed (kx, y) layout,
        written by the ``wy_i`` product itself, so every FFT is along contiguous memory.
        """
        H, W = self.shape
        R, C = self.grid
        fh, fw = self._frame_size(crop)
        fw2 = fw // 2 + 1
        KT, _ = self._spectra_t((fh, fw))
        rows = self._buffer("frame-rows", (C, H, fw))
        torch.mul(self._wx[:, None, :], x.to(self.device, torch.float32), out=rows[..., :W])
        Z = torch.fft.rfft(rows, dim=-1)  # (C, H, fw2)
        cols = self._buffer("frame-cols", (R * C, fw2, fh), torch.complex64)
        torch.mul(
            self._wy[:, None, None, :],
            Z.transpose(-1, -2)[None],
            out=cols.view(R, C, fw2, fh)[..., :H],
        )
        S = torch.fft.fft(cols, dim=-1).mul_(KT).sum(0)  # (fw2, fh): the blurred spectrum
        s = torch.fft.ifft(S, dim=-1)[:, crop : H - crop]
        out = torch.fft.irfft(s.transpose(0, 1).contiguous(), n=fw, dim=-1)
        return out[:, crop : W - crop]

    def _adjoint_frame(self, r: torch.Tensor, margin: int) -> torch.Tensor:
        """Whole-frame adjoint: the forward model's steps transposed, in reverse order.

        One 2D transform of ``r``, R x C column products and inverse column FFTs, the
        ``wy_i`` weights summed in the Fourier domain along rows, then C inverse row
        FFTs weighted by ``wx_j``.
        """
        H, W = self.shape
        R, C = self.grid
        m = margin
        fh, fw = self._frame_size(m)
        fw2 = fw // 2 + 1
        _, KcT = self._spectra_t((fh, fw))
        rows = self._buffer(f"adjoint-rows-{m}", (H - 2 * m, fw))
        rows[:, m : W - m].copy_(r)
        cols = self._buffer(f"adjoint-cols-{m}", (fw2, fh), torch.complex64)
        cols[:, m : H - m].copy_(torch.fft.rfft(rows, dim=-1).transpose(0, 1))
        P = torch.fft.ifft(torch.fft.fft(cols, dim=-1) * KcT, dim=-1)  # (n, fw2, fh)
        P = P.view(R, C, fw2, fh)[..., :H].transpose(-1, -2)  # (R, C, H, fw2) views
        D = torch.empty((C, H, fw2), device=self.device, dtype=torch.complex64)
        torch.mul(P[0], self._wy[0, None, :, None], out=D)
        for i in range(1, R):
            D.addcmul_(P[i], self._wy[i, None, :, None])
        out = torch.fft.irfft(D, n=fw, dim=-1)[..., :W]  # (C, H, W)
        return out.mul_(self._wx[:, None, :]).sum(0)

    def forward(self, x: torch.Tensor, crop: int = 0) -> torch.Tensor:
        """Apply ``H``: blur ``x`` (H, W) with the spatially-variant kernels.

        With ``crop > 0`` only the inner part of the result is returned (the
        operator's shape minus ``2 * crop`` on each axis), as the field-extended
        problems of TV-RL need it; the whole-frame method then uses shorter FFTs.
        """
        H, W = self.shape
        self._check(x)
        if not 0 <= 2 * crop < min(H, W):
            raise ValueError(f"crop must leave part of the {H}x{W} frame, got {crop}")
        if self.method == "frame":
            return self._forward_frame(x, crop)
        out = self._apply(x, adjoint=False)
        return out if crop == 0 else out[crop : H - crop, crop : W - crop]

    def adjoint(self, r: torch.Tensor, margin: int = 0) -> torch.Tensor:
        """Apply ``H^T``: correlate ``r`` with each kernel and weight by its mask.

        With ``margin > 0``, ``r`` covers only the inner part of the frame (its
        shape is the operator's minus ``2 * margin`` on each axis) and is zero
        outside: the field-extended problems of TV-RL pass the data this way.
        """
        if self.method == "frame":
            self._check(r, margin)
            return self._adjoint_frame(r, margin)
        return self._apply(r, adjoint=True, margin=margin)

    __call__ = forward


def _support(w: np.ndarray) -> tuple[int, int]:
    nz = np.flatnonzero(w > 0)
    return int(nz[0]), int(nz[-1]) + 1
