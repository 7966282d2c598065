"""The speculative step: one target iteration of (hierarchical) speculative decoding, batched.

Shaped like ``hsd_ref.schemes.hierarchy``'s sampler (``_sample_batch``, ``_verify``, ``sample``),
whose law it reproduces draw for draw (tests/fast/test_engine_exact.py).  Levels ``0..n`` bottom-up,
``n`` the target, thresholds ``T_0..T_{n-1}``: level 0 drafts ``T_0`` tokens; a middle level ``i``
verifies batches from level ``i - 1`` until it holds ``>= T_i`` tokens and passes up the first
``T_i`` with its own rows along them; the target verifies one batch and emits accepted + 1 tokens.
With the target alone (``n = 0``) a step is one autoregressive token from one uniform.

Everything outside the algorithm (model calls and row checks, random streams, vocabulary ids,
metrics, timing, reusable buffers, the host read that ends a middle level's loop) is the
:class:`~hsd_fast.engine.state.CallState` ``run``.  Rows with ``active`` false ride along in the
batched calls; their results are discarded and they consume no random numbers.
"""

from __future__ import annotations

import torch

from ..schemes import sample_inverse_cdf

__all__ = ["iteration"]


def iteration(run, ctx: torch.Tensor, lens: torch.Tensor, active: torch.Tensor):
    """One target iteration.  ctx [B, S] model ids, lens [B], active [B] bool
    -> (tokens [B, T_{n-1} + 1] engine ids padded with -1, num_accepted [B])."""
    n = run.n
    if n == 0:
        target_probs = run.probs(0, ctx, lens, 1, active)[:, 0]  # [B, V]
        token = sample_inverse_cdf(target_probs, run.draws(1, active)[:, 0])  # [B]
        run.record_autoregressive(active)
        return token[:, None], torch.zeros_like(token)
    draft_tokens, draft_probs = batch(run, n - 1, ctx, lens, active)
    tokens, num_accepted, _ = verify(run, n, ctx, lens, draft_tokens, draft_probs, active)
    return tokens, num_accepted


def draft(run, seq, lens, active):
    """Level 0: ``T_0`` tokens per row and the laws they were drawn from.  -> [B, T_0], [B, T_0, V]"""
    T = run.thresholds[0]
    u = run.draws(T, active)  # [B, T]: one uniform per level-0 token, drafters included (hsd_ref's layout)
    if run.drafter_at_bottom:
        return run.propose(seq, lens, T, active)  # point-mass draft laws
    tokens, rows = [], []
    for t in range(T):
        draft_probs = run.probs(0, seq, lens, 1, active)[:, 0]  # [B, V]
        tokens.append(sample_inverse_cdf(draft_probs, u[:, t]))
        rows.append(draft_probs)
        seq, lens = run.append(seq, lens, tokens[-1][:, None]), lens + 1
    return torch.stack(tokens, 1), torch.stack(rows, 1)


def verify(run, level, seq, lens, draft_tokens, draft_probs, active):
    """``level`` scores ``draft_tokens`` [B, T] after each context in ONE call and verifies them.
    -> tokens [B, T + 1] (-1 padded), num_accepted [B], target_probs [B, T + 1, V]"""
    T = draft_tokens.shape[1]
    target_probs = run.probs(level, run.append(seq, lens, draft_tokens), lens + T, T + 1, active)
    draws = run.draws(T + 1, active)  # [B, T + 1] whatever the scheme: the layout is scheme-independent
    tokens, num_accepted = run.verify(level, target_probs, draft_probs, draft_tokens, draws)
    run.record(level, target_probs, draft_probs, draft_tokens, num_accepted, active)
    return tokens, num_accepted, target_probs


def batch(run, level, seq, lens, active):
    """The ``T_level`` tokens (and their laws) that ``level`` passes up.  -> [B, T], [B, T, V]"""
    if level == 0:
        return draft(run, seq, lens, active)
    T, T_low = run.thresholds[level], run.thresholds[level - 1]
    buf, buf_probs = run.buffers(level, seq.shape[0])  # [B, cap], [B, cap, V]; cap >= T + 2 (T_low + 1)
    filled = torch.zeros_like(lens)
    cols = torch.arange(T_low + 1, device=lens.device)
    while run.any(need := active & (filled < T)):  # the host read that ends the loop
        ctx = run.append(seq, lens, buf)  # context + buffer (garbage past lens + filled)
        tokens, num_accepted, rows = verify(run, level, ctx, lens + filled, *batch(run, level - 1, ctx, lens + filled, need), need)
        dst = filled[:, None] + cols  # [B, T_low + 1]; columns past the new fill are overwritten later
        buf.scatter_(1, dst, tokens.clamp(min=0))
        buf_probs.scatter_(1, dst[..., None].expand(-1, -1, buf_probs.shape[-1]), rows)
        filled = filled + torch.where(need, num_accepted + 1, 0)
    return buf[:, :T], buf_probs[:, :T]
