"""vLLM's flattened speculative-decoding layout, verified row by row with :func:`hsd_fast.kernels.verify`.

vLLM (0.32, V1 model runner) hands its rejection sampler one batch of ``B`` requests whose drafts
are concatenated: request ``b`` owns the ``n_b = num_draft_tokens[b]`` consecutive rows starting at
``start_b = n_0 + ... + n_{b-1}`` of ``draft_token_ids`` [T], ``draft_probs`` [T, V] (``None`` when
the drafter reports token ids only: n-gram, or ``draft_sample_method="greedy"``, where ``q`` is one-hot
at the drafted token) and ``target_probs`` [T, V] (the target's distributions at the draft positions,
after temperature, top-k and top-p).  The target's distribution after the last draft token is not
passed; vLLM samples the *bonus* token from it beforehand, ``bonus_token_ids`` [B, 1].  The output is
``[B, max_spec_len + 1]`` int32, each row the accepted drafts then one more token, padded with -1.

:func:`verify_rows` fills the rows of the requests it is given, each exactly as
``verify(scheme, P, Q, X, draws=U)`` on that request alone, with ``K`` its own draft length:

* ``X`` [1, K]: its draft tokens, cut before the first negative id (vLLM pads absent drafts with -1);
* ``P`` [1, K+1, V]: its ``K`` target rows, then a one-hot row at the bonus token when the draft was
  not cut, or the target row at the cut position when it was;
* ``Q`` [1, K, V]: its draft rows, or one-hot rows at ``X`` when ``draft_probs`` is ``None``;
* ``U`` [1, K+1] float64: ``torch.rand((1, K + 1), generator=g, dtype=torch.float64, device=g.device)``
  with the request's own generator ``g = generators[b]`` when it has one (a seeded request), else
  with the default generator of ``target_probs``' device; drawn for the requests in increasing ``b``,
  before any verification.  A request with ``n_b = 0`` draws nothing (as vLLM's own sampler), and its
  row is its bonus token.

Why this is lossless: every single-draft scheme reads ``p_{K+1}`` only to draw the token after a fully
accepted draft (the bonus), and with a one-hot ``p_{K+1}`` at vLLM's bonus token (itself a draw from
the true ``p_{K+1}``, independent of the verification's uniforms) that token has the law it would
have had.  A cut draft is a draft of length ``K``, the placeholder's position being an ordinary
target position.  Rows of different lengths are never padded to a common ``K``: requests are grouped
by ``K`` and each group is one batched ``verify`` call, so a row's law and draws do not depend on the
other rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..kernels import draws_needed, verify

__all__ = ["SCHEMES", "verify_rows"]

SCHEMES = ("tokenwise", "block", "hsd_capped")
"""The single-draft schemes the plugin accepts (the ones whose draws are ``[B, K+1]`` and that read
``p_{K+1}`` only to draw the bonus token)."""


def _one_hot(ids: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows [..., V] of ``dtype``, 1 at ``ids`` [...] (all >= 0) and 0 elsewhere."""
    out = torch.zeros((*ids.shape, vocab), dtype=dtype, device=ids.device)
    return out.scatter_(-1, ids.to(torch.int64).unsqueeze(-1), 1.0)


def _row_draws(b: int, d: int, generators: Mapping[int, torch.Generator], device: torch.device) -> torch.Tensor:
    """Request ``b``'s ``d`` uniforms, [1, d] float64 on ``device`` (module docstring)."""
    gen = generators.get(b)
    if gen is None:
        return torch.rand((1, d), dtype=torch.float64, device=device)
    return torch.rand((1, d), generator=gen, dtype=torch.float64, device=gen.device).to(device)


def verify_rows(
    scheme: str,
    output_token_ids: torch.Tensor,  # [B, max_spec_len + 1] int32, written in place
    draft_token_ids: torch.Tensor,  # [T]
    num_draft_tokens: Sequence[int],  # [B]
    draft_probs: torch.Tensor | None,  # [T, V] or None
    target_probs: torch.Tensor,  # [T, V]
    bonus_token_ids: torch.Tensor,  # [B, 1]
    rows: Sequence[int],
    generators: Mapping[int, torch.Generator],
    *,
    validate: bool = True,
) -> dict[str, int]:
    """Write the output rows of the requests ``rows`` (indices into the batch) with ``scheme``.

    The other rows of ``output_token_ids`` are left untouched.  Returns counts for this call:
    ``rows`` (requests verified), ``drafted`` (their draft tokens, before cutting at -1) and
    ``accepted`` (draft tokens accepted).  Raises ``ValueError`` naming the argument on a scheme
    outside :data:`SCHEMES`, inconsistent shapes, or (through ``verify``) invalid probabilities.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    B = len(num_draft_tokens)
    T = sum(num_draft_tokens)
    if target_probs.dim() != 2 or target_probs.shape[0] != T:
        raise ValueError(f"target_probs: expected shape [T={T}, V], got {tuple(target_probs.shape)}")
    V = target_probs.shape[1]
    if tuple(draft_token_ids.shape) != (T,):
        raise ValueError(f"draft_token_ids: expected shape ({T},), got {tuple(draft_token_ids.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (T, V):
        raise ValueError(f"draft_probs: expected shape ({T}, {V}) like target_probs, got {tuple(draft_probs.shape)}")
    if bonus_token_ids.numel() != B:
        raise ValueError(f"bonus_token_ids: expected {B} entries (one per request), got {bonus_token_ids.numel()}")
    if output_token_ids.dim() != 2 or output_token_ids.shape[0] != B or output_token_ids.shape[1] < max(num_draft_tokens, default=0) + 1:
        raise ValueError(f"output_token_ids: expected shape [{B}, >= max draft length + 1], got {tuple(output_token_ids.shape)}")
    bad = [b for b in rows if not 0 <= b < B]
    if bad:
        raise ValueError(f"rows: index {bad[0]} is outside the batch of {B} requests")

    device, dtype = target_probs.device, target_probs.dtype
    starts = [0] * B
    for b in range(1, B):
        starts[b] = starts[b - 1] + num_draft_tokens[b - 1]
    ids_host = draft_token_ids.tolist()  # one read of the drafts: the cut positions and the grouping
    bonus = bonus_token_ids.reshape(B).to(torch.int64)  # [B]
    D_of = {}  # K -> uniforms per row
    groups: dict[int, list[tuple[int, int, torch.Tensor]]] = {}  # K -> [(b, start, draws [1, K+1])]
    stats = {"rows": 0, "drafted": 0, "accepted": 0}
    for b in sorted(set(rows)):
        n, start = num_draft_tokens[b], starts[b]
        if n == 0:  # no draft: the bonus token is the output, no randomness drawn (as vLLM)
            output_token_ids[b, 0] = bonus[b].to(output_token_ids.dtype)
            stats["rows"] += 1
            continue
        own = ids_host[start : start + n]
        k = next((i for i, t in enumerate(own) if t < 0), n)  # cut before the first placeholder
        if k not in D_of:
            D_of[k] = draws_needed(scheme, k)
        groups.setdefault(k, []).append((b, start, _row_draws(b, D_of[k], generators, device)))
        stats["rows"] += 1
        stats["drafted"] += n

    for k, members in groups.items():
        G = len(members)
        pos = torch.tensor([[s + i for i in range(k)] for _, s, _ in members], dtype=torch.int64, device=device).reshape(G, k)  # [G, K]
        P = torch.empty((G, k + 1, V), dtype=dtype, device=device)  # [G, K+1, V]
        P[:, :k] = target_probs[pos]
        for g, (b, s, _) in enumerate(members):
            if k < num_draft_tokens[b]:  # cut at a placeholder: that position is a plain target row
                P[g, k] = target_probs[s + k]
            else:  # a full draft: p_{K+1} is seen only through vLLM's bonus draw
                P[g, k] = _one_hot(bonus[b], V, dtype)
        X = draft_token_ids[pos].to(torch.int64)  # [G, K]
        Q = draft_probs[pos].to(dtype) if draft_probs is not None else _one_hot(X, V, dtype)  # [G, K, V]
        U = torch.cat([u for _, _, u in members], dim=0)  # [G, K+1]
        out = verify(scheme, P, Q, X, draws=U, validate=validate)
        tokens = out.tokens.to(output_token_ids.dtype)  # [G, K+1], padded with -1
        for g, (b, _, _) in enumerate(members):
            output_token_ids[b, : k + 1] = tokens[g]
        stats["accepted"] += int(out.num_accepted.sum())
    return stats
