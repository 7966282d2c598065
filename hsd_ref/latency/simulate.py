"""Monte-Carlo simulation of the hierarchy process of :func:`hierarchy_latency` (docs/latency.md §7),
driven by any :class:`HierarchyProcess` and ``random.Random(seed)`` only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol, Sequence

from ..exact import HSDInputError
from .costs import as_cost_curve, verify_cost
from .laws import as_acceptance_law
from .numeric import _check_int, _float


class HierarchyProcess(Protocol):
    """What the simulator needs from the models: drafting at level 0 and verification at each level.

    ``committed`` is the target's output so far (a list; do not modify it) and ``pending`` the tokens
    tentatively accepted above the calling level plus its own buffer, so the calling level's context
    is ``committed + pending``.  ``verify`` returns the emitted tokens: the accepted prefix of
    ``batch`` followed by one recovered or bonus token.
    """

    def draft(self, committed: list, pending: tuple, n: int, rng: random.Random) -> tuple: ...

    def verify(self, level: int, committed: list, pending: tuple, batch: tuple, rng: random.Random) -> tuple: ...


class BernoulliProcess:
    """The i.i.d. process: token contents are placeholders (0), verification at edge ``(i-1, i)``
    draws the accepted count from ``acceptance[i-1]`` (token-wise: one Bernoulli(alpha) per token)."""

    def __init__(self, acceptance: Sequence[object]):
        self.laws = [as_acceptance_law(a, f"acceptance[{i}]") for i, a in enumerate(acceptance)]
        self._cdf: dict = {}

    def draft(self, committed, pending, n, rng):
        return (0,) * n

    def _accepted(self, edge: int, b: int, rng: random.Random) -> int:
        law = self.laws[edge]
        if law.alpha is not None:
            a = float(law.alpha)
            j = 0
            while j < b and rng.random() < a:
                j += 1
            return j
        key = (edge, b)
        cdf = self._cdf.get(key)
        if cdf is None:
            acc, cdf = 0.0, []
            for j, p in sorted(law.accepted(b, _float).items()):
                acc += p
                cdf.append((acc, j))
            self._cdf[key] = cdf
        u = rng.random()
        for acc, j in cdf:
            if u < acc:
                return j
        return cdf[-1][1]

    def verify(self, level, committed, pending, batch, rng):
        return batch[: self._accepted(level - 1, len(batch), rng)] + (0,)


@dataclass(frozen=True)
class SimulationResult:
    """Per target iteration (a renewal cycle): its cost and the number of tokens it emitted."""

    cycle_costs: tuple[float, ...]
    cycle_tokens: tuple[int, ...]
    tokens: tuple[int, ...] = ()

    @property
    def latency(self) -> float:
        """Total cost / total tokens: the ratio estimator of the expected latency per token."""
        return math.fsum(self.cycle_costs) / sum(self.cycle_tokens)


def simulate_hierarchy(
    costs: Sequence[object],
    thresholds: Sequence[int],
    process: HierarchyProcess,
    *,
    cycles: int,
    seed: int,
    keep_tokens: bool = False,
) -> SimulationResult:
    """Run ``cycles`` target iterations of the hierarchy and record each one's cost and yield.

    Same process and cost model as :func:`hierarchy_latency` (costs evaluated in floats, the
    shared-computation discount applied per call with the actual last-token state), driven by
    ``process`` (e.g. :class:`BernoulliProcess` for the i.i.d. model, or real toy models) and by
    ``random.Random(seed)`` only.
    """
    n = len(thresholds)
    if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence) or len(costs) != n + 1:
        raise HSDInputError(f"costs: expected {n + 1} per-level cost specs (len(thresholds) + 1), got {costs!r}")
    curves = [as_cost_curve(c, f"costs[{i}]") for i, c in enumerate(costs)]
    ts = [_check_int(t, f"thresholds[{i}]", 1) for i, t in enumerate(thresholds)]
    cycles = _check_int(cycles, "cycles", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    rng = random.Random(seed)
    # per-call costs in floats; the verify cost depends on whether the batch's last token is unprocessed
    step0 = _float(curves[0](1), "costs[0](1)")
    vcost = [None] + [
        tuple(_float(verify_cost(curves[i - 1], curves[i], ts[i - 1] + 1, u), f"costs[{i}]") for u in (0, 1))
        for i in range(1, n + 1)
    ]
    committed: list = []

    def produce(level: int, pending: tuple):
        """One batch of exactly T_level tokens: (batch, cost, last token unprocessed)."""
        if level == 0:
            return tuple(process.draft(committed, pending, ts[0], rng)), ts[0] * step0, 1
        buf: tuple = ()
        spent = 0.0
        while len(buf) < ts[level]:
            sub, sub_cost, unproc = produce(level - 1, pending + buf)
            out = tuple(process.verify(level, committed, pending + buf, sub, rng))
            if not 1 <= len(out) <= len(sub) + 1:
                raise HSDInputError(f"process.verify at level {level}: returned {len(out)} tokens for a batch of {len(sub)}")
            spent += sub_cost + vcost[level][unproc]
            buf += out
        return buf[: ts[level]], spent, int(len(buf) == ts[level])

    ccost, ctok = [], []
    for _ in range(cycles):
        if n == 0:
            out, spent = tuple(process.draft(committed, (), 1, rng)), step0
        else:
            batch, spent, unproc = produce(n - 1, ())
            out = tuple(process.verify(n, committed, (), batch, rng))
            if not 1 <= len(out) <= len(batch) + 1:
                raise HSDInputError(f"process.verify at level {n}: returned {len(out)} tokens for a batch of {len(batch)}")
            spent += vcost[n][unproc]
        ccost.append(spent)
        ctok.append(len(out))
        committed.extend(out)
    return SimulationResult(tuple(ccost), tuple(ctok), tuple(committed) if keep_tokens else ())
