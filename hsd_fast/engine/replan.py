"""Online re-planning: ``SpeculativeDecoder(thresholds="auto", replan_every=N)``.

Every ``N`` target iterations of a call, the thresholds of the call's chain are re-fitted by
:meth:`hsd_fast.engine.plan.AutoPlanner.thresholds_for` (``hsd_ref.optimize.optimal_hierarchy``)
from everything measured so far: the decoder's earlier calls and this call's iterations up to now
(its tally, read to the host at each re-plan: a few host reads every ``N`` iterations, none
without ``replan_every``).  The call goes on with the new thresholds from the next iteration on.

Scope: the CHAIN stays the one the call started with (its levels' caches were prefilled and its
metrics are per level of that chain); only its thresholds change.  A call on the target alone has
nothing to re-plan.  Costs are those of the call's starting batch size (the probed curve), also
after finished rows retire.

**Lossless** (docs/latency.md, "Online re-planning"): a re-plan happens between iterations and is a
function of past iterations only (their acceptance counts and measured times), never of a random
number the next iteration draws; rows keep their streams (the counters go on where they were).
Each iteration is exact for any fixed plan, so by induction over iterations the output law is the
target's.  tests/fast/test_replan.py replays hsd_ref's sampler with the thresholds each iteration
used, draw for draw.
"""

from __future__ import annotations

import torch

__all__ = ["Replanner", "apply_thresholds"]


def apply_thresholds(run, rows, thresholds: tuple[int, ...]) -> None:
    """Switch the running call ``run`` (a :class:`~hsd_fast.engine.state.CallState`) and its rows to
    ``thresholds`` on the same chain, between iterations: the step reads ``run.thresholds``; the
    middle levels' buffers are sized by the thresholds (reallocated on next use); the accept-count
    histograms grow to the longest batch; the rows' emit width is ``T_{n-1} + 1``."""
    run.thresholds = tuple(thresholds)
    run._buffers.clear()
    tally = run.tally
    for i in range(1, len(tally.hist)):
        h, want = tally.hist[i], thresholds[i - 1] + 1
        if h.numel() < want:
            tally.hist[i] = torch.cat([h, h.new_zeros(want - h.numel())])
    rows.K1 = thresholds[-1] + 1
    rows.cols = torch.arange(rows.K1, device=rows.cols.device)


class Replanner:
    """Re-plans a running call every ``every`` iterations (module docstring).  ``plans``: the call's
    list of ``(first iteration, chain, thresholds)``, appended to on every change."""

    def __init__(self, dec, run, rows, B: int, every: int, plans: list):
        self.dec, self.run, self.rows, self.B, self.every, self.plans = dec, run, rows, B, every, plans
        self.done = 0  # target iterations run so far

    def after_iteration(self) -> None:
        """Called after every target iteration (its outcomes recorded); re-plans every ``every``-th."""
        self.done += 1
        run = self.run
        if self.done % self.every or not self.rows.n_live or run.n == 0:
            return
        levels = self.dec._metrics(run).levels
        run.tally.into(levels)  # this call's totals so far (read to the host)
        new = self.dec.planner.with_call(run.chain, levels).thresholds_for(run.chain, self.B)
        if new is None or new == tuple(run.thresholds):
            return
        apply_thresholds(run, self.rows, new)
        self.plans.append((self.done, run.chain, new))
