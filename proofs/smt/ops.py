"""A small numeric interface, so that one encoding of a scheme runs on exact Fractions and on z3 terms.

hsd_ref's kernels use Python ``min``/``max``/``if`` on Fractions, which cannot build a z3 formula (a z3
comparison has no truth value).  Each encoding in :mod:`proofs.smt.encode` is therefore written once
against this interface:

* :class:`FracOps` evaluates it with Fractions and Python control flow -- the cross-check tests compare
  the result with hsd_ref's own ``plan``/``outcome_law`` with ``==``;
* :class:`Z3Ops` builds the z3 term of the same computation (``If`` for every branch), which the
  proofs in :mod:`proofs.smt.proofs` reason about.

Branches take thunks (``ite(cond, lambda: a, lambda: b)``) so that the exact evaluation never computes
the branch that is not taken (``p / q`` when ``q == 0``).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

import z3

__all__ = ["FracOps", "Z3Ops"]


class FracOps:
    """Exact evaluation: values are Fractions, conditions Python bools."""

    name = "fraction"

    def num(self, x) -> Fraction:
        return Fraction(x)

    def ite(self, cond: bool, then: Callable, other: Callable):
        return then() if cond else other()

    def is_zero(self, x) -> bool:
        return x == 0

    def lt(self, a, b) -> bool:
        return a < b

    def min(self, a, b):
        return min(a, b)  # Python: a unless b < a

    def max(self, a, b):
        return max(a, b)  # Python: a unless b > a

    def And(self, *cs) -> bool:
        return all(cs)

    def Or(self, *cs) -> bool:
        return any(cs)

    def Not(self, c) -> bool:
        return not c

    def power(self, x, n: int):
        return x**n


class Z3Ops:
    """Symbolic evaluation: values are z3 real terms, conditions z3 booleans (Python bools are folded)."""

    name = "z3"

    def num(self, x) -> z3.ArithRef:
        f = Fraction(x)
        return z3.RealVal(f"{f.numerator}/{f.denominator}")

    def ite(self, cond, then: Callable, other: Callable):
        if isinstance(cond, bool):
            return then() if cond else other()
        a, b = then(), other()
        return z3.If(cond, self._real(a), self._real(b))

    def _real(self, x):
        return x if isinstance(x, z3.ExprRef) else self.num(x)

    @staticmethod
    def _const(x):
        """The value of a numeral (Python or z3), else None: conditions on constants are folded."""
        if isinstance(x, (int, Fraction)):
            return Fraction(x)
        if isinstance(x, z3.ExprRef) and z3.is_rational_value(x):
            return Fraction(x.numerator_as_long(), x.denominator_as_long())
        return None

    def is_zero(self, x):
        c = self._const(x)
        if c is not None:
            return c == 0
        return self._real(x) == 0

    def lt(self, a, b):
        ca, cb = self._const(a), self._const(b)
        if ca is not None and cb is not None:
            return ca < cb
        return self._real(a) < self._real(b)

    def min(self, a, b):
        return self.ite(self.lt(b, a), lambda: b, lambda: a)

    def max(self, a, b):
        return self.ite(self.lt(a, b), lambda: b, lambda: a)

    def And(self, *cs):
        if all(isinstance(c, bool) for c in cs):
            return all(cs)
        cs = [c for c in cs if c is not True]
        if any(c is False for c in cs):
            return False
        return z3.And(*cs) if len(cs) > 1 else cs[0]

    def Or(self, *cs):
        if all(isinstance(c, bool) for c in cs):
            return any(cs)
        cs = [c for c in cs if c is not False]
        if any(c is True for c in cs):
            return True
        return z3.Or(*cs) if len(cs) > 1 else cs[0]

    def Not(self, c):
        return (not c) if isinstance(c, bool) else z3.Not(c)

    def power(self, x, n: int):
        out = self.num(1)
        for _ in range(n):
            out = out * x
        return out
