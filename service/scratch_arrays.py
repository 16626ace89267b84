"""Per-thread scratch arrays, reused from block to block instead of allocated afresh.

A fresh array of a few hundred KiB or more is mapped anew by the allocator, and each of its
pages is faulted in and zeroed by the kernel on first touch: for a temporary as large as a
block of the input file, that costs more than the work done on it. Each thread keeps its
own buffers, grown as needed and never shrunk, so they stay mapped.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt


class ScratchArrays:
    """Named one-dimensional scratch arrays per thread.

    ``get("newlines", n, np.bool_)`` is an uninitialised array of ``n`` values, a view of
    this thread's buffer for that name: valid until the same thread asks for the name again.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, size: int, dtype: Any) -> npt.NDArray[Any]:
        """An uninitialised array of ``size`` values of ``dtype``."""
        buffers: dict[str, npt.NDArray[Any]] | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buffer = buffers.get(name)
        if buffer is None or buffer.dtype != dtype or len(buffer) < size:
            # A quarter more than asked: blocks vary a little in size.
            buffer = buffers[name] = np.empty(size + size // 4, dtype=dtype)
        return buffer[:size]
