"""Argument checks of the engine's public API: every bad value is a ``ValueError`` naming it.

Integers may be Python ints, numpy integers or 0-d integer tensors (anything with ``__index__``);
``bool`` and floats are refused even when integral (``True`` or ``10.0`` as a token id is a bug).
Sequences of ids may be lists, tuples, numpy arrays or integer tensors.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch

__all__ = ["as_int", "as_int_list", "as_prompt_list"]


def as_int(x: object, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``x`` as an int in ``[lo, hi]`` (bounds optional), else a ValueError naming ``name``."""
    if isinstance(x, bool) or type(x).__name__ == "bool_" or (isinstance(x, torch.Tensor) and x.dtype == torch.bool):
        raise ValueError(f"{name}: expected an int, got the bool {x!r}")
    if getattr(x, "ndim", 0) != 0:  # a one-element tensor has __index__ too: not an int
        raise ValueError(f"{name}: expected an int, got an array of shape {tuple(x.shape)}")  # type: ignore[attr-defined]
    try:
        v = operator.index(x)
    except TypeError:
        raise ValueError(f"{name}: expected an int, got {x!r}") from None
    if lo is not None and v < lo or hi is not None and v > hi:
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name}: expected an int {span}, got {v}")
    return v


def _items(x: object, name: str) -> list:
    if isinstance(x, (str, bytes, bytearray)):
        raise ValueError(f"{name}: expected a sequence of ints, got {x!r}")
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D sequence of ints, got a tensor of shape {tuple(x.shape)}")
        return list(x.unbind(0)) if x.numel() else []
    try:
        return list(x)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name}: expected a sequence of ints, got {x!r}") from None


def as_int_list(x: object, name: str, lo: int | None = None, hi: int | None = None) -> list[int]:
    """A sequence of ints (each checked by :func:`as_int` as ``name[i]``)."""
    if type(x) is list and all(type(v) is int for v in x) and (not x or (lo is None or min(x) >= lo) and (hi is None or max(x) <= hi)):
        return x  # the common case, checked without a call per item
    if getattr(x, "ndim", 1) != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of ints, got shape {tuple(x.shape)}")  # type: ignore[attr-defined]
    return [as_int(v, f"{name}[{i}]", lo, hi) for i, v in enumerate(_items(x, name))]


def _is_int_like(x: object) -> bool:
    if isinstance(x, bool) or type(x).__name__ == "bool_" or getattr(x, "ndim", 0) != 0:
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def as_prompt_list(prompts: object) -> list:
    """Prompts as a list whose items are strings or id sequences: one string, one id sequence, a
    list of either, or a 2-D integer tensor / array (one prompt per row)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, bytearray)):
        raise ValueError(f"prompts: expected strings or token-id sequences, got bytes {prompts!r} (decode it first)")
    ndim = getattr(prompts, "ndim", None)
    if ndim == 2:
        return [row for row in prompts]  # type: ignore[union-attr]
    if ndim == 1:
        return [prompts]
    if ndim is not None:
        raise ValueError(f"prompts: expected a 1-D or 2-D array of token ids, got shape {tuple(prompts.shape)}")  # type: ignore[union-attr]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts: expected a non-empty list of strings or token-id lists, got {prompts!r}")
    if _is_int_like(prompts[0]):
        return [prompts]
    return list(prompts)
