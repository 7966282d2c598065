"""Public hypothesis strategies (and seeded constructors) for exact speculative-decoding tests.

Every strategy builds exact ``Fraction`` objects, so tests can compare laws with ``==``.  Arguments
take either a value or a hypothesis strategy (like ``hypothesis.extra.numpy``); bounds are checked
when the strategy is built, not at draw time.

Shrinking: distributions shrink towards a point mass on token 0, then towards small integer weights
(so ties and zeros appear early); models shrink towards context-free ones (depth 0); model pairs
shrink towards the smallest vocabulary and towards ``draft == target``; draws shrink towards 0.

:func:`toy_pair` is a plain seeded constructor (no hypothesis) for statistical tests and reports: a
context-dependent target/draft pair with zeros, peaked and near-flat rows.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Sequence

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from .exact import HSDInputError, one_hot
from .models import TableLM

__all__ = ["distributions", "table_lms", "lm_pairs", "draws", "toy_pair"]


def _as_strategy(value) -> SearchStrategy:
    return value if isinstance(value, SearchStrategy) else st.just(value)


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, SearchStrategy):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise HSDInputError(f"{name}: expected an int >= {lo}, got {value!r}")


def distributions(vocab_size: int | SearchStrategy[int], *, max_weight: int = 8, allow_zeros: bool = True, allow_point_masses: bool = True) -> SearchStrategy[tuple[Fraction, ...]]:
    """Exact distributions over ``range(vocab_size)``.

    A distribution is either a point mass (when ``allow_point_masses``) or normalised integer weights
    in ``[0 or 1, max_weight]``; equal weights give exact ties and near-equal ones near-ties.
    Shrinks towards a point mass on token 0, then towards small weights.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("max_weight", max_weight, 1)

    def build(V: int) -> SearchStrategy:
        lo = 0 if allow_zeros else 1
        weights = st.lists(st.integers(lo, max_weight), min_size=V, max_size=V).map(
            lambda ws: one_hot(0, V) if sum(ws) == 0 else tuple(Fraction(w, sum(ws)) for w in ws)
        )
        if not allow_point_masses:
            if allow_zeros:
                weights = st.lists(st.integers(0, max_weight), min_size=V, max_size=V).filter(
                    lambda ws: sum(1 for w in ws if w) >= min(2, V)
                ).map(lambda ws: tuple(Fraction(w, sum(ws)) for w in ws))
            return weights
        points = st.integers(0, V - 1).map(lambda i: one_hot(i, V))
        return st.one_of(points, weights)

    return _as_strategy(vocab_size).flatmap(build)


def table_lms(vocab_size: int | SearchStrategy[int], *, max_depth: int = 2, **dist_kwargs) -> SearchStrategy[TableLM]:
    """Context-dependent :class:`TableLM` s: one distribution per context of length ``<= depth``
    (``depth`` drawn in ``[0, max_depth]``); longer contexts use their last ``depth`` tokens.
    Shrinks towards context-free models."""
    _check_int("vocab_size", vocab_size, 1)
    _check_int("max_depth", max_depth, 0)

    def build(V: int) -> SearchStrategy:
        def for_depth(depth: int) -> SearchStrategy:
            contexts, level = [()], [()]
            for _ in range(depth):
                level = [c + (v,) for c in level for v in range(V)]
                contexts += level
            return st.lists(distributions(V, **dist_kwargs), min_size=len(contexts), max_size=len(contexts)).map(
                lambda rows: TableLM.from_table(V, dict(zip(contexts, rows)))
                if depth
                else TableLM.context_free(rows[0])
            )

        return st.integers(0, max_depth).flatmap(for_depth)

    return _as_strategy(vocab_size).flatmap(build)


def lm_pairs(vocab_size: int | SearchStrategy[int] = st.integers(2, 3), *, max_depth: int = 2, **dist_kwargs) -> SearchStrategy[tuple[TableLM, TableLM]]:
    """``(target, draft)`` pairs on a shared vocabulary; with some probability ``draft is target``.
    Shrinks towards the smallest vocabulary and towards ``draft == target``."""
    _check_int("vocab_size", vocab_size, 1)

    def build(V: int) -> SearchStrategy:
        target = table_lms(V, max_depth=max_depth, **dist_kwargs)
        return st.tuples(target, st.booleans(), table_lms(V, max_depth=max_depth, **dist_kwargs)).map(
            lambda t: (t[0], t[0]) if not t[1] else (t[0], t[2])
        )

    return _as_strategy(vocab_size).flatmap(build)


def draws(n: int | SearchStrategy[int], *, max_denominator: int = 64) -> SearchStrategy[tuple[Fraction, ...]]:
    """``n`` exact uniforms in [0, 1) with denominators up to ``max_denominator`` (so they often land
    exactly on CDF boundaries, the hardest case).  Shrinks towards 0."""
    _check_int("n", n, 0)
    _check_int("max_denominator", max_denominator, 1)
    one = st.integers(1, max_denominator).flatmap(lambda d: st.integers(0, d - 1).map(lambda a: Fraction(a, d)))
    return _as_strategy(n).flatmap(lambda m: st.lists(one, min_size=m, max_size=m).map(tuple))


def _toy_row(rng: random.Random, V: int, kind: str) -> tuple[Fraction, ...]:
    if kind == "peaked":  # one dominant token (max/min ratio about 40, netket's advice)
        top = rng.randrange(V)
        w = [1] * V
        w[top] = 40
    elif kind == "zeros":
        w = [rng.randint(1, 9) for _ in range(V)]
        for v in rng.sample(range(V), max(1, V // 2)):
            w[v] = 0
        if sum(w) == 0:
            w[rng.randrange(V)] = 1
    elif kind == "flat":  # near-flat: weights 20 or 21
        w = [20 + rng.randint(0, 1) for _ in range(V)]
    elif kind == "point":
        return one_hot(rng.randrange(V), V)
    else:
        w = [rng.randint(1, 12) for _ in range(V)]
    total = sum(w)
    return tuple(Fraction(x, total) for x in w)


def toy_pair(vocab_size: int, seed: int, *, depth: int = 2, kinds: Sequence[str] = ("peaked", "zeros", "flat", "random", "point")) -> tuple[TableLM, TableLM]:
    """A seeded, context-dependent ``(target, draft)`` pair for statistical tests.

    Each context of length ``<= depth`` gets, for the target and for the draft independently, a row
    whose kind (peaked, with zeros, near-flat, random, point mass) cycles through ``kinds`` with a
    seeded offset, so every kind appears in every model.  Deterministic in ``seed``.
    """
    _check_int("vocab_size", vocab_size, 1)
    _check_int("depth", depth, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    if not kinds:
        raise HSDInputError("kinds: must name at least one row kind")
    rng = random.Random(f"hsd-ref/toy_pair/{vocab_size}/{seed}/{depth}")
    contexts = [()]
    level = [()]
    for _ in range(depth):
        level = [c + (v,) for c in level for v in range(vocab_size)]
        contexts += level
    tables = []
    for _ in range(2):
        offset = rng.randrange(len(kinds))
        tables.append({c: _toy_row(rng, vocab_size, kinds[(i + offset) % len(kinds)]) for i, c in enumerate(contexts)})
    return TableLM.from_table(vocab_size, tables[0]), TableLM.from_table(vocab_size, tables[1])
