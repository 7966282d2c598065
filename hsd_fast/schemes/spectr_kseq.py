"""SpecTr K-SEQ over N i.i.d. drafts (Sun, Suresh, Ro, Beirami, Jain, Yu; NeurIPS 2023,
arXiv 2310.15141), batched.

Exact twin: :mod:`hsd_ref.schemes.spectr_kseq`; tree walk and draw layout: :mod:`hsd_ref.multidraft`.
At a node with target row ``P``, draft row ``q`` and ``m`` candidates::

    beta(rho) = sum_x min(q(x), P(x) / rho)
    rho       = upper end of [1, m] after exactly 30 halvings of the bisection interval for the
                feasibility condition 1 - (1 - beta(rho))^m <= rho * beta(rho)
    accept candidate x with chance min(1, P(x) / (rho q(x))) in slot order (P not updated)
    none accepted: emit from p_res(x) ∝ P(x) - min(q(x), P(x) / rho) (1 - (1-beta)^m) / beta

(``P`` itself when ``beta = 0`` or ``(1 - beta)^m = 0``).  Everything here is float64 whatever the
input dtype: the bisection midpoints ``1 + (m - 1) j / 2^30`` are exact in float64, so when every
feasibility decision agrees with the exact one ``rho`` is bit for bit the reference's.

Kernel bisection.  ``rho * beta(rho) = sum_x min(rho q(x), P(x))``; a token with ratio
``r(x) = P(x) / q(x)`` below ``rho`` contributes ``P(x)``, one above contributes ``rho q(x)``.  The
kernel decides 6 halvings per pass: it folds the tokens outside the current interval into two per-row
sums, compacts the rest, sorts them into 64 equal buckets of the interval (``scatter_add``) and reads
``rho beta(rho)`` at the bucket edges, which are exactly the next 6 bisection midpoints, off the
bucket prefix sums.  Five passes, over ever fewer tokens, give the 30 halvings.  The loop twin runs
the plain bisection over the whole row at every midpoint.

Ties: a condition met within ``tol = tie_tolerance(float64, 64)`` (absolute) counts as met, and a
``p_res`` entry within ``tol`` of 0 relative to ``P(x)`` is 0.  When ``(1 - beta)^m`` is below float64
resolution of ``beta`` (``q`` close to ``P``) the residual is ill-conditioned in float; it is emitted
with probability ``(1 - beta)^m`` and always lies in the support of ``P``.

Lossless: z3 fixed-vocabulary proof ``proofs/smt`` (``spectr_kseq``) and exact enumeration in hsd_ref.
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

__all__ = ["spectr_kseq", "spectr_kseq_loop", "kseq_rho", "kseq_rho_loop", "RHO_HALVINGS"]

NAME = "spectr_kseq"
RHO_HALVINGS = 30
LEVELS_PER_ROUND = 6  # halvings decided per pass of the bucketed bisection (64 buckets)
TOL = tie_tolerance(torch.float64, 64)


def kseq_rho(P: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``rho`` per row after 30 halvings: P, q [B, V] float64, m [B] int64 (>= 1) -> [B] float64.

    Bucketed bisection (module docstring).  Each round sorts the remaining tokens into ``nb = 64``
    equal buckets of the current interval ``[lo, hi]`` by their ratio (ratios outside the interval
    clamp to the first or last bucket, where they contribute correctly to every edge), sums P and q
    per bucket with one ``scatter_add``, and runs 6 halvings on the bucket edges: at edge ``j`` (the
    point ``lo + j (hi - lo) / nb``, exactly a bisection midpoint) ``rho beta(rho)`` is the P of the
    buckets below ``j`` plus ``rho`` times the q of the buckets from ``j`` on.  The chosen bucket's
    tokens (a flat list with row ids) go on to the next round; the others are folded into two sums.
    """
    B, V = P.shape
    device = P.device
    mf = m.to(torch.float64)
    lo = torch.ones(B, dtype=torch.float64, device=device)
    hi = mf.clone()
    below = torch.zeros_like(lo)  # P of the tokens left below the interval
    above = torch.zeros_like(lo)  # q of the tokens left above it
    ratio = (P / q).nan_to_num_(nan=0.0, posinf=float("inf"))  # inf for q(x) = 0 < P(x); 0 for 0/0
    row = None  # first round on the [B, V] rows; later rounds on a flat list of tokens with row ids
    done = 0
    while done < RHO_HALVINGS:
        levels = min(LEVELS_PER_ROUND, RHO_HALVINGS - done)
        nb = 2**levels
        width = (hi - lo) / nb  # exact: lo and hi are dyadic with few significant bits
        zeros = torch.zeros(B, nb, dtype=torch.float64, device=device)
        if row is None:
            bucket = ((ratio - lo.unsqueeze(1)) / width.unsqueeze(1)).nan_to_num_(0.0).clamp_(0, nb - 1).to(torch.int64)
            p_b, q_b = zeros.scatter_add(1, bucket, P), zeros.scatter_add(1, bucket, q)
        else:
            bucket = ((ratio - lo[row]) / width[row]).nan_to_num_(0.0).clamp_(0, nb - 1).to(torch.int64)
            slot = row * nb + bucket
            p_b = zeros.view(-1).scatter_add(0, slot, P).view(B, nb)
            q_b = zeros.view(-1).scatter_add(0, slot, q).view(B, nb)
        p_upto = below.unsqueeze(1) + torch.cumsum(p_b, dim=1)  # [B, nb]: P below the interval or in buckets 0..j
        q_from = above.unsqueeze(1) + (q_b.sum(dim=1, keepdim=True) - torch.cumsum(q_b, dim=1) + q_b)  # q in buckets j.. or above
        a = torch.zeros(B, dtype=torch.int64, device=device)  # the interval is [lo + a w, lo + b w]
        b = torch.full((B,), nb, dtype=torch.int64, device=device)
        for _ in range(levels):
            mid = (a + b) // 2  # 1..nb-1
            c = lo + mid.to(torch.float64) * width  # bit for bit (lo + hi) / 2 of the plain bisection
            rho_beta = p_upto.gather(1, (mid - 1).unsqueeze(1)).squeeze(1) + c * q_from.gather(1, mid.unsqueeze(1)).squeeze(1)
            beta = rho_beta / c
            feasible = 1.0 - (1.0 - beta) ** mf <= rho_beta + TOL
            b = torch.where(feasible, mid, b)
            a = torch.where(feasible, a, mid)
        done += levels
        # b == a + 1: the interval is bucket a; fold the other buckets and keep its tokens
        below = p_upto.gather(1, a.unsqueeze(1)).squeeze(1) - p_b.gather(1, a.unsqueeze(1)).squeeze(1)
        above = q_from.gather(1, a.unsqueeze(1)).squeeze(1) - q_b.gather(1, a.unsqueeze(1)).squeeze(1)
        lo, hi = lo + a.to(torch.float64) * width, lo + b.to(torch.float64) * width
        if done < RHO_HALVINGS:
            open_ = width > 0  # rows with m == 1 (lo == hi == 1) are settled
            if row is None:
                row, col = torch.nonzero((bucket == a.unsqueeze(1)) & open_.unsqueeze(1), as_tuple=True)
                P, q, ratio = P[row, col], q[row, col], ratio[row, col]
            else:
                keep = torch.nonzero((bucket == a[row]) & open_[row]).squeeze(1)
                row, P, q, ratio = row[keep], P[keep], q[keep], ratio[keep]
    return hi


def kseq_rho_loop(P: torch.Tensor, q: torch.Tensor, m: int) -> float:
    """Loop twin of :func:`kseq_rho` for one row: P, q [V] float64."""
    lo, hi = 1.0, float(m)
    for _ in range(RHO_HALVINGS):
        mid = (lo + hi) / 2
        beta = float(torch.minimum(q, P / mid).sum())
        if 1.0 - (1.0 - beta) ** m <= mid * beta + TOL:
            hi = mid
        else:
            lo = mid
    return hi


def _residual(P: torch.Tensor, q: torch.Tensor, rho: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Unnormalised ``p_res`` weights, P and q [..., V] float64, rho and m [...] (P on degenerate rows)."""
    capped = torch.minimum(q, P / rho.unsqueeze(-1))  # [..., V]
    beta = capped.sum(dim=-1)
    none = (1.0 - beta) ** m.to(torch.float64)
    keep = (1.0 - none) / torch.where(beta > 0, beta, torch.ones_like(beta))
    weights = positive_excess(P, capped.mul_(keep.unsqueeze(-1)), TOL)
    degenerate = (beta == 0) | (none == 0) | (weights.sum(dim=-1) == 0)  # (the last: every entry a tie)
    return torch.where(degenerate.unsqueeze(-1), P, weights) if bool(degenerate.any()) else weights


def spectr_node(P: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, cand: torch.Tensor, u: torch.Tensor):
    """The K-SEQ node rule for every row at once (see :func:`hsd_fast.schemes.tree_walk`)."""
    B, N = tokens.shape
    P = P.to(torch.float64)
    q = q.to(torch.float64)
    m = cand.sum(dim=1)  # [B] candidates at the node
    rho = kseq_rho(P, q, m)  # [B]
    hit = torch.zeros(B, dtype=torch.bool, device=P.device)
    token = torch.full((B,), -1, dtype=torch.int64, device=P.device)
    for j in range(N):
        x = tokens[:, j]
        p_x = token_prob(P, x)
        q_x = token_prob(q, x)
        accept = cand[:, j] & ~hit & (u[:, j] < ratio_chance(p_x, q_x, rho, TOL))
        hit |= accept
        token = torch.where(accept, x, token)
    return hit, token, _residual(P, q, rho, m)


def spectr_node_loop(P: torch.Tensor, q: torch.Tensor, tokens: list[int], u: list[float]):
    """Loop twin of :func:`spectr_node` for one row."""
    P = P.to(torch.float64)
    q = q.to(torch.float64)
    m = len(tokens)
    rho = kseq_rho_loop(P, q, m)
    for i, x in enumerate(tokens):
        if x < 0 or float(q[x]) == 0:
            continue
        chance = float(P[x] / (rho * q[x]))
        if u[i] < (1.0 if chance >= 1.0 - TOL else chance):
            return i, P
    return None, _residual(P, q, torch.tensor(rho, dtype=torch.float64, device=P.device), torch.tensor(m, device=P.device))


def spectr_kseq(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, N, K+1, V], draft_probs [B, N, K, V], draft_tokens
    [B, N, K] int64, draws [B, K*N+1] float64."""
    return tree_walk(target_probs, draft_probs, draft_tokens, draws, spectr_node)


def spectr_kseq_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`spectr_kseq`."""
    return tree_walk_loop(target_probs, draft_probs, draft_tokens, draws, spectr_node_loop)
