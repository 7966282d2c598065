"""Recursive rejection sampling (RRS) with replacement over N i.i.d. drafts, batched.

SpecInfer's multi-step speculative sampling (Miao et al., ASPLOS 2024, Thm 4.2) with i.i.d. children
(Yang et al. 2024, "Multi-candidate speculative decoding").  Exact twin: :mod:`hsd_ref.schemes.rrs`;
tree walk and draw layout: :mod:`hsd_ref.multidraft` (:func:`hsd_fast.schemes.tree_walk` here).

At a node with target row ``P`` and draft row ``q`` the candidates are tried in slot order with
``draws[:, t*N + j]``: candidate ``x`` is accepted with chance ``min(1, P(x) / q(x))`` (0 for
``q(x) == 0`` or the placeholder -1); on rejection ``P <- norm(max(P - q, 0))`` (``P`` kept when that
is all zero) and ``q`` stays.  All rejected: the emitted token is drawn from the final ``P``.  The
without-replacement variant (:mod:`.rrs_without_replacement`) shares this node rule with one flag:
after rejecting ``x`` it also sets ``q <- norm(q with q(x) = 0)`` (the zero vector once q's support
is exhausted; the placeholder drops nothing).

Ties: an entry of ``P - q`` within ``tol`` (relative to ``P``) of 0 counts as 0,
``tol = tie_tolerance(dtype, 4N + 8)`` (``P`` is renormalised up to ``N`` times per node).

Lossless: z3 fixed-vocabulary proof ``proofs/smt`` (``rrs``) and exact enumeration in hsd_ref.
"""

from __future__ import annotations

import torch

from . import (
    VerifyOutput,
    token_prob,
    positive_excess,
    ratio_chance,
    tie_tolerance,
    tree_walk,
    tree_walk_loop,
)

__all__ = ["rrs", "rrs_loop", "rrs_node", "rrs_node_loop"]

NAME = "rrs"


def _normalise_rows(w: torch.Tensor, keep_if_empty: torch.Tensor) -> torch.Tensor:
    """``w / sum(w)`` per row of a fresh [R, V] tensor (in place); rows summing to 0 take
    ``keep_if_empty``."""
    total = w.sum(dim=-1, keepdim=True)
    empty = total.squeeze(1) == 0
    w.div_(torch.where(empty.unsqueeze(1), torch.ones_like(total), total))
    return torch.where(empty.unsqueeze(1), keep_if_empty, w) if bool(empty.any()) else w


def rrs_node(P: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, cand: torch.Tensor, u: torch.Tensor, *, without_replacement: bool = False):
    """The RRS node rule for every row at once (see :func:`hsd_fast.schemes.tree_walk`).  ``P`` and
    ``q`` are fresh copies owned by the walk; rows that reject a candidate are updated in place."""
    B, N = tokens.shape
    tol = tie_tolerance(P.dtype, 4 * N + 8)
    hit = torch.zeros(B, dtype=torch.bool, device=P.device)
    token = torch.full((B,), -1, dtype=torch.int64, device=P.device)
    for j in range(N):
        x = tokens[:, j]  # [B]
        live = cand[:, j] & ~hit
        p_x = token_prob(P, x)  # [B]
        q_x = token_prob(q, x)
        accept = live & (u[:, j] < ratio_chance(p_x, q_x, 1.0, tol).to(torch.float64))
        hit |= accept
        token = torch.where(accept, x, token)
        rej = torch.nonzero(live & ~accept).squeeze(1)  # [R] (a host sync; nothing to do if empty)
        if rej.numel() == 0:
            continue
        P_r = P[rej]
        new_P = _normalise_rows(positive_excess(P_r, q[rej], tol), P_r)  # norm(max(P - q, 0)), or P
        if without_replacement:
            drop = rej[q_x[rej] > 0]  # q <- norm(q with q(x) = 0); the placeholder drops nothing
            q_d = q[drop].scatter_(1, x[drop].unsqueeze(1), 0.0)
            q[drop] = _normalise_rows(q_d, q_d)  # the zero vector once q's support is exhausted
        P[rej] = new_P
    return hit, token, P


def rrs_node_loop(P: torch.Tensor, q: torch.Tensor, tokens: list[int], u: list[float], without_replacement: bool, tol: float):
    """Loop twin of :func:`rrs_node` for one row: P, q [V], the candidates' tokens and uniforms in
    slot order; ``tol`` as in :func:`rrs_node` (``tie_tolerance(dtype, 4N + 8)``)."""
    for i, x in enumerate(tokens):
        q_x = float(q[x]) if x >= 0 else 0.0
        chance = float(P[x] / q[x]) if q_x > 0 else 0.0
        chance = 1.0 if chance >= 1.0 - tol else chance
        if u[i] < chance:
            return i, P
        residual = positive_excess(P, q, tol)
        total = residual.sum()
        if float(total) > 0:
            P = residual / total
        if without_replacement and q_x > 0:
            q = q.clone()
            q[x] = 0
            total_q = q.sum()
            if float(total_q) > 0:
                q = q / total_q
    return None, P


def rrs(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, N, K+1, V], draft_probs [B, N, K, V], draft_tokens
    [B, N, K] int64, draws [B, K*N+1] float64."""
    return tree_walk(target_probs, draft_probs, draft_tokens, draws, rrs_node)


def rrs_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`rrs`."""
    N = draft_tokens.shape[1]
    tol = tie_tolerance(target_probs.dtype, 4 * N + 8)
    return tree_walk_loop(target_probs, draft_probs, draft_tokens, draws, lambda P, q, toks, u: rrs_node_loop(P, q, toks, u, False, tol))
