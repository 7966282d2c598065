"""Toy autoregressive language models with exact conditionals.

A :class:`TableLM` maps a context (a tuple of token ids) to an exact next-token distribution.  It is
the stand-in for both the target and the draft model in every exact check.  Conditionals are
validated once and cached, so a model built from a function is as cheap to query as a table.

>>> lm = TableLM.context_free((Fraction(1, 3), Fraction(2, 3)))
>>> lm.probs((0, 1))
(Fraction(1, 3), Fraction(2, 3))
>>> lm.sequence_prob((1, 1))
Fraction(4, 9)
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Callable, Mapping, Sequence

from .exact import Dist, HSDInputError, argmax, as_dist, one_hot

__all__ = ["TableLM", "check_context", "check_pair"]

_PLAIN_INT = frozenset({int})


def check_context(context: object, vocab_size: int, name: str = "prefix") -> tuple[int, ...]:
    """Validate a context: a tuple of ints in ``range(vocab_size)``."""
    try:
        ctx = tuple(context)  # type: ignore[arg-type]
    except TypeError:
        raise HSDInputError(f"{name}: expected a tuple of token ids, got {context!r}") from None
    for i, t in enumerate(ctx):
        if isinstance(t, bool) or not isinstance(t, int):
            raise HSDInputError(f"{name}[{i}]: expected an int token id, got {t!r}")
        if not 0 <= t < vocab_size:
            raise HSDInputError(f"{name}[{i}] = {t} is out of range for vocab_size={vocab_size}")
    return ctx


class TableLM:
    """An exact autoregressive model over ``range(vocab_size)``.

    Build one with :meth:`from_table`, :meth:`from_function`, :meth:`context_free` or
    :meth:`random`.  ``probs(context)`` returns a validated tuple of Fractions.
    """

    __slots__ = ("vocab_size", "_fn", "_cache", "description")

    def __init__(self, vocab_size: int, fn: Callable[[tuple[int, ...]], Sequence[Fraction]], description: str = ""):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise HSDInputError(f"vocab_size: must be an int >= 1 (empty vocabulary refused), got {vocab_size!r}")
        self.vocab_size = vocab_size
        self._fn = fn
        self._cache: dict[tuple[int, ...], Dist] = {}
        self.description = description or "TableLM"

    def __repr__(self) -> str:
        return f"TableLM(vocab_size={self.vocab_size}, {self.description})"

    def probs(self, context: tuple[int, ...] = ()) -> Dist:
        """The exact next-token distribution after ``context`` (int ids in ``range(vocab_size)``)."""
        # fast path for a tuple of plain ints only: True, Fraction(1) or 1.0 hash and compare equal to
        # the cached id 1, and must be refused by check_context rather than hit the cache
        if type(context) is tuple and _PLAIN_INT.issuperset(map(type, context)):
            hit = self._cache.get(context)
            if hit is not None:
                return hit
        return self._row(check_context(context, self.vocab_size, "context"))

    def _row(self, ctx: tuple[int, ...]) -> Dist:
        """``probs`` of an already validated context (the loops below extend validated contexts by
        ids from ``range(vocab_size)``, so they skip the per-call check)."""
        hit = self._cache.get(ctx)
        if hit is not None:
            return hit
        dist = as_dist(self._fn(ctx), f"probs({ctx})", self.vocab_size)
        self._cache[ctx] = dist
        return dist

    def sequence_prob(self, tokens: Sequence[int], context: tuple[int, ...] = ()) -> Fraction:
        """P(tokens | context) as a product of conditionals; every id must lie in ``range(vocab_size)``."""
        tokens = check_context(tokens, self.vocab_size, "tokens")
        ctx = check_context(context, self.vocab_size, "context")
        prob = Fraction(1)
        for t in tokens:
            prob *= self._row(ctx)[t]
            if prob == 0:
                return prob
            ctx = ctx + (t,)
        return prob

    def sequence_law(self, n_tokens: int, context: tuple[int, ...] = ()) -> dict[tuple[int, ...], Fraction]:
        """The exact law of the next ``n_tokens`` tokens (zero-probability sequences omitted)."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
            raise HSDInputError(f"n_tokens: expected an int >= 0, got {n_tokens!r}")
        context = check_context(context, self.vocab_size, "context")
        law: dict[tuple[int, ...], Fraction] = {(): Fraction(1)}
        for _ in range(n_tokens):
            nxt: dict[tuple[int, ...], Fraction] = {}
            for seq, mass in law.items():
                row = self._row(context + seq)
                for v, pv in enumerate(row):
                    if pv:
                        nxt[seq + (v,)] = mass * pv
            law = nxt
        return law

    def table(self, depth: int) -> dict[tuple[int, ...], Dist]:
        """Every conditional for contexts of length ``<= depth`` (for printing and re-building)."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise HSDInputError(f"depth: expected an int >= 0, got {depth!r}")
        out = {}
        frontier: list[tuple[int, ...]] = [()]
        for d in range(depth + 1):
            nxt = []
            for ctx in frontier:
                out[ctx] = self._row(ctx)
                if d < depth:
                    nxt.extend(ctx + (v,) for v in range(self.vocab_size))
            frontier = nxt
        return out

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_table(
        cls,
        vocab_size: int,
        table: Mapping[tuple[int, ...], Sequence[Fraction]],
        default: Sequence[Fraction] | None = None,
    ) -> "TableLM":
        """A model whose conditional at a context is the entry of the longest suffix of the context
        found in ``table`` (so ``{(): p}`` is context-free and ``{(0,): a, (1,): b, (): c}`` is a
        bigram model), or ``default`` when no suffix matches."""
        checked = {}
        for ctx, row in table.items():
            c = check_context(ctx, vocab_size, f"table key {ctx!r}")
            checked[c] = as_dist(row, f"table[{c}]", vocab_size)
        dflt = as_dist(default, "default", vocab_size) if default is not None else None
        max_len = max((len(c) for c in checked), default=0)

        def fn(ctx: tuple[int, ...]) -> Dist:
            for n in range(min(max_len, len(ctx)), -1, -1):
                row = checked.get(ctx[len(ctx) - n :])
                if row is not None:
                    return row
            if dflt is None:
                raise HSDInputError(f"context {ctx}: no entry in the table and no default")
            return dflt

        return cls(vocab_size, fn, f"table of {len(checked)} contexts")

    @classmethod
    def from_function(cls, vocab_size: int, fn: Callable[[tuple[int, ...]], Sequence[Fraction]]) -> "TableLM":
        """A model whose conditional is ``fn(context)`` (validated and cached on first use)."""
        return cls(vocab_size, fn, f"function {getattr(fn, '__name__', 'fn')}")

    @classmethod
    def context_free(cls, dist: Sequence[Fraction]) -> "TableLM":
        """The same distribution after every context."""
        d = as_dist(dist, "dist")
        return cls(len(d), lambda ctx: d, f"context-free {tuple(str(x) for x in d)}")

    @classmethod
    def random(
        cls,
        vocab_size: int,
        seed: int,
        *,
        max_denominator: int = 12,
        zero_prob: float = 0.25,
        peaked_prob: float = 0.15,
        depth: int | None = None,
    ) -> "TableLM":
        """A seeded, context-dependent random model.

        Each context gets its own distribution, drawn from a generator seeded with
        ``(seed, context)`` (so the model is reproducible and lazily built).  With probability
        ``zero_prob`` a row has zeros, with probability ``peaked_prob`` it is a point mass; the rest
        are random rationals with denominators up to ``max_denominator``.  ``depth`` limits the
        context dependence to the last ``depth`` tokens (``None``: the whole context).
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise HSDInputError(f"seed: expected an int, got {seed!r}")
        if isinstance(max_denominator, bool) or not isinstance(max_denominator, int) or max_denominator < 1:
            raise HSDInputError(f"max_denominator: must be a positive int, got {max_denominator!r}")
        for nm, val in (("zero_prob", zero_prob), ("peaked_prob", peaked_prob)):
            if not 0 <= val <= 1:
                raise HSDInputError(f"{nm}: must lie in [0, 1], got {val!r}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
            raise HSDInputError(f"depth: expected None or an int >= 0, got {depth!r}")

        def fn(ctx: tuple[int, ...]) -> Dist:
            key = ctx if depth is None else ctx[max(0, len(ctx) - depth) :]
            rng = random.Random(f"hsd-ref/{vocab_size}/{seed}/{key}")
            return random_dist(rng, vocab_size, max_denominator, zero_prob, peaked_prob)

        return cls(vocab_size, fn, f"random(seed={seed}, max_denominator={max_denominator})")

    def warped(self, warp: Callable[[Dist], Sequence[Fraction]], name: str) -> "TableLM":
        """The model whose every conditional is ``warp(self.probs(ctx))`` (e.g. argmax, top-k)."""
        return TableLM(self.vocab_size, lambda ctx: warp(self.probs(ctx)), f"{name} of {self.description}")

    def argmax_model(self) -> "TableLM":
        """The greedy model: a point mass on the argmax (ties to the lowest id) of every conditional."""
        return self.warped(lambda d: one_hot(argmax(d), len(d)), "argmax")


def random_dist(rng: random.Random, vocab_size: int, max_denominator: int, zero_prob: float, peaked_prob: float) -> Dist:
    """One random exact distribution (used by :meth:`TableLM.random`)."""
    r = rng.random()
    if r < peaked_prob:
        return one_hot(rng.randrange(vocab_size), vocab_size)
    weights = [rng.randint(1, max_denominator) for _ in range(vocab_size)]
    if r < peaked_prob + zero_prob and vocab_size > 1:
        n_zero = rng.randint(1, vocab_size - 1)
        for v in rng.sample(range(vocab_size), n_zero):
            weights[v] = 0
    total = sum(weights)
    return tuple(Fraction(w, total) for w in weights)


def check_pair(target: TableLM, draft: TableLM) -> int:
    """Validate a target/draft pair and return the shared vocabulary size."""
    if not isinstance(target, TableLM):
        raise HSDInputError(f"target: expected a TableLM, got {type(target).__name__}")
    if not isinstance(draft, TableLM):
        raise HSDInputError(f"draft: expected a TableLM, got {type(draft).__name__}")
    if target.vocab_size != draft.vocab_size:
        raise HSDInputError(
            f"draft: vocab_size {draft.vocab_size} differs from target vocab_size {target.vocab_size}"
        )
    return target.vocab_size
