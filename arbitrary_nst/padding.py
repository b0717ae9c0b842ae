"""Pure-numpy padding helpers shared by the JAX inference path and the JAX-free ONNX path
(:class:`~arbitrary_nst.onnx_export.OnnxTransfer` must import without JAX)."""
from __future__ import annotations

import numpy as np


def round_side(n: int) -> int:
    """The padded length of an ``n``-pixel side without buckets: the next multiple of 4, at
    least 8 (the transfer network's two stride-2 convs; its 9x9 reflect pad needs >= 5 px)."""
    return max(n + (-n) % 4, 8)


def pad_to(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Reflect-pad an ``H x W x C`` array at the bottom/right to ``shape``; pads larger than
    the image reflect repeatedly; a 1-pixel axis is repeated."""
    h, w = x.shape[:2]
    ph, pw = shape[0] - h, shape[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"pad_to: cannot pad {x.shape} to {shape}")
    out = x
    for axis, (size, pad) in enumerate(((h, ph), (w, pw))):
        if pad:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, pad)
            out = np.pad(out, widths, mode="reflect" if size > 1 else "edge")
    return out
