"""hsd_ref.latency: Leviathan et al. §3 closed forms, the exact hierarchy latency, and its simulator.

Symbolic identities are proved with ``sympy.simplify(lhs - rhs) == 0``; expected values come from the
paper (Table 1), the research notes (optimal k), or hand derivations written out in this file.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction as F

import pytest
import sympy as sp

from hsd_ref import HSDInputError, TableLM
from hsd_ref.latency import (
    AcceptanceLaw,
    BernoulliProcess,
    CostCurve,
    expected_tokens,
    expected_tokens_from_prefix_probs,
    fexpected_tokens,
    fhierarchy_latency,
    fhierarchy_speedup,
    fops_factor,
    fwalltime_factor,
    hierarchy_latency,
    hierarchy_speedup,
    level_tables,
    ops_factor,
    optimal_draft_length,
    simulate_hierarchy,
    walltime_factor,
)
from hsd_ref.schemes.block import Block
from hsd_ref.schemes.tokenwise import Tokenwise

a, b, c, c0, c1, c2, c_hat = sp.symbols("alpha beta c c0 c1 c2 c_hat")
k = sp.Symbol("k", integer=True, nonnegative=True)
t = sp.Symbol("t", positive=True)
ALPHA_01 = t / (1 + t)  # ranges over all of (0, 1) as t ranges over (0, oo); sympy then knows alpha != 1


def is_zero(expr) -> bool:
    return sp.simplify(expr) == 0


# ---------------------------------------------------------------------------------------------------
# single draft: Leviathan et al. §3
# ---------------------------------------------------------------------------------------------------

# Table 1 (c = c_hat = 0): (alpha, k) -> (operations factor, walltime speed-up), two decimals
LEVIATHAN_TABLE_1 = [
    ((F(6, 10), 2), ("1.53", "1.96")),
    ((F(7, 10), 3), ("1.58", "2.53")),
    ((F(8, 10), 2), ("1.23", "2.44")),
    ((F(8, 10), 5), ("1.63", "3.69")),
    ((F(9, 10), 2), ("1.11", "2.71")),
    ((F(9, 10), 10), ("1.60", "6.86")),
]


@pytest.mark.parametrize("args, expected", LEVIATHAN_TABLE_1)
def test_leviathan_table_1(args, expected):
    alpha, gamma = args
    ops, speed = ops_factor(alpha, gamma, 0), walltime_factor(alpha, gamma, 0)
    assert isinstance(ops, F) and isinstance(speed, F)
    assert (f"{float(ops):.2f}", f"{float(speed):.2f}") == expected
    assert (f"{fops_factor(float(alpha), gamma, 0.0):.2f}", f"{fwalltime_factor(float(alpha), gamma, 0.0):.2f}") == expected


def test_expected_tokens_closed_form_for_all_k():
    e = expected_tokens(a, k)
    # induction over k: E(0) = 1 and E(k+1) - E(k) = alpha^(k+1) give E(k) = sum_{i<=k} alpha^i
    assert is_zero(e.subs(k, 0) - 1)
    assert is_zero(e.subs(k, k + 1) - e - a ** (k + 1))
    i = sp.Symbol("i", integer=True)
    assert is_zero(sp.Sum(ALPHA_01 ** i, (i, 0, k)).doit() - expected_tokens(ALPHA_01, k))
    assert expected_tokens(1, 4) == 5 and expected_tokens(F(1, 2), 2) == F(7, 4)


def test_expected_tokens_is_the_mean_of_the_capped_geometric_law_for_all_k():
    # L = accepted + 1: P(L = l) = alpha^(l-1) (1 - alpha) for l <= k, P(L = k+1) = alpha^k
    al = ALPHA_01
    l = sp.Symbol("l", integer=True)
    mean = sp.Sum(l * al ** (l - 1) * (1 - al), (l, 1, k)).doit() + (k + 1) * al ** k
    assert is_zero(mean - expected_tokens(al, k))


@pytest.mark.parametrize("kk", range(0, 7))
def test_non_iid_form_reduces_to_eq_1(kk):
    assert is_zero(expected_tokens_from_prefix_probs([a ** i for i in range(1, kk + 1)]) - expected_tokens(a, kk))


def test_non_iid_form_on_dependent_events():
    # P(A1) = 1/2, P(A1 A2) = 1/2 (A2 certain after A1): 1 + 1/2 + 1/2, not the i.i.d. 1 + 1/2 + 1/4
    assert expected_tokens_from_prefix_probs([F(1, 2), F(1, 2)]) == 2
    with pytest.raises(ValueError, match=r"prefix_probs\[1\]"):
        expected_tokens_from_prefix_probs([F(1, 4), F(1, 2)])


def test_walltime_and_ops_factors_symbolically():
    s = walltime_factor(a, k, c)
    assert is_zero(s * (k * c + 1) - expected_tokens(a, k))
    assert is_zero(ops_factor(a, k, c_hat) * expected_tokens(a, k) - (k * c_hat + k + 1))
    # Cor. 3.9: with k = 1 the factor is (1 + alpha) / (1 + c)
    assert is_zero(walltime_factor(a, 1, c) - (1 + a) / (1 + c))


def test_cor_3_9_no_draft_length_helps_when_alpha_le_c():
    for alpha, cc in [(F(1, 5), F(1, 5)), (F(3, 10), F(1, 2)), (F(1, 2), F(1, 2)), (0, 0)]:
        assert all(walltime_factor(alpha, kk, cc) <= 1 for kk in range(1, 40))
    assert walltime_factor(F(1, 2), 1, F(2, 5)) > 1


# research notes (formal.md §4, sympy nsolve + integer scan): c = 0.05 -> k* per alpha; alpha .8, c .2 -> 4
@pytest.mark.parametrize(
    "alpha, cc, k_star, speed",
    [(F(6, 10), F(5, 100), 4, None), (F(7, 10), F(5, 100), 6, None), (F(8, 10), F(5, 100), 8, "3.09"),
     (F(9, 10), F(5, 100), 13, "4.67"), (F(8, 10), F(2, 10), 4, None)],
)
def test_optimal_draft_length_matches_research_notes(alpha, cc, k_star, speed):
    kk, s = optimal_draft_length(alpha, cc)
    assert kk == k_star and isinstance(s, F)
    if speed:
        assert f"{float(s):.2f}" == speed
    kf, sf = optimal_draft_length(float(alpha), float(cc))
    assert kf == k_star and math.isclose(sf, float(s), rel_tol=1e-12)
    # Leviathan §3.5: going from k to k+1 helps iff alpha^(k+1) (1 + c k) > c sum_{i<=k} alpha^i
    for j in range(1, 20):
        helps = alpha ** (j + 1) * (1 + cc * j) > cc * expected_tokens(alpha, j)
        assert helps == (walltime_factor(alpha, j + 1, cc) > walltime_factor(alpha, j, cc))


def test_optimal_draft_length_edges():
    assert optimal_draft_length(1, F(1, 10), max_k=7)[0] == 7
    assert optimal_draft_length(0, F(1, 10))[0] == 1
    assert optimal_draft_length(0, F(1, 10), min_k=0) == (0, 1)
    with pytest.raises(ValueError, match="min_k"):
        optimal_draft_length(F(1, 2), 0, min_k=5, max_k=2)


def test_float_twins_agree_with_exact_at_sampled_points():
    rng = random.Random(20240601)
    for _ in range(200):
        alpha, cc, kk = F(rng.randint(0, 99), 100), F(rng.randint(0, 50), 100), rng.randint(0, 20)
        for exact_fn, fast_fn in [(walltime_factor, fwalltime_factor), (ops_factor, fops_factor)]:
            assert math.isclose(fast_fn(float(alpha), kk, float(cc)), float(exact_fn(alpha, kk, cc)), rel_tol=1e-12)
        assert math.isclose(fexpected_tokens(float(alpha), kk), float(expected_tokens(alpha, kk)), rel_tol=1e-12)


def test_exact_functions_refuse_floats_and_bad_ranges():
    with pytest.raises(ValueError, match="alpha"):
        walltime_factor(0.8, 2, 0)
    with pytest.raises(ValueError, match="c"):
        walltime_factor(F(4, 5), 2, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens(F(3, 2), 2)
    with pytest.raises(ValueError, match="k"):
        expected_tokens(F(1, 2), -1)
    with pytest.raises(ValueError, match="c_hat"):
        ops_factor(F(1, 2), 2, -1)
    with pytest.raises(HSDInputError, match="alpha"):
        expected_tokens(sp.Float(0.5), 2)


# ---------------------------------------------------------------------------------------------------
# hierarchy latency
# ---------------------------------------------------------------------------------------------------

def test_one_level_hierarchy_is_leviathan_for_all_k():
    lat = hierarchy_latency([c, 1], [ALPHA_01], [k])
    assert is_zero(1 / lat - walltime_factor(ALPHA_01, k, c))
    # with a symbolic target step the speed-up is S with c replaced by the cost ratio
    lat = hierarchy_latency([c0, c1], [a], [k])
    assert is_zero(lat - (k * c0 + c1) / expected_tokens(a, k))


@pytest.mark.parametrize("kk", range(1, 7))
def test_one_level_hierarchy_is_leviathan_through_the_accepted_law(kk):
    # concrete k goes through the accepted-count law, not the closed form
    assert is_zero(1 / hierarchy_latency([c, 1], [a], [kk]) - walltime_factor(a, kk, c))
    assert is_zero(hierarchy_speedup([c, 1], [a], [kk]) - walltime_factor(a, kk, c))


def test_two_level_hierarchy_matches_hand_derivation_t0_1_t1_2():
    # M1 needs >= 2 tokens from batches of 1: a batch yields 1 (prob 1-alpha) or 2 (alpha), so
    # E[requests] = 1 + (1 - alpha) = 2 - alpha; each request costs c0 + c1 (M1 scores 2 positions).
    # The target verifies 2 tokens: E[tokens] = 1 + beta + beta^2, one call c2.
    lat = hierarchy_latency([c0, c1, c2], [a, b], [1, 2])
    assert is_zero(lat - ((2 - a) * (c0 + c1) + c2) / (1 + b + b**2))


def test_two_level_hierarchy_matches_hand_derivation_t0_2_t1_3():
    # batches of 2 yield 1, 2, 3 tokens w.p. (1-a), a(1-a), a^2.  Requests to reach >= 3:
    # h1 = 1, h2 = 1 + (1-a) h1, h3 = 1 + (1-a) h2 + a(1-a) h1.  Request cost 2 c0 + c1.
    h1 = 1
    h2 = 1 + (1 - a) * h1
    h3 = 1 + (1 - a) * h2 + a * (1 - a) * h1
    lat = hierarchy_latency([c0, c1, c2], [a, b], [2, 3])
    assert is_zero(lat - (h3 * (2 * c0 + c1) + c2) / (1 + b + b**2 + b**3))


def test_three_level_hierarchy_matches_hand_derivation():
    # T = (1, 1, 2): level 1 needs >= 1 token -> exactly 1 request (cost c0 + c1) per batch;
    # level 2 needs >= 2 tokens from batches of 1 -> 2 - beta requests of cost (c0 + c1) + c2;
    # target: 2 tokens verified, yield 1 + g + g^2, one call of cost 1.
    g = sp.Symbol("gamma_")
    lat = hierarchy_latency([c0, c1, c2, 1], [a, b, g], [1, 1, 2])
    assert is_zero(lat - ((2 - b) * (c0 + c1 + c2) + 1) / (1 + g + g**2))


def test_rational_inputs_give_exact_fractions_equal_to_the_symbolic_expression():
    costs = [F(1, 10), {1: F(3, 10), 5: F(3, 10), 9: F(1, 2)}, 1]
    lat = hierarchy_latency(costs, [F(4, 5), F(7, 10)], [3, 4])
    assert isinstance(lat, F)
    sym = hierarchy_latency([c0, c1, 1], [a, b], [3, 4])
    assert sym.subs({c0: sp.Rational(1, 10), c1: sp.Rational(3, 10), a: sp.Rational(4, 5), b: sp.Rational(7, 10)}) == sp.Rational(
        lat.numerator, lat.denominator
    )
    assert hierarchy_latency([F(7, 3)], [], []) == F(7, 3)  # the target alone


def test_float_hierarchy_twin_agrees_at_sampled_points():
    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(1, 3)
        costs = [F(rng.randint(1, 30), 100) for _ in range(n)] + [{1: 1, 5: F(rng.randint(100, 150), 100), 9: F(176, 100)}]
        acc = [F(rng.randint(0, 10), 10) for _ in range(n)]
        ts = [rng.randint(1, 8) for _ in range(n)]
        exact = hierarchy_latency(costs, acc, ts)
        assert math.isclose(fhierarchy_latency(costs, acc, ts), float(exact), rel_tol=1e-12)
        floats = [float(x) if not isinstance(x, dict) else {m: float(v) for m, v in x.items()} for x in costs]
        assert math.isclose(fhierarchy_latency(floats, [float(x) for x in acc], ts), float(exact), rel_tol=1e-12)
        assert math.isclose(fhierarchy_speedup(costs, acc, ts), float(hierarchy_speedup(costs, acc, ts)), rel_tol=1e-12)


def test_level_tables_by_hand():
    # yields 1 or 3 w.p. 1/2: reach >= 3 in 1 step (3) or 1 + h(2) steps; exact hits of 2 only via 1+1
    h, p = level_tables({1: F(1, 2), 3: F(1, 2)}, 3)
    assert h == [0, 1, F(3, 2), F(1) + F(1, 2) * F(3, 2)]
    assert p == [1, F(1, 2), F(1, 4), F(1, 2) * F(1, 4) + F(1, 2)]


# ---------------------------------------------------------------------------------------------------
# cost curves and shared computation
# ---------------------------------------------------------------------------------------------------

def test_piecewise_linear_cost_curve():
    qwen = CostCurve.points({1: 1, 5: 1, 9: F(176, 100)})  # measured on this CPU (brief)
    assert [qwen(m) for m in (1, 3, 5, 7, 9)] == [1, 1, 1, F(138, 100), F(176, 100)]
    assert qwen(11) == F(176, 100) + 2 * F(76, 400)  # extended along the last segment
    assert CostCurve.points({3: F(1, 2)})(1) == F(1, 2) and CostCurve.points({3: F(1, 2)})(9) == F(1, 2)
    assert CostCurve.points({2: 1, 4: 2})(1) == 1  # flat below the first point
    assert CostCurve.function(lambda m: F(m, 4))(3) == F(3, 4)
    # a measured cost curve enters the single-draft latency through the verify call's positions
    lat = hierarchy_latency([F(39, 100), qwen], [F(7, 10)], [8])
    assert lat == (8 * F(39, 100) + F(176, 100)) / expected_tokens(F(7, 10), 8)  # 9 positions scored
    with pytest.raises(ValueError, match="points"):
        CostCurve.points({0: 1})
    with pytest.raises(ValueError, match="points"):
        CostCurve.points({1: -1})


def test_early_exit_shares_computation_with_the_target():
    # M0 = exit at depth f of the target, k drafted tokens: k calls of f c(1); the target verify of
    # k+1 positions reuses layers 1..f for the k positions M0 fed (x_0, d_1..d_{k-1}) and recomputes
    # them for d_k: (1 - f) c(k+1) + f c(1).
    f = sp.Symbol("f", positive=True)
    base = CostCurve.function(lambda m: c1 + c2 * m, "affine")
    for kk in (1, 3, 5):
        lat = hierarchy_latency([base.early_exit(f), base], [a], [kk])
        hand = (kk * f * (c1 + c2) + (1 - f) * (c1 + c2 * (kk + 1)) + f * (c1 + c2)) / expected_tokens(a, kk)
        assert is_zero(lat - hand)
    # a separately built curve with the same numbers shares nothing
    other = CostCurve.function(lambda m: c1 + c2 * m, "affine")
    lat = hierarchy_latency([other.early_exit(f), base], [a], [2])
    assert is_zero(lat - (2 * f * (c1 + c2) + c1 + 3 * c2) / expected_tokens(a, 2))


def test_two_exits_of_one_backbone_use_the_exact_hit_probability():
    # levels: exit 1/8, exit 1/4, full model; c(m) = 1 + m/4; T = (2, 3).
    c_full = lambda m: 1 + F(m, 4)  # noqa: E731
    full = CostCurve.function(c_full)
    lo, mid = full.early_exit(F(1, 8)), full.early_exit(F(1, 4))
    al, be = F(3, 5), F(4, 5)
    # level 1 request: 2 calls of (1/8) c(1), then verify 3 positions, 2 of them fed to the exit:
    v1 = (F(1, 4) - F(1, 8)) * c_full(3) + F(1, 8) * c_full(1)
    req = 2 * F(1, 8) * c_full(1) + v1
    # yields 1, 2, 3 w.p. (1-al), al(1-al), al^2; requests to reach >= 3 and P(exactly 3)
    y1, y2, y3 = 1 - al, al * (1 - al), al**2
    h3 = 1 + y1 * (1 + y1) + y2
    p3 = y1 * (y1 * y1 + y2) + y2 * y1 + y3
    # target: 4 positions; the last one was never fed to the 1/4 exit iff the buffer hit 3 exactly
    v2 = (1 - F(1, 4)) * c_full(4) + F(1, 4) * c_full(1) * p3
    hand = (h3 * req + v2) / expected_tokens(be, 3)
    assert hierarchy_latency([lo, mid, full], [al, be], [2, 3]) == hand


def test_acceptance_law_plug_in():
    # a table law equal to the token-wise one gives the same latency
    al = F(3, 4)
    table = {bb: {j: al**j * (1 - al) for j in range(bb)} | {bb: al**bb} for bb in range(1, 9)}
    costs = [F(1, 10), F(1, 3), 1]
    assert hierarchy_latency(costs, [AcceptanceLaw.table(table), al], [3, 4]) == hierarchy_latency(costs, [al, al], [3, 4])
    # a uniform accepted count on a single draft: E[yield] = 1 + k/2
    uniform = AcceptanceLaw.function(lambda bb: {j: F(1, bb + 1) for j in range(bb + 1)})
    assert hierarchy_latency([F(1, 10), 1], [uniform], [4]) == (F(4, 10) + 1) / 3
    with pytest.raises(ValueError, match=r"acceptance\[0\].*sum to"):
        hierarchy_latency([F(1, 10), 1], [AcceptanceLaw.function(lambda bb: {0: F(1, 2)})], [2])
    with pytest.raises(ValueError, match=r"acceptance\[0\].*batch size 3"):
        hierarchy_latency([F(1, 10), 1], [AcceptanceLaw.table({2: {0: 1}})], [3])


def test_accepted_law_of_a_scheme_plugs_in():
    # token-wise speculative sampling on context-free models has the capped geometric law with
    # alpha = sum_x min(p, q); block verification's law (not i.i.d.) plugs in the same way
    p, q = (F(1, 3), F(2, 3)), (F(2, 3), F(1, 3))
    target, draft = TableLM.context_free(p), TableLM.context_free(q)
    alpha = sum(min(x, y) for x, y in zip(p, q))
    tw = AcceptanceLaw.function(lambda bb: Tokenwise().accepted_law(target, draft, (), bb))
    assert hierarchy_latency([F(1, 10), 1], [tw], [3]) == hierarchy_latency([F(1, 10), 1], [alpha], [3])
    bv = AcceptanceLaw.function(lambda bb: Block().accepted_law(target, draft, (), bb))
    assert hierarchy_latency([F(1, 10), 1], [bv], [3]) < hierarchy_latency([F(1, 10), 1], [alpha], [3])


def test_hierarchy_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="costs"):
        hierarchy_latency([F(1, 10)], [F(1, 2)], [2])
    with pytest.raises(ValueError, match="acceptance"):
        hierarchy_latency([F(1, 10), 1], [], [2])
    with pytest.raises(ValueError, match=r"thresholds\[0\]"):
        hierarchy_latency([F(1, 10), 1], [F(1, 2)], [0])
    with pytest.raises(ValueError, match=r"costs\[0\]"):
        hierarchy_latency([0.1, 1], [F(1, 2)], [2])
    with pytest.raises(ValueError, match=r"acceptance\[0\]"):
        hierarchy_latency([F(1, 10), 1], [0.5], [2])
    with pytest.raises(ValueError, match=r"acceptance\[0\]"):
        hierarchy_latency([F(1, 10), 1], [F(3, 2)], [2])
    with pytest.raises(ValueError, match=r"costs\[0\]"):
        hierarchy_latency([-1, 1], [F(1, 2)], [2])
    with pytest.raises(ValueError, match="depth"):
        CostCurve.constant(1).early_exit(F(3, 2))
    with pytest.raises(ValueError, match=r"thresholds\[0\]"):
        hierarchy_latency([F(1, 10), F(1, 5), 1], [F(1, 2), F(1, 2)], [k, 2])


# ---------------------------------------------------------------------------------------------------
# Monte Carlo against the formula
# ---------------------------------------------------------------------------------------------------
# Each target iteration is a renewal cycle with cost C and yield Y; with L the true latency,
# Z = C - L Y has mean 0 (renewal reward) and lies in [C_min - L Y_max, C_max - L Y_min] (bounds
# derived by hand below, from: every request yields >= 1 token, so a level needs between
# ceil(T_i / (T_{i-1} + 1)) and T_i requests).  Hoeffding: P(|mean Z| >= eps) <= 2 exp(-2 N eps^2 / R^2),
# so eps = R sqrt(ln(2/delta) / (2N)) with delta = 1e-6 is the false-failure probability per check.
# A claimed latency off by a relative r shifts E[Z] by -r L E[Y]; the test is guaranteed (again up to
# delta) to catch it when r L E[Y] >= 2 eps.  We claim r = 4% and plant exactly that bias.

DELTA = 1e-6
CLAIMED_RELATIVE_BIAS = 0.04
MEASURED = {1: F(3, 10), 5: F(3, 10), 9: F(1, 2)}
QWEN = CostCurve.points({1: 1, 5: 1, 9: F(176, 100)})


def hoeffding(result, claimed: float, c_range: tuple[float, float], y_max: int):
    n = len(result.cycle_costs)
    z = math.fsum(cc - claimed * y for cc, y in zip(result.cycle_costs, result.cycle_tokens)) / n
    width = (c_range[1] - claimed * 1) - (c_range[0] - claimed * y_max) + 1e-9
    return z, width * math.sqrt(math.log(2 / DELTA) / (2 * n))


MC_CASES = {
    # token-wise, 3 levels, measured middle curve.  Level 0: 3 x 0.1; a level-1 request costs
    # 0.3 + c1(4) = 0.6 and 1..4 of them are needed; the target call (5 positions) costs 1.
    "tokenwise-3-level": dict(
        costs=[F(1, 10), MEASURED, 1], acceptance=[F(4, 5), F(7, 10)], thresholds=[3, 4],
        c_range=(0.6 + 1, 4 * 0.6 + 1), y_max=5,
    ),
    # HiSpec-style: exits at 1/8 and 1/4 of the Qwen curve, then the full model.  Level 0: 2 x 1/8;
    # level-1 verify of 3 positions: 1/8 c(3) + 1/8 c(1) = 1/4, so a request costs 1/2, 1..3 needed;
    # target verify of 4 positions: 3/4 c(4) + 1/4 c(1) u with u in {0, 1}.
    "early-exits": dict(
        costs=[QWEN.early_exit(F(1, 8)), QWEN.early_exit(F(1, 4)), QWEN], acceptance=[F(7, 10), F(4, 5)],
        thresholds=[2, 3], c_range=(0.5 + 0.75, 1.5 + 1.0), y_max=4,
    ),
    # a non-geometric accepted-count law (uniform) on edge 0 -> 1.  Level 0: 4 x 0.1; request
    # 0.4 + c1(5) = 0.7, 1..3 needed; target verify of 4 positions: 1.
    "uniform-law": dict(
        costs=[F(1, 10), MEASURED, 1],
        acceptance=[AcceptanceLaw.function(lambda bb: {j: F(1, bb + 1) for j in range(bb + 1)}), F(3, 5)],
        thresholds=[4, 3], c_range=(0.7 + 1, 3 * 0.7 + 1), y_max=4,
    ),
}


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_simulation_agrees_with_formula_and_catches_a_planted_bias(case):
    cfg = MC_CASES[case]
    exact = hierarchy_latency(cfg["costs"], cfg["acceptance"], cfg["thresholds"])
    sim = simulate_hierarchy(cfg["costs"], cfg["thresholds"], BernoulliProcess(cfg["acceptance"]), cycles=150_000, seed=11)
    assert min(sim.cycle_costs) >= cfg["c_range"][0] - 1e-9 and max(sim.cycle_costs) <= cfg["c_range"][1] + 1e-9
    assert max(sim.cycle_tokens) <= cfg["y_max"]
    z, eps = hoeffding(sim, float(exact), cfg["c_range"], cfg["y_max"])
    assert abs(z) <= eps, f"formula {float(exact)} vs simulation {sim.latency}"
    # power: the claimed bias is within reach (r L E[Y] >= 2 eps, E[Y] of the token-wise top edge) ...
    mean_yield = expected_tokens(cfg["acceptance"][-1], cfg["thresholds"][-1])
    assert CLAIMED_RELATIVE_BIAS * float(exact) * float(mean_yield) >= 2 * eps
    # ... and planting it makes the check fail, in both directions
    for r in (CLAIMED_RELATIVE_BIAS, -CLAIMED_RELATIVE_BIAS):
        zb, eb = hoeffding(sim, float(exact) * (1 + r), cfg["c_range"], cfg["y_max"])
        assert abs(zb) > eb


def test_simulation_is_seeded_and_catches_a_wrong_threshold_semantics():
    cfg = MC_CASES["tokenwise-3-level"]
    run = lambda seed: simulate_hierarchy(cfg["costs"], cfg["thresholds"], BernoulliProcess(cfg["acceptance"]), cycles=2000, seed=seed)  # noqa: E731
    assert run(3) == run(3) and run(3) != run(4)
    # a plausible modelling slip (T_1 read as 5 instead of 4) is more than the claimed bias away
    wrong = hierarchy_latency(cfg["costs"], cfg["acceptance"], [3, 5])
    right = hierarchy_latency(cfg["costs"], cfg["acceptance"], cfg["thresholds"])
    assert abs(float(wrong) / float(right) - 1) > CLAIMED_RELATIVE_BIAS


def test_simulator_with_the_target_alone_and_bad_processes():
    sim = simulate_hierarchy([F(7, 4)], [], BernoulliProcess([]), cycles=10, seed=0)
    assert sim.latency == 1.75 and sim.cycle_tokens == (1,) * 10

    class Broken(BernoulliProcess):
        def verify(self, level, committed, pending, batch, rng):
            return batch + (0, 0)

    with pytest.raises(ValueError, match="process.verify"):
        simulate_hierarchy([F(1, 10), 1], [2], Broken([F(1, 2)]), cycles=5, seed=0)
    with pytest.raises(ValueError, match="cycles"):
        simulate_hierarchy([F(1, 10), 1], [2], BernoulliProcess([F(1, 2)]), cycles=0, seed=0)
