"""Exact distributions, models and input validation (hsd_ref.exact, hsd_ref.models)."""

from fractions import Fraction as F

import pytest

from hsd_ref import TableLM, as_dist, from_floats, iteration_law, sequence_law, SCHEMES
from hsd_ref.exact import argmax, sample_index


def test_as_dist_accepts_exact_and_ints():
    assert as_dist([F(1, 3), F(2, 3)], "p") == (F(1, 3), F(2, 3))
    assert as_dist([0, 1], "p") == (F(0), F(1))


@pytest.mark.parametrize(
    "values, fragment",
    [
        ([0.5, 0.5], "float"),
        ([F(1, 2), 0.5], "float"),
        ([F(-1, 2), F(3, 2)], "negative"),
        ([F(1, 2), F(1, 3)], "sums to 5/6"),
        ([], "empty"),
        (["a", "b"], "expected an exact"),
        ([True, False], "bool"),
    ],
)
def test_as_dist_rejects_bad_input_naming_the_argument(values, fragment):
    with pytest.raises(ValueError) as exc:
        as_dist(values, "target_probs")
    assert "target_probs" in str(exc.value) and fragment in str(exc.value)


def test_as_dist_wrong_length():
    with pytest.raises(ValueError, match=r"draft.*length 2.*vocab_size=3"):
        as_dist([F(1, 2), F(1, 2)], "draft", vocab_size=3)


def test_from_floats_is_explicit_and_normalises_exactly():
    assert from_floats([0.25, 0.75], max_denominator=100) == (F(1, 4), F(3, 4))
    d = from_floats([0.1, 0.2, 0.3], max_denominator=10)  # 1/10, 1/5, 3/10 -> renormalised by 3/5
    assert d == (F(1, 6), F(1, 3), F(1, 2)) and sum(d) == 1
    for bad, name in (([-0.1, 1.1], "negative"), ([float("nan"), 1.0], "not finite"), ([0.0, 0.0], "all entries"), ([], "empty")):
        with pytest.raises(ValueError, match=name):
            from_floats(bad, max_denominator=10)
    with pytest.raises(ValueError, match="max_denominator"):
        from_floats([0.5, 0.5], max_denominator=0)


def test_sample_index_inverse_cdf_convention():
    d = (F(1, 4), F(0), F(3, 4))
    assert sample_index(d, F(0)) == 0
    assert sample_index(d, F(1, 4)) == 2  # boundary goes up; the zero-mass token 1 is never returned
    assert sample_index(d, F(99, 100)) == 2
    assert argmax((F(1, 3), F(1, 3), F(1, 3))) == 0  # ties to the lowest id


def test_tablelm_constructors_and_validation():
    bigram = TableLM.from_table(2, {(0,): (F(1), F(0)), (1,): (F(0), F(1)), (): (F(1, 2), F(1, 2))})
    assert bigram.probs(()) == (F(1, 2), F(1, 2))
    assert bigram.probs((1, 0)) == (F(1), F(0))  # longest matching suffix
    assert bigram.sequence_prob((1, 1, 1)) == F(1, 2)
    assert bigram.sequence_law(2) == {(0, 0): F(1, 2), (1, 1): F(1, 2)}
    fn = TableLM.from_function(3, lambda ctx: (F(1), F(0), F(0)) if len(ctx) % 2 else (F(0), F(0), F(1)))
    assert fn.probs((2,)) == (F(1), F(0), F(0))
    r1, r2 = TableLM.random(3, 7), TableLM.random(3, 7)
    assert [r1.probs(c) for c in ((), (0,), (2, 1))] == [r2.probs(c) for c in ((), (0,), (2, 1))]
    assert TableLM.random(3, 8).table(2) != r1.table(2)
    with pytest.raises(ValueError, match="vocab_size"):
        TableLM(0, lambda ctx: ())
    with pytest.raises(ValueError, match=r"probs\(\(\)\).*sums to"):
        TableLM.from_function(2, lambda ctx: (F(1, 2), F(1, 3))).probs(())
    with pytest.raises(ValueError, match="float"):
        TableLM.from_function(2, lambda ctx: (0.5, 0.5)).probs(())
    with pytest.raises(ValueError, match=r"context\[1\] = 5 is out of range"):
        r1.probs((0, 5))


def test_argmax_model():
    lm = TableLM.from_table(3, {(): (F(1, 4), F(1, 2), F(1, 4)), (1,): (F(1, 3), F(1, 3), F(1, 3))})
    greedy = lm.argmax_model()
    assert greedy.probs(()) == (F(0), F(1), F(0))
    assert greedy.probs((1,)) == (F(1), F(0), F(0))


@pytest.mark.parametrize("name", ["tokenwise", "block", "hsd_naive"])
def test_enumerators_reject_bad_input(name):
    s = SCHEMES[name]
    p2, p3 = TableLM.random(2, 1), TableLM.random(3, 1)
    with pytest.raises(ValueError, match="draft: vocab_size 3 differs"):
        iteration_law(s, p2, p3, (), 1)
    with pytest.raises(ValueError, match="k: draft length must be >= 0"):
        iteration_law(s, p2, p2, (), -1)
    with pytest.raises(ValueError, match=r"prefix\[0\] = 2 is out of range"):
        sequence_law(s, p2, p2, (2,), 1, 2)
    with pytest.raises(ValueError, match="n_tokens"):
        sequence_law(s, p2, p2, (), 1, -1)
    with pytest.raises(ValueError, match="k: expected an int"):
        s.outcome_law(p2, p2, (), 1.0)


# ------------------------------------------------------------------------------------ regressions
# TableLM used to index rows with the raw id: sequence_prob((-1,)) returned p[-1] by Python's negative
# indexing, a bool id was read as 0/1, and a cached context was returned before it was validated.

TOY = TableLM.context_free((F(1, 3), F(2, 3)))


@pytest.mark.parametrize(
    "tokens, message",
    [
        ((-1,), r"^tokens\[0\] = -1 is out of range for vocab_size=2"),
        ((0, -2), r"^tokens\[1\] = -2 is out of range"),
        ((0, 2), r"^tokens\[1\] = 2 is out of range"),
        ((True,), r"^tokens\[0\]: expected an int token id, got True"),
        ((F(1),), r"^tokens\[0\]: expected an int token id"),
        ((1.0,), r"^tokens\[0\]: expected an int token id"),
        (5, r"^tokens: expected a tuple of token ids"),
    ],
)
def test_tablelm_sequence_prob_refuses_negative_and_non_int_token_ids(tokens, message):
    with pytest.raises(ValueError, match=message):
        TOY.sequence_prob(tokens)


def test_tablelm_sequence_prob_validates_tokens_after_a_zero_probability():
    lm = TableLM.context_free((F(1), F(0)))
    with pytest.raises(ValueError, match=r"^tokens\[1\] = -1 is out of range"):
        lm.sequence_prob((1, -1))  # used to stop at the zero and return 0


@pytest.mark.parametrize("bad", [(-1,), (True,), (F(1),), (1.0,)])
def test_tablelm_refuses_bad_context_ids_even_when_cached(bad):
    lm = TableLM.random(2, 3)
    lm.sequence_law(2)  # caches (), (0,), (1,): a bool or Fraction key would hit (1,) in the cache
    with pytest.raises(ValueError, match=r"^context\[0\]"):
        lm.probs(bad)
    with pytest.raises(ValueError, match=r"^context\[0\]"):
        lm.sequence_prob((0,), bad)
    with pytest.raises(ValueError, match=r"^context\[0\]"):
        lm.sequence_law(1, bad)


def test_tablelm_sequence_law_accepts_any_sequence_as_context():
    lm = TableLM.random(2, 3)
    assert lm.sequence_law(2, [1, 0]) == lm.sequence_law(2, (1, 0))
    assert lm.sequence_prob([0, 1], [1]) == lm.sequence_prob((0, 1), (1,))


@pytest.mark.parametrize("n", [-1, True, 1.0, None])
def test_sequence_law_refuses_a_negative_length(n):
    with pytest.raises(ValueError, match=r"^n_tokens: expected an int >= 0"):
        TOY.sequence_law(n)
    with pytest.raises(ValueError, match=r"^n_tokens: expected an int >= 0"):
        sequence_law(SCHEMES["tokenwise"], TOY, TOY, (), 1, n)


def test_tablelm_table_refuses_a_negative_depth():
    with pytest.raises(ValueError, match=r"^depth: expected an int >= 0"):
        TOY.table(-1)  # used to return {}
    assert TOY.table(0) == {(): TOY.probs(())}


def test_tablelm_random_refuses_a_negative_depth():
    with pytest.raises(ValueError, match=r"^depth: expected None or an int >= 0"):
        TableLM.random(2, 0, depth=-1)  # used to make the model silently context-free
    with pytest.raises(ValueError, match=r"^depth: expected None or an int >= 0"):
        TableLM.random(2, 0, depth=1.5)


@pytest.mark.parametrize("u", [-1, F(-1, 10), 1, F(3, 2)])
def test_sample_index_refuses_u_outside_the_unit_interval(u):
    with pytest.raises(ValueError, match=r"^u: .* is outside \[0, 1\)"):
        sample_index((F(1, 2), F(1, 2)), u)  # u = -1 used to return 0


@pytest.mark.parametrize("u, fragment", [(0.5, "float"), (True, "bool"), ("0", "expected an exact")])
def test_sample_index_refuses_inexact_u(u, fragment):
    with pytest.raises(ValueError, match=rf"^u: .*{fragment}"):
        sample_index((F(1, 2), F(1, 2)), u)


def test_sample_index_blames_a_distribution_of_mass_below_u():
    assert sample_index((F(1, 2), F(1, 2)), 0) == 0
    with pytest.raises(ValueError, match=r"^dist: total mass 1/2 <= u = 3/4"):
        sample_index((F(1, 4), F(1, 4)), F(3, 4))


@pytest.mark.parametrize("index", [-1, 3, True])
def test_one_hot_refuses_an_out_of_range_index(index):
    from hsd_ref.exact import one_hot

    with pytest.raises(ValueError, match=r"^index: "):
        one_hot(index, 3)  # -1 used to give the all-zero vector


def test_extend_law_refuses_a_negative_length():
    from hsd_ref.enumerate import extend_law

    with pytest.raises(ValueError, match=r"^length: expected an int >= 0"):
        extend_law({(0, 1): F(1)}, TOY, (), -1)  # used to truncate from the end: {(0,): 1}
    assert extend_law({(0, 1): F(1)}, TOY, (), 1) == {(0,): F(1)}
