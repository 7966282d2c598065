"""Expected latency per emitted token of a hierarchy (exact recursion and its float twin).

The model cascade of Globerson, Kaplan, Mansour, Mohri, Schuster, "Fast Inference via
Hierarchical Speculative Decoding" (arXiv 2510.19705; papers.md §4), with HiSpec's shared
early-exit computation (Kumar, Sanghavi, Das, arXiv 2510.01336; papers.md §5) as a cost model.  The
expression here is our own derivation (docs/latency.md), not the paper's closed form:

* level 0 (``M_0``) produces a batch of exactly ``T_0`` tokens with ``T_0`` calls of 1 position;
* level ``i`` (``0 < i < n``) requests batches of ``T_{i-1}`` tokens from level ``i - 1``, verifies
  each with ONE call of ``M_i`` scoring ``T_{i-1} + 1`` positions, appends accepted + 1 tokens and
  passes up exactly the first ``T_i`` once it holds ``>= T_i`` (surplus discarded);
* the target (level ``n``): one iteration = one batch of ``T_{n-1}`` tokens, one call scoring
  ``T_{n-1} + 1`` positions, accepted + 1 tokens emitted.

Under the i.i.d. assumption every verification of a ``b``-token batch at edge ``(i-1, i)`` draws its
accepted count independently from a fixed law (token-wise: ``P(>= j accepted) = alpha^j``), so the
buffer count of each level is a finite Markov chain.  With ``h(d)`` = expected number of requests to
collect ``>= d`` tokens (``h(d) = 1 + sum_y P(Y=y) h(d-y)``, ``h(d<=0) = 0``), Wald's identity gives the
expected cost of one level-``i`` batch ``E_i = h(T_i) (E_{i-1} + v_i)`` with ``E_0 = T_0 c_0(1)`` and
``v_i`` the expected cost of one level-``i`` verify call; renewal-reward gives the expected latency
per emitted token ``L = (E_{n-1} + v_n) / E[Y_n]``.  For one level this is ``(k c + 1)/E[tokens]``, the
reciprocal of Leviathan's ``S(alpha, k, c)`` (proved symbolically in the tests).  ``batch=B`` (``B``
rows in lockstep) evaluates every cost curve at the total positions of a call, ``c(B m)``; latencies
stay per token of one row (docs/latency.md, "Batch-aware costs").
"""

from __future__ import annotations

from typing import Sequence

import sympy as sp

from ..exact import HSDInputError
from .costs import as_cost_curve, verify_cost
from .laws import as_acceptance_law, level_tables
from .numeric import _check_int, _exact, _finish, _float, _total


def _prepare(costs, acceptance, thresholds, *, allow_symbolic_k: bool):
    for name, x, what in [("costs", costs, "per-level cost specs (level 0 .. target)"),
                          ("acceptance", acceptance, "per-edge acceptance specs"),
                          ("thresholds", thresholds, "ints T_0..T_(n-1)")]:
        if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
            raise HSDInputError(f"{name}: expected a sequence of {what}, got {x!r}")
    n = len(thresholds)
    if len(costs) != n + 1:
        raise HSDInputError(f"costs: has {len(costs)} levels, expected len(thresholds) + 1 = {n + 1}")
    if len(acceptance) != n:
        raise HSDInputError(f"acceptance: has {len(acceptance)} edges, expected len(thresholds) = {n}")
    curves = [as_cost_curve(c, f"costs[{i}]") for i, c in enumerate(costs)]
    laws = [as_acceptance_law(a, f"acceptance[{i}]") for i, a in enumerate(acceptance)]
    ts = []
    for i, t in enumerate(thresholds):
        if allow_symbolic_k and n == 1 and isinstance(t, sp.Symbol):
            if laws[0].alpha is None:
                raise HSDInputError("thresholds[0]: a symbolic draft length needs a token-wise acceptance rate")
            ts.append(t)
        else:
            ts.append(_check_int(t, f"thresholds[{i}]", 1))
    return curves, laws, ts


def _edge_law(laws, edge: int, b: int, conv) -> dict:
    try:
        return laws[edge].accepted(b, conv)
    except HSDInputError as exc:
        raise type(exc)(f"acceptance[{edge}]: {exc}") from None


def _edge_tables(laws, edge: int, b: int, t: int, conv):
    """:func:`level_tables` of one edge, cached on the law object (repeated evaluations are cheap)."""
    law = laws[edge]
    key = ("tables", b, t, conv)
    hit = law._cache.get(key)
    if hit is None:
        acc = _edge_law(laws, edge, b, conv)
        hit = level_tables({j + 1: q for j, q in acc.items()}, t, conv(0, "0"), conv(1, "1"))
        law._cache[key] = hit
    return hit


def _latency(curves, laws, ts, conv, batch: int):
    """The recursion of the module docstring, in the arithmetic ``conv`` chooses (per row of ``batch``)."""
    n = len(ts)
    step = conv(curves[0](_total(batch, 1)), f"costs[0]({_total(batch, 1)})")
    if n == 0:
        return step
    zero, one = conv(0, "0"), conv(1, "1")
    e = ts[0] * step  # level 0: T_0 calls of one position (per row)
    unprocessed = one  # level 0's last drafted token was never fed to M_0
    for i in range(1, n + 1):
        b = ts[i - 1]
        v = conv(verify_cost(curves[i - 1], curves[i], b + 1, unprocessed, batch=batch), f"costs[{i}]({_total(batch, b + 1)})")
        if i == n:
            break
        h, p = _edge_tables(laws, i - 1, b, ts[i], conv)
        e = h[ts[i]] * (e + v)
        unprocessed = p[ts[i]]
    if isinstance(b, sp.Symbol):
        alpha = laws[0].alpha
        mean_yield = (1 - alpha ** (b + 1)) / (1 - alpha)
    else:
        key = ("mean yield", b, conv)
        mean_yield = laws[n - 1]._cache.get(key)
        if mean_yield is None:
            acc = _edge_law(laws, n - 1, b, conv)
            mean_yield = laws[n - 1]._cache[key] = sum(((j + 1) * q for j, q in acc.items()), zero)
    return (e + v) / mean_yield


def hierarchy_latency(costs: Sequence[object], acceptance: Sequence[object], thresholds: Sequence[object], *, batch: int = 1):
    """Exact expected latency per emitted token of the hierarchy ``M_0 -> ... -> M_n`` (i.i.d. model).

    ``costs[i]`` (``i = 0..n``): level ``i``'s cost per call (see :func:`as_cost_curve`; an early exit
    made with :meth:`CostCurve.early_exit` shares computation with the level above it).
    ``acceptance[i]`` (``i = 0..n-1``): the law of edge ``(i, i+1)``, i.e. how ``M_{i+1}`` accepts
    ``M_i``'s batches (an acceptance rate, or see :func:`as_acceptance_law`).  ``thresholds``:
    ``T_0..T_{n-1}``.  ``n = 0`` (only the target) gives ``costs[0](1)``.  With one level
    ``thresholds[0]`` may be a sympy Symbol (token-wise law only), for identities over all ``k``.

    ``batch=B``: ``B`` rows decode in lockstep, every call scoring ``m`` positions in each row costs
    ``costs[i](B m)`` (curves indexed by the total positions of a call), and the result is the expected
    cost per token emitted by ONE row (per token of the whole batch: divide by ``B``); ``n = 0`` gives
    ``costs[0](B)``.  Exact for ``n <= 1``; a lower bound for lockstep middle levels (docs/latency.md).

    Returns a Fraction when every input is rational, else a sympy expression.

    >>> from fractions import Fraction
    >>> hierarchy_latency([Fraction(1, 10), 1], [Fraction(4, 5)], [2])  # 1 / walltime_factor(4/5, 2, 1/10)
    Fraction(30, 61)
    >>> hierarchy_latency([lambda m: Fraction(1, 20) + Fraction(m, 200), lambda m: 1 + Fraction(m, 16)], [Fraction(3, 4)], [2], batch=4)
    Fraction(756, 925)
    """
    curves, laws, ts = _prepare(costs, acceptance, thresholds, allow_symbolic_k=True)
    return _finish(_latency(curves, laws, ts, _exact, _check_int(batch, "batch", 1)))


def fhierarchy_latency(costs: Sequence[object], acceptance: Sequence[object], thresholds: Sequence[int], *, batch: int = 1) -> float:
    """Float twin of :func:`hierarchy_latency` (same recursion in float arithmetic)."""
    curves, laws, ts = _prepare(costs, acceptance, thresholds, allow_symbolic_k=False)
    return _latency(curves, laws, ts, _float, _check_int(batch, "batch", 1))


def hierarchy_speedup(costs, acceptance, thresholds, *, batch: int = 1):
    """Predicted speed-up over the target alone at the same batch: ``costs[-1](B) / hierarchy_latency(...)``
    (the autoregressive target scores one position per row per call)."""
    lat = hierarchy_latency(costs, acceptance, thresholds, batch=batch)
    return _finish(_exact(_target_step(costs, batch), f"costs[-1]({batch})") / lat)


def fhierarchy_speedup(costs, acceptance, thresholds, *, batch: int = 1) -> float:
    """Float twin of :func:`hierarchy_speedup`."""
    lat = fhierarchy_latency(costs, acceptance, thresholds, batch=batch)
    return _float(_target_step(costs, batch), f"costs[-1]({batch})") / lat


def _target_step(costs, batch: int):
    return as_cost_curve(costs[-1], f"costs[{len(costs) - 1}]")(_total(batch, 1))
