"""Batched verification kernels: the primitives every scheme module shares.

One module per scheme, named like its exact twin in :mod:`hsd_ref.schemes`.  Each module defines a
vectorised kernel ``<name>(target_probs, draft_probs, draft_tokens, draws)`` (no Python loop over the
batch) and a plain loop twin ``<name>_loop`` with the identical signature (a Python loop over rows,
positions and candidates, after vLLM's ``native_*`` references).  Both take inputs that
:func:`hsd_fast.kernels.verify` has already validated, and ``draws`` as a float64 ``[B, D]`` tensor on
the inputs' device; neither draws randomness of its own.  Both return :class:`VerifyOutput`.

Conventions (the DRAW CONVENTION of :mod:`hsd_ref.scheme` and :mod:`hsd_ref.multidraft`):

* accept iff ``u < chance``, compared in float64;
* inverse CDF in token-id order: the smallest ``v`` with ``u * total < cumsum(w)[v]`` over the
  (unnormalised) weights ``w``, accumulated in float64, which samples ``w / total``.  The result is
  clamped to the last token whose CDF step is visible in float64, so it is always ``< V`` and has
  positive weight (the vocab-boundary bug GHSA-8wr5-jm2h-8r4f cannot happen);
* ``-1`` (``PLACEHOLDER``) pads output rows and marks absent drafts, which are never accepted and
  never used as an index.

Ties.  The exact reference decides ties (``pi * P(v) == q(v)``, ``pi == 1``, an empty residual, a
feasibility condition met with equality) exactly; floating point can break them by one rounding.
Where a kernel computes a quantity through several roundings it snaps values that are equal *up to
the rounding error of their computation* to the tie: see :func:`tie_tolerance`.  The tolerance is a
few hundred ulps, so it moves a law by at most that much, and makes the kernels agree with
``hsd_ref`` on inputs with exact ties (``tests/fast/test_parity.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "snap_to_one",
    "PLACEHOLDER",
    "VerifyOutput",
    "tie_tolerance",
    "positive_excess",
    "sample_inverse_cdf",
    "sample_inverse_cdf_row",
    "gather_token_probs",
    "token_prob",
    "ratio_chance",
    "assemble_rows",
    "first_true",
    "tree_walk",
    "tree_walk_loop",
]

PLACEHOLDER = -1


class VerifyOutput(NamedTuple):
    """``tokens`` [B, K+1] int64 (accepted drafts, then the recovered or bonus token, padded with -1),
    ``num_accepted`` [B] int64, ``draft_index`` [B] int64 for multi-draft schemes (the lowest slot
    consistent with the accepted prefix, -1 when nothing was accepted) and ``None`` for single-draft
    schemes (as :class:`hsd_ref.VerifyResult`)."""

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    draft_index: torch.Tensor | None = None


def snap_to_one(x: torch.Tensor, tol: float) -> torch.Tensor:
    """``x`` with values within ``tol`` below 1 snapped to exactly 1 (an exact tie with a chance of 1)."""
    return torch.where(x >= 1.0 - tol, torch.ones((), dtype=x.dtype, device=x.device), x)


def tie_tolerance(dtype: torch.dtype, roundings: int) -> float:
    """Relative tolerance under which two computed values count as an exact tie.

    ``roundings`` bounds the number of roundings in the computation of the compared values (e.g.
    ``K + 1`` for a product of ``K`` ratios); the tolerance is ``8 * (roundings + 1)`` units of
    ``eps`` of ``dtype``: 1.8e-15 * (roundings + 1) in float64, 9.5e-7 * (roundings + 1) in float32.
    """
    return 8.0 * (roundings + 1) * torch.finfo(dtype).eps


def positive_excess(a: torch.Tensor, b: torch.Tensor, tol: float = 0.0, scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """``max(s a - b, 0)`` elementwise as a new tensor, ``s = scale`` (a per-row [B, 1] tensor, a 0-d
    tensor or a float; 1 if ``None``), where an excess ``s a - b <= tol * s a`` counts as 0.

    With ``tol = 0`` this is exactly ``max(s a - b, 0)`` (``s a - b > 0`` iff ``b < s a`` for floats).
    With ``tol > 0`` an excess within the relative rounding error of a tie ``s a == b`` is an exact 0;
    every other entry is the plain float difference (so an exact tie elsewhere, e.g. two sums that are
    equal in exact arithmetic, stays as close as rounding allows).
    """
    if scale is not None:
        a = a * scale
    d = a - b
    if tol:
        return d.masked_fill_(d <= a * tol, 0.0)  # also zeroes every negative entry
    return d.clamp_(min=0)


def sample_inverse_cdf(weights: torch.Tensor, u: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """One inverse-CDF draw per row: ``weights`` [..., V] (non-negative), ``u`` [...] float64 in [0, 1).
    Rows of ``weights`` that are all zero (an empty residual) use the same row of ``fallback``.
    Returns [...] int64 ids, each ``< V`` with positive weight.  The project's one sampling rule:
    the kernels, the engine's drafting and the samplers of hsd_fast.fidelity all draw with it
    (hsd_ref.exact.sample_index is its exact twin).

    ``cdf = cumsum(weights)`` in float64 and ``x = u * cdf[-1]``; the id is the smallest ``v`` with
    ``x < cdf[v]`` (``searchsorted(..., right=True)``).  Since ``cdf[v] > cdf[v - 1]`` there, the
    weight of ``v`` is positive.  ``x`` can round up to ``cdf[-1]``; then the id is clamped to the
    smallest ``v`` with ``cdf[v] == cdf[-1]``, the last id whose step is visible.  Scaling ``u`` by
    the row's float total is what the exact rule does on the exactly renormalised row.
    """
    lead, V = weights.shape[:-1], weights.shape[-1]
    flat = weights.reshape(-1, V)  # [B, V]
    if fallback is not None:  # a non-negative row sums to 0 iff it is 0 (selected without a host read)
        flat = torch.where(flat.sum(-1, keepdim=True) == 0, fallback.reshape(-1, V), flat)
    cdf = torch.cumsum(flat, dim=-1, dtype=torch.float64)  # [B, V]
    total = cdf[:, -1:].contiguous()  # [B, 1]
    x = u.reshape(-1).to(torch.float64).unsqueeze(-1) * total  # [B, 1]
    idx = torch.searchsorted(cdf, x, right=True)  # [B, 1]
    last = torch.searchsorted(cdf, total, right=False)  # [B, 1]
    return torch.minimum(idx, last).clamp_(0, V - 1).reshape(lead)


def sample_inverse_cdf_row(weights: torch.Tensor, u: float) -> int:
    """The loop twins' inverse CDF on one row ``weights`` [V]: same rule as
    :func:`sample_inverse_cdf`, written with ``nonzero`` instead of ``searchsorted``."""
    cdf = torch.cumsum(weights, dim=0, dtype=torch.float64)
    total = cdf[-1]
    hits = torch.nonzero(cdf > u * total)
    if hits.numel():
        return int(hits[0, 0])
    return int(torch.nonzero(cdf >= total)[0, 0])


def gather_token_probs(rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``rows[..., i, tokens[..., i]]`` for rows [..., K, V] and tokens [..., K]; 0 where the token is
    the placeholder -1 (which is never used as an index)."""
    safe = tokens.clamp(min=0).unsqueeze(-1)
    vals = rows.gather(-1, safe).squeeze(-1)
    return torch.where(tokens >= 0, vals, torch.zeros((), dtype=rows.dtype, device=rows.device))


def token_prob(row: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``row[b, token[b]]`` for row [B, V] and token [B]; 0 where the token is the placeholder -1."""
    return gather_token_probs(row.unsqueeze(1), token.unsqueeze(1)).squeeze(1)


def ratio_chance(p_x: torch.Tensor, q_x: torch.Tensor, scale: torch.Tensor | float = 1.0, tol: float = 0.0) -> torch.Tensor:
    """``min(1, p_x / (scale * q_x))`` elementwise, 0 where ``q_x == 0`` (the drafted token had draft
    probability 0, or the draft was the placeholder, whose probabilities are gathered as 0).  A ratio
    within ``tol`` below 1 is 1 (a tie ``p_x == scale * q_x`` broken by rounding)."""
    pos = q_x > 0
    safe = torch.where(pos, q_x, torch.ones((), dtype=q_x.dtype, device=q_x.device))
    ratio = p_x / (scale * safe)
    ratio = torch.where(ratio >= 1.0 - tol, torch.ones((), dtype=ratio.dtype, device=ratio.device), ratio)
    return torch.where(pos, ratio, torch.zeros((), dtype=ratio.dtype, device=ratio.device))


def assemble_rows(path: torch.Tensor, num_accepted: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
    """Output rows [B, K+1]: ``path[:, :n]`` (the accepted tokens), then ``emitted`` at column ``n``,
    then -1, with ``n = num_accepted``.  ``path`` [B, K] int64, ``num_accepted`` and ``emitted`` [B]."""
    B, K = path.shape
    cols = torch.arange(K + 1, device=path.device)
    padded = torch.cat([path, torch.full((B, 1), PLACEHOLDER, dtype=torch.int64, device=path.device)], dim=1)
    out = torch.where(cols < num_accepted.unsqueeze(1), padded, torch.full_like(padded, PLACEHOLDER))
    return out.scatter(1, num_accepted.unsqueeze(1), emitted.unsqueeze(1))


# -- multi-draft tree walk (hsd_ref.multidraft), shared by rrs, rrs_without_replacement, spectr_kseq --


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last dim of a [B, N] bool mask (0 for an all-False row)."""
    return mask.to(torch.int32).argmax(dim=-1).to(torch.int64)


def tree_walk(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor, node) -> VerifyOutput:
    """The multi-draft tree walk of :mod:`hsd_ref.multidraft`, vectorised over the batch.

    target_probs [B, N, K+1, V], draft_probs [B, N, K, V], draft_tokens [B, N, K], draws [B, K*N+1].
    At position ``t`` the rows still walking are gathered (one ``nonzero``, i.e. one host sync per
    position; the walk ends early once every row has stopped).  Their candidates (``cand`` [A, N])
    are the slots whose first ``t`` tokens equal the accepted prefix; the node's rows are those of
    the lowest candidate slot.  ``node(P, q, tokens, cand, u) -> (hit, token, residual)`` runs the
    scheme's node rule for those rows at once: P, q [A, V], tokens [A, N] (the slots' tokens at
    ``t``), cand [A, N], u [A, N] (the slots' uniforms at ``t``); it returns ``hit`` [A] (a candidate
    was accepted), its ``token`` [A] and the ``residual`` weights [A, V] to emit from when none was.
    """
    B, N, K1, V = target_probs.shape
    K = K1 - 1
    device = target_probs.device
    cand = torch.ones(B, N, dtype=torch.bool, device=device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    path = torch.full((B, K), PLACEHOLDER, dtype=torch.int64, device=device)
    final = torch.empty(B, V, dtype=torch.float64, device=device)  # the weights each row emits from (every row is set below)
    for t in range(K):
        idx = torch.nonzero(active).squeeze(1)  # [A] rows still walking
        if idx.numel() == 0:
            break
        c = cand[idx]  # [A, N]
        lead = first_true(c)  # [A]
        tokens_t = draft_tokens[idx, :, t]  # [A, N]
        hit, token, residual = node(target_probs[idx, lead, t], draft_probs[idx, lead, t], tokens_t, c, draws[idx, t * N : (t + 1) * N])
        stop, go = idx[~hit], idx[hit]
        final[stop] = residual[~hit].to(torch.float64)
        path[go, t] = token[hit]
        num_accepted[go] += 1
        cand[go] = c[hit] & (tokens_t[hit] == token[hit].unsqueeze(1))
        active[stop] = False
    lead = first_true(cand)  # [B]
    idx = torch.nonzero(active).squeeze(1)  # rows that accepted all K drafts: the bonus row
    final[idx] = target_probs[idx, lead[idx], K].to(torch.float64)
    emitted = sample_inverse_cdf(final, draws[:, K * N])
    draft_index = torch.where(num_accepted > 0, lead, torch.full_like(lead, PLACEHOLDER))
    return VerifyOutput(assemble_rows(path, num_accepted, emitted), num_accepted, draft_index)


def tree_walk_loop(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor, node_loop) -> VerifyOutput:
    """Loop twin of :func:`tree_walk`: one row at a time, the candidates as a Python list.

    ``node_loop(P, q, tokens, u) -> (index, residual)`` runs the node rule for one row: P, q [V], the
    candidates' tokens and uniforms as lists in slot order; ``index`` is the accepted candidate's
    position in the list (``None`` if all were rejected), ``residual`` the weights [V] to emit from.
    """
    B, N, K1, V = target_probs.shape
    K = K1 - 1
    device = target_probs.device
    tokens = torch.full((B, K + 1), PLACEHOLDER, dtype=torch.int64, device=device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    draft_index = torch.full((B,), PLACEHOLDER, dtype=torch.int64, device=device)
    for b in range(B):
        cands = list(range(N))
        weights = None
        t = 0
        while t < K:
            lead = cands[0]
            cand_tokens = [int(draft_tokens[b, j, t]) for j in cands]
            u = [float(draws[b, t * N + j]) for j in cands]
            index, residual = node_loop(target_probs[b, lead, t], draft_probs[b, lead, t], cand_tokens, u)
            if index is None:
                weights = residual
                break
            hit = cand_tokens[index]
            tokens[b, t] = hit
            cands = [j for j in cands if int(draft_tokens[b, j, t]) == hit]
            t += 1
        if weights is None:
            weights = target_probs[b, cands[0], K]
        tokens[b, t] = sample_inverse_cdf_row(weights, float(draws[b, K * N]))
        num_accepted[b] = t
        if t:
            draft_index[b] = cands[0]
    return VerifyOutput(tokens, num_accepted, draft_index)
