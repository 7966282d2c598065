"""The public hypothesis strategies build valid exact objects and validate their bounds eagerly."""

from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsd_ref import TableLM
from hsd_ref.strategies import distributions, draws, lm_pairs, table_lms, toy_pair


@settings(max_examples=50, deadline=None)
@given(d=distributions(st.integers(1, 5)))
def test_distributions_are_exact_and_normalised(d):
    assert all(isinstance(x, F) and x >= 0 for x in d) and sum(d) == 1


@settings(max_examples=30, deadline=None)
@given(d=distributions(3, allow_point_masses=False, allow_zeros=False))
def test_distributions_without_zeros(d):
    assert all(x > 0 for x in d)


@settings(max_examples=30, deadline=None)
@given(lm=table_lms(3, max_depth=2), ctx=st.lists(st.integers(0, 2), max_size=4))
def test_table_lms_answer_every_context(lm, ctx):
    assert sum(lm.probs(tuple(ctx))) == 1


@settings(max_examples=30, deadline=None)
@given(pair=lm_pairs(st.integers(2, 4)))
def test_lm_pairs_share_a_vocabulary(pair):
    target, draft = pair
    assert isinstance(target, TableLM) and target.vocab_size == draft.vocab_size


@settings(max_examples=30, deadline=None)
@given(u=draws(5))
def test_draws_lie_in_the_unit_interval(u):
    assert len(u) == 5 and all(0 <= x < 1 for x in u)


def test_bounds_are_checked_when_the_strategy_is_built():
    for build in (lambda: distributions(0), lambda: table_lms(2, max_depth=-1), lambda: draws(-1), lambda: toy_pair(0, 1)):
        with pytest.raises(ValueError):
            build()


def test_toy_pair_is_deterministic_and_has_every_row_kind():
    t1, d1 = toy_pair(3, 5)
    t2, d2 = toy_pair(3, 5)
    assert t1.table(2) == t2.table(2) and d1.table(2) == d2.table(2)
    assert toy_pair(3, 6)[0].table(2) != t1.table(2)
    rows = list(t1.table(2).values())
    assert any(max(r) == 1 for r in rows)  # a point mass
    assert any(0 in r and max(r) < 1 for r in rows)  # zeros
    assert any(max(r) / min(r) == 40 for r in rows if min(r) > 0)  # peaked
