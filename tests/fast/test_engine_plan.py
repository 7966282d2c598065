"""The batch-aware plan (``SpeculativeDecoder(thresholds="auto")``, hsd_fast.engine.plan).

* Lossless: every auto call is, draw for draw, the fixed-stack decode of the plan it reports
  (the plan is chosen before the call draws anything), over exact tables and with a drafter.
* Batch-aware: from the same acceptance, a memory-bound cost curve (B = 1) gets a speculative plan
  and a compute-bound one (B = 8) plain autoregressive decoding, by hand-checked margins.
* Probes: missing cost points are probed once per batch size, and only those.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from hsd_fast.drafters import NGramDrafter
from hsd_fast.engine import SpeculativeDecoder
from hsd_fast.engine.plan import PROBE_POSITIONS, AutoPlanner, Plan
from hsd_fast.engine.tables import TableModel
from hsd_ref import TableLM
from hsd_ref.schemes.hierarchy import mix_middle

pytestmark = pytest.mark.usefixtures("one_thread")


def _tables():
    t, d = (TableLM.random(4, seed) for seed in (3, 4))
    m = mix_middle(Fraction(3, 4)).build(t, d)  # a middle close to the target
    return [TableModel([d], "d"), TableModel([m], "m"), TableModel([t], "t")]


@pytest.mark.parametrize("bottom", ["model", "ngram"])
def test_every_auto_call_is_the_fixed_decode_of_its_plan(bottom):
    levels = _tables()
    if bottom == "ngram":
        levels[0] = NGramDrafter(2)
    auto = SpeculativeDecoder(levels, scheme=["tokenwise", "block"], thresholds="auto", eos_token_id=None)
    prompts = {1: [[0, 1, 2]], 3: [[0, 1, 2], [3, 3], [1]]}
    seen = []
    for B in (1, 1, 3, 3, 1):
        seeds = [10 * B + b for b in range(B)]
        res = auto.generate(prompts[B], max_new_tokens=7, seeds=seeds)
        plan = res.plan
        seen.append(plan)
        schemes = [["tokenwise", "block"][i - 1] for i in plan.chain[1:]]
        fixed = SpeculativeDecoder([levels[i] for i in plan.chain], scheme=schemes or "tokenwise",
                                   thresholds=plan.thresholds or None, eos_token_id=None)
        assert res.tokens == fixed.generate(prompts[B], max_new_tokens=7, seeds=seeds).tokens, plan
        assert res.metrics.plan and len(res.metrics.levels) == len(plan.chain)
    assert seen[0].explore and seen[0].chain == (0, 1, 2) and seen[0].thresholds == (2, 4)
    assert not any(p.explore for p in seen[1:])


def _planner(costs_by_total: dict, draft_step: float) -> AutoPlanner:
    pl = AutoPlanner(["L0:d", "L1:t"], [False, False], (4,))
    pl.counts[(0, 1)] = [80, 20]  # alpha = 0.8
    for total, c in costs_by_total.items():
        pl.add_cost(1, total, c)
    pl.add_cost(0, min(costs_by_total), draft_step)
    return pl


def test_memory_bound_curve_gets_speculation_compute_bound_gets_autoregressive():
    # B = 1, a memory-bound target: K = 4 costs 4 * 0.05 + 1.02 = 1.22 per iteration for
    # (1 - 0.8**5) / 0.2 = 3.36 tokens, 0.36 per token against 1: speculation, K >= 4
    one = _planner({1: 1.0, 2: 1.0, 3: 1.0, 5: 1.02, 9: 1.05}, 0.05).plan(1)
    assert one.chain == (0, 1) and one.thresholds[0] >= 4 and one.predicted_speedup > 2.5
    # B = 8, compute-bound (cost proportional to the positions): an iteration of K costs
    # 0.4 K + (K + 1) for at most K + 1 tokens, more than 1 per token: the target alone
    eight = _planner({8 * m: float(m) for m in PROBE_POSITIONS}, 0.4).plan(8)
    assert eight.chain == (1,) and eight.thresholds == () and eight.predicted_speedup == 1.0


def test_realized_decode_rates_overrule_the_model():
    """The model's plan and the target alone each run once per batch size; then the faster so far."""
    from types import SimpleNamespace

    def call(tokens, seconds):
        return SimpleNamespace(levels=[], new_tokens=tokens, decode_s=seconds)

    pl = _planner({1: 1.0, 2: 1.0, 3: 1.0, 5: 1.02, 9: 1.05}, 0.05)
    spec = pl.plan(1)
    assert spec.chain == (0, 1)  # the model's plan first
    pl.record(spec, call(100, 10.0), 1)  # 10 tokens/s
    alone = pl.plan(1)
    assert alone.chain == (1,) and alone.thresholds == ()  # then the target alone, once
    pl.record(alone, call(100, 5.0), 1)  # 20 tokens/s
    assert pl.plan(1) == alone
    pl.record(spec, call(400, 10.0), 1)  # speculation: 500 tokens in 20 s, 25 tokens/s
    assert pl.plan(1) == spec
    assert pl.plan(2).chain == (0, 1) and (2, (1,), ()) not in pl.realized  # another batch size starts over


def test_unmeasured_acceptance_explores_with_the_default_stack():
    pl = AutoPlanner(["L0:d", "L1:t"], [False, False], (4,))
    assert pl.plan(1) == Plan((0, 1), (4,), explore=True)
    assert pl.missing(2) == [(0, 1)] + [(1, m) for m in PROBE_POSITIONS]  # (level, positions per row); level 0 only drafts
    pl.add_cost(1, 2 * 5, 1.0)  # a point at B x m = 2 x 5
    assert (1, 5) not in pl.missing(2) and (1, 5) in pl.missing(1)


def test_probes_once_per_batch_size():
    levels = _tables()[1:]
    auto = SpeculativeDecoder(levels, thresholds="auto", eos_token_id=None)
    first = auto.generate([[0, 1]], max_new_tokens=4, seeds=[1])
    assert first.plan.explore and first.metrics.probe_s == 0  # nothing to plan with yet: no probes
    probed = auto.generate([[0, 1]], max_new_tokens=4, seeds=[2])
    assert probed.metrics.probe_s > 0 and not probed.plan.explore
    assert auto.generate([[1, 1]], max_new_tokens=4, seeds=[3]).metrics.probe_s == 0
    assert auto.planner.missing(1) == []
    assert auto.generate([[0, 1], [2]], max_new_tokens=4, seeds=[4, 5]).metrics.probe_s > 0  # a new batch size
    assert auto.planner.missing(2) == []


def test_auto_is_the_only_string_threshold():
    with pytest.raises(ValueError, match="thresholds"):
        SpeculativeDecoder(_tables()[1:], thresholds="automatic")
    dec = SpeculativeDecoder(_tables()[1:], thresholds="auto")
    assert dec.timing and "T=auto" in dec.describe()
