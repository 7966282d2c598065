"""Greedy verification, batched: accept drafts while they equal the target's argmax.

Exact twin: :mod:`hsd_ref.schemes.greedy`.  The recovered (or bonus) token is the target's argmax at
the first mismatch; ties go to the lowest id (``torch.argmax`` returns the first maximal index, as
``hsd_ref.exact.argmax`` does).  Needs no draws (``draws`` is [B, 0]) and ignores ``draft_probs``
(which may be ``None``).  The placeholder -1 never equals an argmax, so it is rejected.

Lossless (with respect to the argmax model): proofs/coq/SpecLossless.v ``spec_decoding_lossless``
on point masses.
"""

from __future__ import annotations

import torch

from . import VerifyOutput, assemble_rows

__all__ = ["greedy", "greedy_loop"]

NAME = "greedy"


def greedy(target_probs: torch.Tensor, draft_probs: torch.Tensor | None, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, K+1, V], draft_tokens [B, K] int64; draft_probs and draws
    are not used."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    best = target_probs.argmax(dim=-1)  # [B, K+1], first maximal id
    match = draft_tokens == best[:, :K]  # [B, K]
    num_accepted = match.to(torch.int64).cumprod(dim=1).sum(dim=1)  # [B]
    emitted = best.gather(1, num_accepted.unsqueeze(1)).squeeze(1)  # [B]
    return VerifyOutput(assemble_rows(draft_tokens, num_accepted, emitted), num_accepted, None)


def greedy_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor | None, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`greedy`; the argmax is written out as "first id whose value is the max"."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    tokens = torch.full((B, K + 1), -1, dtype=torch.int64, device=target_probs.device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=target_probs.device)

    def first_argmax(row: torch.Tensor) -> int:
        return int(torch.nonzero(row == row.max())[0, 0])

    for b in range(B):
        n = 0
        while n < K and int(draft_tokens[b, n]) == first_argmax(target_probs[b, n]):
            tokens[b, n] = draft_tokens[b, n]
            n += 1
        tokens[b, n] = first_argmax(target_probs[b, n])
        num_accepted[b] = n
    return VerifyOutput(tokens, num_accepted, None)
