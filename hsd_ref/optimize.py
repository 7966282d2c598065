"""Latency-optimal choice of a speculative-decoding hierarchy: which models, in which order, which thresholds.

Globerson, Kaplan, Mansour, Mohri, Schuster, "Fast Inference via Hierarchical Speculative Decoding"
(arXiv 2510.19705; papers.md §4) show that the latency-optimal hierarchy can be chosen in polynomial
time (a generalized shortest path).  This module is our own construction on the latency expression
of :mod:`hsd_ref.latency` (docs/latency.md), not the paper's algorithm:

A chain ``m_0 < m_1 < ... < m_n = target`` with thresholds ``T_0..T_{n-1}`` costs (per level batch)
``E_0 = T_0 c_{m_0}(1)`` and ``E_i = h_i(T_i) (E_{i-1} + v_i)`` where ``h_i`` depends only on
``(m_{i-1}, T_{i-1}, m_i)`` and the verify cost ``v_i`` only on ``(m_{i-1}, T_{i-1}, m_i)`` and on the
probability ``u_{i-1}`` that the lower batch's last token is unprocessed (shared computation only;
``u_{i-1}`` depends on ``(m_{i-2}, T_{i-2}, m_{i-1}, T_{i-1})``).  Latency per token is
``L = (E_{n-1} + v_n) / E[Y_n]`` (under ``batch=B`` every cost ``c(m)`` is ``c(B m)``, which changes
the coefficients, not the structure).  Each step is a non-decreasing function of ``(E_{i-1}, u_{i-1})`` with
coefficients fixed by the state ``(m_i, T_i)`` and the next model, so dynamic programming over the
states ``(model, threshold)`` in model order (the graph is a DAG because chains are increasing in the
given order) keeps, per state, the Pareto front of ``(E, u)`` (just the minimal ``E`` when no out-edge
shares computation) and is exact.

Complexity, ``M`` models and ``T = max_threshold``: ``O(M^2 T)`` buffer-chain tables of ``O(T^2)``
each, then ``O(M T)`` states with ``O(M T)`` out-transitions per kept candidate: ``O(M^2 T^3)``
arithmetic operations without shared computation, ``O(M^3 T^3)`` in the worst case with it (a Pareto
front holds at most ``O(M T)`` candidates), ``O(M^2 T^2)`` memory.  Brute force is
``O(T^(M-1) 2^(M-1))`` chains x thresholds; tests/ref/test_optimize.py checks the two agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Mapping, Sequence

from .exact import HSDInputError
from .latency.costs import CostCurve, _shares, as_cost_curve, verify_cost
from .latency.laws import AcceptanceLaw, as_acceptance_law, level_tables
from .latency.numeric import FloatRefused, _check_int, _exact, _float, _is_number, _total

__all__ = ["AcceptanceLaw", "CostCurve", "HierarchyPlan", "SingleDraftChoice", "normalize_inputs", "optimal_hierarchy"]


@dataclass(frozen=True)
class SingleDraftChoice:
    """The best plain speculative decoding: one draft model, draft length ``k``."""

    draft: Hashable
    k: int
    latency: object
    speedup: object  # over the target alone


@dataclass(frozen=True)
class HierarchyPlan:
    """The latency-optimal hierarchy.

    ``chain`` runs from level 0 (the autoregressive draft) to the target; ``thresholds[i]`` is ``T_i``;
    ``chain == (target,)`` with no thresholds means no speculation pays off: plain autoregressive
    decoding of the target.  ``latency`` is the expected cost per emitted token of one row of a
    ``batch``-row lockstep batch, in the units of the cost curves (``target_latency`` is the target's
    ``c(batch)``); ``speedup`` is
    ``target_latency / latency``; ``best_single`` the best one-draft chain (``None`` when no draft has an
    acceptance rate against the target) and ``speedup_over_single`` its latency / ``latency``.
    Fractions when ``exact``, floats otherwise.
    """

    chain: tuple
    thresholds: tuple[int, ...]
    latency: object
    target_latency: object
    speedup: object
    best_single: SingleDraftChoice | None
    speedup_over_single: object
    exact: bool
    max_threshold: int
    batch: int = 1

    def describe(self) -> str:
        fmt = (lambda x: f"{float(x):.4f}" + (f" (= {x})" if isinstance(x, Fraction) and x.denominator < 10**6 else ""))
        if len(self.chain) == 1:
            lines = [f"optimal hierarchy: {self.chain[0]} alone (no speculation pays off for thresholds <= {self.max_threshold})"]
        else:
            parts = [f"{m} [T={t}]" for m, t in zip(self.chain, self.thresholds)] + [str(self.chain[-1])]
            lines = [f"optimal hierarchy: {' -> '.join(parts)}"]
        if self.batch != 1:
            lines.append(f"batch: {self.batch} rows in lockstep; latencies are per token of one row (per batch token: / {self.batch})")
        lines.append(f"expected latency per token: {fmt(self.latency)} (target alone: {fmt(self.target_latency)})")
        lines.append(f"predicted speed-up over the target alone: {float(self.speedup):.4f}x")
        if self.best_single is None:
            lines.append("best single draft: none (no draft has an acceptance rate against the target)")
        else:
            b = self.best_single
            lines.append(f"best single draft: {b.draft} with k={b.k}: latency {fmt(b.latency)}, speed-up {float(b.speedup):.4f}x")
            lines.append(f"predicted speed-up over the best single draft: {float(self.speedup_over_single):.4f}x")
        return "\n".join(lines)


def normalize_inputs(models, costs, acceptance):
    """Validate and convert: ``(names, curves, laws)`` with ``laws[(i, j)]`` an :class:`AcceptanceLaw`
    for model indices ``i < j``.  See :func:`optimal_hierarchy` for the accepted forms."""
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or not models:
        raise HSDInputError(f"models: expected a non-empty sequence of model names (target last), got {models!r}")
    names = tuple(models)
    index = {}
    for i, name in enumerate(names):
        try:
            if name in index:
                raise HSDInputError(f"models: duplicate model name {name!r}")
        except TypeError:
            raise HSDInputError(f"models[{i}]: names must be hashable, got {name!r}") from None
        index[name] = i
    m = len(names)
    if isinstance(costs, Mapping):
        unknown = [k for k in costs if k not in index]
        if unknown:
            raise HSDInputError(f"costs: unknown model {unknown[0]!r}; models are {list(names)}")
        missing = [n for n in names if n not in costs]
        if missing:
            raise HSDInputError(f"costs: no cost for model {missing[0]!r}")
        specs = [costs[n] for n in names]
    elif isinstance(costs, Sequence) and not isinstance(costs, (str, bytes)):
        if len(costs) != m:
            raise HSDInputError(f"costs: has {len(costs)} entries, expected one per model ({m})")
        specs = list(costs)
    else:
        raise HSDInputError(f"costs: expected a mapping name -> cost or a sequence aligned with models, got {costs!r}")
    curves = [as_cost_curve(s, f"costs[{names[i]!r}]") for i, s in enumerate(specs)]
    if not isinstance(acceptance, Mapping):
        raise HSDInputError(f"acceptance: expected a mapping (draft, verifier) -> rate or law, got {acceptance!r}")

    def resolve(x, key):
        try:
            if x in index:
                return index[x]
        except TypeError:
            pass
        if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < m:
            return x
        raise HSDInputError(f"acceptance: pair {key!r} names an unknown model {x!r}; models are {list(names)}")

    laws = {}
    for key, spec in acceptance.items():
        if not isinstance(key, tuple) or len(key) != 2:
            raise HSDInputError(f"acceptance: keys must be (draft, verifier) pairs, got {key!r}")
        i, j = resolve(key[0], key), resolve(key[1], key)
        if i >= j:
            raise HSDInputError(
                f"acceptance: pair {key!r}: the verifier must come after the draft in models (cheapest first, target last)"
            )
        if (i, j) in laws:
            raise HSDInputError(f"acceptance: pair {key!r} given twice")
        laws[(i, j)] = as_acceptance_law(spec, f"acceptance[{key!r}]")
    return names, curves, laws


def _solve(names, curves, laws, tmax, conv, batch):
    """The DP of the module docstring in the arithmetic ``conv``; returns (plan fields)."""
    m = len(names)
    t = m - 1
    zero, one = conv(0, "0"), conv(1, "1")

    def cost(i, positions):
        return conv(curves[i](_total(batch, positions)), f"costs[{names[i]!r}]({_total(batch, positions)})")

    def vcost(i, j, positions, unproc):
        v = verify_cost(curves[i], curves[j], positions, unproc, batch=batch)
        return conv(v, f"costs[{names[j]!r}]({_total(batch, positions)})")

    def accepted(i, j, b):
        try:
            return laws[(i, j)].accepted(b, conv)
        except HSDInputError as exc:
            raise type(exc)(f"acceptance[{(names[i], names[j])!r}]: {exc}") from None

    tables, mean_yield = {}, {}
    for (i, j) in laws:
        for b in range(1, tmax + 1):
            acc = accepted(i, j, b)
            if j == t:
                mean_yield[(i, b)] = sum(((a + 1) * q for a, q in acc.items()), zero)
            else:
                tables[(i, j, b)] = level_tables({a + 1: q for a, q in acc.items()}, tmax, zero, one)
    step = [cost(i, 1) for i in range(m)]
    for i in range(m):
        if step[i] < 0:
            raise HSDInputError(f"costs[{names[i]!r}]: negative cost {step[i]}")
    target_latency = step[t]

    # candidate = (E, unprocessed, model, T, parent candidate or None)
    cand: dict = {(i, T): [] for i in range(t) for T in range(1, tmax + 1)}
    for i in range(t):
        if any(a == i for (a, _) in laws):
            for T in range(1, tmax + 1):
                cand[(i, T)].append((T * step[i], one, i, T, None))
    best = None  # (latency, candidate)
    single = None  # (latency, model, k)
    for i in range(t):
        outs = sorted(j for (a, j) in laws if a == i)
        shared_out = any(_shares(curves[i], curves[j]) for j in outs)
        for T in range(1, tmax + 1):
            front = _pareto(cand[(i, T)], keep_unprocessed=shared_out)
            cand[(i, T)] = front
            for c in front:
                for j in outs:
                    v = vcost(i, j, T + 1, c[1])
                    if j == t:
                        lat = (c[0] + v) / mean_yield[(i, T)]
                        if best is None or lat < best[0]:
                            best = (lat, c)
                    else:
                        h, p = tables[(i, j, T)]
                        for T2 in range(1, tmax + 1):
                            cand[(j, T2)].append((h[T2] * (c[0] + v), p[T2], j, T2, c))
    for i in range(t):  # the best plain speculative decoding (its own small search; pruning above may drop it)
        if (i, t) in laws:
            for k in range(1, tmax + 1):
                lat = (k * step[i] + vcost(i, t, k + 1, one)) / mean_yield[(i, k)]
                if single is None or lat < single[0]:
                    single = (lat, i, k)
    if best is not None and best[0] < target_latency:
        chain, ths = [t], []
        c = best[1]
        while c is not None:
            chain.append(c[2])
            ths.append(c[3])
            c = c[4]
        chain.reverse()
        ths.reverse()
        latency = best[0]
    else:
        chain, ths, latency = [t], [], target_latency
    return chain, ths, latency, target_latency, single


def _pareto(cands: list, *, keep_unprocessed: bool) -> list:
    """Candidates not dominated in (E, unprocessed); only the minimal E when unprocessed is irrelevant."""
    if not cands:
        return []
    if not keep_unprocessed:
        best = cands[0]
        for c in cands[1:]:
            if c[0] < best[0]:
                best = c
        return [best]
    ordered = sorted(range(len(cands)), key=lambda k: (cands[k][0], cands[k][1], k))
    front, low = [], None
    for k in ordered:
        c = cands[k]
        if low is None or c[1] < low:
            front.append(c)
            low = c[1]
    return front


def optimal_hierarchy(
    models: Sequence[Hashable],
    costs: Mapping[Hashable, object] | Sequence[object],
    acceptance: Mapping[tuple, object],
    *,
    max_threshold: int = 8,
    exact: bool | None = None,
    batch: int = 1,
) -> HierarchyPlan:
    """The chain and thresholds of minimal expected latency per token (i.i.d. model of hsd_ref.latency).

    ``models``: names ordered cheapest .. target (the target is last and always used; any subset of the
    others may form the chain, in this order).  ``costs``: per model a cost spec (number, ``{m: cost}``
    points, callable or :class:`CostCurve`; early exits via :meth:`CostCurve.early_exit`), as a mapping
    name -> spec or a sequence aligned with ``models``.  ``acceptance``: ``{(draft, verifier): spec}``
    for model names (or indices) with the draft before the verifier; the spec is ``alpha_{ij}``, the
    rate at which the verifier accepts the draft's tokens, or any :class:`AcceptanceLaw`.  A pair left
    out is an edge that cannot be used.  Thresholds range over ``1..max_threshold``.

    ``batch=B``: ``B`` rows decode in lockstep; every call costs its curve at the TOTAL positions it
    scores, ``c(B m)`` (see :func:`hsd_ref.latency.hierarchy_latency`), and latencies are per token of
    one row.  The plan ``(target,)`` (autoregressive, latency ``c_target(B)``) is always a candidate,
    so where verification's cost grows with ``B (T + 1)`` the optimiser returns it.  Exact for chains
    with one draft; optimistic for deeper ones on a lockstep engine (docs/latency.md, "Batch-aware costs").

    ``exact=None`` computes in Fractions when every input is rational and falls back to floats
    otherwise; ``True`` insists on exact arithmetic, ``False`` uses floats.  Time ``O(M^3 T^3)`` worst
    case (``O(M^2 T^3)`` without shared computation), ``M = len(models)``, ``T = max_threshold``.

    >>> plan = optimal_hierarchy(["d", "t"], {"d": Fraction(1, 10), "t": 1}, {("d", "t"): Fraction(4, 5)})
    >>> plan.chain, plan.thresholds
    (('d', 't'), (6,))
    """
    tmax = _check_int(max_threshold, "max_threshold", 1)
    batch = _check_int(batch, "batch", 1)
    if exact not in (None, True, False):
        raise HSDInputError(f"exact: expected None, True or False, got {exact!r}")
    names, curves, laws = normalize_inputs(models, costs, acceptance)
    if exact is False:
        mode = _float
    else:
        mode = _exact_numeric
    try:
        chain, ths, latency, target_latency, single = _solve(names, curves, laws, tmax, mode, batch)
    except FloatRefused:
        if exact:
            raise
        mode = _float
        chain, ths, latency, target_latency, single = _solve(names, curves, laws, tmax, mode, batch)
    if not target_latency > 0:
        raise HSDInputError(f"costs[{names[-1]!r}]: the target's cost per call must be > 0, got {target_latency}")
    if not latency > 0:
        raise HSDInputError(f"costs: the optimal chain {[names[i] for i in chain]} has latency {latency}; costs must make every call cost > 0")
    best_single = None
    over_single = None
    if single is not None:
        best_single = SingleDraftChoice(names[single[1]], single[2], single[0], target_latency / single[0])
        over_single = single[0] / latency
    return HierarchyPlan(
        chain=tuple(names[i] for i in chain),
        thresholds=tuple(ths),
        latency=latency,
        target_latency=target_latency,
        speedup=target_latency / latency,
        best_single=best_single,
        speedup_over_single=over_single,
        exact=mode is not _float,
        max_threshold=tmax,
        batch=batch,
    )


def _exact_numeric(x, name):
    v = _exact(x, name)
    if not _is_number(v):
        raise HSDInputError(f"{name}: the optimiser needs numeric values, got the symbolic {v!r}")
    return v
