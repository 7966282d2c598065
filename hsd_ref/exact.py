"""Exact distributions over a finite vocabulary, in ``fractions.Fraction`` only.

A distribution is a tuple of ``Fraction`` indexed by token id.  Everything in ``hsd_ref`` computes
inside ``Fraction`` and never degrades to floats: ``Fraction(1, 3) + 0.5`` silently becomes a float in
Python, so every public entry point validates its inputs with :func:`as_dist` and refuses floats.
Conversion from floats is explicit (:func:`from_floats`).

Sampling convention (shared with ``hsd_fast``, written down once here):

* an acceptance test with chance ``a`` and uniform ``u`` in [0, 1) accepts iff ``u < a``, so it
  accepts with probability exactly ``a``;
* a token is drawn from a distribution ``d`` with one uniform ``u`` by inverse CDF in token-id order:
  the smallest ``v`` with ``u < d[0] + ... + d[v]``.

>>> as_dist((Fraction(1, 3), Fraction(2, 3)), "p")
(Fraction(1, 3), Fraction(2, 3))
>>> sample_index((Fraction(1, 3), Fraction(2, 3)), Fraction(1, 3))
1
"""

from __future__ import annotations

import numbers
from fractions import Fraction
from typing import Iterable, Sequence

__all__ = [
    "Dist",
    "HSDInputError",
    "as_dist",
    "as_list",
    "as_fraction",
    "from_floats",
    "normalize",
    "positive_part",
    "sample_index",
    "argmax",
    "one_hot",
    "tv_distance",
]

Dist = tuple[Fraction, ...]


class HSDInputError(ValueError):
    """Bad input to an exact routine; the message names the offending argument."""


def as_fraction(x: object, name: str) -> Fraction:
    """Return ``x`` as a Fraction; refuse floats, bools, strings and other non-rationals."""
    if isinstance(x, bool):
        raise HSDInputError(f"{name}: expected an exact Fraction or int, got bool {x!r}")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        raise HSDInputError(
            f"{name}: got the float {x!r}; hsd_ref is exact and refuses floats "
            "(convert explicitly with hsd_ref.from_floats(..., max_denominator=...))"
        )
    if isinstance(x, numbers.Rational):
        return Fraction(x.numerator, x.denominator)
    raise HSDInputError(f"{name}: expected an exact Fraction or int, got {type(x).__name__} {x!r}")


def as_list(obj: object, name: str, what: str) -> list:
    """``obj`` as a list (a str or bytes is refused: it is never a sequence of ids or rows)."""
    if isinstance(obj, (str, bytes)):
        raise HSDInputError(f"{name}: expected {what}, got {type(obj).__name__}")
    try:
        return list(obj)  # type: ignore[call-overload]
    except TypeError:
        raise HSDInputError(f"{name}: expected {what}, got {obj!r}") from None


def as_dist(values: Iterable[object], name: str, vocab_size: int | None = None) -> Dist:
    """Validate and return ``values`` as an exact probability distribution.

    Raises :class:`HSDInputError` (a ``ValueError``) naming ``name`` if an entry is not exact, is
    negative, the entries do not sum to exactly 1, the vector is empty, or its length differs from
    ``vocab_size``.
    """
    if isinstance(values, (str, bytes)):
        raise HSDInputError(f"{name}: expected a sequence of probabilities, got {type(values).__name__}")
    try:
        items = tuple(values)
    except TypeError:
        raise HSDInputError(f"{name}: expected a sequence of probabilities, got {values!r}") from None
    dist = tuple(as_fraction(x, f"{name}[{i}]") for i, x in enumerate(items))
    if not dist:
        raise HSDInputError(f"{name}: empty distribution (the vocabulary must have at least one token)")
    if vocab_size is not None and len(dist) != vocab_size:
        raise HSDInputError(f"{name}: has length {len(dist)}, expected vocab_size={vocab_size}")
    for i, x in enumerate(dist):
        if x < 0:
            raise HSDInputError(f"{name}[{i}] = {x} is negative")
    total = sum(dist)
    if total != 1:
        raise HSDInputError(f"{name}: sums to {total}, not 1")
    return dist


def from_floats(values: Sequence[float], *, max_denominator: int) -> Dist:
    """Convert float probabilities to an exact distribution.

    Each entry is rounded with ``Fraction.limit_denominator(max_denominator)``; the rounded vector is
    then renormalised exactly so that it sums to 1.  Negative, NaN or infinite entries and an all-zero
    vector raise ``ValueError``.

    >>> from_floats([0.25, 0.75], max_denominator=100)
    (Fraction(1, 4), Fraction(3, 4))
    """
    if isinstance(max_denominator, bool) or not isinstance(max_denominator, int) or max_denominator < 1:
        raise HSDInputError(f"max_denominator: must be a positive int, got {max_denominator!r}")
    rounded = []
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise HSDInputError(f"values[{i}]: expected a real number, got {x!r}")
        xf = float(x)
        if xf != xf or xf in (float("inf"), float("-inf")):
            raise HSDInputError(f"values[{i}] = {x!r} is not finite")
        if xf < 0:
            raise HSDInputError(f"values[{i}] = {x!r} is negative")
        rounded.append(Fraction(xf).limit_denominator(max_denominator))
    if not rounded:
        raise HSDInputError("values: empty distribution")
    total = sum(rounded)
    if total == 0:
        raise HSDInputError("values: all entries round to 0; raise max_denominator")
    return tuple(x / total for x in rounded)


def normalize(weights: Sequence[Fraction]) -> Dist | None:
    """Exact renormalisation of non-negative weights; ``None`` when they sum to 0."""
    total = sum(weights, Fraction(0))
    if total == 0:
        return None
    return tuple(Fraction(w) / total for w in weights)


def positive_part(a: Sequence[Fraction], b: Sequence[Fraction], scale: Fraction = Fraction(1)) -> Dist:
    """Elementwise ``max(scale * a - b, 0)`` (unnormalised)."""
    return tuple(max(scale * x - y, Fraction(0)) for x, y in zip(a, b))


def sample_index(dist: Sequence[Fraction], u: Fraction) -> int:
    """Inverse-CDF draw: the smallest ``v`` with ``u < dist[0] + ... + dist[v]``.

    ``u`` must be an exact Fraction or int in [0, 1) (floats are refused, as everywhere in
    ``hsd_ref``; :func:`hsd_ref.scheme.check_draws` converts float draws explicitly).  Tokens of
    probability 0 are never returned.
    """
    u = as_fraction(u, "u")
    if not 0 <= u < 1:
        raise HSDInputError(f"u: the draw {u} is outside [0, 1)")
    acc = Fraction(0)
    for v, x in enumerate(dist):
        acc += x
        if u < acc:
            return v
    raise HSDInputError(f"dist: total mass {acc} <= u = {u}, so no token can be drawn (the entries must sum to 1)")


def argmax(dist: Sequence[Fraction]) -> int:
    """Index of the largest entry; ties go to the lowest id."""
    best = 0
    for v in range(1, len(dist)):
        if dist[v] > dist[best]:
            best = v
    return best


def one_hot(index: int, vocab_size: int) -> Dist:
    """The point mass on ``index``, an int in ``range(vocab_size)``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < vocab_size:
        raise HSDInputError(f"index: expected an int token id in [0, {vocab_size}), got {index!r}")
    return tuple(Fraction(1) if v == index else Fraction(0) for v in range(vocab_size))


def tv_distance(law_a: dict, law_b: dict) -> Fraction:
    """Total-variation distance between two laws given as ``{outcome: Fraction}`` mappings."""
    keys = set(law_a) | set(law_b)
    return sum((abs(law_a.get(x, Fraction(0)) - law_b.get(x, Fraction(0))) for x in keys), Fraction(0)) / 2
