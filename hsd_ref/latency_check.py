"""Validation of the i.i.d. latency model (``hsd_ref.latency``) against real toy models.

Three checks (issue 3, docs/latency.md §8):

1. **i.i.d. toy models** (context-free): the exact expected cost per token of the exact hierarchy
   (:meth:`Hierarchy.expected_cost`) equals :func:`hierarchy_latency` with ``alpha = sum min(q, p)``
   per edge, exactly (``tests/ref/test_latency_validation.py``).
2. **context-dependent toy models**: :class:`TableLMProcess` drives :func:`simulate_hierarchy` with
   real token-wise verification of the models' own conditionals and records the acceptance rate of
   every edge; :func:`model_error` compares the model's prediction from those measured rates with the
   simulated latency and reports the relative error (the i.i.d. assumption is known to be inexact).
3. one level: the model reduces to Leviathan's ``S(alpha, k, c)`` (proved in tests/ref/test_latency.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from .exact import HSDInputError
from .latency import fhierarchy_latency, simulate_hierarchy
from .models import TableLM, check_context

__all__ = ["TableLMProcess", "ModelError", "model_error", "mix_model"]


def mix_model(target: TableLM, draft: TableLM, depth: int, weight: Fraction = Fraction(1, 2)) -> TableLM:
    """``weight * target + (1 - weight) * draft`` tabulated on contexts of length ``<= depth`` (enough
    when both models depend on the last ``depth`` tokens only, as :func:`hsd_ref.strategies.toy_pair`'s do)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise HSDInputError(f"depth: expected an int >= 0, got {depth!r}")
    V = target.vocab_size
    table, level = {}, [()]
    for d in range(depth + 1):
        for ctx in level:
            table[ctx] = tuple(weight * a + (1 - weight) * b for a, b in zip(target.probs(ctx), draft.probs(ctx)))
        if d < depth:
            level = [c + (v,) for c in level for v in range(V)]
    return TableLM.from_table(V, table)


def _sample(row: Sequence[float], u: float) -> int:
    acc = 0.0
    for v, x in enumerate(row):
        acc += x
        if u < acc:
            return v
    return max(v for v, x in enumerate(row) if x > 0)  # float round-off at the top of the CDF


class TableLMProcess:
    """The :class:`hsd_ref.latency.HierarchyProcess` of real models ``models[0] < ... < models[n]``
    (token-wise verification at every edge, float arithmetic), counting per edge the drafted tokens
    that were tested and those accepted.

    ``window``: the models must depend on at most the last ``window`` tokens (true of
    :func:`hsd_ref.strategies.toy_pair` models with ``depth <= window``); only that much context is
    kept, so long simulations stay linear in time.
    """

    def __init__(self, models: Sequence[TableLM], prefix: tuple[int, ...] = (), window: int = 4):
        if len(models) < 2:
            raise HSDInputError("models: need at least a draft and a target")
        V = models[0].vocab_size
        for i, m in enumerate(models):
            if not isinstance(m, TableLM) or m.vocab_size != V:
                raise HSDInputError(f"models[{i}]: expected a TableLM with vocab_size {V}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise HSDInputError(f"window: expected an int >= 1 (tokens of context the models depend on), got {window!r}")
        self.models = list(models)
        self.prefix = check_context(prefix, V)
        self.window = window
        self._rows: dict = {}
        self.tested = [0] * (len(models) - 1)
        self.accepted = [0] * (len(models) - 1)

    def _row(self, level: int, ctx: tuple[int, ...]) -> tuple[float, ...]:
        key = (level, ctx[-self.window :])
        row = self._rows.get(key)
        if row is None:
            row = tuple(float(x) for x in self.models[level].probs(key[1]))
            self._rows[key] = row
        return row

    def _context(self, committed, pending) -> tuple[int, ...]:
        return (self.prefix + tuple(committed[-self.window :]) + tuple(pending))[-self.window - len(pending) :]

    def draft(self, committed, pending, n, rng):
        ctx = self._context(committed, pending)
        out = []
        for _ in range(n):
            v = _sample(self._row(0, ctx), rng.random())
            out.append(v)
            ctx += (v,)
        return tuple(out)

    def verify(self, level, committed, pending, batch, rng):
        ctx = self._context(committed, pending)
        out = []
        for x in batch:
            p, q = self._row(level, ctx), self._row(level - 1, ctx)
            self.tested[level - 1] += 1
            if q[x] > 0 and rng.random() < min(1.0, p[x] / q[x]):
                self.accepted[level - 1] += 1
                out.append(x)
                ctx += (x,)
                continue
            residual = [max(a - b, 0.0) for a, b in zip(p, q)]
            total = math.fsum(residual)
            row = [r / total for r in residual] if total > 0 else p
            return tuple(out) + (_sample(row, rng.random()),)
        return tuple(out) + (_sample(self._row(level, ctx), rng.random()),)

    def acceptance_rates(self) -> list[float]:
        """Measured per-edge acceptance: accepted / tested drafted tokens (Leviathan's alpha)."""
        return [a / t if t else float("nan") for a, t in zip(self.accepted, self.tested)]


@dataclass(frozen=True)
class ModelError:
    thresholds: tuple[int, ...]
    measured_alpha: tuple[float, ...]
    simulated_latency: float
    simulated_stderr: float
    predicted_latency: float

    @property
    def relative_error(self) -> float:
        """(predicted - simulated) / simulated."""
        return (self.predicted_latency - self.simulated_latency) / self.simulated_latency


def model_error(models: Sequence[TableLM], costs: Sequence[object], thresholds: Sequence[int], *, cycles: int, seed: int) -> ModelError:
    """Simulate the hierarchy on real models and compare with the i.i.d. model's prediction made from
    the acceptance rates measured in the same simulation."""
    process = TableLMProcess(models)
    sim = simulate_hierarchy(costs, thresholds, process, cycles=cycles, seed=seed)
    n = len(sim.cycle_tokens)
    lat = sim.latency
    # ratio-estimator standard error (delta method on cost - lat * tokens per cycle)
    resid = [c - lat * t for c, t in zip(sim.cycle_costs, sim.cycle_tokens)]
    mean_t = sum(sim.cycle_tokens) / n
    var = math.fsum(r * r for r in resid) / max(1, n - 1)
    stderr = math.sqrt(var / n) / mean_t
    alphas = tuple(process.acceptance_rates())
    predicted = fhierarchy_latency(costs, [Fraction(a).limit_denominator(10**9) for a in alphas], list(thresholds))
    return ModelError(tuple(thresholds), alphas, lat, stderr, predicted)
