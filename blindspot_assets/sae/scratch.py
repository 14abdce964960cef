"""Reused buffers for the large temporaries of a training step or an encode pass."""

from __future__ import annotations

import math

import torch
from torch import Tensor

Scratch = dict[str, Tensor]


def scratch_buffer(
    scratch: Scratch | None,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """A contiguous ``shape`` tensor over memory kept in ``scratch`` under ``name`` (grown
    when too small); ``scratch`` None: a fresh one.

    A fresh n × c tensor is mapped anew by the allocator on every call, and its page faults
    cost about as much as a pass over it; reusing the memory pays them once. Only for
    temporaries that are dead before the next call with the same name.
    """
    numel = math.prod(shape)
    buf = None if scratch is None else scratch.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = torch.empty(numel, dtype=dtype, device=device)
        if scratch is not None:
            scratch[name] = buf
    return buf[:numel].view(shape)


def recycled(
    scratch: Scratch | None,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """The tensor a trainer left in ``scratch`` under ``name`` (last step's gradient, dead
    now), taken out so one output reuses it, or None when there is none of that shape."""
    buf = None if scratch is None else scratch.pop(name, None)
    if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype or buf.device != device:
        return None
    return buf
