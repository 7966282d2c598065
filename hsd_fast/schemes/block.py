"""Block verification (Sun, Mendlovic, Leviathan, Aharoni, Ro, Beirami, Suresh; arXiv 2403.10444,
Alg. 2), batched.

Exact twin: :mod:`hsd_ref.schemes.block`.  With ``rho_i = p_i(x_i) / q_i(x_i)`` (0 for a drafted
token of draft probability 0 or the placeholder -1) the clamped cumulative ratio follows the Lindley
recursion ``pi_0 = 1, pi_i = min(1, pi_{i-1} rho_i)``.  For ``i < K``::

    S_i = sum_v max(pi_i p_{i+1}(v) - q_{i+1}(v), 0)        (rows of position i + 1, 0-based row i)
    h_i = S_i / (S_i + 1 - pi_i)                          (1 when S_i + 1 - pi_i == 0)

and ``h_K = pi_K``.  ``tau`` is the largest ``i`` with ``draws[:, i - 1] < h_i`` (0 if none); the
emitted token is drawn with ``draws[:, K]`` from ``norm(max(pi_tau p_{tau+1} - q_{tau+1}, 0))``
(the target row when that is empty) or, for ``tau = K``, from ``p_{K+1}``.

``S_i`` is summed in float64 whatever the rows' dtype (a float32 running sum over a large vocabulary
drifts), and ``h_i`` is computed in float64.  Ties (see :mod:`hsd_fast.schemes`): ``pi_i`` within ``tol`` of 1 is 1, and an excess
``pi p(v) - q(v)`` within ``tol`` of ``pi p(v)`` is 0, with ``tol = tie_tolerance(dtype, 2K + 1)``
(each ``pi_i`` carries at most ``2i`` roundings, its product with ``p`` one more).

Lossless: proofs/coq/Block.v ``block_lossless``.
"""

from __future__ import annotations

import torch

from . import (
    VerifyOutput,
    assemble_rows,
    gather_token_probs,
    positive_excess,
    sample_inverse_cdf,
    sample_inverse_cdf_row,
    snap_to_one,
    tie_tolerance,
)

__all__ = ["block", "block_loop"]

NAME = "block"



def block(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, K+1, V], draft_probs [B, K, V], draft_tokens [B, K] int64,
    draws [B, K+1] float64."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    dtype, device = target_probs.dtype, target_probs.device
    tol = tie_tolerance(dtype, 2 * K + 1)
    rows = torch.arange(B, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)

    # Lindley recursion for pi_0..pi_K, [B, K+1]
    p_x = gather_token_probs(target_probs[:, :K], draft_tokens)  # [B, K]
    q_x = gather_token_probs(draft_probs, draft_tokens)  # [B, K]
    usable = q_x > 0
    rho = torch.where(usable, p_x / torch.where(usable, q_x, torch.ones_like(q_x)), zero)  # [B, K]
    pis = [torch.ones(B, dtype=dtype, device=device)]
    for i in range(K):
        prev = pis[-1]
        step = torch.where(prev > 0, prev * rho[:, i], zero)  # no 0 * inf when rho overflows
        pis.append(snap_to_one(step, tol))
    pi = torch.stack(pis, dim=1)  # [B, K+1]

    # backward scan: tau = the largest i with draws[:, i-1] < h_i (0 if none).  h_K = pi_K; h_i for
    # i < K matters only for the rows whose tests above i all failed; it is computed for every row
    # and masked, so the scan never reads anything on the host.
    tau = torch.zeros(B, dtype=torch.int64, device=device)
    if K:
        passed = draws[:, K - 1] < pi[:, K].to(torch.float64)
        tau = torch.where(passed, K, tau)
        scanning = ~passed  # [B]
        for i in range(K - 1, 0, -1):
            pi_i = pi[:, i]  # [B]
            s = positive_excess(target_probs[:, i], draft_probs[:, i], tol, scale=pi_i.unsqueeze(1)).sum(dim=-1, dtype=torch.float64)  # S_i, [B]
            reach = s + (1.0 - pi_i)  # exactly s when pi_i == 1, so h_i == 1 exactly
            h = torch.where(reach > 0, s / torch.where(reach > 0, reach, torch.ones_like(reach)), torch.ones_like(s))
            ok = scanning & (draws[:, i - 1] < h.to(torch.float64))
            tau = torch.where(ok, i, tau)
            scanning = scanning & ~ok

    p_row = target_probs[rows, tau]  # [B, V]
    if K:
        q_row = draft_probs[rows, tau.clamp(max=K - 1)]  # [B, V]
        weights = positive_excess(p_row, q_row, tol, scale=pi[rows, tau].unsqueeze(1))
        weights = torch.where((tau == K).unsqueeze(1), p_row, weights)  # all accepted: the bonus token comes from p_{K+1}
    else:
        weights = p_row
    emitted = sample_inverse_cdf(weights, draws[:, K], fallback=p_row)
    return VerifyOutput(assemble_rows(draft_tokens, tau, emitted), tau, None)


def block_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`block`: per row, the Lindley recursion and the backward scan from ``K``
    down, stopping at the first passing test."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    dtype = target_probs.dtype
    tol = tie_tolerance(dtype, 2 * K + 1)
    tokens = torch.full((B, K + 1), -1, dtype=torch.int64, device=target_probs.device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=target_probs.device)
    one = torch.ones((), dtype=dtype, device=target_probs.device)
    for b in range(B):
        pi = [one]
        for i in range(K):
            x = int(draft_tokens[b, i])
            if x < 0 or float(draft_probs[b, i, x]) == 0 or float(pi[-1]) == 0:
                pi.append(0 * one)
                continue
            step = pi[-1] * (target_probs[b, i, x] / draft_probs[b, i, x])
            pi.append(one if float(step) >= 1.0 - tol else step)

        def excess(j: int) -> torch.Tensor:
            return positive_excess(target_probs[b, j], draft_probs[b, j], tol, scale=pi[j])

        tau = 0
        for i in range(K, 0, -1):
            if i == K:
                h = float(pi[K])
            else:
                s = excess(i).sum(dtype=torch.float64)
                reach = s + (1.0 - pi[i])
                h = float(s / reach) if float(reach) > 0 else 1.0
            if float(draws[b, i - 1]) < h:
                tau = i
                break
        if tau == K:
            weights = target_probs[b, K]
        else:
            weights = excess(tau)
            if float(weights.sum()) == 0:
                weights = target_probs[b, tau]
        tokens[b, :tau] = draft_tokens[b, :tau]
        tokens[b, tau] = sample_inverse_cdf_row(weights, float(draws[b, K]))
        num_accepted[b] = tau
    return VerifyOutput(tokens, num_accepted, None)
