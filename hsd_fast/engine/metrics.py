"""Metrics returned with every generation call, and the measured inputs of the hierarchy optimiser
(:meth:`Metrics.optimizer_inputs` -> ``hsd_ref.optimize.optimal_hierarchy(**inputs)``).

Per level: forward calls and time (model levels), proposals (drafters); per verifying level:
verification rounds (row-rounds), drafted and accepted tokens, ``accept_counts`` (gpt-fast style
histogram of accepted tokens per round), the empirical acceptance rate, the i.i.d. maximum-likelihood
estimate ``alpha = accepted / (accepted + rejections)`` (each tested position is an independent
Bernoulli(alpha) test under Globerson et al.'s i.i.d. model, papers.md §4), and the mean of
``sum_v min(p(v), q(v))`` over tested positions (Leviathan et al.'s ``alpha = E[beta]``, the
lower-variance estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["LevelMetrics", "Metrics", "Tally"]


@dataclass
class LevelMetrics:
    name: str
    kind: str  # "drafter", "model" (draft / middle) or "target"
    scheme: str | None = None  # the scheme this level verifies the level below with
    threshold: int | None = None  # T_i: tokens this level passes up (the target: tokens it verifies)
    calls: int = 0  # batched forward calls (drafters: proposal calls)
    time_s: float = 0.0
    rounds: int = 0  # verification rounds, counted per active row
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0
    minpq_sum: float = 0.0
    tested: int = 0
    accept_counts: list[int] = field(default_factory=list)
    by_positions: dict = field(default_factory=dict)  # positions scored per call -> [calls, seconds]
    by_total: dict = field(default_factory=dict)  # rows x positions per call -> [calls, seconds] (a drafter: rows -> [proposal steps, seconds])
    verify_s: float = 0.0  # time in the verification kernel of this level (not in time_s)

    @property
    def time_per_call_s(self) -> float | None:
        return self.time_s / self.calls if self.calls else None

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted over this level's verification rounds."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def alpha(self) -> float | None:
        """i.i.d. per-token acceptance MLE: accepted / (accepted + rejections)."""
        n = self.accepted + self.rejections
        return self.accepted / n if n else None

    @property
    def alpha_minpq(self) -> float | None:
        return self.minpq_sum / self.tested if self.tested else None

    def as_dict(self) -> dict:
        d = {
            "name": self.name,
            "kind": self.kind,
            "scheme": self.scheme,
            "threshold": self.threshold,
            "calls": self.calls,
            "time_s": self.time_s,
            "time_per_call_s": self.time_per_call_s,
            "by_positions": {str(m): list(v) for m, v in sorted(self.by_positions.items())},
            "by_total": {str(m): list(v) for m, v in sorted(self.by_total.items())},
        }
        if self.scheme is not None:
            d.update(
                verify_s=self.verify_s,
                rounds=self.rounds,
                drafted=self.drafted,
                accepted=self.accepted,
                rejections=self.rejections,
                acceptance_rate=self.acceptance_rate,
                alpha=self.alpha,
                alpha_minpq=self.alpha_minpq,
                accept_counts=list(self.accept_counts),
            )
        return d


@dataclass
class Metrics:
    """Everything measured during one ``generate`` call (levels bottom-up, the target last)."""

    levels: list[LevelMetrics]
    new_tokens: int = 0
    wall_time_s: float = 0.0
    target_rounds: int = 0  # target verification rounds, per active row (= levels[-1].rounds)
    target_calls: int = 0  # batched target forward calls during decoding (the prefill is not one)
    prefill_s: float = 0.0  # the prompts' prefill on every caching backend (part of wall_time_s)
    probe_s: float = 0.0  # cost probes of thresholds="auto" before the call's plan (part of wall_time_s; once per batch size)
    timed: bool = False  # level calls and verifications were timed (SpeculativeDecoder(timing=True))
    plan: str = ""  # the levels and thresholds this call ran (SpeculativeDecoder(thresholds="auto") chooses them per call)
    # every plan the call ran: (first target iteration, chain of decoder level indices, thresholds), in
    # order; more than one only with SpeculativeDecoder(thresholds="auto", replan_every=N)
    plans: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def decode_s(self) -> float:
        """Wall time after the prefill (and the cost probes of an auto plan)."""
        return self.wall_time_s - self.prefill_s - self.probe_s

    @property
    def verify_s(self) -> float:
        """Time in the verification kernels, all levels."""
        return sum(lv.verify_s for lv in self.levels)

    @property
    def other_s(self) -> float:
        """Decode time outside the levels' forwards and the verification kernels (the engine's own
        bookkeeping: appends, buffers, random numbers, metrics)."""
        return self.decode_s - sum(lv.time_s for lv in self.levels) - self.verify_s

    @property
    def tokens_per_target_call(self) -> float | None:
        """Block efficiency: emitted tokens per target verification, per row (before EOS/length cuts)."""
        top = self.levels[-1]
        return (top.accepted + top.rounds) / top.rounds if top.rounds else None

    def as_dict(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "wall_time_s": self.wall_time_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_target_call": self.tokens_per_target_call,
            "target_calls": self.target_calls,
            "target_rounds": self.target_rounds,
            "prefill_s": self.prefill_s,
            "probe_s": self.probe_s,
            "decode_s": self.decode_s,
            "timed": self.timed,
            "plan": self.plan,
            "plans": [[it, list(chain), list(ths)] for it, chain, ths in self.plans],
            "verify_s": self.verify_s,
            "other_s": self.other_s,
            "levels": [lv.as_dict() for lv in self.levels],
        }

    def optimizer_inputs(self) -> dict:
        """Keyword arguments for ``hsd_ref.optimize.optimal_hierarchy(**inputs)`` from this run.

        ``models``: unique level names ``"L{i}:{name}"`` bottom-up, target last.  ``costs``: per model
        the measured mean seconds per forward call as ``{positions scored: seconds}`` points (a
        drafter: its proposal time per proposed token at ``m = 1``).  Early-exit levels are measured
        as they ran, i.e. with the KV/hidden-state sharing already in their cost; nothing here marks
        them as ``CostCurve.early_exit``.  ``acceptance``: ``{(level i-1, level i): alpha}`` for the
        adjacent pairs of this chain, the i.i.d. per-token acceptance MLE.  Pairs never run are absent.
        """
        names = [f"L{i}:{lv.name}" for i, lv in enumerate(self.levels)]
        costs = {}
        for i, lv in enumerate(self.levels):
            if lv.kind == "drafter":
                per_token = lv.time_s / (lv.calls * (lv.threshold or 1)) if lv.calls else 0.0
                costs[names[i]] = {1: per_token}
            else:
                costs[names[i]] = {m: t / c for m, (c, t) in sorted(lv.by_positions.items()) if c}
        acceptance = {}
        for i in range(1, len(self.levels)):
            a = self.levels[i].alpha
            if a is not None:
                acceptance[(names[i - 1], names[i])] = a
        return {"models": names, "costs": costs, "acceptance": acceptance}

    def format(self) -> str:
        tpc = self.tokens_per_target_call
        lines = [
            f"new tokens {self.new_tokens}  wall {self.wall_time_s:.3f} s  {self.tokens_per_s:.2f} tok/s  "
            f"tokens/target call {'n/a' if tpc is None else f'{tpc:.3f}'}",
            f"  prefill {self.prefill_s:.3f} s, decode {self.decode_s:.3f} s"
            + (f" (verification kernels {self.verify_s:.3f} s, engine bookkeeping {self.other_s:.3f} s)" if self.timed else " (level calls untimed)")
            + (f", cost probes {self.probe_s:.3f} s" if self.probe_s else ""),
        ]
        if self.plan:
            lines.append(f"  plan: {self.plan}")
        if len(self.plans) > 1:
            lines.append("  re-planned: " + ", ".join(f"T={list(ths)} from iteration {it}" for it, _, ths in self.plans))
        for i, lv in enumerate(self.levels):
            s = f"  L{i} {lv.kind:7s} {lv.name}"
            if lv.threshold is not None:
                s += f" (T={lv.threshold})"
            s += f": calls {lv.calls}"
            if self.timed:
                s += f", {lv.time_s:.3f} s" + (f" ({1000 * lv.time_s / lv.calls:.2f} ms/call)" if lv.calls else "")
            if lv.scheme is not None:
                a = "n/a" if lv.acceptance_rate is None else f"{lv.acceptance_rate:.3f}"
                al = "n/a" if lv.alpha is None else f"{lv.alpha:.3f}"
                s += f"; verifies L{i - 1} with {lv.scheme}: accepted {lv.accepted}/{lv.drafted} ({a}), alpha {al}"
            lines.append(s)
        return "\n".join(lines)


class Tally:
    """The counts of one ``generate`` call as it runs: verification counts on the device (read once,
    by :meth:`into`), call counts on the host (the host knows every call it makes), seconds only when
    the call was timed."""

    _FIELDS = ("rounds", "drafted", "accepted", "rejections", "tested")

    def __init__(self, levels, thresholds, device: torch.device):
        L = len(levels)
        self.counts = torch.zeros(L, len(self._FIELDS), dtype=torch.int64, device=device)  # [L, 5]
        self.minpq = torch.zeros(L, dtype=torch.float64, device=device)  # [L]
        # level i >= 1 verifies batches of T_{i-1} tokens: accepted counts 0..T_{i-1}
        self.hist = [torch.zeros(thresholds[i - 1] + 1 if i else 1, dtype=torch.int64, device=device) for i in range(L)]
        self.calls, self.time_s, self.verify_s = [0] * L, [0.0] * L, [0.0] * L
        self.by_positions: list[dict] = [{} for _ in range(L)]
        self.by_total: list[dict] = [{} for _ in range(L)]
        self.drafter = [getattr(lvl, "kind", None) == "drafter" for lvl in levels]

    def call(self, level: int, rows: int, positions: int, seconds: float) -> None:
        """One call of ``level`` scoring ``positions`` positions for each of ``rows`` rows (a drafter:
        proposing them)."""
        self.calls[level] += 1
        self.time_s[level] += seconds
        if self.drafter[level]:
            rec = self.by_total[level].setdefault(rows, [0, 0.0])
            rec[0] += positions  # proposal steps
            rec[1] += seconds
            return
        for book, key in ((self.by_positions[level], positions), (self.by_total[level], rows * positions)):
            rec = book.setdefault(key, [0, 0.0])
            rec[0] += 1
            rec[1] += seconds

    def verified(self, level: int, seconds: float) -> None:
        self.verify_s[level] += seconds

    def autoregressive(self, active: torch.Tensor) -> None:
        self.counts[0, 0] += active.sum()

    def record(self, level: int, target_probs, draft_probs, draft_tokens, num_accepted, active, draft_lens=None) -> None:
        """One verification by ``level``: target_probs [B, T+1, V], draft_probs [B, T, V], draft_tokens
        [B, T], num_accepted [B], active [B] bool (only active rows count); ``draft_lens`` [B] for a
        ragged (adaptive) draft, whose row ``b`` drafted ``draft_lens[b] <= T`` tokens."""
        T = draft_probs.shape[1]
        a = active.to(torch.int64)
        lens = torch.full_like(num_accepted, T) if draft_lens is None else draft_lens
        cols = torch.arange(T, device=a.device)[None, :]
        tested = (cols <= num_accepted[:, None]) & (cols < lens[:, None]) & active[:, None]  # [B, T]
        if self.drafter[level - 1]:  # a drafter's point masses: sum_v min(p, q) = p(proposal)
            overlap = target_probs[:, :T].gather(-1, draft_tokens[..., None])[..., 0]  # [B, T]
        else:
            overlap = torch.minimum(target_probs[:, :T], draft_probs).sum(-1)  # [B, T]; a metric: the row dtype's sum
        rounds = a.sum()
        self.counts[level] += torch.stack([rounds, (lens * a).sum(), (num_accepted * a).sum(), ((num_accepted < lens).to(torch.int64) * a).sum(), tested.sum()])
        self.minpq[level] += (overlap * tested).sum()
        self.hist[level].scatter_add_(0, num_accepted, a)

    def into(self, levels: list[LevelMetrics]) -> None:
        """Write the totals into ``levels`` (one host read of the device counts)."""
        counts, minpq, *hist = (x.tolist() for x in (self.counts, self.minpq, *self.hist))
        for i, lm in enumerate(levels):
            for name, value in zip(self._FIELDS, counts[i]):
                setattr(lm, name, value)
            lm.minpq_sum = minpq[i]
            lm.accept_counts = hist[i] if i and lm.rounds else []
            lm.calls, lm.time_s, lm.verify_s = self.calls[i], self.time_s[i], self.verify_s[i]
            lm.by_positions = {k: list(v) for k, v in self.by_positions[i].items()}
            lm.by_total = {k: list(v) for k, v in self.by_total[i].items()}
