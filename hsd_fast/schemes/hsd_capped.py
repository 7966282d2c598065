"""HSD with capped branch resampling (Zhou et al. 2025, arXiv 2601.05724, Alg. 2, eqs. 16-20), batched.

Exact twin: :mod:`hsd_ref.schemes.hsd_capped`, written, like it, from the paper's joint-mass
equations rather than through :mod:`.block`.  Joint masses ``P_t = prod_{j<=t} p_j(x_j)`` and
``Q_t`` underflow in float32 after a few tokens, so the kernel works with their logarithms::

    log r_t = sum_{j<=t} (log p_j(x_j) - log q_j(x_j))         (a cumsum over K)
    log M_t = max(0, log r_1, ..., log r_t)                     (a cummax over K)
    s_t     = exp(log r_t - log M_t) = r_t / M_t                (the capped scale of branch t, s_0 = 1)

Dividing eqs. 17-18 by ``Q_t > 0``, the capped branch divergences become
``D*(p, q | X_{1:t}) / Q_t = sum_x max(s_t p_{t+1}(x) - q_{t+1}(x), 0)`` and
``D*(q, p | X_{1:t}) / Q_t = sum_x max(q_{t+1}(x) - s_t p_{t+1}(x), 0)``, so eq. 19 is
``h_t = D*(p, q) / D*(q, p)`` (1 when ``D*(q, p) = 0``) for ``1 <= t < K`` and
``h_K = min(exp(log r_K - log M_{K-1}), 1)``; the capped residual (eq. 20) is the normalised first
sum's summand (the target row when it is empty).  The backward scan and draw layout are block
verification's.  The draft is cut before its first token of draft probability 0 (or id -1): every
``h`` from there on is 0.

The branch divergences are summed in float64 whatever the rows' dtype (a float32 running sum over
a large vocabulary drifts).  Ties: ``s_t`` and ``h_K`` within ``tol`` of 1 are 1; a summand within ``tol`` (relative) of a tie is 0;
``tol = tie_tolerance(dtype, 4K + 4)`` covers the log/exp round trip.

Lossless: proofs/coq/Block.v ``block_lossless`` (per draft, HSD-capped equals block verification).
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

__all__ = ["hsd_capped", "hsd_capped_loop"]

NAME = "hsd_capped"



def _log_ratios(p_x: torch.Tensor, q_x: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """``log p(x) - log q(x)`` where usable (``-inf`` when ``p(x) == 0``), 0 elsewhere."""
    safe_q = torch.where(usable, q_x, torch.ones_like(q_x))
    return torch.where(usable, torch.log(p_x) - torch.log(safe_q), torch.zeros_like(p_x))


def hsd_capped(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Vectorised kernel.  target_probs [B, K+1, V], draft_probs [B, K, V], draft_tokens [B, K] int64,
    draws [B, K+1] float64."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    dtype, device = target_probs.dtype, target_probs.device
    tol = tie_tolerance(dtype, 4 * K + 4)
    rows = torch.arange(B, device=device)
    if K == 0:
        emitted = sample_inverse_cdf(target_probs[:, 0], draws[:, 0])
        zero = torch.zeros(B, dtype=torch.int64, device=device)
        return VerifyOutput(assemble_rows(draft_tokens, zero, emitted), zero, None)

    p_x = gather_token_probs(target_probs[:, :K], draft_tokens)  # [B, K]
    q_x = gather_token_probs(draft_probs, draft_tokens)  # [B, K]
    usable = (q_x > 0).to(torch.int64).cumprod(dim=1).bool()  # [B, K]: before the cut
    m = usable.sum(dim=1)  # [B] number of usable draft tokens
    log_r = torch.cumsum(_log_ratios(p_x, q_x, usable), dim=1)  # [B, K]: log r_1..log r_K
    log_m = torch.cummax(log_r.clamp(min=0), dim=1).values  # [B, K]: log M_1..log M_K
    ones = torch.ones(B, 1, dtype=dtype, device=device)
    scale = torch.cat([ones, snap_to_one(torch.exp(log_r - log_m), tol)], dim=1)  # [B, K+1]: s_0..s_K

    # backward scan (as block verification): h_K first, then h_t for t = K-1..1, which matters only
    # for the rows whose tests above t all failed (computed for every row and masked: no host read);
    # h_t = 0 past the cut (t > m)
    cap_before = log_m[:, K - 2] if K >= 2 else torch.zeros(B, dtype=dtype, device=device)  # log M_{K-1}
    final = snap_to_one(torch.exp(log_r[:, K - 1] - cap_before).clamp(max=1.0), tol)
    final = torch.where(m == K, final, torch.zeros_like(final))
    passed = draws[:, K - 1] < final.to(torch.float64)
    tau = torch.where(passed, K, torch.zeros(B, dtype=torch.int64, device=device))
    scanning = ~passed  # [B]
    for t in range(K - 1, 0, -1):
        q_t = draft_probs[:, t]  # [B, V]
        a = scale[:, t : t + 1] * target_probs[:, t]  # [B, V]: s_t p_{t+1}
        plus = positive_excess(a, q_t, tol).sum(dim=-1, dtype=torch.float64)  # D*(p, q) / Q_t, [B]
        minus = positive_excess(q_t, a, tol).sum(dim=-1, dtype=torch.float64)  # D*(q, p) / Q_t, [B]
        h = torch.where(minus > 0, plus / torch.where(minus > 0, minus, torch.ones_like(minus)), torch.ones_like(plus))
        h = snap_to_one(h, tol)  # plus == minus exactly when s_t == 1
        ok = scanning & (m >= t) & (draws[:, t - 1] < h.to(torch.float64))
        tau = torch.where(ok, t, tau)
        scanning = scanning & ~ok

    p_row = target_probs[rows, tau]  # [B, V]
    q_row = draft_probs[rows, tau.clamp(max=K - 1)]  # [B, V]
    # the capped residual of branch tau (tau <= m always, since h_t = 0 past the cut) ...
    weights = positive_excess(scale[rows, tau].unsqueeze(1) * p_row, q_row, tol)
    weights = torch.where((tau == K).unsqueeze(1), p_row, weights)  # ... or, all accepted, the bonus row p_{K+1}
    emitted = sample_inverse_cdf(weights, draws[:, K], fallback=p_row)
    return VerifyOutput(assemble_rows(draft_tokens, tau, emitted), tau, None)


def hsd_capped_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor) -> VerifyOutput:
    """Loop twin of :func:`hsd_capped`: per row, running log-ratio and running cap position by
    position, then the backward scan."""
    B, K1, V = target_probs.shape
    K = K1 - 1
    dtype, device = target_probs.dtype, target_probs.device
    tol = tie_tolerance(dtype, 4 * K + 4)
    tokens = torch.full((B, K + 1), -1, dtype=torch.int64, device=device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    for b in range(B):
        # usable prefix, then log r_t via the same float accumulation as the kernel's cumsum
        m = 0
        while m < K and int(draft_tokens[b, m]) >= 0 and float(draft_probs[b, m, int(draft_tokens[b, m])]) > 0:
            m += 1
        terms = torch.zeros(K, dtype=dtype, device=device)
        for t in range(m):
            x = int(draft_tokens[b, t])
            terms[t] = torch.log(target_probs[b, t, x]) - torch.log(draft_probs[b, t, x])
        log_r = torch.cumsum(terms, dim=0)
        scale, caps = [torch.ones((), dtype=dtype, device=device)], []
        cap = torch.zeros((), dtype=dtype, device=device)
        for t in range(K):
            cap = torch.maximum(cap, log_r[t])
            caps.append(cap)
            s = torch.exp(log_r[t] - cap)
            scale.append(s if float(s) < 1.0 - tol else torch.ones((), dtype=dtype, device=device))

        def branch(t: int) -> torch.Tensor:
            return positive_excess(scale[t] * target_probs[b, t], draft_probs[b, t], tol)

        tau = 0
        for t in range(K, 0, -1):
            if t > m:
                continue  # h_t = 0 past the cut
            if t == K:
                h = float(torch.exp(log_r[K - 1] - (caps[K - 2] if K >= 2 else 0 * cap)).clamp(max=1.0))
                h = 1.0 if h >= 1.0 - tol else h
            else:
                a = scale[t] * target_probs[b, t]
                plus = positive_excess(a, draft_probs[b, t], tol).sum(dtype=torch.float64)
                minus = positive_excess(draft_probs[b, t], a, tol).sum(dtype=torch.float64)
                h = float(plus / minus) if float(minus) > 0 else 1.0
                h = 1.0 if h >= 1.0 - tol else h
            if float(draws[b, t - 1]) < h:
                tau = t
                break
        weights = target_probs[b, tau]
        if tau < K and tau <= m:
            res = branch(tau)
            if float(res.sum()) > 0:
                weights = res
        tokens[b, :tau] = draft_tokens[b, :tau]
        tokens[b, tau] = sample_inverse_cdf_row(weights, float(draws[b, K]))
        num_accepted[b] = tau
    return VerifyOutput(tokens, num_accepted, None)
