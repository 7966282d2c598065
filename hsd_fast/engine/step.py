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

__all__ = ["iteration", "draft_adaptive"]


def iteration(run, ctx: torch.Tensor, lens: torch.Tensor, active: torch.Tensor):
    """One target iteration.  ctx [B, S] model ids, lens [B], active [B] bool
    -> (tokens [B, T_{n-1} + 1] engine ids padded with -1, num_accepted [B])."""
    n = run.n
    if n == 0:
        target_probs = run.probs(0, ctx, lens, 1, active)[:, 0]  # [B, V]
        token = sample_inverse_cdf(target_probs, run.draws(1, active)[:, 0])  # [B]
        run.record_autoregressive(active)
        return token[:, None], torch.zeros_like(token)
    draft_tokens, draft_probs, draft_lens, draws = below(run, n - 1, ctx, lens, active)
    tokens, num_accepted, _ = verify(run, n, ctx, lens, draft_tokens, draft_probs, active, draws, draft_lens)
    short = run.thresholds[n - 1] + 1 - tokens.shape[1]  # an adaptive draft may end early: pad to T_{n-1} + 1
    if short:
        tokens = torch.cat([tokens, tokens.new_full((tokens.shape[0], short), -1)], 1)
    return tokens, num_accepted


def below(run, level, seq, lens, active):
    """What ``level`` passes up to be verified: ``(tokens, rows, draft_lens, draws)``, the last two
    ``None`` unless ``level`` is an adaptive bottom level (:func:`draft_adaptive`)."""
    if level == 0 and run.stop_rule is not None:
        return draft_adaptive(run, seq, lens, active)
    return (*batch(run, level, seq, lens, active), None, None)


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


def draft_adaptive(run, seq, lens, active):
    """Level 0 with a stopping rule (hsd_fast.engine.stopping; hsd_ref.schemes.adaptive's layout):
    at most ``T_0`` tokens, row ``b`` stopping after ``L_b`` of them.
    -> tokens [B, L] (-1 past each row's length), rows [B, L, V] (zero past it), lengths [B],
    the verifier's uniforms [B, L + 1]; ``L = max L_b`` over active rows."""
    T = run.thresholds[0]
    u = run.draws(3 * T + 1, active)  # [B, 3T + 1]: coin, draft, coin, draft, ..., then the verifier's
    B = seq.shape[0]
    stopped = ~active  # inactive rows ride along, stopped from the start
    tokens = torch.zeros(B, 0, dtype=torch.int64, device=seq.device)
    rows = []
    for t in range(T):
        probs_so_far = torch.stack(rows, 1) if rows else None
        stopped = stopped | run.stop_rule.stop(t, tokens, probs_so_far, u[:, 2 * t])
        if not run.any(~stopped):  # the host read that ends the draft
            break
        draft_probs = run.probs(0, seq, lens, 1, active & ~stopped)[:, 0]  # [B, V]
        x = sample_inverse_cdf(draft_probs, u[:, 2 * t + 1])
        tokens = torch.cat([tokens, torch.where(stopped, -1, x)[:, None]], 1)
        rows.append(draft_probs.masked_fill(stopped[:, None], 0))
        seq, lens = run.append(seq, lens, x[:, None]), lens + 1
    L = tokens.shape[1]
    lengths = (tokens >= 0).sum(1)
    rows = torch.stack(rows, 1) if rows else tokens.new_zeros(B, 0, run.vocab.V).to(run.dtype)
    return tokens, rows, lengths, u[:, 2 * T : 2 * T + L + 1]


def verify(run, level, seq, lens, draft_tokens, draft_probs, active, draws=None, draft_lens=None):
    """``level`` scores ``draft_tokens`` [B, T] after each context in ONE call and verifies them;
    ``draws`` [B, T + 1] given by an adaptive draft, with its ``draft_lens`` [B].
    -> tokens [B, T + 1] (-1 padded), num_accepted [B], target_probs [B, T + 1, V]"""
    T = draft_tokens.shape[1]
    target_probs = run.probs(level, run.append(seq, lens, draft_tokens.clamp(min=0)), lens + T, T + 1, active)
    if draws is None:
        draws = run.draws(T + 1, active)  # [B, T + 1] whatever the scheme: the layout is scheme-independent
    tokens, num_accepted = run.verify(level, target_probs, draft_probs, draft_tokens, draws, draft_lens)
    run.record(level, target_probs, draft_probs, draft_tokens, num_accepted, active, draft_lens)
    return tokens, num_accepted, target_probs


def batch(run, level, seq, lens, active):
    """The ``T_level`` tokens (and their laws) that ``level`` passes up.  -> [B, T], [B, T, V]"""
    if level == 0:
        return draft(run, seq, lens, active)
    T = run.thresholds[level]
    buf, buf_probs = run.buffers(level, seq.shape[0])  # [B, cap], [B, cap, V]; cap >= T + 2 (T_low + 1)
    filled = torch.zeros_like(lens)
    while run.any(need := active & (filled < T)):  # the host read that ends the loop
        ctx = run.append(seq, lens, buf)  # context + buffer (garbage past lens + filled)
        low_tokens, low_rows, low_lens, draws = below(run, level - 1, ctx, lens + filled, need)
        tokens, num_accepted, rows = verify(run, level, ctx, lens + filled, low_tokens, low_rows, need, draws, low_lens)
        dst = filled[:, None] + torch.arange(tokens.shape[1], device=lens.device)  # [B, <= T_low + 1]; columns past the new fill are overwritten later
        buf.scatter_(1, dst, tokens.clamp(min=0))
        buf_probs.scatter_(1, dst[..., None].expand(-1, -1, buf_probs.shape[-1]), rows)
        filled = filled + torch.where(need, num_accepted + 1, 0)
    return buf[:, :T], buf_probs[:, :T]
