"""Batch-aware latency (issue 13): ``batch=B`` rows in lockstep, each call costing its curve at the TOTAL
positions it scores, ``c(B m)``; latencies are per token of one row (docs/latency.md, "Batch-aware costs").

Expected values are worked out by hand in this file from that formula, not by the code under test.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction as F

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hsd_ref import HSDInputError
from hsd_ref.latency import (
    CostCurve,
    fhierarchy_latency,
    fhierarchy_speedup,
    hierarchy_latency,
    hierarchy_speedup,
    optimal_draft_length,
    verify_cost,
)
from hsd_ref.optimize import optimal_hierarchy


def affine(a, b):
    """c(n) = a + b n, n = total positions of a call."""
    return CostCurve.function(lambda n: a + b * n, f"{a} + {b} n")


# flat (memory-bound) up to 16 positions per call, then proportional (compute-bound)
ROOF_DRAFT = {1: F(1, 10), 16: F(1, 10), 32: F(1, 5)}
ROOF_TARGET = {1: 1, 16: 1, 32: 2}


# ---------------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------------

def test_single_draft_with_linear_curves_by_hand():
    # c0(n) = 1/20 + n/200, c1(n) = 1 + n/16, alpha = 3/4, k = 2, B = 4.
    # E[tokens] = 1 + 3/4 + 9/16 = 37/16.  Per iteration: 2 draft calls of 4 positions, c0(4) = 7/100,
    # and one target call of 4 * 3 = 12 positions, c1(12) = 7/4: 14/100 + 175/100 = 189/100.
    # L = (189/100) / (37/16) = 756/925 per token of a row; autoregressive: c1(4) = 5/4 per token.
    costs, acc = [affine(F(1, 20), F(1, 200)), affine(1, F(1, 16))], [F(3, 4)]
    lat = hierarchy_latency(costs, acc, [2], batch=4)
    assert isinstance(lat, F) and lat == F(756, 925)
    assert lat / 4 == F(189, 925)  # per token of the whole batch
    assert hierarchy_speedup(costs, acc, [2], batch=4) == F(5, 4) / F(756, 925) == F(4625, 3024)
    assert hierarchy_latency(costs[1:], [], [], batch=4) == F(5, 4)  # the target alone: c1(B)
    assert math.isclose(fhierarchy_latency(costs, [0.75], [2], batch=4), 756 / 925, rel_tol=1e-12)
    assert math.isclose(fhierarchy_speedup(costs, acc, [2], batch=4), 4625 / 3024, rel_tol=1e-12)
    # the same curves from measurements of calls with 4 rows, keyed by positions per row (totals 4, 12)
    measured = [CostCurve.points({1: F(7, 100)}, rows=4), CostCurve.points({1: F(5, 4), 3: F(7, 4)}, rows=4)]
    assert hierarchy_latency(measured, acc, [2], batch=4) == F(756, 925)
    # keyed by totals directly
    assert hierarchy_latency([{4: F(7, 100)}, {4: F(5, 4), 12: F(7, 4)}], acc, [2], batch=4) == F(756, 925)


def test_single_draft_symbolic_linear_curves():
    # L_B = (k (a0 + b0 B) + a1 + b1 B (k + 1)) / E[tokens] for every k
    a0, b0, a1, b1, al, B = sp.symbols("a0 b0 a1 b1 alpha B", positive=True)
    costs = [CostCurve.function(lambda n: a0 + b0 * n), CostCurve.function(lambda n: a1 + b1 * n)]
    for kk, bb in itertools.product(range(1, 4), (1, 2, 5)):
        e = sum(al**i for i in range(kk + 1))
        hand = (kk * (a0 + b0 * bb) + a1 + b1 * bb * (kk + 1)) / e
        assert sp.simplify(hierarchy_latency(costs, [al], [kk], batch=bb) - hand) == 0


def test_two_levels_by_hand_and_the_lockstep_lower_bound():
    # T = (1, 2), B = 2.  Per row as at B = 1 (test_latency.py): (2 - alpha) requests of cost
    # c0(2) + c1(2 * 2), then the target scores 2 * 3 positions; E[tokens] = 1 + beta + beta^2.
    al, be = F(2, 3), F(1, 2)
    c = [affine(F(1, 10), F(1, 100)), affine(F(3, 10), F(1, 50)), affine(1, F(1, 16))]
    request = F(1, 10) + F(2, 100) + F(3, 10) + F(4, 50)  # c0(2) + c1(4) = 1/2
    e_tokens = 1 + be + be**2  # 7/4
    hand = ((2 - al) * request + 1 + F(6, 16)) / e_tokens
    assert hand == F(7, 6) and hierarchy_latency(c, [al, be], [1, 2], batch=2) == hand
    # A lockstep engine (hsd_fast: rows whose buffer is full ride along) makes max(N_1, N_2) level-1
    # requests.  Enumerate both rows' first yields (1 w.p. 1 - alpha, 2 w.p. alpha; N = 1 iff the yield
    # is 2): E[max N] = 2 - alpha^2 > 2 - alpha = E[N], so the model is a lower bound there.
    e_max = sum(
        (al if y1 == 2 else 1 - al) * (al if y2 == 2 else 1 - al) * max(1 if y1 == 2 else 2, 1 if y2 == 2 else 2)
        for y1 in (1, 2) for y2 in (1, 2)
    )
    assert e_max == 2 - al**2
    lockstep = (e_max * request + 1 + F(6, 16)) / e_tokens
    assert lockstep - hand == al * (1 - al) * request / e_tokens > 0


def test_verify_cost_with_an_early_exit_by_hand():
    # full c(n) = 1 + n/8, exit at depth 1/4, 3 positions per row, 2 rows, u = 1/2:
    # (1 - 1/4) c(6) + 1/4 c(2) * 1/2 = 3/4 * 7/4 + 1/4 * 5/4 * 1/2 = 21/16 + 5/32 = 47/32
    full = affine(1, F(1, 8))
    assert verify_cost(full.early_exit(F(1, 4)), full, 3, F(1, 2), batch=2) == F(47, 32)
    assert verify_cost(affine(0, 1), full, 3, F(1, 2), batch=2) == full(6) == F(7, 4)


# ---------------------------------------------------------------------------------------------------
# batch = 1 is today's model
# ---------------------------------------------------------------------------------------------------

def test_batch_1_is_the_unbatched_model():
    # values fixed before batch= existed (doctests and hand derivations of test_latency.py)
    assert hierarchy_latency([F(1, 10), 1], [F(4, 5)], [2], batch=1) == F(30, 61)
    assert optimal_draft_length(F(4, 5), F(1, 5), batch=1) == optimal_draft_length(F(4, 5), F(1, 5)) == (4, F(2101, 1125))
    assert optimal_hierarchy(["d", "t"], {"d": F(1, 10), "t": 1}, {("d", "t"): F(4, 5)}, batch=1).thresholds == (6,)
    rng = random.Random(13)
    qwen = CostCurve.points({1: 1, 5: 1, 9: F(176, 100)})
    for _ in range(30):
        n = rng.randint(0, 3)
        costs = [qwen.early_exit(F(i + 1, 8)) if rng.random() < 0.3 else affine(F(rng.randint(1, 9), 50), F(rng.randint(0, 3), 100))
                 for i in range(n)] + [qwen]
        acc, ths = [F(rng.randint(0, 9), 10) for _ in range(n)], [rng.randint(1, 4) for _ in range(n)]
        for fn in (hierarchy_latency, fhierarchy_latency, hierarchy_speedup, fhierarchy_speedup):
            assert fn(costs, acc, ths, batch=1) == fn(costs, acc, ths)
        names = [f"m{i}" for i in range(n + 1)]
        accd = {(names[i], names[j]): F(rng.randint(3, 9), 10) for i in range(n + 1) for j in range(i + 1, n + 1)}
        assert optimal_hierarchy(names, costs, accd, max_threshold=4, batch=1) == optimal_hierarchy(names, costs, accd, max_threshold=4)


# ---------------------------------------------------------------------------------------------------
# compute-bound costs: speculation stops paying, the optimiser returns autoregressive decoding
# ---------------------------------------------------------------------------------------------------

def test_proportional_costs_never_pay():
    # c(n) = s n: L_B = B (k s_d + s_t (k + 1)) / E[tokens] >= B s_t = autoregressive, as E <= k + 1
    for bb in (1, 4, 64):
        plan = optimal_hierarchy(["d", "t"], [affine(0, F(1, 20)), affine(0, 1)], {("d", "t"): F(9, 10)}, batch=bb)
        assert plan.chain == ("t",) and plan.thresholds == () and plan.latency == plan.target_latency == bb
        assert plan.speedup == 1 and plan.best_single.speedup < 1 and plan.batch == bb


def test_roofline_costs_stop_paying_at_large_batch():
    acc = {("d", "t"): F(4, 5)}
    plans = {bb: optimal_hierarchy(["d", "t"], [ROOF_DRAFT, ROOF_TARGET], acc, max_threshold=16, batch=bb) for bb in range(1, 17)}
    assert plans[1].chain == ("d", "t") and plans[1].speedup > 2
    # B = 4, k = 3: the target scores 16 positions (cost 1), a draft call costs 1/10;
    # E[tokens] = 1 + 4/5 + 16/25 + 64/125 = 369/125, L = (3/10 + 1) / (369/125) = 325/738
    assert plans[4].thresholds == (3,) and plans[4].latency == F(325, 738) and plans[4].target_latency == 1
    # B = 13, k = 1: c_t(26) = 13/8, L = (1/10 + 13/8) / (9/5) = 23/24 < 1 (and k >= 2 costs more);
    # B = 14, k = 1: c_t(28) = 7/4, L = (1/10 + 7/4) / (9/5) = 37/36 > 1: speculation stops paying
    assert (plans[13].thresholds, plans[13].latency) == ((1,), F(23, 24)) and plans[13].best_single.latency == F(23, 24)
    assert plans[14].chain == ("t",) and plans[14].best_single.latency == F(37, 36)
    # B = 16: every verify call is compute-bound, c_t(16 (k + 1)) = k + 1 >= E[tokens]
    p16 = plans[16]
    assert p16.chain == ("t",) and p16.thresholds == () and p16.latency == p16.target_latency == 1 and p16.speedup == 1
    assert "t alone" in p16.describe() and "batch: 16 rows" in p16.describe()
    speedups = [plans[bb].speedup for bb in range(1, 17)]
    assert all(x >= y for x, y in zip(speedups, speedups[1:]))
    assert optimal_draft_length(F(4, 5), ROOF_DRAFT, target_cost=ROOF_TARGET, batch=16, min_k=0) == (0, F(1))
    assert optimal_draft_length(F(4, 5), ROOF_DRAFT, target_cost=ROOF_TARGET, batch=4) == (3, F(738, 325))
    # three models: no chain pays either
    plan = optimal_hierarchy(["d", "m", "t"], [ROOF_DRAFT, {1: F(3, 10), 16: F(3, 10), 32: F(3, 5)}, ROOF_TARGET],
                             {("d", "m"): F(9, 10), ("m", "t"): F(9, 10), ("d", "t"): F(4, 5)}, max_threshold=6, batch=16)
    assert plan.chain == ("t",) and plan.latency == 1


def test_constant_costs_ignore_the_batch():
    assert optimal_draft_length(F(4, 5), F(1, 5), batch=32) == optimal_draft_length(F(4, 5), F(1, 5))
    assert optimal_draft_length(0.8, 0.2, batch=32)[0] == 4
    assert hierarchy_latency([F(1, 10), 1], [F(4, 5)], [2], batch=7) == F(30, 61)


def test_batch_must_be_a_positive_int():
    costs, acc, ths = [F(1, 10), 1], [F(4, 5)], [2]
    calls = [
        lambda bb: hierarchy_latency(costs, acc, ths, batch=bb),
        lambda bb: fhierarchy_latency(costs, acc, ths, batch=bb),
        lambda bb: hierarchy_speedup(costs, acc, ths, batch=bb),
        lambda bb: fhierarchy_speedup(costs, acc, ths, batch=bb),
        lambda bb: optimal_draft_length(F(4, 5), F(1, 5), batch=bb),
        lambda bb: optimal_hierarchy(["d", "t"], costs, {("d", "t"): F(4, 5)}, batch=bb),
        lambda bb: verify_cost(CostCurve.constant(1), CostCurve.constant(1), 3, 1, batch=bb),
        lambda bb: CostCurve.points({1: 1}, rows=bb),
    ]
    for call in calls:
        for bad in (0, -2, True, 1.0, "2"):
            with pytest.raises(HSDInputError, match="batch|rows"):
                call(bad)


# ---------------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------------

rates = st.fractions(0, 1, max_denominator=8)
coeffs = st.fractions(0, 2, max_denominator=8)


@st.composite
def hierarchies(draw):
    """(full curve's (a, b) with a > 0, per draft level (a, b) or an exit depth, rates, thresholds)."""
    n = draw(st.integers(1, 3))
    full = (draw(st.fractions(F(1, 8), 2, max_denominator=8)), draw(coeffs))
    levels = [draw(st.one_of(st.tuples(coeffs, coeffs), st.fractions(F(1, 8), F(7, 8), max_denominator=8))) for _ in range(n)]
    return full, levels, [draw(rates) for _ in range(n)], [draw(st.integers(1, 3)) for _ in range(n)]


def build(full, levels, scale=1):
    """The curves, with every curve reparametrised to m -> c(scale m)."""
    top = affine(full[0], full[1] * scale)
    exits = sorted(x for x in levels if not isinstance(x, tuple))
    lows = [affine(x[0], x[1] * scale) for x in levels if isinstance(x, tuple)]
    return lows + [top.early_exit(x) for x in exits] + [top]


@settings(max_examples=40, deadline=None)
@given(hierarchies(), st.integers(1, 16))
def test_batch_is_the_curves_at_total_positions(h, bb):
    # batch=B on c equals batch=1 on m -> c(B m), shared computation included
    full, levels, acc, ths = h
    lat = hierarchy_latency(build(full, levels), acc, ths, batch=bb)
    assert isinstance(lat, F) and lat == hierarchy_latency(build(full, levels, bb), acc, ths)
    assert math.isclose(fhierarchy_latency(build(full, levels), acc, ths, batch=bb), float(lat), rel_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(hierarchies(), st.integers(1, 8), st.integers(1, 8))
def test_speedup_falls_with_the_batch_when_all_curves_share_one_affine_shape(h, b1, b2):
    # c_i(n) = s_i (a + b n): speed-up (a + b B) / sum_j w_j (a + b B m_j) with every m_j >= 1
    full, levels, acc, ths = h
    top = affine(*full)
    lows = [affine(full[0] * x[0], full[1] * x[0]) for x in levels if isinstance(x, tuple)]
    curves = lows + [top.early_exit(x) for x in sorted(x for x in levels if not isinstance(x, tuple))] + [top]
    lo, hi = sorted((b1, b2))
    assert hierarchy_speedup(curves, acc, ths, batch=lo) >= hierarchy_speedup(curves, acc, ths, batch=hi)
