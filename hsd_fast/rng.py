"""The one random stream of hsd_fast: every uniform is a pure function of (row seed, row-local counter).

Used alike by ``hsd_fast.verify(..., seeds=)`` (row ``b`` reads uniforms ``0 .. D-1`` of seed
``seeds[b]``'s stream: :func:`seeded_uniforms`) and by the engine (row ``b`` reads its stream on from
its own counter), so ``verify(seeds=[5])`` and the engine's row seeded 5 start with the same uniforms.

A shared ``torch.Generator`` stream would make a row's draws depend on how many draws the other rows
of the batch took; here row ``b`` reads uniform number ``c`` of its own stream as

    u(seed_b, c) = top 53 bits of mix64(key_b + (c + 1) * GOLDEN) / 2**53,   key_b = mix64(seed_b * GOLDEN)

where ``mix64`` is the SplitMix64 finaliser (Steele, Lea, Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the constants of Vigna's ``splitmix64.c``).  The uniforms are exact dyadic
rationals in [0, 1) (never 1.0; 0.0 only with probability 2**-53), so ``fractions.Fraction(u)``
feeds the same values to ``hsd_ref`` draw for draw.  The counters advance only for rows that are
active in a step (see ``hsd_fast.engine.decoder``), which makes a row's random numbers independent
of the other rows of its batch.  Stream ``key_b`` is Vigna's SplitMix64 ``next()`` sequence started
from the state ``key_b`` (:func:`stream_bits`).

Arithmetic is int64 with two's-complement wrap-around (the behaviour of torch's integer kernels on
CPU and CUDA); ``reference_uniform`` is the pure-Python twin that the tests compare against.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_SEED", "reference_uniform", "row_keys", "seeded_uniforms", "stream_bits", "uniforms"]

MAX_SEED = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_GOLDEN_S, _M1_S, _M2_S = _signed(GOLDEN), _signed(_M1), _signed(_M2)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _srl(x, 30)) * _M1_S
    x = (x ^ _srl(x, 27)) * _M2_S
    return x ^ _srl(x, 31)


def row_keys(seeds: torch.Tensor) -> torch.Tensor:
    """Per-row stream keys from int64 seeds in [0, 2**63).  # [B] -> [B]"""
    return _mix64(seeds.to(torch.int64) * _GOLDEN_S)


def stream_bits(keys: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """64-bit outputs number ``counters[b] .. counters[b] + n - 1`` of each row's stream, as int64
    bit patterns: SplitMix64 from state ``keys[b]``.  keys, counters: [B] int64 -> [B, n] int64."""
    c = counters[:, None] + torch.arange(1, n + 1, device=counters.device, dtype=torch.int64)  # [B, n]
    return _mix64(keys[:, None] + c * _GOLDEN_S)


def uniforms(keys: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """Uniforms number ``counters[b] .. counters[b] + n - 1`` of each row's stream: the top 53 bits
    of :func:`stream_bits` times 2**-53.  keys, counters: [B] int64 -> [B, n] float64 in [0, 1)."""
    return _srl(stream_bits(keys, counters, n), 11).to(torch.float64) * (2.0**-53)


def seeded_uniforms(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` uniforms of each seed's stream (``verify(seeds=)``).  # [B] int64 -> [B, n]"""
    return uniforms(row_keys(seeds), torch.zeros_like(seeds, dtype=torch.int64), n)


def _mix64_py(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def reference_uniform(seed: int, counter: int) -> float:
    """Pure-Python twin of :func:`uniforms` for one (seed, counter): the test oracle."""
    key = _mix64_py(seed * GOLDEN)
    x = _mix64_py(key + (counter + 1) * GOLDEN)
    return (x >> 11) * 2.0**-53
