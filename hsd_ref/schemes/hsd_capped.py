"""HSD with capped branch resampling (Zhou et al. 2025, "Overcoming Joint Intractability with
Lossless Hierarchical Speculative Decoding", arXiv 2601.05724, Alg. 2, eqs. 16-20).

Implemented from the paper's equations on *joint* masses, not through :mod:`.block`:

* joint prefix masses ``P_t = prod_{j<=t} p_j(x_j)``, ``Q_t = prod_{j<=t} q_j(x_j)``, ratio
  ``r_t = P_t / Q_t``;
* capped prefix ratio (eq. 16): ``r*(X_{1:t}) = r_t / max(1, r_1, ..., r_{t-1})``;
* capped branch divergences over the children ``x`` of ``X_{1:t}`` (eqs. 17-18), written with masses
  so that a child of draft probability 0 needs no infinite ratio
  (``q(X_{1:t}, x) * r*(X_{1:t}, x) = P_t p_{t+1}(x) / M_t`` with ``M_t = max(1, r_1, ..., r_t)``)::

      D*(p, q | X_{1:t}) = sum_x max(P_t p_{t+1}(x) / M_t - Q_t q_{t+1}(x), 0)
      D*(q, p | X_{1:t}) = sum_x max(Q_t q_{t+1}(x) - P_t p_{t+1}(x) / M_t, 0)

* acceptance (eq. 19): ``h_t = D*(p,q) / D*(q,p)`` for ``t < k`` and ``h_k = min(r*(X_{1:k}), 1)``;
* capped residual (eq. 20): ``P*_res(x | X_{1:t}) = max(P_t p_{t+1}(x) / M_t - Q_t q_{t+1}(x), 0) / D*(p, q | X_{1:t})``;
* the same backward scan as block verification.

Per draft, this equals block verification exactly (papers.md §3.4; ``tests/ref`` asserts it with
``==``).  A drafted token of draft probability 0 (or id -1) ends the usable draft: every ``h`` from
there on is 0.  ``D*(q, p) = 0`` means the level is reached with probability 0; ``h = 1`` guards it.

Lossless: proofs/coq/HsdCapped.v ``hsd_capped_lossless`` (via ``hsd_eq_block``: the per-draft equality with
block verification).
"""

from __future__ import annotations

from fractions import Fraction

from ..scheme import PLACEHOLDER, Plan, SingleDraftScheme, residual_or_target


def joint_masses(target_probs, draft_probs, draft_tokens) -> tuple[list[Fraction], list[Fraction], int]:
    """``P_0..P_m``, ``Q_0..Q_m`` along the draft, and ``m``: the number of usable draft tokens
    (the draft is cut before the first token of draft probability 0 or id -1)."""
    P, Q = [Fraction(1)], [Fraction(1)]
    for i, x in enumerate(draft_tokens):
        if x == PLACEHOLDER or draft_probs[i][x] == 0:
            break
        P.append(P[-1] * target_probs[i][x])
        Q.append(Q[-1] * draft_probs[i][x])
    return P, Q, len(P) - 1


class HSDCapped(SingleDraftScheme):
    name = "hsd_capped"
    lossless = True
    theorem = "proofs/coq/HsdCapped.v: hsd_capped_lossless (via hsd_eq_block)"

    def final_acceptance(self, r_k: Fraction, running_max: Fraction) -> Fraction:
        """Eq. 19 at t = k: ``min(r*(X_{1:k}), 1)`` with the cap of the prefixes before k."""
        return min(r_k / running_max, Fraction(1))

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        k = len(draft_tokens)
        P, Q, m = joint_masses(target_probs, draft_probs, draft_tokens)
        caps = [Fraction(1)]  # caps[t] = M_t = max(1, r_1, ..., r_t)
        for t in range(1, m + 1):
            caps.append(max(caps[-1], P[t] / Q[t]))
        branch = []  # capped joint excess of each child of X_{1:t}
        chances = []
        for t in range(min(m, k - 1) + 1):
            capped_p = [P[t] * pv / caps[t] for pv in target_probs[t]]
            plus = tuple(max(a - Q[t] * qv, Fraction(0)) for a, qv in zip(capped_p, draft_probs[t]))
            minus = sum(max(Q[t] * qv - a, Fraction(0)) for a, qv in zip(capped_p, draft_probs[t]))
            branch.append(plus)
            if 1 <= t < k:
                chances.append(sum(plus) / minus if minus else Fraction(1))
        if m == k and k > 0:
            chances.append(self.final_acceptance(P[k] / Q[k], caps[k - 1]))
        chances += [Fraction(0)] * (k - len(chances))
        emit = tuple(
            residual_or_target(branch[t], target_probs[t]) if t < len(branch) else target_probs[t] for t in range(k)
        ) + (target_probs[k],)
        return Plan("backward", tuple(chances), emit)
