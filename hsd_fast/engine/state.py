"""What one ``generate`` call owns: :class:`CallState`, the world as the speculative step sees it.

The step (:mod:`hsd_fast.engine.step`) is only the algorithm; every other concern of an iteration
lives here, once:

* level calls and their checks: each level's warped rows on the engine's vocabulary, in the engine's
  row dtype (the warp's: float32 by default), checked where they enter verification (finite,
  non-negative, summing to 1 within ``ROW_SUM_TOL`` of that dtype; one reduction per call whose
  verdict stays on the device until the iteration's one host read, :meth:`raise_if_bad`);
* each row's random stream (:mod:`hsd_fast.rng`: ``u(seed_b, c)`` for the row's own counter ``c``;
  only active rows advance);
* vocabulary ids (:class:`~hsd_fast.engine.vocab.VocabMap`): engine ids in the step, model ids in
  the contexts the levels read;
* the verification kernel, the metric tallies (on the device, :class:`~hsd_fast.engine.metrics.Tally`)
  and, only when asked for, timing (with a device synchronisation around each timed call);
* the middle levels' token and row buffers, allocated once per call and reused.

Host reads: :meth:`any` (a middle level's loop condition) and :meth:`raise_if_bad` are the only
ones; nothing else here waits for the device.
"""

from __future__ import annotations

import time

import torch

from ..drafters import point_mass_rows
from ..kernels import ROW_SUM_TOL, draws_needed
from ..rng import row_keys, uniforms
from .levels import level_name
from .metrics import Tally

__all__ = ["CallState", "append"]


def append(seq: torch.Tensor, lens: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A copy of ``seq`` [B, W] widened to ``W + n`` with ``new`` [B, n] written at
    ``seq[b, lens[b]:]`` (``lens <= W``).  Entries past a row's length are garbage by convention."""
    B, n = new.shape
    seq = torch.cat([seq, seq.new_zeros(B, n)], 1)
    if n:
        seq.scatter_(1, lens[:, None] + torch.arange(n, device=seq.device), new)
    return seq


class CallState:
    """Per-call state of a :class:`~hsd_fast.engine.decoder.SpeculativeDecoder` (module docstring)."""

    def __init__(self, dec, seeds: torch.Tensor, timing: bool, plan):
        self.dec = dec
        # the call's stack (hsd_fast.engine.plan.Plan): level j of the step is the decoder's level chain[j]
        self.chain = plan.chain
        self.levels = [dec.levels[i] for i in plan.chain]
        self.n, self.thresholds = len(plan.chain) - 1, plan.thresholds
        self.schemes = tuple(dec.schemes[i - 1] for i in plan.chain[1:])  # each verifying level's own scheme
        self.vocab, self.warp = dec.vocab, dec.warp
        self.dtype = dec.warp.dtype  # every probability row of the call: [B, n, V] of this dtype
        self.row_tol = ROW_SUM_TOL[self.dtype]  # a probability row must sum to 1 within this
        self.drafter_at_bottom = self.n > 0 and getattr(self.levels[0], "kind", None) == "drafter"
        self.stop_rule = dec.draft_stop  # levels[0]'s stopping rule (hsd_fast.engine.stopping) or None
        self.n_drafts = getattr(dec, "n_drafts", 1)  # drafts per row of a multi-draft stack (hsd_fast.engine.multidraft)
        self.keys = row_keys(seeds)  # [B]
        self.counters = torch.zeros_like(seeds)  # [B] uniforms used by each row
        self.bad = torch.zeros(len(self.levels), dtype=torch.bool, device=seeds.device)  # a level gave bad rows
        self.tally = Tally(self.levels, self.thresholds, seeds.device)
        self.timing = timing
        self._buffers: dict = {}

    # -- time (only when asked for) ---------------------------------------------------------------

    def _clock(self) -> float:
        if self.timing and self.dec.device.type == "cuda":
            torch.cuda.synchronize(self.dec.device)
        return time.perf_counter() if self.timing else 0.0

    # -- what the step calls --------------------------------------------------------------------------

    def probs(self, level: int, seq, lens, n_out: int, active) -> torch.Tensor:
        """Level ``level``'s warped rows on the engine's vocabulary, checked.  -> [B, n_out, V]"""
        lvl = self.levels[level]
        t0 = self._clock()
        p = lvl.probs(seq, lens, n_out, self.warp)
        self.tally.call(level, seq.shape[0], n_out, self._clock() - t0)
        want = (seq.shape[0], n_out, self.vocab.level_width)
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != want or p.dtype not in (torch.float32, torch.float64):
            got = f"{tuple(p.shape)} {p.dtype}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"levels[{self.chain[level]}]: {level_name(lvl)}.probs returned {got}, expected a float32 or float64 tensor of shape {want}")
        p = self.vocab.pad(p.to(self.dtype))
        bad = ~((p.sum(-1) - 1).abs() <= self.row_tol) | (p.amin(-1) < 0)  # [B, n_out]; NaN counts as bad
        self.bad[level] |= (bad.any(-1) & active).any()
        return p

    def propose(self, seq, lens, n: int, active):
        """A drafter's ``n`` proposals (engine ids) and their point-mass laws.  -> [B, n], [B, n, V]"""
        t0 = self._clock()
        tokens, bad = self.levels[0].propose(seq, lens, n)
        self.tally.call(0, seq.shape[0], n, self._clock() - t0)
        self.bad[0] |= (bad & active).any()
        # an id outside the vocabulary is reported by the bad flag at the next host read; until then it
        # must still index the vocabulary map and the point-mass rows
        tokens = self.vocab.to_engine(tokens.clamp(0, self.vocab.vocab_size - 1))
        return tokens, point_mass_rows(tokens, self.vocab.V, self.dtype)

    def draws(self, n: int, active) -> torch.Tensor:
        """``n`` uniforms per row from each row's own stream; only active rows advance.  # [B, n]"""
        u = uniforms(self.keys, self.counters, n)
        self.counters += n * active.to(torch.int64)
        return u

    def append(self, seq, lens, engine_tokens) -> torch.Tensor:
        return append(seq, lens, self.vocab.to_model(engine_tokens))

    def verify(self, level: int, target_probs, draft_probs, draft_tokens, draws, draft_lens=None):
        scheme = self.schemes[level - 1]
        t0 = self._clock()
        ragged = {} if draft_lens is None else {"draft_lens": draft_lens}  # only adaptive drafts: custom verify_fns need not take it
        out = self.dec.verify_fn(scheme, target_probs, draft_probs, draft_tokens, draws=draws[:, : draws_needed(scheme, draft_tokens.shape[1])], **ragged)
        self.tally.verified(level, self._clock() - t0)
        return out[0].to(torch.int64), out[1].to(torch.int64)

    def verify_multi(self, target_probs, draft_probs, draft_tokens, draws):
        """The target's multi-draft verification: [B, N, K+1, V], [B, N, K, V], [B, N, K], draws [B, K N + 1]."""
        t0 = self._clock()
        out = self.dec.verify_fn(self.schemes[0], target_probs, draft_probs, draft_tokens, draws=draws)
        self.tally.verified(1, self._clock() - t0)
        return out[0].to(torch.int64), out[1].to(torch.int64)

    def record(self, level: int, target_probs, draft_probs, draft_tokens, num_accepted, active, draft_lens=None) -> None:
        self.tally.record(level, target_probs, draft_probs, draft_tokens, num_accepted, active, draft_lens)
        if draft_lens is not None and level == 1 and self.stop_rule.learns:  # what the rule learns from: this round's tested tokens
            cols = torch.arange(draft_tokens.shape[1], device=num_accepted.device)[None, :]
            tested = (cols <= num_accepted[:, None]) & (cols < draft_lens[:, None]) & active[:, None]
            conf = draft_probs.gather(-1, draft_tokens.clamp(min=0)[..., None])[..., 0]
            self.stop_rule.observe(conf[tested], (cols < num_accepted[:, None])[tested])

    def record_autoregressive(self, active) -> None:
        self.tally.autoregressive(active)

    def buffers(self, level: int, B: int):
        """Level ``level``'s token and row buffers for ``B`` rows (allocated once per call; rows only
        ever retire, so the first ``B`` rows of the first allocation serve).  -> [B, cap], [B, cap, V]"""
        if level not in self._buffers:
            T, T_low = self.thresholds[level], self.thresholds[level - 1]
            cap = T + 2 * (T_low + 1)  # filled <= T + T_low, so filled + T_low + 1 columns always fit
            dev = self.keys.device
            self._buffers[level] = (torch.zeros(B, cap, dtype=torch.int64, device=dev), torch.zeros(B, cap, self.vocab.V, dtype=self.dtype, device=dev))
        tok, rows = self._buffers[level]
        return tok[:B], rows[:B]

    def any(self, need: torch.Tensor) -> bool:
        """``need.any()`` read on the host, with the bad-row verdict in the same read."""
        more, bad = torch.stack([need.any(), self.bad.any()]).tolist()
        if bad:
            self.raise_if_bad(True)
        return bool(more)

    # -- what the decoder calls -----------------------------------------------------------------------

    def raise_if_bad(self, bad: bool) -> None:
        if not bad:
            return
        level = int(torch.nonzero(self.bad)[0, 0])
        lvl = self.levels[level]
        level = self.chain[level]  # the decoder's index of the level
        if getattr(lvl, "kind", None) == "drafter":
            raise ValueError(f"levels[0]: drafter {level_name(lvl)} proposed an id outside [0, {self.vocab.vocab_size}); nothing from this iteration was emitted")
        raise ValueError(
            f"levels[{level}]: {level_name(lvl)} produced a probability row that is not finite, "
            "non-negative and normalised (NaN or inf logits, e.g. an fp16 overflow or a logits_processor "
            "returning NaN, or a custom level's bad rows); nothing from this iteration was emitted"
        )

    def keep(self, live: torch.Tensor) -> None:
        """Retire every row not in ``live`` (the rows kept, in order)."""
        self.keys, self.counters = self.keys[live], self.counters[live]
