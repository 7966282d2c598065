"""Exact checks of the multi-level hierarchy (hsd_ref/schemes/hierarchy.py; papers.md §4, §5).

Exact parts compare Fractions with ``==`` against laws computed from the target model alone
(``TableLM.sequence_law``).  Expected values of the cost test and of the TriForce-style control are
derived by hand in closed form below.  The statistical tests use chi-square goodness of fit at level
1e-6 (asymptotic; every pooled cell has expected count >= 20) and a Hoeffding bound at 1e-6; each
carries its power check in this module.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from fractions import Fraction as F

import pytest
from scipy.stats import chi2, ncx2

from hsd_ref import HSDInputError, SCHEMES, TableLM, iteration_law, sequence_law
from hsd_ref.enumerate import extend_law
from hsd_ref.exact import sample_index
from hsd_ref.schemes.hierarchy import (
    Hierarchy,
    Middle,
    hierarchy,
    hierarchy_pass_variants,
    hierarchy_resample_middle,
    hierarchy_variants,
    mix_middle,
    random_middle,
)

ALPHA = 1e-6
VERIFIER_CHOICES = ("tokenwise", "block")
TOY_P = (F(1, 3), F(2, 3))
TOY_Q = (F(2, 3), F(1, 3))


def random_pair(V: int, seed: int) -> tuple[TableLM, TableLM]:
    """Seeded context-dependent pair with zeros and point masses."""
    kw = dict(max_denominator=6, zero_prob=0.3, peaked_prob=0.2)
    return TableLM.random(V, 2 * seed, **kw), TableLM.random(V, 2 * seed + 1, **kw)


def point_mass_pair() -> tuple[TableLM, TableLM]:
    """The draft is a point mass on a token the target never emits."""
    return TableLM.context_free((F(0), F(1, 2), F(1, 2))), TableLM.context_free((F(1), F(0), F(0)))


PAIRS = [
    ("toy", TableLM.context_free(TOY_P), TableLM.context_free(TOY_Q), ()),
    ("V2 random", *random_pair(2, 3), (1,)),
    ("V3 random", *random_pair(3, 4), ()),
    ("V3 point mass", *point_mass_pair(), (2,)),
]


def full_horizon_law(scheme, target, draft, prefix, k):
    """One iteration's law extended by the target to the LONGEST emission (a passed batch can make it
    longer than k + 1), and the target's own law of that many tokens."""
    law = scheme.outcome_law(target, draft, prefix, k)
    length = max(len(seq) for seq in law)
    return extend_law(law, target, prefix, length), target.sequence_law(length, prefix)


def three_level(mid: str, top: str, surplus: str, thresholds="half") -> Hierarchy:
    return Hierarchy(middles="mix", verifiers=(mid, top), surplus=surplus, thresholds=thresholds)


# ------------------------------------------------------------------------------------ exact laws


def test_two_level_stack_is_plain_speculative_decoding():
    for _, target, draft, prefix in PAIRS:
        for name in VERIFIER_CHOICES:
            stack = Hierarchy(middles=(), verifiers=(name,))
            for k in range(4):
                assert stack.outcome_law(target, draft, prefix, k) == SCHEMES[name].outcome_law(target, draft, prefix, k)
                assert iteration_law(stack, target, draft, prefix, k) == target.sequence_law(k + 1, prefix)


@pytest.mark.parametrize("surplus", ["truncate", "pass"])
@pytest.mark.parametrize("mid,top", list(itertools.product(VERIFIER_CHOICES, repeat=2)))
def test_three_level_iteration_law_is_exact(mid, top, surplus):
    for thresholds in ("half", (2,)):
        stack = three_level(mid, top, surplus, thresholds)
        assert stack.lossless
        for label, target, draft, prefix in PAIRS:
            for k in (1, 2, 3):
                assert iteration_law(stack, target, draft, prefix, k) == target.sequence_law(k + 1, prefix), (label, k, thresholds)
                got, want = full_horizon_law(stack, target, draft, prefix, k)
                assert got == want, (label, k, thresholds)


@pytest.mark.parametrize("surplus", ["truncate", "pass"])
@pytest.mark.parametrize("mid,top", list(itertools.product(VERIFIER_CHOICES, repeat=2)))
def test_three_level_decoding_loop_is_exact(mid, top, surplus):
    stack = three_level(mid, top, surplus)
    for label, target, draft, prefix in PAIRS[1:3]:
        n_tokens = 5 if target.vocab_size == 2 else 4
        assert sequence_law(stack, target, draft, prefix, 2, n_tokens) == target.sequence_law(n_tokens, prefix), label


@pytest.mark.parametrize("surplus", ["truncate", "pass"])
def test_four_level_stacks_are_exact_for_every_verifier_choice(surplus):
    _, target, draft, prefix = PAIRS[1]
    for verifiers in itertools.product(VERIFIER_CHOICES, repeat=3):
        for thresholds in ((1, 2), (2, 2)):
            stack = Hierarchy(middles=(random_middle(5), "mix"), verifiers=verifiers, thresholds=thresholds, surplus=surplus)
            for k in (2, 3):
                got, want = full_horizon_law(stack, target, draft, prefix, k)
                assert got == want, (verifiers, thresholds, k)


def test_explicit_middle_models_and_k_zero():
    target, draft = random_pair(2, 8)
    middle = TableLM.random(2, 99, max_denominator=5, zero_prob=0.3, peaked_prob=0.2)
    stack = Hierarchy(middles=[middle, mix_middle(F(1, 3))], verifiers=("block", "tokenwise", "block"), thresholds=(1, 3))
    assert stack.models(target, draft)[1] is middle
    for k in (0, 1, 2, 3):
        assert iteration_law(stack, target, draft, (0,), k) == target.sequence_law(k + 1, (0,))
    assert stack.outcome_law(target, draft, (), 0) == {(v,): x for v, x in enumerate(target.probs(())) if x}


def test_mix_middle_is_the_exact_average():
    target, draft = random_pair(3, 2)
    mid = hierarchy().models(target, draft)[1]
    for ctx in [(), (0,), (2, 1), (1, 1, 0)]:
        assert mid.probs(ctx) == tuple((a + b) / 2 for a, b in zip(target.probs(ctx), draft.probs(ctx)))


def test_truncated_middle_batch_is_an_exact_fixed_length_sample():
    # The induction step of the module docstring: a level's batch is an exact sample of its model.
    for _, target, draft, prefix in PAIRS:
        for mid in VERIFIER_CHOICES:
            stack = Hierarchy(middles="mix", verifiers=(mid, "tokenwise"), thresholds=(2,))
            middle = stack.models(target, draft)[1]
            assert stack.batch_law(target, draft, prefix, 3, level=1) == middle.sequence_law(3, prefix)
            assert stack.batch_law(target, draft, prefix, 3, level=0) == draft.sequence_law(2, prefix)


def test_passed_middle_batch_is_a_stopped_exact_stream():
    # With surplus="pass" and T_0 = T_1 = 2 the batch holds 2 to 4 tokens (a 1-token round, then a
    # round of up to 3), and extending it by the middle model gives the middle model's law.
    _, target, draft, prefix = PAIRS[2]
    for mid in VERIFIER_CHOICES:
        stack = Hierarchy(middles="mix", verifiers=(mid, "tokenwise"), thresholds=(2,), surplus="pass")
        middle = stack.models(target, draft)[1]
        law = stack.batch_law(target, draft, prefix, 2, level=1)
        assert min(len(b) for b in law) == 2 and max(len(b) for b in law) == 4
        assert extend_law(law, middle, prefix, 4) == middle.sequence_law(4, prefix)


# ------------------------------------------------------------------------------------ lossy control


def test_resample_middle_control_hand_counterexample():
    # Toy p=(1/3,2/3), q=(2/3,1/3), middle m=(1/2,1/2), k=1 (T_0 = T_1 = 1).  By hand:
    #   middle accepts with min(1, m/q) = (3/4, 1); accepted mass min(m, q) = (1/2, 1/3), beta = 5/6;
    #   the control resamples from m on rejection: r = (1/2 + 1/6 * 1/2, 1/3 + 1/6 * 1/2) = (7/12, 5/12);
    #   the target accepts with min(1, p/m) = (2/3, 1): P(first = 0) = 7/12 * 2/3 = 7/18 and the
    #   rejected mass goes to the residual norm(max(p - m, 0)) = (0, 1), so P(first = 1) = 11/18.
    target, draft = TableLM.context_free(TOY_P), TableLM.context_free(TOY_Q)
    control = hierarchy_resample_middle()
    assert not control.lossless
    first = {}
    for seq, m in control.outcome_law(target, draft, (), 1).items():
        first[seq[0]] = first.get(seq[0], F(0)) + m
    assert first == {0: F(7, 18), 1: F(11, 18)}
    assert first[0] != TOY_P[0]
    assert iteration_law(control, target, draft, (), 1) != target.sequence_law(2)
    assert control.batch_law(target, draft, (), 1, level=1) == {(0,): F(7, 12), (1,): F(5, 12)}


def test_check_lossless_verdicts():
    check = pytest.importorskip("hsd_ref.check")
    good = check.check_lossless(hierarchy(), vocab_sizes=(2, 3), ks=(1, 2, 3), n_tokens=4, instances=1)
    assert good.lossless and good.max_error == 0
    bad = check.check_lossless(hierarchy_resample_middle(), vocab_sizes=(2, 3), ks=(1, 2, 3), n_tokens=4, instances=1)
    assert not bad.lossless and bad.tv > 0
    assert bad.counterexample is not None and bad.counterexample.recheck(hierarchy_resample_middle())


def test_factories():
    names = [s.name for s in hierarchy_variants()]
    assert names == ["hierarchy", "hierarchy_tokenwise_block", "hierarchy_block_tokenwise", "hierarchy_block_block"]
    assert all(s.lossless for s in hierarchy_variants() + hierarchy_pass_variants())
    assert [s.surplus for s in hierarchy_pass_variants()] == ["pass"] * 4
    assert hierarchy().thresholds_for(4) == (2, 4)
    assert Hierarchy(middles=("mix", "mix")).thresholds_for(5) == (2, 3, 5)
    assert Hierarchy(middles=("mix", "mix"), thresholds="equal").thresholds_for(3) == (3, 3, 3)
    assert Hierarchy(middles=("mix",), thresholds=lambda k: (k + 1,)).thresholds_for(3) == (4, 3)


# ------------------------------------------------------------------------------------ expected cost


def test_expected_cost_hand_computation():
    # Context-free toy p, q, middle m = (p + q) / 2, k = 2, explicit T_0 = 1, token-wise everywhere.
    # Middle rounds: one draft call and one middle call scoring 2 positions each; a round emits 2
    # tokens with probability beta = sum min(m, q) (draft accepted), else 1, so the middle needs
    # 1 + (1 - beta) rounds in expectation.  The target scores 3 positions once; its batch is m^2
    # distributed, so E[tokens] = 1 + alpha + alpha^2 with alpha = sum min(p, m).
    p, q = TOY_P, TOY_Q
    m = tuple((a + b) / 2 for a, b in zip(p, q))
    beta = sum(min(a, b) for a, b in zip(m, q))
    alpha = sum(min(a, b) for a, b in zip(p, m))
    rounds = 2 - beta
    tokens = 1 + alpha + alpha**2
    cost = rounds * 1 + rounds * (2 + 2) + (10 + 3)
    assert (rounds, tokens, cost) == (F(7, 6), F(91, 36), F(113, 6))  # the numbers, by hand

    stack = Hierarchy(middles="mix", thresholds=(1,))
    target, draft = TableLM.context_free(p), TableLM.context_free(q)
    report = stack.expected_cost(target, draft, (), 2, costs=(F(1), lambda n: 2 + n, lambda n: F(10) + n))
    assert report.expected_cost == cost
    assert report.expected_tokens == tokens
    assert report.cost_per_token == cost / tokens
    assert report.expected_calls == (rounds, rounds, F(1))
    assert report.call_profile == ({1: rounds}, {2: rounds}, {3: F(1)})


# ------------------------------------------------------------------------------------ sampler


def chi_square(counts: dict, law: dict, n: int) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom; cells with expected count < 20 are pooled (the
    partition depends on the law only).  An observation outside the support gives +inf."""
    if any(seq not in law for seq in counts):
        return math.inf, 1
    big = [seq for seq, x in law.items() if n * x >= 20]
    small = [seq for seq in law if seq not in big]
    cells = [(counts.get(seq, 0), n * float(law[seq])) for seq in big]
    if small:
        cells.append((sum(counts.get(seq, 0) for seq in small), n * float(sum(law[seq] for seq in small))))
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


def sample_counts(scheme, target, draft, prefix, k, n, seed, extend_to=None):
    rng = random.Random(seed)
    counts: dict = {}
    for _ in range(n):
        seq = scheme.sample_iteration(target, draft, prefix, k, rng).tokens
        while extend_to is not None and len(seq) < extend_to:
            seq += (sample_index(target.probs(prefix + seq), F(rng.random())),)
        if extend_to is not None:
            seq = seq[:extend_to]
        counts[seq] = counts.get(seq, 0) + 1
    return counts


@pytest.mark.parametrize(
    "scheme",
    [hierarchy(), three_level("block", "block", "truncate", (2,)), three_level("block", "tokenwise", "pass", (2,)), hierarchy_resample_middle()],
    ids=lambda s: s.name,
)
def test_sampler_matches_exact_law(scheme):
    # Goodness of fit of the emitted tokens against the scheme's own exact law (the lossy control
    # included: its sampler must reproduce its exact, wrong law).  False failure <= 1e-6.
    _, target, draft, prefix = PAIRS[2]
    n = 3000
    law = scheme.outcome_law(target, draft, prefix, 3)
    stat, df = chi_square(sample_counts(scheme, target, draft, prefix, 3, n, seed=11), law, n)
    assert stat < chi2.isf(ALPHA, df), (stat, df)


def test_sampler_output_is_target_law_and_control_is_rejected():
    # Emissions extended by the target to 2 tokens must follow p^2 (4 cells, df 3); the TriForce-style
    # control must be rejected at the same sample size.  Power is computed, not assumed.
    target, draft = TableLM.context_free((F(2, 3), F(1, 3))), TableLM.context_free((F(1, 6), F(5, 6)))
    n, k = 6000, 1
    want = target.sequence_law(k + 1)
    crit = chi2.isf(ALPHA, len(want) - 1)
    control = hierarchy_resample_middle()
    bad = iteration_law(control, target, draft, (), k)
    lam = n * sum(float((bad.get(s, F(0)) - x) ** 2 / x) for s, x in want.items())
    assert ncx2.cdf(crit, len(want) - 1, lam) < ALPHA  # the control escapes with probability < 1e-6
    stat, _ = chi_square(sample_counts(hierarchy(), target, draft, (), k, n, seed=5, extend_to=k + 1), want, n)
    assert stat < crit
    stat, _ = chi_square(sample_counts(control, target, draft, (), k, n, seed=5, extend_to=k + 1), want, n)
    assert stat > crit


def test_sampler_call_counts_match_exact_expectation():
    # Hoeffding: level-0 calls per iteration lie in [1, 2] (T_0 = 1, one or two middle rounds), so
    # |mean - E| <= sqrt(ln(2 / 1e-6) / (2 n)) fails with probability <= 1e-6.  Power: the naive
    # count of one round (E = 1 instead of 7/6, see the hand computation) lies outside the band.
    stack = Hierarchy(middles="mix", thresholds=(1,))
    target, draft = TableLM.context_free(TOY_P), TableLM.context_free(TOY_Q)
    n = 20000
    band = math.sqrt(math.log(2 / ALPHA) / (2 * n))
    exact = float(stack.expected_cost(target, draft, (), 2, costs=(1, 0, 0)).expected_cost)
    assert abs(exact - 1) > 2 * band
    rng = random.Random(3)
    total = 0
    for _ in range(n):
        s = stack.sample_iteration(target, draft, (), 2, rng)
        assert s.calls[2] == 1 and s.scored[2] == (len(s.batch) + 1,) and len(s.batch) == 2
        assert s.calls[0] == s.calls[1] and s.scored[1] == (2,) * s.calls[1]
        assert s.tokens[: s.num_accepted] == s.batch[: s.num_accepted]
        total += s.calls[0]
    assert abs(total / n - exact) < band


def test_sampler_is_seeded():
    target, draft = random_pair(3, 4)
    a = [hierarchy().sample_iteration(target, draft, (), 3, random.Random(9)) for _ in range(2)]
    assert a[0] == a[1]
    assert hierarchy().sample_iteration(target, draft, (), 3, 9) == a[0]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(middles=3), "middles"),
        (dict(middles=["nope"]), "middles[0]"),
        (dict(verifiers=("tokenwise",)), "verifiers"),
        (dict(verifiers="tokenwise"), "verifiers"),
        (dict(verifiers=("tokenwise", "nope")), "verifiers[1]"),
        (dict(verifiers=("greedy", "tokenwise")), "verifiers[0]"),
        (dict(verifiers=(SCHEMES["greedy"], "tokenwise")), "verifiers[0]"),
        (dict(thresholds="double"), "thresholds"),
        (dict(thresholds=(1, 2)), "thresholds"),
        (dict(thresholds=(0,)), "thresholds[0]"),
        (dict(surplus="keep"), "surplus"),
        (dict(lossless="yes"), "lossless"),
        (dict(name=""), "name"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=re.escape(argument)):
        Hierarchy(**kwargs)


def test_bad_call_arguments_name_the_argument():
    target, draft = random_pair(3, 1)
    stack = hierarchy()
    with pytest.raises(ValueError, match="middles\\[0\\]"):
        Hierarchy(middles=[TableLM.random(2, 1)]).outcome_law(target, draft, (), 2)
    with pytest.raises(ValueError, match="k"):
        stack.outcome_law(target, draft, (), -1)
    with pytest.raises(ValueError, match="prefix"):
        stack.outcome_law(target, draft, (5,), 1)
    with pytest.raises(ValueError, match="draft"):
        stack.outcome_law(target, TableLM.random(2, 1), (), 1)
    with pytest.raises(ValueError, match="costs"):
        stack.expected_cost(target, draft, (), 2, costs=(1, 1))
    with pytest.raises(ValueError, match=re.escape("costs[1]")):
        stack.expected_cost(target, draft, (), 2, costs=(1, 0.5, 1))
    with pytest.raises(ValueError, match=re.escape("costs[2]")):
        stack.expected_cost(target, draft, (), 2, costs=(1, 1, lambda n: -n))
    with pytest.raises(ValueError, match="rng"):
        stack.sample_iteration(target, draft, (), 2, rng=random)
    with pytest.raises(ValueError, match="level"):
        stack.batch_law(target, draft, (), 2, level=2)
    with pytest.raises(ValueError, match="weight"):
        mix_middle(F(3, 2))
    with pytest.raises(ValueError, match="seed"):
        random_middle("x")
    with pytest.raises(ValueError, match=re.escape("thresholds(k)")):
        Hierarchy(thresholds=lambda k: (0,)).outcome_law(target, draft, (), 2)
    assert isinstance(Middle("m", lambda t, d: t), Middle)
    with pytest.raises(HSDInputError):
        Hierarchy(middles=[Middle("bad", lambda t, d: "not a model")]).outcome_law(target, draft, (), 1)



# ------------------------------------------------------------------------------------ regressions


def test_hierarchy_many_short_middle_chunks_have_no_recursion_limit():
    # the middle (a point mass on 1) rejects every 1-token draft batch (a point mass on 0), so its
    # buffer of k tokens is filled by k chunks of one token: this used to recurse k levels deep
    k = 1200
    pm0, pm1 = TableLM.context_free((F(1), F(0))), TableLM.context_free((F(0), F(1)))
    scheme = Hierarchy(middles=(pm1,), verifiers=("tokenwise", "tokenwise"), thresholds=(1,))
    assert iteration_law(scheme, pm1, pm0, (), k) == {(1,) * (k + 1): F(1)}
    assert scheme.call_profile(pm1, pm0, (), k) == ({1: F(k)}, {2: F(k)}, {k + 1: F(1)})
