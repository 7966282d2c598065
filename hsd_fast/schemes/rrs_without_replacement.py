"""Recursive rejection sampling without replacement (RSD, Jeon et al. 2024; Sequoia), batched.

Exact twin: :mod:`hsd_ref.schemes.rrs_without_replacement`.  The node rule is RRS
(:mod:`.rrs`) except that after rejecting ``x`` also ``q <- norm(q with q(x) = 0)``, so the next
candidate is checked against the law it was drawn from; once q's support is exhausted ``q`` is the
zero vector (chance 0, ``P`` unchanged).  The drafting process this pairs with draws the ``m`` next
tokens of the drafts sharing a node sequentially without replacement; drafts left over after the
support is exhausted carry the placeholder -1 from there on (never accepted).

Lossless: z3 fixed-vocabulary proof ``proofs/smt`` (``rrs_without_replacement``) and exact enumeration
in hsd_ref.
"""

from __future__ import annotations

import functools

import torch

from . import VerifyOutput, tie_tolerance, tree_walk, tree_walk_loop
from .rrs import rrs_node, rrs_node_loop

__all__ = ["rrs_without_replacement", "rrs_without_replacement_loop"]

NAME = "rrs_without_replacement"


def rrs_without_replacement(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, N, K+1, V], draft_probs [B, N, K, V], draft_tokens
    [B, N, K] int64, draws [B, K*N+1] float64."""
    return tree_walk(target_probs, draft_probs, draft_tokens, draws, functools.partial(rrs_node, without_replacement=True))


def rrs_without_replacement_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`rrs_without_replacement`."""
    tol = tie_tolerance(target_probs.dtype, 4 * draft_tokens.shape[1] + 8)
    return tree_walk_loop(target_probs, draft_probs, draft_tokens, draws, lambda P, q, toks, u: rrs_node_loop(P, q, toks, u, True, tol))
