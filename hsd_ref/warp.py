"""Exact sampling warps: the law ``hsd_fast.warp.Warp`` computes in float64, in ``Fraction``.

The order is the engine's (Hugging Face's logits-warper order): the allowed-id mask (every other id
gets probability 0), temperature, top-k (every id tied with the k-th largest value is kept), top-p
(descending by probability, ties in id order; an id is kept while the mass strictly before it is
``< top_p``), then renormalisation.  Temperature 0 is greedy: the point mass on the argmax of the
allowed ids, ties to the lowest id.

Only temperatures whose warp is rational are exact: ``0`` and ``1 / m`` for an integer ``m >= 1``
(``p ** (1 / T)`` is ``p ** m``).  Anything else is refused, so a law that cannot be computed
exactly is never returned as if it were.

>>> from fractions import Fraction as F
>>> warp_dist((F(1, 2), F(1, 4), F(1, 4)), temperature=F(1, 2))
(Fraction(2, 3), Fraction(1, 6), Fraction(1, 6))
>>> warp_dist((F(1, 2), F(1, 4), F(1, 4)), top_k=1)
(Fraction(1, 1), Fraction(0, 1), Fraction(0, 1))
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from .exact import Dist, HSDInputError, argmax, as_dist, one_hot
from .models import TableLM

__all__ = ["warp_dist", "warped_model"]


def _power(temperature: object) -> int | None:
    """``m`` with ``temperature == 1 / m``; ``None`` for greedy (0)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, Fraction)):
        raise HSDInputError(f"temperature: expected 0 or 1/m for an int m >= 1, got {temperature!r}")
    t = Fraction(temperature)
    if t == 0:
        return None
    if t < 0 or t.numerator != 1:
        raise HSDInputError(f"temperature: only 0 and 1/m (m an int >= 1) warp exactly, got {temperature!r}")
    return t.denominator


def warp_dist(
    dist: Sequence[Fraction],
    *,
    temperature: object = 1,
    top_k: int | None = None,
    top_p: object = None,
    allowed_ids: Sequence[int] | None = None,
) -> Dist:
    """The warped distribution of ``dist`` (module docstring), exactly."""
    d = as_dist(dist, "dist")
    V = len(d)
    m = _power(temperature)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise HSDInputError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    p_cut = None
    if top_p is not None:
        p_cut = Fraction(top_p)
        if not 0 < p_cut <= 1:
            raise HSDInputError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    w = list(d)
    if allowed_ids is not None:
        keep = set(allowed_ids)
        if not keep or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < V for i in keep):
            raise HSDInputError(f"allowed_ids: expected a non-empty set of ids in [0, {V}), got {allowed_ids!r}")
        w = [x if v in keep else Fraction(0) for v, x in enumerate(w)]
        if not any(w):
            raise HSDInputError("allowed_ids: every allowed id has probability 0")
    if m is None:
        return one_hot(argmax(w), V)
    w = [x**m for x in w]
    if top_k is not None and top_k < V:
        kth = sorted(w, reverse=True)[top_k - 1]
        w = [x if x >= kth else Fraction(0) for x in w]
    total = sum(w)
    w = [x / total for x in w]
    if p_cut is not None and p_cut < 1:
        order = sorted(range(V), key=lambda v: -w[v])  # stable: ties in id order
        before, kept = Fraction(0), set()
        for v in order:
            if before < p_cut:
                kept.add(v)
            before += w[v]
        w = [x if v in kept else Fraction(0) for v, x in enumerate(w)]
        total = sum(w)
        w = [x / total for x in w]
    return tuple(w)


def warped_model(model: TableLM, **warp) -> TableLM:
    """``model`` with every conditional passed through :func:`warp_dist` (same keyword arguments)."""
    V = model.vocab_size
    warp_dist((Fraction(1, V),) * V, **warp)  # validate the arguments now
    return model.warped(lambda d: warp_dist(d, **warp), "warp(" + ", ".join(f"{k}={v}" for k, v in sorted(warp.items())) + ")")
