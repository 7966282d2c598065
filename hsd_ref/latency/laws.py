"""Acceptance laws: how many tokens of a ``b``-token batch one verify call accepts, and the buffer
chain of one hierarchy level (:func:`level_tables`); docs/latency.md §3-4.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Mapping

import sympy as sp

from ..exact import HSDInputError
from .numeric import _check_int, _check_range, _exact, _float, _is_number


class AcceptanceLaw:
    """Law of the number of accepted tokens when one verify call checks a batch of ``b`` tokens.

    :meth:`tokenwise` is the i.i.d. token-wise law (``P(>= j accepted) = alpha^j``, capped at ``b``);
    :meth:`table` / :meth:`function` plug in any law, e.g. block verification's accepted-count law
    (``SingleDraftScheme.accepted_law``).  The yield of a call is accepted + 1 tokens.
    """

    __slots__ = ("_fn", "alpha", "description", "_cache")

    def __init__(self, fn: Callable[[int], Mapping[int, object]], description: str, alpha=None):
        self._fn = fn
        self.alpha = alpha
        self.description = description
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"AcceptanceLaw({self.description})"

    @classmethod
    def tokenwise(cls, alpha) -> "AcceptanceLaw":
        """Capped geometric: ``j < b`` accepted with probability ``alpha^j (1 - alpha)``, all ``b`` with ``alpha^b``."""
        if not isinstance(alpha, float):
            alpha = _exact(alpha, "alpha")
        _check_range(alpha, "alpha", 0, 1)

        def law(b):
            out = {j: alpha ** j * (1 - alpha) for j in range(b)}
            out[b] = alpha ** b
            return out

        return cls(law, f"token-wise alpha={alpha}", alpha=alpha)

    @classmethod
    def table(cls, table: Mapping[int, Mapping[int, object]]) -> "AcceptanceLaw":
        """``{b: {accepted: probability}}`` for every batch size ``b`` that will be verified."""
        if not isinstance(table, Mapping):
            raise HSDInputError(f"table: expected {{batch size: {{accepted: probability}}}}, got {table!r}")

        def law(b):
            if b not in table:
                raise HSDInputError(f"acceptance table: no law for batch size {b} (have {sorted(table)})")
            return table[b]

        return cls(law, f"table for b in {sorted(table)}")

    @classmethod
    def function(cls, fn: Callable[[int], Mapping[int, object]], description: str = "") -> "AcceptanceLaw":
        if not callable(fn):
            raise HSDInputError(f"fn: expected a callable, got {fn!r}")
        return cls(fn, description or getattr(fn, "__name__", "function"))

    def accepted(self, b: int, conv: Callable = None) -> dict:
        """Validated ``{accepted: probability}`` for a batch of ``b`` tokens (converted by ``conv``)."""
        conv = conv or _exact
        key = (b, conv)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        raw = self._fn(b)
        if not isinstance(raw, Mapping):
            raise HSDInputError(f"acceptance law ({self.description}) for b={b}: expected a mapping, got {raw!r}")
        out = {}
        for j, p in raw.items():
            j = _check_int(j, f"acceptance law b={b}: accepted count", 0)
            if j > b:
                raise HSDInputError(f"acceptance law ({self.description}) for b={b}: accepted count {j} > b")
            p = conv(p, f"acceptance law b={b}: P({j})")
            _check_range(p, f"acceptance law b={b}: P({j})", 0, 1)
            out[j] = out.get(j, 0) + p
        numeric = all(_is_number(p) for p in out.values())
        if numeric and self.alpha is None:
            total = sum(out.values())
            if (conv is _float and abs(total - 1) > 1e-9) or (conv is not _float and total != 1):
                raise HSDInputError(f"acceptance law ({self.description}) for b={b}: probabilities sum to {total}, not 1")
        self._cache[key] = out
        return out


def as_acceptance_law(spec: object, name: str = "acceptance") -> AcceptanceLaw:
    """An :class:`AcceptanceLaw` from an acceptance rate (token-wise), a ``{b: {j: p}}`` table, a
    callable ``b -> {j: p}`` or an AcceptanceLaw."""
    if isinstance(spec, AcceptanceLaw):
        return spec
    try:
        if isinstance(spec, Mapping):
            return AcceptanceLaw.table(spec)
        if callable(spec) and not isinstance(spec, sp.Basic):
            return AcceptanceLaw.function(spec)
        return AcceptanceLaw.tokenwise(spec)
    except HSDInputError as exc:
        raise HSDInputError(f"{name}: {exc}") from None


def level_tables(yields: Mapping[int, object], t_max: int, zero=Fraction(0), one=Fraction(1)):
    """Expected requests and exact-hit probabilities of one level's buffer chain.

    ``yields`` maps the number of tokens one verify call appends (accepted + 1, ``>= 1``) to its
    probability.  Returns ``(h, p)`` with, for ``d = 0..t_max``, ``h[d]`` = expected number of verify
    calls until the buffer holds ``>= d`` tokens and ``p[d]`` = probability it ever holds exactly ``d``
    (so ``1 - p[T]`` is the probability of a surplus at threshold ``T``)::

        h[0] = 0,  h[d] = 1 + sum_y P(y) h[max(d - y, 0)]
        p[0] = 1,  p[d] = sum_{y <= d} P(y) p[d - y]

    >>> level_tables({1: Fraction(1, 2), 2: Fraction(1, 2)}, 2)
    ([Fraction(0, 1), Fraction(1, 1), Fraction(3, 2)], [Fraction(1, 1), Fraction(1, 2), Fraction(3, 4)])
    """
    h, p = [zero], [one]
    for d in range(1, t_max + 1):
        hd, pd = one, zero
        for y, q in yields.items():
            hd = hd + q * h[max(d - y, 0)]
            if y <= d:
                pd = pd + q * p[d - y]
        h.append(hd)
        p.append(pd)
    return h, p
