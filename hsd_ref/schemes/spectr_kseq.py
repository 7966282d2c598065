"""SpecTr K-SEQ over N i.i.d. drafts (Sun, Suresh, Ro, Beirami, Jain, Yu; NeurIPS 2023, arXiv 2310.15141).

papers.md §6.  At a node with target row ``P``, draft row ``q`` and ``m`` candidates::

    beta(rho) = sum_x min(q(x), P(x) / rho)
    rho       = upper end of [1, m] after exactly 30 halvings of the bisection interval for the
                feasibility condition 1 - (1 - beta(rho))^m <= rho * beta(rho)
                (feasible at rho = m by Bernoulli's inequality; the upper end stays feasible; m = 1: rho = 1)
    accept candidate x with chance min(1, P(x) / (rho q(x))) in slot order, P NOT updated; first wins
    none accepted: p_res(x) = [P(x) - min(q(x), P(x)/rho) (1 - (1-beta)^m) / beta] / (1 - beta)^m

``beta = 0`` gives ``p_res = P``; ``beta = 1`` (only when ``q == P`` and ``rho = 1``, where "none
accepted" has probability 0) also falls back to ``P``.  Any feasible rational ``rho`` keeps K-SEQ exact:
feasibility is exactly ``p_res >= 0``, and the accepted mass of ``x`` plus the residual mass is ``P(x)``.
The exact rational bisection fixes ``rho`` bit for bit, so the float engine can match it.  Tree walk,
draw layout and exact law: :mod:`hsd_ref.multidraft`.

Lossless: covered by the z3 fixed-vocabulary proof ``proofs/smt`` (``spectr_kseq``) and by exact
enumeration in ``tests/ref/test_multidraft.py``.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..exact import Dist, HSDInputError
from ..multidraft import MultiDraftScheme, NodeDecision, ratio_chance

__all__ = ["SpecTrKSeq", "kseq_beta", "kseq_feasible", "kseq_rho", "kseq_residual", "RHO_HALVINGS"]

RHO_HALVINGS = 30


def kseq_beta(p_row: Dist, q_row: Dist, rho: Fraction) -> Fraction:
    """``sum_x min(q(x), P(x) / rho)``."""
    return sum((min(qx, px / rho) for px, qx in zip(p_row, q_row)), Fraction(0))


def kseq_feasible(p_row: Dist, q_row: Dist, m: int, rho: Fraction) -> bool:
    """``1 - (1 - beta(rho))^m <= rho * beta(rho)``."""
    beta = kseq_beta(p_row, q_row, rho)
    return 1 - (1 - beta) ** m <= rho * beta


def kseq_rho(p_row: Dist, q_row: Dist, m: int, halvings: int = RHO_HALVINGS) -> Fraction:
    """The upper end of ``[1, m]`` after ``halvings`` bisection steps on the feasibility condition.

    The same test as :func:`kseq_feasible`, in integers: with ``P = a / L``, ``q = c / L`` and
    ``rho = R / D`` (``D = 2 ** halvings``), ``S = sum_x min(c_x R, a_x D) = beta L R`` and the
    condition reads ``D ((L R)^m - (L R - S)^m) <= R S (L R)^(m - 1)``.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise HSDInputError(f"m: expected an int number of candidates >= 1, got {m!r}")
    if isinstance(halvings, bool) or not isinstance(halvings, int) or halvings < 0:
        raise HSDInputError(f"halvings: expected an int >= 0, got {halvings!r}")
    if m == 1:
        return Fraction(1)
    big_l = math.lcm(*(x.denominator for x in p_row), *(x.denominator for x in q_row))
    a = [x.numerator * (big_l // x.denominator) for x in p_row]
    c = [x.numerator * (big_l // x.denominator) for x in q_row]
    den = 1 << halvings
    lo, hi = den, m * den  # rho = lo / den, hi / den
    for _ in range(halvings):
        mid = (lo + hi) // 2  # exact: lo and hi stay multiples of 2 ** (steps left)
        s = sum(min(cx * mid, ax * den) for ax, cx in zip(a, c))
        lr = big_l * mid
        if den * (lr**m - (lr - s) ** m) <= mid * s * lr ** (m - 1):
            hi = mid
        else:
            lo = mid
    return Fraction(hi, den)


def kseq_residual(p_row: Dist, q_row: Dist, m: int, rho: Fraction) -> Dist:
    """``p_res`` (the emitted law when all ``m`` candidates are rejected)."""
    beta = kseq_beta(p_row, q_row, rho)
    none = (1 - beta) ** m
    if beta == 0 or none == 0:
        return p_row
    keep = (1 - none) / beta
    return tuple((px - min(qx, px / rho) * keep) / none for px, qx in zip(p_row, q_row))


class SpecTrKSeq(MultiDraftScheme):
    name = "spectr_kseq"
    lossless = True
    theorem = "proofs/smt: spectr_kseq (z3, fixed vocabulary) + exact enumeration (tests/ref/test_multidraft.py)"
    replacement = True

    def prepare(self, p_row, q_row, m):
        rho = kseq_rho(p_row, q_row, m)
        return rho, kseq_residual(p_row, q_row, m, rho), {}

    def decide(self, state, p_row, q_row, tokens) -> NodeDecision:
        rho, residual, chance = state  # chance: per-token cache of min(1, P(x) / (rho q(x)))
        for x in tokens:
            if x not in chance:
                chance[x] = ratio_chance(p_row, q_row, x, rho)
        return NodeDecision(tuple(chance[x] for x in tokens), residual)
