"""Latency model of one draft level whose length is a stopping time (hsd_ref.schemes.adaptive).

The i.i.d. model of :mod:`.leviathan` extended to a stopping rule.  Every drafted token is an
independent draw of a *token class* ``(w, a, s)``: with probability ``w`` the token has acceptance
chance ``a`` (token-wise verification: ``min(1, p(x) / q(x))``) and stop chance ``s`` (the rule stops
after it with that chance; ``ConfidenceStop``: ``[q(x) < threshold]``).  Before the first token the
rule stops with chance ``s_0`` (``at_start``).  At most ``k`` tokens; the rule is asked after tokens
``1..k-1`` (after token ``k`` the draft ends anyway).  With

    A = sum w a,   S = sum w s,   C = sum w a s      (accepted; stopped; both)

the draft length ``L`` has ``P(L = 0) = s_0``, ``P(L = l) = (1 - s_0)(1 - S)^(l-1) S`` for
``1 <= l < k`` and ``P(L = k) = (1 - s_0)(1 - S)^(k-1)``.  Given ``L = l``, tokens ``1..l-1`` are
draws that did not stop (acceptance ``g = (A - C) / (1 - S)`` each), and token ``l`` one that
stopped (``h = C / S``) or, for ``l = k``, an unconditioned one (``A``); a round emits the accepted
prefix plus one token, so

    E[tokens | L = l] = 1 + sum_{i=1}^{l-1} g^i + g^(l-1) * (h if l < k else A).

A round costs ``l`` draft calls of one position and one target call scoring ``l + 1`` positions:
``cost(l) = l * c_draft(1) + c_target(l + 1)``, and the latency per token is
``E[cost(L)] / E[tokens]`` (a renewal-reward ratio, as in docs/latency.md).  Without a rule
(``S = 0``, ``s_0 = 0``) this is Leviathan's Eq. (1) with ``alpha = A``.

The model is exact for context-free models with token-wise verification (every drafted token then
is such an independent draw): ``tests/ref/test_latency_adaptive.py`` checks it against the exact
law of ``AdaptiveLength`` (``joint_law`` and ``length_law``) in Fractions.  Block verification
accepts at least as much (Sun et al.), so the token-wise figure is a bound for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..exact import HSDInputError
from .costs import as_cost_curve
from .numeric import _check_range, _exact, _length

__all__ = ["AdaptiveRound", "adaptive_round", "adaptive_latency", "token_classes"]


@dataclass(frozen=True)
class AdaptiveRound:
    """One round's ``length_law`` ``{l: P(L = l)}`` and ``expected_tokens`` (accepted prefix + 1)."""

    length_law: dict[int, Fraction]
    expected_tokens: Fraction

    @property
    def expected_length(self) -> Fraction:
        return sum((l * p for l, p in self.length_law.items()), Fraction(0))


def _classes(classes: Sequence[Sequence[object]]) -> list[tuple[Fraction, Fraction, Fraction]]:
    out = []
    for i, c in enumerate(classes):
        if not isinstance(c, (tuple, list)) or len(c) != 3:
            raise HSDInputError(f"classes[{i}]: expected (weight, accept, stop), got {c!r}")
        w, a, s = (_exact(x, f"classes[{i}]") for x in c)
        for name, v in (("weight", w), ("accept", a), ("stop", s)):
            _check_range(v, f"classes[{i}] {name}", 0, 1)
        out.append((w, a, s))
    total = sum((w for w, _, _ in out), Fraction(0))
    if total != 1:
        raise HSDInputError(f"classes: the weights sum to {total}, not 1")
    return out


def adaptive_round(classes: Sequence[Sequence[object]], k: int, at_start: object = 0) -> AdaptiveRound:
    """The round of the module docstring: ``classes`` ``[(w, a, s), ...]`` (weights summing to 1),
    at most ``k`` tokens, ``at_start`` = ``s_0``."""
    cl = _classes(classes)
    k = _length(k)
    if not isinstance(k, int):
        raise HSDInputError(f"k: expected an int, got {k!r}")
    s0 = _exact(at_start, "at_start")
    _check_range(s0, "at_start", 0, 1)
    if k == 0:  # nothing is drafted: one target token
        return AdaptiveRound({0: Fraction(1)}, Fraction(1))
    A = sum((w * a for w, a, _ in cl), Fraction(0))
    S = sum((w * s for w, _, s in cl), Fraction(0))
    C = sum((w * a * s for w, a, s in cl), Fraction(0))
    g = (A - C) / (1 - S) if S != 1 else Fraction(0)  # acceptance of a token that did not stop
    h = C / S if S else Fraction(0)  # ... of one that stopped
    law: dict[int, Fraction] = {0: s0} if s0 else {}
    tokens = s0  # L = 0: one target token
    for l in range(1, k + 1):
        p = (1 - s0) * (1 - S) ** (l - 1) * (S if l < k else 1)
        if not p:
            continue
        law[l] = p
        tail = h if l < k else A
        tokens += p * (1 + sum((g**i for i in range(1, l)), Fraction(0)) + g ** (l - 1) * tail)
    return AdaptiveRound(law, tokens)


def adaptive_latency(classes: Sequence[Sequence[object]], k: int, draft_cost: object, target_cost: object, at_start: object = 0) -> Fraction:
    """Latency per token (units of the cost curves) of the round of :func:`adaptive_round`:
    ``E[L c_draft(1) + c_target(L + 1)] / E[tokens]``.  ``draft_cost`` / ``target_cost``: anything
    :func:`hsd_ref.latency.as_cost_curve` takes (a number: a constant cost per call)."""
    rnd = adaptive_round(classes, k, at_start)
    cd, ct = as_cost_curve(draft_cost, "draft_cost"), as_cost_curve(target_cost, "target_cost")
    cost = sum((p * (l * cd(1) + ct(l + 1)) for l, p in rnd.length_law.items()), Fraction(0))
    return cost / rnd.expected_tokens


def token_classes(p_row: Sequence[object], q_row: Sequence[object], stop) -> list[tuple[Fraction, Fraction, Fraction]]:
    """The token classes of a context-free pair with token-wise verification: for each id ``x`` with
    ``q(x) > 0``, ``(q(x), min(1, p(x) / q(x)), stop(x, q(x)))``; ``stop`` returns the rule's chance."""
    if len(p_row) != len(q_row):
        raise HSDInputError(f"p_row: {len(p_row)} entries, q_row {len(q_row)}")
    out = []
    for x, (p, q) in enumerate(zip(p_row, q_row)):
        p, q = _exact(p, f"p_row[{x}]"), _exact(q, f"q_row[{x}]")
        if q:
            out.append((q, min(Fraction(1), p / q), _exact(stop(x, q), f"stop({x})")))
    return out
