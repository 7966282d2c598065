"""Multi-draft levels: ``N`` drafts of ``K`` tokens per row, scored by the target in one forward.

``SpeculativeDecoder([draft, target], scheme="rrs", n_drafts=N, thresholds=K)`` runs the multi-draft
schemes of :mod:`hsd_fast.kernels` (``rrs``, ``rrs_without_replacement``, ``spectr_kseq``; exact twins
in :mod:`hsd_ref.multidraft`) on a two-level stack whose bottom level is a draft model.  One target
iteration (:func:`iteration`), for each batch row ``b``:

1. the row is expanded into ``N`` *draft rows* ``b N + j`` (``repeat_interleave`` of its context);
2. the draft model drafts ``K`` tokens along every draft row, one batched call per position, with
   the drafting law of the scheme (``hsd_ref`` ``MultiDraftScheme.replacement``): ``N`` i.i.d. drafts,
   or, without replacement, at every tree node the drafts that share the prefix draw their next
   tokens sequentially (slot order) without replacement from the node's draft row; once its support
   is exhausted the rest of the group is absent (id -1) from that position on;
3. the target scores all ``N B`` draft rows (context + draft) in ONE call -> [B, N, K+1, V];
4. the multi-draft kernel verifies the tree; the row emits the accepted path + one token.

Randomness (per row, from its own stream :meth:`CallState.draws`; only active rows advance): first
``K N`` drafting uniforms, position-major (``u[t N + j]`` draws slot ``j``'s token at position ``t``
by inverse CDF, also when that slot is already absent), then the ``K N + 1`` verification uniforms
of :mod:`hsd_ref.multidraft` (``draws[t N + j]`` tests slot ``j`` at position ``t``; ``draws[K N]``
samples the emitted token).  This is the layout of :mod:`hsd_fast.fidelity.multidraft`; the tests
(tests/fast/test_engine_multidraft.py) replay it in Fractions through ``hsd_ref``'s ``verify``.

Caches: every level sees the ``N B`` draft rows in every call (the prompts are prefilled for them,
:func:`expand_ids`; retiring rows keeps their ``N`` draft rows, :func:`cache_rows`), so a
position-indexed cache keeps each draft row's own prefix and recomputes from the first token where
the next iteration's context differs from what that draft row last saw.

An absent draft (without replacement, support exhausted) keeps going from context + id 0; those
rows are never read by verification (a -1 is never accepted).  The draft level's rows there are not
checked; the target's, scored in the same call as the draft row's real positions, are.
The metrics' ``min(p, q)`` overlap is computed along slot 0's path; the acceptance counts are exact.

Lossless: the schemes' proofs (proofs/coq/RRS.v ``rrs_lossless``, ``rrs_without_replacement_lossless``;
proofs/smt ``spectr_kseq``), for drafts drawn with the law above.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from ..kernels import KERNELS
from ..schemes import sample_inverse_cdf
from .config import as_int

__all__ = ["MULTI_DRAFT_SCHEMES", "parse_multidraft", "iteration", "expand_ids", "cache_rows"]

# the multi-draft kernels of hsd_fast.verify
MULTI_DRAFT_SCHEMES = tuple(name for name, spec in KERNELS.items() if spec.multi_draft)


@functools.lru_cache(maxsize=None)
def _replacement(scheme: str) -> bool:
    """The scheme's drafting law, from its exact twin: ``True`` for i.i.d. drafts."""
    from hsd_ref.registry import get_scheme

    return bool(get_scheme(scheme).replacement)


def parse_multidraft(scheme, n_drafts, levels, temperature, thresholds, draft_stop, replan_every) -> tuple[str, int] | None:
    """``(scheme, N)`` when the decoder runs a multi-draft scheme, ``None`` for single-draft schemes
    (then ``n_drafts`` must be ``None`` or 1).  Every unsupported combination is a ValueError naming
    its argument."""
    names = [scheme] if isinstance(scheme, str) else list(scheme) if isinstance(scheme, Sequence) else []
    multi = [s for s in names if isinstance(s, str) and s in MULTI_DRAFT_SCHEMES]
    n = None if n_drafts is None else as_int(n_drafts, "n_drafts", 1)
    if not multi:
        if n not in (None, 1):
            raise ValueError(f"n_drafts: {n} drafts need a multi-draft scheme ({', '.join(MULTI_DRAFT_SCHEMES)}), got scheme={scheme!r}")
        return None
    if len(names) != 1:
        raise ValueError(f"scheme: a multi-draft scheme ({multi[0]!r}) verifies a two-level stack; pass one scheme name, got {scheme!r}")
    if n is None:
        raise ValueError(f"scheme: multi-draft scheme {multi[0]!r} needs n_drafts= (the number of drafts per row, an int >= 1)")
    if len(levels) != 2:
        raise ValueError(f"levels: multi-draft scheme {multi[0]!r} runs on exactly two levels (a draft model, then the target), got {len(levels)}")
    if getattr(levels[0], "kind", None) == "drafter":
        raise ValueError(f"levels[0]: multi-draft scheme {multi[0]!r} needs a draft model at levels[0] (a model-free drafter has one proposal, not N drafts)")
    if temperature == 0:
        raise ValueError(f"temperature: multi-draft scheme {multi[0]!r} samples; greedy decoding (temperature 0) has one draft")
    if isinstance(thresholds, str):
        raise ValueError(f"thresholds: multi-draft scheme {multi[0]!r} needs a fixed draft length K (an int), got {thresholds!r}")
    if draft_stop is not None:
        raise ValueError(f"draft_stop: adaptive draft lengths are for single-draft schemes, not {multi[0]!r}")
    if replan_every is not None:
        raise ValueError(f"replan_every: not with multi-draft scheme {multi[0]!r} (it has no thresholds='auto')")
    return multi[0], n


def expand_ids(ids: list[list[int]], n: int) -> list[list[int]]:
    """Each prompt repeated for its ``n`` draft rows (rows ``b n .. b n + n - 1``)."""
    return [x for x in ids for _ in range(n)]


def cache_rows(live: torch.Tensor, n: int) -> torch.Tensor:
    """The draft rows of the batch rows ``live`` [B'] -> [B' n]."""
    return (live[:, None] * n + torch.arange(n, device=live.device)).reshape(-1)


def draft_multi(run, seq, lens, active, K: int, N: int, replacement: bool):
    """Level 0: ``N`` drafts of ``K`` tokens per row (module docstring, step 2).

    seq [B N, S] / lens [B N] the draft rows' contexts (model ids), active [B] bool.
    -> tokens [B, N, K] engine ids (-1: absent), draft rows [B, N, K, V]"""
    BN = seq.shape[0]
    B = BN // N
    u = run.draws(K * N, active).view(B, K, N)  # position-major: u[b, t, j]
    active_n = active.repeat_interleave(N)
    tokens = torch.full((B, N, K), -1, dtype=torch.int64, device=seq.device)
    rows = []
    absent = torch.zeros(B, N, dtype=torch.bool, device=seq.device)
    for t in range(K):
        q = run.probs(0, seq, lens, 1, active_n & ~absent.reshape(-1))[:, 0].view(B, N, -1)  # [B, N, V]
        rows.append(q)
        if replacement:
            x = sample_inverse_cdf(q, u[:, t])  # [B, N]
        else:
            x = torch.full((B, N), -1, dtype=torch.int64, device=seq.device)
            for j in range(N):
                q_j = q[:, j]  # [B, V]; minus the tokens earlier slots of the same group drew at this node
                for i in range(j):
                    same = (tokens[:, i, :t] == tokens[:, j, :t]).all(-1) & (x[:, i] >= 0)  # [B]
                    drawn = torch.arange(q_j.shape[-1], device=q_j.device)[None, :] == x[:, i, None]  # [B, V]
                    q_j = q_j.masked_fill(drawn & same[:, None], 0.0)
                # the inverse CDF scales u by the row's total: the exact rule on the renormalised row
                exhausted = q_j.sum(-1) <= 0
                x_j = sample_inverse_cdf(torch.where(exhausted[:, None], q[:, j], q_j), u[:, t, j])
                x[:, j] = torch.where(exhausted | absent[:, j], -1, x_j)
            absent = absent | (x < 0)
        tokens[:, :, t] = x
        seq, lens = run.append(seq, lens, x.reshape(BN, 1).clamp(min=0)), lens + 1
    return tokens, torch.stack(rows, 2)  # K >= 1


def iteration(run, ctx: torch.Tensor, lens: torch.Tensor, active: torch.Tensor):
    """One target iteration of a multi-draft stack.  ctx [B, S] model ids, lens [B], active [B] bool
    -> (tokens [B, K + 1] engine ids padded with -1, num_accepted [B])."""
    K, N, scheme = run.thresholds[0], run.n_drafts, run.schemes[0]
    B = ctx.shape[0]
    seq, lens_n = ctx.repeat_interleave(N, 0), lens.repeat_interleave(N)  # [B N, S], [B N]
    draft_tokens, draft_probs = draft_multi(run, seq, lens_n, active, K, N, _replacement(scheme))
    scored = run.append(seq, lens_n, draft_tokens.reshape(B * N, K).clamp(min=0))
    target_probs = run.probs(1, scored, lens_n + K, K + 1, active.repeat_interleave(N)).view(B, N, K + 1, -1)  # [B, N, K+1, V]
    draws = run.draws(K * N + 1, active)  # [B, K N + 1]: hsd_ref.multidraft's verification layout
    tokens, num_accepted = run.verify_multi(target_probs, draft_probs, draft_tokens, draws)
    run.record(1, target_probs[:, 0], draft_probs[:, 0], draft_tokens[:, 0].clamp(min=0), num_accepted, active)
    return tokens, num_accepted
