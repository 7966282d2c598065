"""Exact distributions, models and input validation (hsd_ref.exact, hsd_ref.models)."""

from fractions import Fraction as F

import pytest

from hsd_ref import HSDInputError, TableLM, as_dist, from_floats, iteration_law, sequence_law, SCHEMES
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
