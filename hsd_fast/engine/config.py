"""Argument checks of the engine's public API (every bad value is a ``ValueError`` naming it), and
the parsing of schemes and thresholds.

Integers may be Python ints, numpy integers or 0-d integer tensors (anything with ``__index__``);
``bool`` and floats are refused even when integral (``True`` or ``10.0`` as a token id is a bug).
Sequences of ids may be lists, tuples, numpy arrays or integer tensors.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch

from ..kernels import KERNELS

__all__ = [
    "ENGINE_SCHEMES",
    "as_int",
    "as_int_list",
    "as_prompt_list",
    "default_thresholds",
    "is_int_like",
    "parse_device",
    "parse_dtype",
    "parse_probs_dtype",
    "parse_schemes",
    "parse_seeds",
    "parse_thresholds",
]


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


def is_int_like(x: object) -> bool:
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
    if is_int_like(prompts[0]):
        return [prompts]
    return list(prompts)


# the single-draft schemes of hsd_fast.verify: any of them can verify any level (multi-draft schemes
# need N drafts per position, which the level protocol does not produce)
ENGINE_SCHEMES = tuple(name for name, spec in KERNELS.items() if not spec.multi_draft)


def default_thresholds(n_verifiers: int, k: int = 4) -> tuple[int, ...]:
    """hsd_ref's ``"half"`` rule: ``T_{n-1} = k``, ``T_{i-1} = max(1, ceil(T_i / 2))``."""
    out = [k]
    for _ in range(n_verifiers - 1):
        out.append(max(1, math.ceil(out[-1] / 2)))
    return tuple(reversed(out))


def parse_schemes(scheme, n: int, temperature) -> tuple[tuple[str, ...], float]:
    """One scheme per verifying level, and the temperature (0 when every level is greedy)."""
    if isinstance(scheme, str):
        named = [scheme]
        schemes = [scheme] * n
    elif isinstance(scheme, Sequence) and all(isinstance(s, str) for s in scheme):
        named = schemes = list(scheme)
        if len(schemes) != n:
            raise ValueError(f"scheme: expected one name or {n} names (levels 1..{n}), got {len(schemes)}")
    else:
        raise ValueError(f"scheme: expected a scheme name or one name per verifying level, got {scheme!r}")
    for i, s in enumerate(named):
        if s not in ENGINE_SCHEMES:
            raise ValueError(f"scheme: unknown or unsupported scheme {s!r} for level {i + 1}; the engine runs {', '.join(ENGINE_SCHEMES)}")
    greedy_levels = [s == "greedy" for s in named]
    if temperature == 0 or (named and all(greedy_levels)):
        return ("greedy",) * n, 0
    if any(greedy_levels):
        raise ValueError("scheme: 'greedy' reproduces the argmax law; it cannot be mixed with sampling schemes (use temperature=0)")
    return tuple(schemes), temperature


def parse_thresholds(thresholds, n: int) -> tuple[int, ...]:
    """``T_0..T_{n-1}`` from None (default k = 4), an int k (the halving rule below it) or a tuple."""
    if n == 0:
        if thresholds not in (None, ()):
            raise ValueError(f"thresholds: the target alone (autoregressive decoding) has no thresholds, got {thresholds!r}")
        return ()
    if thresholds is None:
        return default_thresholds(n)
    if is_int_like(thresholds):
        return default_thresholds(n, as_int(thresholds, "thresholds", 1))
    if not isinstance(thresholds, Sequence) or isinstance(thresholds, str) or len(thresholds) != n:
        raise ValueError(f"thresholds: expected an int k >= 1 or {n} ints >= 1 (T_0..T_{n - 1}), got {thresholds!r}")
    return tuple(as_int_list(thresholds, "thresholds", 1))


def parse_dtype(dtype) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or its name (``"bfloat16"``)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype: expected None, a torch dtype or its name, got {dtype!r}")


def parse_probs_dtype(probs_dtype) -> torch.dtype:
    """The dtype of the engine's probability rows: float32 (the default) or float64, as a
    ``torch.dtype`` or its name."""
    dt = getattr(torch, probs_dtype, None) if isinstance(probs_dtype, str) else probs_dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"probs_dtype: expected 'float32' or 'float64' (or the torch dtype), got {probs_dtype!r}")
    return dt


def parse_device(device) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: cannot interpret {device!r} as a torch device") from None


def parse_seeds(seeds, seed, B: int, max_seed: int) -> list[int]:
    """One seed per row: ``seeds`` (a sequence of ``B`` ints), else ``seed + b``."""
    if seeds is None:
        seed = as_int(seed, "seed", 0, max_seed - B + 1)
        return [seed + b for b in range(B)]
    if is_int_like(seeds):
        raise ValueError(f"seeds: expected one seed per prompt (a sequence of {B} ints), got {seeds!r}; use seed= for one base seed")
    seeds = as_int_list(seeds, "seeds", 0, max_seed)
    if len(seeds) != B:
        raise ValueError(f"seeds: expected {B} seeds (one per prompt), got {len(seeds)}")
    return seeds
