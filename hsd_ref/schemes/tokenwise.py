"""Token-wise speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023).

Position ``i`` is accepted with chance ``min(1, p_i(x_i) / q_i(x_i))``; the first rejection stops the
scan and the recovered token is drawn from the residual ``norm(max(p - q, 0))`` at that position.
When all ``k`` drafts are accepted the bonus token is drawn from ``p_{k+1}``.

Degenerate cases: a drafted token with draft probability 0 (or the placeholder id -1) is rejected; an
empty residual (``p == q`` on the row, reached with probability 0) falls back to the target row;
``k = 0`` emits one token from ``p_1``.

Lossless: proofs/coq/SpecLossless.v ``spec_decoding_lossless`` (every vocabulary, draft length and
horizon).
"""

from __future__ import annotations

from fractions import Fraction

from ..exact import positive_part
from ..scheme import PLACEHOLDER, Plan, SingleDraftScheme, residual_or_target


def ratio_chance(p_x: Fraction, q_x: Fraction, lenience: Fraction = Fraction(1)) -> Fraction:
    """``min(1, p(x) / (lenience * q(x)))``; 0 when ``q(x) == 0`` (vLLM rejects such drafts)."""
    if q_x == 0:
        return Fraction(0)
    return min(Fraction(1), p_x / (lenience * q_x))


def tokenwise_chances(target_probs, draft_probs, draft_tokens, lenience: Fraction = Fraction(1)) -> tuple[Fraction, ...]:
    return tuple(
        Fraction(0) if x == PLACEHOLDER else ratio_chance(target_probs[i][x], draft_probs[i][x], lenience)
        for i, x in enumerate(draft_tokens)
    )


def tokenwise_residuals(target_probs, draft_probs, k: int):
    """Recovered-token law at each position ``j < k``, then the bonus law ``p_{k+1}``."""
    return tuple(
        residual_or_target(positive_part(target_probs[j], draft_probs[j]), target_probs[j]) for j in range(k)
    ) + (target_probs[k],)


class Tokenwise(SingleDraftScheme):
    name = "tokenwise"
    lossless = True
    theorem = "proofs/coq/SpecLossless.v: spec_decoding_lossless"

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        k = len(draft_tokens)
        return Plan(
            "forward",
            tokenwise_chances(target_probs, draft_probs, draft_tokens),
            tokenwise_residuals(target_probs, draft_probs, k),
        )
