"""Online re-planning (``SpeculativeDecoder(thresholds="auto", replan_every=N)``, hsd_fast.engine.replan).

* Lossless, draw for draw: a re-planned call is hsd_ref's hierarchy sampler run with, at each
  iteration, the thresholds the call reports for it (``metrics.plans``), on the same uniforms, over
  exact tables: two- and three-level stacks (an early exit among them), every engine scheme.  The
  costs are pinned (huge call counts at every total), so the plans are a deterministic function of
  the measured acceptance and do change during the call.
* Past only: the acceptance counts a re-plan sees before iteration ``i`` are exactly those of
  iterations ``< i`` (recomputed from the replay).
* A scripted planner that raises and lowers thresholds every iteration (buffers and histograms
  re-sized mid-call), again draw for draw; arguments are validated.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from hsd_fast.engine import ENGINE_SCHEMES, EarlyExit, SpeculativeDecoder
from hsd_fast.engine.plan import AutoPlanner
from hsd_fast.engine.tables import TableModel
from hsd_ref import TableLM
from hsd_ref.exact import sample_index
from hsd_ref.registry import get_scheme
from hsd_ref.schemes.hierarchy import Hierarchy, mix_middle
from hsd_ref.warp import warped_model

from tests.helpers import Replay

pytestmark = pytest.mark.usefixtures("one_thread")

COST = (0.15, 0.4, 1.0)  # pinned seconds per call: draft, middle, target (constant in the positions)


def _stack(kind: str, greedy: bool):
    """(engine levels, exact warped models) bottom-up: "two" = d -> t; "three" = d -> m -> t with a
    middle close to the target; "exit" = d -> (exit of t's first layer) -> t."""
    t, d = TableLM.random(4, 3), TableLM.random(4, 4)
    warp = dict(temperature=0) if greedy else {}
    if kind == "two":
        lms = [d, t]
        levels = [TableModel([d], "d"), TableModel([t], "t")]
    elif kind == "three":
        m = mix_middle(Fraction(3, 4)).build(t, d)
        lms = [d, m, t]
        levels = [TableModel([d], "d"), TableModel([m], "m"), TableModel([t], "t")]
    else:
        m = mix_middle(Fraction(3, 4)).build(t, d)
        full = TableModel([m, t], "t+exit")
        lms = [d, m, t]
        levels = [TableModel([d], "d"), EarlyExit(full, 1), full]
    return levels, [warped_model(x, **warp) for x in lms]


def _pin_costs(dec: SpeculativeDecoder, B: int) -> None:
    """Give every level a cost point at every total a call can score, with so many calls behind it
    that the call's own timings move no mean: the plans then depend on the acceptance alone."""
    for i in range(len(dec.levels)):
        cost = COST[-1] if i == len(dec.levels) - 1 else COST[min(i, 1)]
        for total in range(1, B * (dec.planner.max_threshold + 2) + 1):
            dec.planner.costs[i][total] = [10**9, 10**9 * cost]


def _reference(exact, schemes, plans, prompt, seed, n):
    """hsd_ref's stream for one row, iteration ``j`` run with the thresholds of the last plan of
    ``plans`` (``metrics.plans``) starting at or before ``j``.  -> (tokens, per-iteration samples)"""
    rng, out, samples = Replay(seed), (), []
    chain = plans[0][1]
    models = [exact[i] for i in chain]
    verifiers = [get_scheme("tokenwise" if s == "greedy" else s) for s in schemes]
    while len(out) < n:
        j = len(samples)
        ths = [p for p in plans if p[0] <= j][-1][2]
        assert [p[1] for p in plans] == [chain] * len(plans)  # the chain never changes
        if len(models) == 1:
            s = sample_index(models[0].probs(tuple(prompt) + out), Fraction(rng.random()))
            samples.append(None)
            out += (s,)
            continue
        h = Hierarchy(middles=list(models[1:-1]), verifiers=verifiers, thresholds=tuple(ths[:-1]))
        it = h.sample_iteration(models[-1], models[0], tuple(prompt) + out, ths[-1], rng)
        samples.append((it, ths))
        out += it.tokens
    return list(out[:n]), samples


def _check(dec, res, exact, prompts, seeds, n):
    chain = res.metrics.plans[0][1]
    schemes = [dec.schemes[i - 1] for i in chain[1:]]
    got = []
    for b, prompt in enumerate(prompts):
        want, samples = _reference(exact, schemes, res.metrics.plans, prompt, seeds[b], n)
        assert res.tokens[b] == want, (b, res.metrics.plans)
        got.append(samples)
    return got


@pytest.mark.parametrize("kind", ["two", "three", "exit"])
@pytest.mark.parametrize("scheme", ENGINE_SCHEMES)
def test_replanned_calls_equal_hsd_ref_with_the_plans_they_report(kind, scheme):
    greedy = scheme == "greedy"
    levels, exact = _stack(kind, greedy)
    dec = SpeculativeDecoder(levels, scheme=scheme, thresholds="auto", replan_every=1, eos_token_id=None, temperature=0.0 if greedy else 1.0)
    dec.planner.max_threshold = 4  # keeps the exact replay small
    prompts, n = [[0, 1, 2], [3], [2, 2]], 12
    _pin_costs(dec, len(prompts))
    changed = False
    for call in range(2):  # the first explores the whole stack; the second starts from the first's measurements
        seeds = [100 * call + 7 * b for b in range(len(prompts))]
        res = dec.generate(prompts, max_new_tokens=n, seeds=seeds)
        plans = res.metrics.plans
        assert plans[0] == (0, res.plan.chain, res.plan.thresholds)
        assert [p[0] for p in plans] == sorted({p[0] for p in plans})  # one plan per start, in order
        changed |= len({p[2] for p in plans}) > 1
        _check(dec, res, exact, prompts, seeds, n)
        assert res.metrics.as_dict()["plans"][0][0] == 0
    assert changed  # otherwise this tests nothing


class _Watching(AutoPlanner):
    """An AutoPlanner that records the call's acceptance totals each re-plan is given."""

    seen: list

    def with_call(self, chain, levels):
        self.seen.append(tuple((lm.accepted, lm.rejections) for lm in levels[1:]))
        return super().with_call(chain, levels)


@pytest.mark.parametrize("scheme", ["tokenwise", "block"])
def test_a_replan_sees_exactly_the_iterations_before_it(scheme):
    levels, exact = _stack("two", False)
    dec = SpeculativeDecoder(levels, scheme=scheme, thresholds="auto", replan_every=2, eos_token_id=None)
    dec.planner.__class__ = _Watching
    dec.planner.seen = []
    prompts, seeds, n = [[0, 1], [3]], [11, 12], 14
    _pin_costs(dec, len(prompts))
    res = dec.generate(prompts, max_new_tokens=n, seeds=seeds)
    samples = _check(dec, res, exact, prompts, seeds, n)
    assert len({p[2] for p in res.metrics.plans}) > 1
    # the re-plan after iteration i (i = 2, 4, ...) saw the outcomes of iterations 0..i-1, all rows
    for k, seen in enumerate(dec.planner.seen):
        i = 2 * (k + 1)
        acc = sum(s[0].num_accepted for rows in samples for s in rows[:i])
        rej = sum(s[0].num_accepted < s[1][-1] for rows in samples for s in rows[:i])
        assert seen == ((acc, rej),), (i, seen)
    assert dec.planner.seen  # re-plans happened


class _Scripted:
    """A planner stand-in whose re-plans walk a fixed list of thresholds, one per re-plan."""

    def __init__(self, script):
        self.script, self.k = list(script), 0

    def with_call(self, chain, levels):
        return self

    def thresholds_for(self, chain, B):
        self.k += 1
        return self.script[(self.k - 1) % len(self.script)]


@pytest.mark.parametrize("scheme", ["tokenwise", "hsd_capped"])
def test_scripted_thresholds_up_and_down_draw_for_draw(scheme):
    levels, exact = _stack("three", False)
    dec = SpeculativeDecoder(levels, scheme=scheme, thresholds="auto", replan_every=1, eos_token_id=None)
    script = _Scripted([(1, 4), (3, 1), (2, 2), (1, 1), (4, 3)])
    dec.planner.with_call = script.with_call  # the call's first plan is the real planner's (exploring)
    prompts, seeds, n = [[0, 1, 2], [1], [3, 3], [2]], [5, 6, 7, 8], 13
    res = dec.generate(prompts, max_new_tokens=n, seeds=seeds)
    assert len(res.metrics.plans) > 4 and res.metrics.plans[0][2] == (2, 4)  # the stack's default first
    _check(dec, res, exact, prompts, seeds, n)
    assert "re-planned" in res.metrics.format()


def test_without_replan_every_a_call_has_one_plan():
    levels, _ = _stack("two", False)
    res = SpeculativeDecoder(levels, thresholds="auto", eos_token_id=None).generate([[0]], max_new_tokens=4)
    assert res.metrics.plans == [(0, res.plan.chain, res.plan.thresholds)]
    res = SpeculativeDecoder(levels, thresholds=(3,), eos_token_id=None).generate([[0]], max_new_tokens=4)
    assert res.metrics.plans == [(0, (0, 1), (3,))]


@pytest.mark.parametrize("bad", [0, -2, 1.5, "3", True, [2]])
def test_replan_every_must_be_a_positive_int(bad):
    levels, _ = _stack("two", False)
    with pytest.raises(ValueError, match="replan_every"):
        SpeculativeDecoder(levels, thresholds="auto", replan_every=bad)


@pytest.mark.parametrize("thresholds", [None, 3, (2,)])
def test_replan_every_needs_auto(thresholds):
    levels, _ = _stack("two", False)
    with pytest.raises(ValueError, match="replan_every.*auto"):
        SpeculativeDecoder(levels, thresholds=thresholds, replan_every=2)


def test_thresholds_for_keeps_the_chain():
    """Where the optimiser would rather drop the draft (a compute-bound target at B = 8), re-planning
    keeps the chain and returns its best thresholds by the latency formula; an unmeasured edge gives
    ``None`` (no re-plan)."""
    from hsd_ref.latency import fhierarchy_latency

    pl = AutoPlanner(["L0:d", "L1:t"], [False, False], (4,), max_threshold=6)
    assert pl.thresholds_for((0, 1), 8) is None  # no acceptance yet
    pl.counts[(0, 1)] = [80, 20]
    target = {8 * m: float(m) for m in (1, 2, 3, 5, 9)}
    for total, c in target.items():
        pl.add_cost(1, total, c)
    pl.add_cost(0, 8, 0.4)
    assert pl.plan(8).chain == (1,)  # the whole-stack plan: the target alone
    got = pl.thresholds_for((0, 1), 8)
    lat = {k: fhierarchy_latency([{8: 0.4}, target], [0.8], [k], batch=8) for k in range(1, 7)}
    assert got == (min(lat, key=lat.get),)
    # where the chain is the optimiser's choice, its thresholds are the optimiser's
    fast = AutoPlanner(["L0:d", "L1:t"], [False, False], (4,))
    fast.counts[(0, 1)] = [80, 20]
    for total in (1, 2, 3, 5, 9):
        fast.add_cost(1, total, 1.0)
    fast.add_cost(0, 1, 0.05)
    assert fast.thresholds_for((0, 1), 1) == fast.plan(1).thresholds
