"""Every registered scheme against the exact target law, the published vectors, and efficiency facts.

Exact checks compare Fractions with ``==``.  Hypothesis draws context-dependent model pairs with
zeros, point masses and ties from the public strategies in ``hsd_ref.strategies``.
"""

from fractions import Fraction as F

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsd_ref import SCHEMES, TableLM, check_lossless, coupling_check, expected_accepted, iteration_law, sequence_law
from hsd_ref.enumerate import reference_model
from hsd_ref.strategies import lm_pairs

LOSSLESS = [n for n, s in SCHEMES.items() if s.lossless]
LOSSY = [n for n, s in SCHEMES.items() if not s.lossless]
SINGLE_LOSSLESS = [n for n in LOSSLESS if getattr(SCHEMES[n], "n_drafts", 1) == 1 and hasattr(SCHEMES[n], "plan")]

TOY_P = TableLM.context_free((F(1, 3), F(2, 3)))
TOY_Q = TableLM.context_free((F(2, 3), F(1, 3)))
A, B = 0, 1

exact_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", LOSSLESS)
@exact_settings
@given(pair=lm_pairs(st.integers(2, 3), max_depth=2), k=st.integers(0, 3))
def test_one_iteration_law_equals_target(name, pair, k):
    scheme, (target, draft) = SCHEMES[name], pair
    ref = reference_model(scheme, target)
    assert iteration_law(scheme, target, draft, (), k) == ref.sequence_law(k + 1)


@pytest.mark.parametrize("name", LOSSLESS)
@exact_settings
@given(pair=lm_pairs(st.integers(2, 3), max_depth=2), k=st.integers(1, 2), prefix=st.lists(st.integers(0, 1), max_size=2))
def test_decoding_loop_law_equals_target(name, pair, k, prefix):
    scheme, (target, draft) = SCHEMES[name], pair
    ref = reference_model(scheme, target)
    assert sequence_law(scheme, target, draft, tuple(prefix), k, 4) == ref.sequence_law(4, tuple(prefix))


@pytest.mark.parametrize("name", LOSSLESS)
def test_one_iteration_law_is_a_distribution(name):
    law = SCHEMES[name].outcome_law(TableLM.random(3, 5), TableLM.random(3, 6), (), 2)
    assert sum(law.values()) == 1 and all(m > 0 for m in law.values())


@pytest.mark.parametrize("name", LOSSY)
def test_every_lossy_control_is_caught_with_a_recheckable_counterexample(name):
    scheme = SCHEMES[name]
    report = check_lossless(scheme)
    assert not report.lossless and report.tv > 0
    cex = report.counterexample
    assert cex is not None and cex.scheme_prob != cex.target_prob
    assert cex.recheck(scheme)
    assert str(cex.sequence) in str(cex)


def test_hsd_released_counterexample_vector():
    # papers.md §3.6: P(first two tokens = BA) = 1/3 under the released rule, 2/9 under the target
    law = iteration_law(SCHEMES["hsd_released"], TOY_P, TOY_Q, (), 2)
    ba = sum(m for seq, m in law.items() if seq[:2] == (B, A))
    assert ba == F(1, 3)
    assert TOY_P.sequence_prob((B, A)) == F(2, 9)
    bb = sum(m for seq, m in law.items() if seq[:2] == (B, B))
    assert bb == F(1, 3)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tokenwise", {1: F(2, 3), 2: F(10, 9), 3: F(38, 27), 4: F(130, 81)}),
        ("block", {2: F(11, 9), 3: F(5, 3), 4: F(166, 81)}),
        ("hsd_capped", {2: F(11, 9), 3: F(5, 3), 4: F(166, 81)}),
        ("hsd_released", {2: F(4, 3), 3: F(16, 9), 4: F(62, 27)}),
    ],
)
def test_expected_accepted_vectors(name, expected):
    for k, value in expected.items():
        assert expected_accepted(SCHEMES[name], TOY_P, TOY_Q, (), k) == value


def test_tokenwise_expected_accepted_is_the_geometric_sum():
    # independent closed form: sum_{i<=k} beta^i with beta = sum min(p, q) = 2/3
    beta = F(2, 3)
    for k in range(1, 6):
        assert expected_accepted(SCHEMES["tokenwise"], TOY_P, TOY_Q, (), k) == sum(beta**i for i in range(1, k + 1))


def test_greedy_vector():
    rows = [tuple(F(int(v == a)) for v in range(6)) for a in (1, 5, 3, 4)]
    res = SCHEMES["greedy"].verify(rows, None, [1, 2, 3], None)
    assert res.tokens == (1, 5) and res.num_accepted == 1 and not res.bonus
    res = SCHEMES["greedy"].verify(rows, None, [1, 5, 3], None)
    assert res.tokens == (1, 5, 3, 4) and res.bonus
    assert res.to_row(3) == (1, 5, 3, 4) and SCHEMES["greedy"].verify(rows, None, [2, 5, 3], None).to_row(3) == (1, -1, -1, -1)


def test_greedy_ties_go_to_the_lowest_id():
    rows = [(F(1, 2), F(1, 2)), (F(1, 2), F(1, 2))]
    assert SCHEMES["greedy"].verify(rows, None, [1], None).tokens == (0,)


@settings(max_examples=40, deadline=None)
@given(pair=lm_pairs(st.integers(2, 3), max_depth=2), k=st.integers(1, 3))
def test_block_and_hsd_capped_agree_per_draft(pair, k):
    target, draft = pair
    block, capped = SCHEMES["block"], SCHEMES["hsd_capped"]
    for xs in draft.sequence_law(k):
        t_rows = [target.probs(xs[:i]) for i in range(k + 1)]
        d_rows = [draft.probs(xs[:i]) for i in range(k)]
        a, b = block.plan(t_rows, d_rows, xs), capped.plan(t_rows, d_rows, xs)
        ta, tb = a.tau_law(), b.tau_law()
        assert ta == tb
        assert all(a.emit[j] == b.emit[j] for j in range(k + 1) if ta[j])
    assert block.joint_law(target, draft, (), k) == capped.joint_law(target, draft, (), k)


@settings(max_examples=40, deadline=None)
@given(pair=lm_pairs(st.integers(2, 3), max_depth=2), k=st.integers(1, 3))
def test_block_accepts_at_least_as_much_as_tokenwise(pair, k):
    target, draft = pair
    assert expected_accepted(SCHEMES["block"], target, draft, (), k) >= expected_accepted(SCHEMES["tokenwise"], target, draft, (), k)


@pytest.mark.parametrize("name", SINGLE_LOSSLESS)
@settings(max_examples=20, deadline=None)
@given(pair=lm_pairs(st.integers(2, 3), max_depth=2), k=st.integers(1, 3))
def test_no_lossless_single_draft_scheme_exceeds_the_coupling_bound(name, pair, k):
    target, draft = pair
    assert coupling_check(SCHEMES[name], target, draft, (), k).ok


def test_coupling_bound_vector_and_lenience_exceeds_it():
    # peers.md §3.7: bound on E[tau] for the toy pair is 2/3, 4/3, 50/27, 64/27
    for k, bound in zip((1, 2, 3, 4), (F(2, 3), F(4, 3), F(50, 27), F(64, 27))):
        assert coupling_check(SCHEMES["tokenwise"], TOY_P, TOY_Q, (), k).expected_bound == bound
    assert not coupling_check(SCHEMES["lenience"], TOY_P, TOY_Q, (), 2).ok


def test_tokenwise_verify_with_explicit_draws():
    p = [(F(1, 3), F(2, 3))] * 3
    q = [(F(2, 3), F(1, 3))] * 2
    s = SCHEMES["tokenwise"]
    # token A at position 1 has chance 1/2: u = 1/2 rejects (accept iff u < chance)
    res = s.verify(p, q, [A, B], [F(1, 2), F(0), F(0)])
    assert res.tokens == (B,) and res.num_accepted == 0  # residual at position 1 is a point mass on B
    res = s.verify(p, q, [A, B], [F(1, 3), F(0), F(1, 3)])
    assert res.tokens == (A, B, B) and res.bonus  # bonus: u = 1/3 lands on B (CDF boundary goes up)
    res = s.verify(p, q, [A, B], [F(1, 3), F(0), F(1, 4)])
    assert res.tokens == (A, B, A)


def test_drafted_token_with_zero_draft_probability_is_rejected():
    p = [(F(1, 2), F(1, 2))] * 2
    q = [(F(1), F(0))]
    for name in ("tokenwise", "block", "hsd_capped", "hsd_naive"):
        res = SCHEMES[name].verify(p, q, [1], [F(0), F(0)] + [F(0)] * (SCHEMES[name].draws_needed(1) - 2))
        assert res.num_accepted == 0, name


def test_placeholder_draft_is_rejected_and_draft_equal_target_is_defined():
    p = [(F(1, 2), F(1, 2))] * 3
    for name in ("tokenwise", "block", "hsd_capped"):
        s = SCHEMES[name]
        res = s.verify(p, p[:2], [0, -1], [F(0)] * 3)
        assert res.num_accepted == 1 and res.tokens == (0, 0)  # the empty residual falls back to the target row


@pytest.mark.parametrize("name", ["tokenwise", "block", "hsd_capped", "hsd_naive", "greedy"])
def test_verify_bad_inputs(name):
    s = SCHEMES[name]
    p = [(F(1, 2), F(1, 2))] * 2
    q = [(F(1, 2), F(1, 2))]
    d = [F(0)] * max(s.draws_needed(1), 2)
    with pytest.raises(ValueError, match=r"target_probs: has 1 rows"):
        s.verify(p[:1], q, [0], d)
    with pytest.raises(ValueError, match=r"draft_tokens\[0\] = 2 is out of range"):
        s.verify(p, q, [2], d)
    with pytest.raises(ValueError, match=r"target_probs\[0\]\[0\]: got the float"):
        s.verify([(0.5, 0.5)] * 2, q, [0], d)
    with pytest.raises(ValueError, match=r"draft_probs\[0\]: has length 3"):
        s.verify(p, [(F(1, 3),) * 3], [0], d)
    if s.draws_needed(1):
        with pytest.raises(ValueError, match="draws"):
            s.verify(p, q, [0], d[:1])
        with pytest.raises(ValueError, match=r"draws\[0\] = 1 is outside"):
            s.verify(p, q, [0], [F(1)] + d[1:])


def test_hsd_naive_verify_needs_models_off_the_draft_path():
    s = SCHEMES["hsd_naive"]
    target, draft = TableLM.random(2, 8, peaked_prob=0), TableLM.random(2, 9, peaked_prob=0)
    xs = (0, 0)
    t_rows = [target.probs(xs[:i]) for i in range(3)]
    d_rows = [draft.probs(xs[:i]) for i in range(2)]
    # draws that reject everything: the scan fails at both levels, so two tokens are resampled
    u = [F(99, 100)] * 2 + [F(0)] * 2
    plan = s.plan(t_rows, d_rows, xs)
    assert 0 < plan.chances[0] < F(99, 100) and 0 < plan.chances[1] < F(99, 100)  # so the scan stops at tau = 0
    with pytest.raises(ValueError, match="needs the target and draft models"):
        s.verify(t_rows, d_rows, xs, u)
    res = s.verify(t_rows, d_rows, xs, u, target=target, draft=draft)
    assert len(res.tokens) == 2 and res.num_accepted == 0
    # the resampled tokens follow the branch residuals: the first one has positive residual mass
    assert plan.emit[0][res.tokens[0]] > 0


# ------------------------------------------------------------------------------------ regressions
# The exact enumerators walked the draft recursively: iteration_law(..., k=1000) raised RecursionError
# although a point-mass draft has a single path.

LONG_K = 1200  # above Python's default recursion limit of 1000
POINT_0 = TableLM.context_free((F(1), F(0)))
POINT_1 = TableLM.context_free((F(0), F(1)))


@pytest.mark.parametrize("name", list(SCHEMES))
def test_iteration_law_long_draft_has_no_recursion_limit(name):
    scheme = SCHEMES[name]
    accepted = expected_accepted(scheme, POINT_0, POINT_0, (), LONG_K)
    if name == "spectr_kseq":
        # its bisected rho is 1 + 2**-30, not 1: every position keeps a rejection chance of about
        # 2**-60, and extending the LONG_K + 1 emission lengths to k + 1 tokens would take ~15 s
        assert LONG_K - 1 < accepted < LONG_K
        return
    assert accepted == LONG_K
    assert iteration_law(scheme, POINT_0, POINT_0, (), LONG_K) == {(0,) * (LONG_K + 1): F(1)}


def test_hsd_naive_long_resampled_tail_has_no_recursion_limit():
    # the draft is rejected at position 1, then all LONG_K positions are resampled off the draft path
    law = SCHEMES["hsd_naive"].joint_law(POINT_1, POINT_0, (), LONG_K)
    assert law == {(0, (1,) * LONG_K): F(1)}


def test_sequence_law_long_horizon_has_no_recursion_limit():
    # the decoding loop was always iterative; this pins it (1500 iterations of one token each)
    law = sequence_law(SCHEMES["tokenwise"], POINT_1, POINT_0, (), 1, 1500)
    assert law == {(1,) * 1500: F(1)}


class OneTokenScheme:
    """A user scheme that validates nothing itself: emits one token from the target's first row."""

    name = "one_token"
    lossless = True

    def outcome_law(self, target, draft, prefix, k):
        return {(v,): m for v, m in enumerate(target.probs(())) if m}


@pytest.mark.parametrize(
    "args, message",
    [
        (((-1,), 1), r"^prefix\[0\] = -1 is out of range"),
        (((), -1), r"^k: draft length must be >= 0"),
        (((), True), r"^k: expected an int"),
    ],
)
def test_stats_validate_arguments_for_a_user_scheme(args, message):
    from hsd_ref.stats import accepted_law, tokens_per_target_call

    for fn in (accepted_law, expected_accepted, tokens_per_target_call):
        with pytest.raises(ValueError, match=message):
            fn(OneTokenScheme(), TOY_P, TOY_Q, *args)
