"""Token-wise speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023), batched.

Exact twin: :mod:`hsd_ref.schemes.tokenwise`.  Position ``i`` is accepted with chance
``min(1, p_i(x_i) / q_i(x_i))`` against ``draws[:, i - 1]``; the first rejection stops the scan and the
recovered token is drawn with ``draws[:, K]`` from ``norm(max(p - q, 0))`` at that position, or from
the target row itself when that residual is empty (``p == q``).  All ``K`` accepted: the bonus token
is drawn from ``p_{K+1}``.  A drafted token of draft probability 0, or the placeholder -1, is rejected.

No tie snapping is needed: ``p - q`` of two floats is positive iff ``p > q``, and ``p / q`` of equal
floats is exactly 1.

Lossless: proofs/coq/SpecLossless.v ``spec_decoding_lossless``.
"""

from __future__ import annotations

import torch

from . import (
    VerifyOutput,
    assemble_rows,
    gather_token_probs,
    positive_excess,
    ratio_chance,
    sample_inverse_cdf,
    sample_inverse_cdf_row,
)

__all__ = ["tokenwise", "tokenwise_loop"]

NAME = "tokenwise"


def tokenwise(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, K+1, V], draft_probs [B, K, V], draft_tokens [B, K] int64,
    draws [B, K+1] float64."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    rows = torch.arange(B, device=target_probs.device)
    p_x = gather_token_probs(target_probs[:, :K], draft_tokens)  # [B, K]
    q_x = gather_token_probs(draft_probs, draft_tokens)  # [B, K]
    chance = ratio_chance(p_x, q_x)  # [B, K]
    accept = draws[:, :K] < chance.to(torch.float64)  # [B, K]
    num_accepted = accept.to(torch.int64).cumprod(dim=1).sum(dim=1)  # length of the leading run, [B]

    p_row = target_probs[rows, num_accepted]  # [B, V]: the row at the stopping position
    if K:
        q_row = draft_probs[rows, num_accepted.clamp(max=K - 1)]  # [B, V] (a copy)
        q_row = q_row.masked_fill((num_accepted == K).unsqueeze(1), 0)  # all accepted: max(p_{K+1} - 0, 0) is the bonus row itself
        weights = positive_excess(p_row, q_row)
    else:
        weights = p_row
    emitted = sample_inverse_cdf(weights, draws[:, K], fallback=p_row)  # empty residual: the target row
    return VerifyOutput(assemble_rows(draft_tokens, num_accepted, emitted), num_accepted, None)


def tokenwise_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`tokenwise`: one row at a time, one position at a time."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    tokens = torch.full((B, K + 1), -1, dtype=torch.int64, device=target_probs.device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=target_probs.device)
    for b in range(B):
        n = 0
        weights = target_probs[b, K]  # the bonus row unless a draft is rejected
        for i in range(K):
            x = int(draft_tokens[b, i])
            q_x = float(draft_probs[b, i, x]) if x >= 0 else 0.0
            chance = min(1.0, float(target_probs[b, i, x] / draft_probs[b, i, x])) if q_x > 0 else 0.0
            if float(draws[b, i]) < chance:
                tokens[b, i] = x
                n += 1
                continue
            residual = torch.clamp(target_probs[b, i] - draft_probs[b, i], min=0)
            weights = residual if float(residual.sum()) > 0 else target_probs[b, i]
            break
        tokens[b, n] = sample_inverse_cdf_row(weights, float(draws[b, K]))
        num_accepted[b] = n
    return VerifyOutput(tokens, num_accepted, None)
