"""Whole-file outputs: a file appears complete under its name, or not at all.

Every command that writes a result file (maps, depth maps, deblurred images, simulated
frames, calibrations, weights) writes it under a temporary name in the same folder and
renames it when the writer has finished, so an interrupted or failed run (Ctrl-C, a
full disk, an exception in the writer) leaves neither a truncated file under the
requested name nor a stray temporary one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; rename it into place on success.

    The temporary file lies in the destination's folder (so the final rename is atomic
    on the same file system) and keeps the destination's suffix, for writers that read
    the format from it (``tifffile``). On an exception, including ``KeyboardInterrupt``,
    it is removed and the destination is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace.

    Yields
    ------
    pathlib.Path
        Where the caller writes the whole file.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> out = Path(tempfile.mkdtemp()) / "map.npy"
    >>> with atomic_output(out) as tmp:
    ...     np.save(tmp, np.zeros(3))
    >>> sorted(p.name for p in out.parent.iterdir())
    ['map.npy']
    """
    dest = Path(path)
    tmp = dest.with_name(f".{dest.stem}.partial-{os.getpid()}{dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
