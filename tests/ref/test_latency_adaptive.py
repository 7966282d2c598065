"""The latency model of an adaptive draft length (hsd_ref.latency.adaptive) against the exact
enumerator: for context-free pairs with token-wise verification the model's length law and expected
tokens per round must equal AdaptiveLength's exact laws, in Fractions."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from hsd_ref import TableLM
from hsd_ref.exact import HSDInputError
from hsd_ref.latency import expected_tokens, walltime_factor
from hsd_ref.latency.adaptive import adaptive_latency, adaptive_round, token_classes
from hsd_ref.registry import get_scheme
from hsd_ref.schemes.adaptive import AdaptiveLength, ConfidenceStop, GeometricStop, RandomisedStop


def random_row(rng: random.Random, V: int) -> tuple[Fraction, ...]:
    w = [rng.randint(0, 5) for _ in range(V)]
    if not any(w):
        w[rng.randrange(V)] = 1
    return tuple(Fraction(x, sum(w)) for x in w)


def context_free(row, name):
    return TableLM(len(row), lambda ctx: row, name)


def rule_chance(rule):
    """The rule's stop chance after a token of draft probability q (its context-free classes)."""
    if isinstance(rule, ConfidenceStop):
        return lambda x, q: rule.fixed if q < rule.threshold else Fraction(0)
    return lambda x, q: rule.scale * (1 - q)


CASES = []
_rng = random.Random("latency-adaptive")
for _case in range(12):
    _V = _rng.randint(2, 4)
    _rule = (ConfidenceStop(Fraction(_rng.randint(1, 4), 5)) if _case % 2 else
             RandomisedStop(Fraction(_rng.randint(1, 4), 4), Fraction(_rng.randint(0, 2), 4)))
    CASES.append((random_row(_rng, _V), random_row(_rng, _V), _rule, 1 + _case % 4))


@pytest.mark.parametrize("p, q, rule, k", CASES)
def test_model_equals_the_exact_round_for_context_free_pairs(p, q, rule, k):
    ad = AdaptiveLength(get_scheme("tokenwise"), rule)
    target, draft = context_free(p, "p"), context_free(q, "q")
    exact_len = {l: m for l, m in ad.length_law(target, draft, (), k).items() if m}
    exact_tokens = sum(((tau + 1) * m for (tau, _), m in ad.joint_law(target, draft, (), k).items()), Fraction(0))
    at_start = getattr(rule, "at_start", Fraction(0))
    rnd = adaptive_round(token_classes(p, q, rule_chance(rule)), k, at_start)
    assert rnd.length_law == exact_len
    assert rnd.expected_tokens == exact_tokens


def test_the_stop_acceptance_correlation_matters():
    """The cases above discriminate: a model that takes acceptance independent of stopping (g = h = A)
    is wrong on some of them."""
    wrong = 0
    for p, q, rule, k in CASES:
        cl = token_classes(p, q, rule_chance(rule))
        rnd = adaptive_round(cl, k, getattr(rule, "at_start", Fraction(0)))
        A = sum(w * a for w, a, _ in cl)
        naive = sum(prob * expected_tokens(A, l) for l, prob in rnd.length_law.items())
        wrong += naive != rnd.expected_tokens
    assert wrong >= 3


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_without_a_rule_it_is_leviathan(k):
    cl = [(Fraction(1, 3), Fraction(1), 0), (Fraction(1, 2), Fraction(1, 4), 0), (Fraction(1, 6), Fraction(0), 0)]
    A = Fraction(1, 3) + Fraction(1, 8)
    assert adaptive_round(cl, k).expected_tokens == expected_tokens(A, k)
    assert adaptive_round(cl, k).length_law == {k: 1}
    c = Fraction(1, 5)
    assert adaptive_latency(cl, k, c, 1) == 1 / walltime_factor(A, k, c)  # constant costs: 1 / S


def test_a_rule_that_always_stops_at_start_is_autoregressive():
    cl = [(Fraction(1), Fraction(1, 2), Fraction(1, 2))]
    rnd = adaptive_round(cl, 4, at_start=1)
    assert rnd.length_law == {0: 1} and rnd.expected_tokens == 1
    assert adaptive_latency(cl, 4, Fraction(1, 3), {1: 1, 2: 1}, at_start=1) == 1


def test_geometric_stop_on_a_context_free_pair():
    """GeometricStop (a fixed chance after each token) is a class-independent stop chance."""
    p, q = (Fraction(1, 2), Fraction(1, 2)), (Fraction(3, 4), Fraction(1, 4))
    rule = GeometricStop(Fraction(1, 3))
    ad = AdaptiveLength(get_scheme("tokenwise"), rule)
    exact_len = {l: m for l, m in ad.length_law(context_free(p, "p"), context_free(q, "q"), (), 3).items() if m}
    rnd = adaptive_round(token_classes(p, q, lambda x, qx: Fraction(1, 3)), 3)
    assert rnd.length_law == exact_len


@pytest.mark.parametrize(
    "classes, message",
    [
        ([(Fraction(1, 2), 1, 0)], "weights sum to 1/2"),
        ([(1, 2, 0)], "accept = 2 is out of range"),
        ([(1, 1)], r"classes\[0\]: expected \(weight, accept, stop\)"),
        ([(1.0, 1, 0)], "classes"),
    ],
)
def test_bad_classes_name_the_argument(classes, message):
    with pytest.raises(HSDInputError, match=message):
        adaptive_round(classes, 2)
