"""Output buffers of the sampler, reused once the caller has let go of them: :class:`BufferPool`."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable

import numpy as np


def _refcounts(buffers: Iterable[np.ndarray]) -> list[int]:
    return [sys.getrefcount(buf) for buf in buffers]


class BufferPool:
    """The last ``keep`` buffers handed out, each reused once nothing outside the pool refers to it.

    Any returned crop, view or ``torch.from_numpy`` tensor holds a strong reference to its buffer, so
    a buffer whose reference count is that of an unreferenced probe counted the same way is free
    (interpreters differ in how many references they borrow, hence the probe). Reusing buffers avoids
    the page faults of fresh allocations (a third of the cost of a crop). ``keep=0``: always allocate.
    Not thread-safe: use one sampler per thread or worker process.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.buffers: deque[np.ndarray] = deque(maxlen=keep)  # the oldest drops out
        self._free = _refcounts(deque([np.empty(0)]))[0]

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        for buf, count in zip(self.buffers, _refcounts(self.buffers), strict=True):
            if count == self._free and buf.shape == shape and buf.dtype == dtype:
                return buf
        buf = np.empty(shape, dtype=dtype)
        self.buffers.append(buf)
        return buf
