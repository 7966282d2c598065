"""Block verification (Sun, Mendlovic, Leviathan, Aharoni, Ro, Beirami, Suresh; arXiv 2403.10444, Alg. 2).

With ``rho_i = p_i(x_i) / q_i(x_i)`` the clamped cumulative ratio follows the Lindley recursion
``pi_0 = 1, pi_i = min(1, pi_{i-1} * rho_i)``.  For ``i < k``::

    S_i = sum_v max(pi_i * p_{i+1}(v) - q_{i+1}(v), 0)      # next position's rows
    h_i = S_i / (S_i + 1 - pi_i)

and ``h_k = pi_k``.  ``tau`` is the largest ``i`` whose test ``eta_i < h_i`` succeeds (0 if none)
and the recovered token is drawn from ``norm(max(pi_tau * p_{tau+1} - q_{tau+1}, 0))``.

Degenerate cases: a drafted token of draft probability 0 (or id -1) sets ``pi = 0`` from there on,
which makes every later ``h`` zero; ``S_i + 1 - pi_i = 0`` means position ``i`` is reached with
probability 0, and ``h_i = 1`` is used as a guard; an empty residual falls back to the target row.

Lossless: proofs/coq/Block.v ``block_lossless``.
"""

from __future__ import annotations

from fractions import Fraction

from ..exact import positive_part
from ..scheme import PLACEHOLDER, Plan, SingleDraftScheme, residual_or_target


def clamped_ratios(target_probs, draft_probs, draft_tokens) -> list[Fraction]:
    """``[pi_0, pi_1, ..., pi_k]`` by the Lindley recursion."""
    pis = [Fraction(1)]
    for i, x in enumerate(draft_tokens):
        q_x = Fraction(0) if x == PLACEHOLDER else draft_probs[i][x]
        pis.append(Fraction(0) if q_x == 0 else min(Fraction(1), pis[-1] * target_probs[i][x] / q_x))
    return pis


class Block(SingleDraftScheme):
    name = "block"
    lossless = True
    theorem = "proofs/coq/Block.v: block_lossless"

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        k = len(draft_tokens)
        pis = clamped_ratios(target_probs, draft_probs, draft_tokens)
        excess = [positive_part(target_probs[j], draft_probs[j], pis[j]) for j in range(k)]
        chances = []
        for i in range(1, k + 1):
            if i == k:
                chances.append(pis[k])
                continue
            s_i = sum(excess[i])
            reach = s_i + 1 - pis[i]
            chances.append(s_i / reach if reach else Fraction(1))
        emit = tuple(residual_or_target(excess[j], target_probs[j]) for j in range(k)) + (target_probs[k],)
        return Plan("backward", tuple(chances), emit)
