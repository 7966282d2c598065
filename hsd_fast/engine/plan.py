"""Which levels and draft lengths a call runs: a fixed stack, or the batch-aware plan (``thresholds="auto"``).

A :class:`Plan` is a chain of the decoder's levels (bottom-up indices, the target last) with its
thresholds ``T_0..T_{n-1}``.  A decoder built with explicit thresholds (or the default ``k = 4``)
runs every call on its whole stack.  With ``thresholds="auto"`` each call runs the plan that
``hsd_ref.optimize.optimal_hierarchy(..., batch=B)`` chooses for the call's batch size ``B`` among
every sub-chain of the given levels that ends at the target -- the target alone, plain
autoregressive decoding, included -- and thresholds ``1..max_threshold``, from what the decoder has
measured itself (:class:`AutoPlanner`):

* **costs**: every level call of an auto decoder is timed and kept by the TOTAL positions it scored
  (rows x positions per row; a drafter's by rows, per proposal step).  Before planning for a batch
  size, the points the optimiser needs and the decoder lacks are *probed*: each model level at
  ``B x m`` positions, ``m`` in :data:`PROBE_POSITIONS` (level 0, which only ever drafts, at
  ``m = 1``), the least of 3 timed calls per point, over the call's own prompts after their prefill
  (the position-indexed cache recomputes what a probe overwrote).  Between points a curve is
  piecewise linear (``hsd_ref.CostCurve.points``).
* **acceptance**: ``alpha = accepted / (accepted + rejections)`` of every pair of levels that has
  run adjacent, summed over the decoder's past calls.  A pair never run adjacent is an edge the
  optimiser cannot use; until every adjacent pair of the given stack has a measurement, a call runs
  the whole stack with the default thresholds (:meth:`AutoPlanner.plan` returns it, ``explore``).
* **realized speed**: the latency model leaves out what a speculative iteration costs beyond its
  level calls (drafting bookkeeping, verification kernels, rows), and its i.i.d. acceptance misjudges
  bursty drafters, so its plan is checked against the target alone on the decoder's own calls: at
  each batch size, each of the two runs once (the model's plan first), and from then on the one with
  the higher decode rate so far (tokens per second of decoding, over past calls at that size) runs.

With ``replan_every=N`` the thresholds of a running call's chain are re-fitted every ``N`` iterations
from the call's measurements so far (:meth:`AutoPlanner.with_call`, :meth:`AutoPlanner.thresholds_for`;
:mod:`hsd_fast.engine.replan`).

Early exits sharing a backend are probed with distinct tokens, so their measured costs do not
credit the sharing (the plan is then conservative about hierarchies with exits).

**Lossless.**  A call's plan is a function of the batch size and of earlier calls only (their
measured times, acceptance counts and decode rates), fixed before the call draws any random number; the call
is then an ordinary decode with a fixed stack, exact by that stack's proof (docs/latency.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["Plan", "AutoPlanner", "PROBE_POSITIONS", "probe"]

PROBE_POSITIONS = (1, 2, 3, 5, 9)  # positions per row of the cost probes (a draft of up to 8 + 1)


@dataclass(frozen=True)
class Plan:
    """``chain``: level indices bottom-up (the target last); ``thresholds``: ``T_0..T_{n-1}``;
    ``predicted_speedup``: the optimiser's prediction over the target alone at this batch size
    (``None`` for a fixed stack or an exploring call)."""

    chain: tuple[int, ...]
    thresholds: tuple[int, ...]
    predicted_speedup: float | None = None
    explore: bool = False

    def describe(self, names) -> str:
        parts = [f"{names[i]} (T={t})" for i, t in zip(self.chain, self.thresholds)] + [names[self.chain[-1]]]
        s = " -> ".join(parts)
        if self.predicted_speedup is not None:
            s += f"; predicted {self.predicted_speedup:.2f}x over the target alone"
        return s + ("; exploring (acceptance not yet measured)" if self.explore else "")


class AutoPlanner:
    """Measured costs and acceptance of one decoder's levels, and the plan per batch size (module doc)."""

    def __init__(self, names: list[str], drafter: list[bool], default_thresholds: tuple[int, ...], max_threshold: int = 8):
        self.names = names
        self.drafter = drafter
        self.default = Plan(tuple(range(len(names))), default_thresholds, explore=True)
        self.max_threshold = max_threshold
        self.costs: list[dict[int, list]] = [{} for _ in names]  # per level: total positions -> [calls, seconds]
        self.counts: dict[tuple[int, int], list[int]] = {}  # (lower, upper) level indices -> [accepted, rejections]
        self.realized: dict[tuple, list] = {}  # (B, chain, thresholds) -> [new tokens, decode seconds] of past calls

    # -- what the decoder feeds back -------------------------------------------------------------

    def record(self, plan: Plan, metrics, B: int) -> None:
        """Add one call's timed costs, acceptance counts and decode rate (``metrics`` of a call of ``B``
        rows run on ``plan``)."""
        _add(self.realized, (B, plan.chain, plan.thresholds), metrics.new_tokens, metrics.decode_s)
        for i, lm in zip(plan.chain, metrics.levels):
            for total, (calls, seconds) in lm.by_total.items():
                _add(self.costs[i], total, calls, seconds)
        for lower, upper, lm in zip(plan.chain, plan.chain[1:], metrics.levels[1:]):
            _add(self.counts, (lower, upper), lm.accepted, lm.rejections)

    def add_cost(self, level: int, total: int, seconds: float) -> None:
        _add(self.costs[level], total, 1, seconds)

    # -- planning ---------------------------------------------------------------------------------

    def missing(self, B: int) -> list[tuple[int, int]]:
        """The probes a plan for ``B`` rows needs: ``(level, positions per row)`` of model levels
        whose curve has no point at ``B x m`` (drafters are measured as they run)."""
        want = lambda i: PROBE_POSITIONS[:1] if i == 0 else PROBE_POSITIONS  # noqa: E731  (level 0 only drafts)
        return [(i, m) for i in range(len(self.names)) if not self.drafter[i] for m in want(i) if B * m not in self.costs[i]]

    def exploring(self) -> bool:
        """Whether some adjacent pair of the given stack has no acceptance measurement yet (then every
        call runs :attr:`default`)."""
        n = len(self.names)
        return n > 1 and any(sum(self.counts.get((i, i + 1), (0, 0))) == 0 for i in range(n - 1))

    def _inputs(self, B: int):
        """``(costs, acceptance)`` for ``optimal_hierarchy(self.names, ...)`` at ``B`` rows, or ``None``
        where some level has no cost point yet."""
        costs = {}
        for i, name in enumerate(self.names):
            pts = {t: s / c for t, (c, s) in self.costs[i].items() if c}
            if self.drafter[i]:  # per proposal step of the whole batch: its cost at B rows, else the nearest measured
                near = min(pts, key=lambda t: abs(t - B)) if pts else None
                pts = {1: pts[near] if near is not None else 0.0}
            if not pts:
                return None
            costs[name] = pts
        acceptance = {(self.names[a], self.names[b]): acc / (acc + rej) for (a, b), (acc, rej) in self.counts.items() if acc + rej}
        return costs, acceptance

    def plan(self, B: int) -> Plan:
        from hsd_ref.optimize import optimal_hierarchy

        n = len(self.names)
        inputs = None if n == 1 or self.exploring() else self._inputs(B)
        if inputs is None:
            return self.default
        hp = optimal_hierarchy(self.names, *inputs, max_threshold=self.max_threshold, exact=False, batch=B)
        model = Plan(tuple(self.names.index(x) for x in hp.chain), tuple(hp.thresholds), float(hp.speedup))
        alone = Plan((n - 1,), (), 1.0)
        candidates = [model] if model.chain == alone.chain else [model, alone]
        seen = [self.realized.get((B, c.chain, c.thresholds)) for c in candidates]
        for c, r in zip(candidates, seen):
            if r is None or r[1] <= 0:  # not yet run at this batch size: run it once
                return c
        return max(zip(candidates, seen), key=lambda cr: cr[1][0] / cr[1][1])[0]

    # -- online re-planning (hsd_fast.engine.replan) ---------------------------------------------

    def with_call(self, chain: tuple[int, ...], levels) -> "AutoPlanner":
        """A copy of this planner that also holds a running call's measurements so far: ``levels``,
        the call's :class:`~hsd_fast.engine.metrics.LevelMetrics` (its ``chain``'s levels, totals up
        to now).  The realized decode rates are not copied (re-planning does not use them)."""
        other = AutoPlanner(self.names, self.drafter, self.default.thresholds, self.max_threshold)
        other.costs = [{k: list(v) for k, v in book.items()} for book in self.costs]
        other.counts = {k: list(v) for k, v in self.counts.items()}
        for i, lm in zip(chain, levels):
            for total, (calls, seconds) in lm.by_total.items():
                _add(other.costs[i], total, calls, seconds)
        for lower, upper, lm in zip(chain, chain[1:], levels[1:]):
            _add(other.counts, (lower, upper), lm.accepted, lm.rejections)
        return other

    def thresholds_for(self, chain: tuple[int, ...], B: int) -> tuple[int, ...] | None:
        """The latency-optimal thresholds of the FIXED ``chain`` at ``B`` rows from what this planner
        holds, or ``None`` where it cannot tell yet (a level without a cost point, an edge of the chain
        without an acceptance count).  ``optimal_hierarchy`` over the chain's levels and edges; where
        it prefers a shorter chain (a suffix of this one, or the target alone), the best thresholds of
        this chain by ``hsd_ref.latency.fhierarchy_latency`` over ``1..max_threshold`` each."""
        from itertools import product

        from hsd_ref.latency import fhierarchy_latency
        from hsd_ref.optimize import optimal_hierarchy

        if len(chain) < 2 or any(sum(self.counts.get(e, (0, 0))) == 0 for e in zip(chain, chain[1:])):
            return None
        inputs = self._inputs(B)
        if inputs is None:
            return None
        costs, acceptance = inputs
        names = [self.names[i] for i in chain]
        edges = {e: acceptance[e] for e in zip(names, names[1:])}
        hp = optimal_hierarchy(names, {x: costs[x] for x in names}, edges, max_threshold=self.max_threshold, exact=False, batch=B)
        if tuple(hp.chain) == tuple(names):
            return tuple(hp.thresholds)
        curves, alphas = [costs[x] for x in names], [edges[e] for e in zip(names, names[1:])]
        grid = product(range(1, self.max_threshold + 1), repeat=len(chain) - 1)
        return min(grid, key=lambda ts: (fhierarchy_latency(curves, alphas, ts, batch=B), ts))


def _add(book: dict, key, a, b) -> None:
    """``book[key] += [a, b]`` (a pair of running totals)."""
    rec = book.setdefault(key, [0, 0])
    rec[0] += a
    rec[1] += b


def probe(level, seq: torch.Tensor, lens: torch.Tensor, m: int, warp, filler: int, device: torch.device, reps: int = 3) -> float:
    """Seconds of a call of ``level`` scoring ``m`` new positions after each row ``seq[b, :lens[b]]``:
    the least of ``reps`` calls (the first of a new shape may grow the cache).  The new tokens are
    ``filler``, then ``filler + 1``, ...: distinct per call, so none reuses another's positions; they
    are garbage the next real call recomputes."""
    B, best = seq.shape[0], float("inf")
    ext = torch.cat([seq, seq.new_zeros(B, m)], 1)
    slots = lens[:, None] + torch.arange(m, device=lens.device)
    for r in range(reps):
        ext.scatter_(1, slots, filler + r)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        level.probs(ext, lens + m, m, warp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best
