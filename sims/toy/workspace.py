"""Width-sized buffers kept from one simulator run to the next run of the same shape.

A fresh multi-megabyte tensor costs its page faults on first touch (≈ 10 ms per 40 MB here), as
much as several steps of the simulation; a sweep or a landscape runs the same shapes again and
again. :func:`take` hands out a buffer of the asked shape (a kept one where there is one, its
contents undefined), :func:`give_back` keeps buffers for the next run, at most
:data:`LIMIT_BYTES` in all (the oldest shapes are dropped first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

#: Most bytes kept between runs.
LIMIT_BYTES = 256 << 20

_kept: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
_lock = threading.Lock()


def take(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor of ``shape`` and ``dtype`` with undefined contents."""
    key = (tuple(shape), dtype)
    with _lock:
        free = _kept.get(key)
        if free:
            return free.pop()
    return torch.empty(shape, dtype=dtype)


def give_back(*tensors: torch.Tensor | None) -> None:
    """Keep ``tensors`` (taken with :func:`take`, no longer used) for a later run."""
    with _lock:
        for t in tensors:
            if t is None or t.nbytes > LIMIT_BYTES:
                continue
            key = (tuple(t.shape), t.dtype)
            _kept.setdefault(key, []).append(t)
            _kept.move_to_end(key)
            while kept_bytes() > LIMIT_BYTES:
                oldest = next(iter(_kept))
                _kept[oldest].pop(0)
                if not _kept[oldest]:
                    del _kept[oldest]


def kept_bytes() -> int:
    """Bytes held for later runs."""
    return sum(t.nbytes for ts in _kept.values() for t in ts)


def clear() -> None:
    """Release every kept buffer."""
    with _lock:
        _kept.clear()
