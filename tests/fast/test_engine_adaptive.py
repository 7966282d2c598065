"""Adaptive draft length through the engine users run (``SpeculativeDecoder(draft_stop=...)``).

Draw for draw against hsd_ref's ``AdaptiveLength.sample_iteration`` over exact tables, driven by
the engine's own uniforms (``tests.helpers.Replay``), iteration after iteration: the stopping rules'
coins, the draft tokens, the ragged verification and the streams' advance must all agree.  Float and
exact arithmetic could order a uniform differently only within rounding of a boundary (~1e-16 per
draw).  The learned rule (whose threshold is a function of the past) is checked by replaying its
thresholds into hsd_ref, and by a G test of the first tokens' law at 1e-6 with a power check.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from hsd_fast.engine import SpeculativeDecoder
from hsd_fast.engine.stopping import ConfidenceStop, LearnedConfidenceStop, RandomisedStop, StopRule
from hsd_fast.engine.tables import TableModel
from hsd_ref import TableLM
from hsd_ref.registry import get_scheme
from hsd_ref.schemes import adaptive as ref_adaptive
from tests.helpers import Replay, assert_target_law_with_power

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ["tokenwise", "block", "hsd_capped"]
RULES = {
    "confidence": (lambda: ConfidenceStop(0.5), lambda: ref_adaptive.ConfidenceStop(Fraction(1, 2))),
    "randomised": (lambda: RandomisedStop(0.5, 0.25), lambda: ref_adaptive.RandomisedStop(Fraction(1, 2), Fraction(1, 4))),
}


def pair(seed: int, V: int = 3):
    return TableLM.random(V, seed, max_denominator=8), TableLM.random(V, seed + 1, max_denominator=8)


def reference(scheme, rule, target, draft, prompt, seed, k, n):
    """hsd_ref's stream for one row: AdaptiveLength iterations on the engine's uniforms, cut at n."""
    ad = ref_adaptive.AdaptiveLength(get_scheme(scheme), rule)
    rng, out = Replay(seed), ()
    while len(out) < n:
        u = [rng.random() for _ in range(ad.iteration_draws(k))]
        out += ad.sample_iteration(target, draft, tuple(prompt) + out, k, u).result.tokens
    return list(out[:n])


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_adaptive_engine_equals_hsd_ref_draw_for_draw(scheme, rule):
    fast_rule, ref_rule = RULES[rule]
    for case in range(4):
        target, draft = pair(100 * case + 7)
        k = 1 + case % 3
        dec = SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme=scheme, thresholds=k,
                                 draft_stop=fast_rule(), eos_token_id=None)
        prompts = [[0], [1, 2], [2, 2, 0], [1], [0, 1], [2]]
        seeds = [31 * case + b for b in range(len(prompts))]
        res = dec.generate(prompts, max_new_tokens=9, seeds=seeds)
        for b, prompt in enumerate(prompts):
            assert res.tokens[b] == reference(scheme, ref_rule(), target, draft, prompt, seeds[b], k, 9), (case, b)


def test_the_stop_actually_varies_the_length():
    """The cells above would pass with a rule that never stops: make sure it does stop, at different
    lengths, and that the metrics count the drafted tokens of each row."""
    target, draft = pair(7)
    dec = SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme="block", thresholds=3,
                             draft_stop=RandomisedStop(0.5, 0.25), eos_token_id=None)
    res = dec.generate([[0]] * 8, max_new_tokens=12, seeds=list(range(8)))
    top = res.metrics.levels[-1]
    assert 0 < top.drafted < 3 * top.rounds  # some drafts ended early
    assert top.accepted <= top.drafted


class Recorder(StopRule):
    """Wraps a learned rule and records the threshold each iteration used, for the replay."""

    learns = True

    def __init__(self, inner: LearnedConfidenceStop):
        self.inner, self.used, self.name = inner, [], "recorder"

    def reset(self):
        self.inner.reset()
        self.used = []

    def stop(self, t, tokens, probs, coin):
        if t == 0:
            self.used.append(self.inner.threshold)
        return self.inner.stop(t, tokens, probs, coin)

    def observe(self, conf, accepted):
        self.inner.observe(conf, accepted)


class ReplayThresholds(ref_adaptive.StopRule):
    """hsd_ref's confidence rule with the threshold of each iteration given in advance."""

    def __init__(self, thresholds):
        self.thresholds, self.i, self.name = list(thresholds), -1, "replayed"

    def stop_chance(self, context, drafted, draft_rows, target_rows):
        if not drafted:
            self.i += 1
            return Fraction(0)
        q = draft_rows[len(drafted) - 1][drafted[-1]]
        return Fraction(1) if q < Fraction(self.thresholds[self.i]) else Fraction(0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_learned_threshold_replays_in_hsd_ref(scheme):
    target, draft = pair(3)
    rule = Recorder(LearnedConfidenceStop(threshold=0.3, window=16))
    dec = SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme=scheme, thresholds=3, draft_stop=rule, eos_token_id=None)
    res = dec.generate([[1]], max_new_tokens=24, seeds=[5])
    assert len(set(rule.used)) > 1, "the threshold never moved: the replay would test nothing"
    assert res.tokens[0] == reference(scheme, ReplayThresholds(rule.used), target, draft, [1], 5, 3, 24)


def test_draft_stop_errors_name_the_argument():
    target, draft = pair(1)
    levels = [TableModel([draft], "d"), TableModel([target], "t")]
    with pytest.raises(ValueError, match="draft_stop: expected None, a threshold"):
        SpeculativeDecoder(levels, draft_stop="0.4")
    with pytest.raises(ValueError, match="threshold: ConfidenceStop expects a number in"):
        SpeculativeDecoder(levels, draft_stop=1.5)
    with pytest.raises(ValueError, match="draft_stop: needs a draft model at levels"):
        SpeculativeDecoder([levels[1]], draft_stop=0.4)
    with pytest.raises(ValueError, match="draft_stop: not combined with thresholds='auto'"):
        SpeculativeDecoder(levels, thresholds="auto", draft_stop=0.4)

    def old_verify(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="verify_fn: with draft_stop"):
        SpeculativeDecoder(levels, draft_stop=0.4, verify_fn=old_verify)


# ------------------------------------------------------------ the learned rule's law, statistically


def test_learned_rule_keeps_the_target_law_and_the_test_has_power():
    """First 3 tokens, 6000 rows in one call (the rule learns across the batch's rounds), G test at
    false-failure probability 1e-6.  Power: the same test on the DRAFT's law (what a verifier that
    accepts everything would emit; TV to the target's law checked >= 0.15 here) must reject."""
    target, draft = pair(11)
    dec = SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme="block", thresholds=3,
                             draft_stop=LearnedConfidenceStop(threshold=0.4, window=64), eos_token_id=None)
    assert_target_law_with_power(dec, target, draft, (1,))
