"""Number handling of the latency model: exact (Fraction / sympy) or float, and the range checks.

The exact functions take ints, Fractions or sympy expressions and refuse floats (:class:`FloatRefused`,
after ``Fraction + float`` silently degrading to a float); the float twins convert with :func:`_float`.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import sympy as sp

from ..exact import HSDInputError


class FloatRefused(HSDInputError):
    """An exact routine was given a float (the optimiser then falls back to float arithmetic)."""


def _exact(x: object, name: str):
    """``x`` as a Fraction (rational input) or a sympy expression (symbolic input); floats refused."""
    if isinstance(x, bool):
        raise HSDInputError(f"{name}: expected a number, got bool {x!r}")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        raise FloatRefused(
            f"{name}: got the float {x!r}; the exact latency functions refuse floats "
            "(pass Fraction('0.39') or use the f-prefixed float twin)"
        )
    if isinstance(x, sp.Basic):
        if x.is_Rational:
            return Fraction(int(x.p), int(x.q))
        if x.has(sp.Float):
            raise FloatRefused(f"{name}: got {x!r}, which contains a sympy Float; pass Rationals")
        return x
    if isinstance(x, numbers.Rational):
        return Fraction(x.numerator, x.denominator)
    raise HSDInputError(f"{name}: expected an int, Fraction or sympy expression, got {type(x).__name__} {x!r}")


def _float(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, sp.Basic)):
        raise HSDInputError(f"{name}: expected a real number, got {x!r}")
    try:
        xf = float(x)
    except TypeError:
        raise HSDInputError(f"{name}: expected a real number, got the expression {x!r}") from None
    if not math.isfinite(xf):
        raise HSDInputError(f"{name}: {x!r} is not finite")
    return xf


def _is_number(x) -> bool:
    return not (isinstance(x, sp.Basic) and x.free_symbols)


def _check_range(x, name: str, lo=None, hi=None, *, lo_open: bool = False) -> None:
    """Range check, skipped for symbolic values."""
    if not _is_number(x):
        return
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise HSDInputError(f"{name} = {x} is out of range (must be {'>' if lo_open else '>='} {lo})")
    if hi is not None and x > hi:
        raise HSDInputError(f"{name} = {x} is out of range (must be <= {hi})")


def _finish(x):
    """Fraction for a rational result, sympy expression otherwise."""
    if isinstance(x, sp.Basic) and x.is_Rational:
        return Fraction(int(x.p), int(x.q))
    return x


def _check_int(x: object, name: str, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, sp.Integer)):
        raise HSDInputError(f"{name}: expected an int >= {lo}, got {x!r}")
    x = int(x)
    if x < lo:
        raise HSDInputError(f"{name} = {x} is out of range (must be >= {lo})")
    return x


def _length(k: object, name: str = "k"):
    """A draft length: an int >= 0 or a sympy Symbol (for identities over all k)."""
    if isinstance(k, sp.Symbol):
        return k
    return _check_int(k, name, 0)


def _total(batch: int, m):
    """Positions scored by one call of ``batch`` rows that score ``m`` each (``m`` itself at batch 1)."""
    return m if batch == 1 else batch * m
