"""Context processors, padded vocabularies and stop rules, through the engine users run, draw for draw
against hsd_ref over exact models.

* ``context_processor``: transformers' ``RepetitionPenaltyLogitsProcessor(2)``,
  ``NoBadWordsLogitsProcessor`` and ``NoRepeatNGramLogitsProcessor(3)`` applied at every level of
  random TableModel stacks.  On the engine's logits ``log p`` a penalty of 2 turns ``p(v)`` into
  ``p(v)^2`` for every ``v`` in the context (``log p <= 0`` is multiplied by 2), a bad word's last id
  gets probability 0 after its prefix, and so does every id that would repeat a trigram of the
  context (used over 4 ids and without bad words: banning all 4 ids takes a context of 13 tokens
  or more, longer than any context scored here, prompt + tokens + draft);
  the exact models below are those rules written out in ``Fraction`` (not transformers' code), so
  hsd_ref's hierarchy sampler gives the law the engine must reproduce.
* ``vocab_size``: a target with ids the draft lacks; the law is the target's conditioned on the
  shared ids.
* ``stop``: a stop rule only cuts the stream that the same seeds give without it.

Float rows and exact rows may order a uniform differently only within rounding of a CDF boundary
(about 1e-7 in float32 per draw; none occurs in these seeded runs).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList, NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from hsd_fast.drafters import NGramDrafter
from hsd_fast.engine import EarlyExit, SpeculativeDecoder
from hsd_fast.engine.tables import TableModel
from hsd_ref import TableLM

from tests.fast.test_engine_exact import drafter_model, reference_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_WORDS = [[1], [0, 2]]  # id 1 never; id 2 never right after id 0


def processed(model: TableLM, penalty: bool, bad_words: bool, ngram: bool = False) -> TableLM:
    """``model`` with the repetition penalty 2, the bad words and the no-repeat-trigram rule applied
    exactly (module docstring)."""

    def fn(ctx):
        row = list(model.probs(ctx))
        if penalty:
            row = [p * p if v in ctx else p for v, p in enumerate(row)]
        if bad_words:
            row[1] = Fraction(0)
            if ctx and ctx[-1] == 0:
                row[2] = Fraction(0)
        if ngram and len(ctx) >= 2:
            for i in range(len(ctx) - 2):
                if tuple(ctx[i : i + 2]) == tuple(ctx[-2:]):
                    row[ctx[i + 2]] = Fraction(0)
        total = sum(row)
        return tuple(p / total for p in row)

    return TableLM(model.vocab_size, fn, f"processed({model!r})")


def hf_processors(penalty: bool, bad_words: bool, ngram: bool = False) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if penalty:
        procs.append(RepetitionPenaltyLogitsProcessor(2.0))
    if bad_words:
        procs.append(NoBadWordsLogitsProcessor(BAD_WORDS, eos_token_id=None))
    if ngram:
        procs.append(NoRepeatNGramLogitsProcessor(3))
    return procs


@st.composite
def stacks(draw):
    """1-3 random context-dependent TableLMs (V 3-4, no zero entries, so no processed row is empty),
    optionally an n-gram drafter at the bottom or an early exit in the middle; random schemes,
    thresholds, processors, ragged prompts and seeds."""
    V = draw(st.integers(3, 4))
    n_models = draw(st.integers(1, 3))
    lms = [TableLM.random(V, draw(st.integers(0, 10**6)), max_denominator=8, zero_prob=0, peaked_prob=0) for _ in range(n_models)]
    combos = [(True, False, False), (False, True, False), (True, True, False)]
    if V == 4:  # the trigram rule bans every id only after 13 tokens or more over 4 ids (docstring)
        combos += [(False, False, True), (True, False, True)]
    penalty, bad_words, ngram = draw(st.sampled_from(combos))
    exact = [processed(m, penalty, bad_words, ngram) for m in lms]
    levels: list = [TableModel([m], f"m{i}") for i, m in enumerate(lms)]
    if n_models == 3 and draw(st.booleans()):
        full = TableModel([lms[-2], lms[-1]], "target+exit")
        levels[-2:] = [EarlyExit(full, 1), full]
    th_low = draw(st.integers(1, 3))
    if n_models > 1 and draw(st.booleans()):
        levels[0] = NGramDrafter(2)
        exact[0] = drafter_model(levels[0], V)
        th_low = 1  # the drafter as an exact model drafts one token per call (test_engine_exact)
    n = n_models - 1
    schemes = [draw(st.sampled_from(["tokenwise", "block", "hsd_capped"])) for _ in range(n)]
    th = (th_low, *(draw(st.integers(1, 3)) for _ in range(n - 1)))[:n] if n else ()
    B = draw(st.integers(1, 3))
    prompts = [draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=3)) for _ in range(B)]
    seeds = [draw(st.integers(0, 2**40)) for _ in range(B)]
    return dict(levels=levels, exact=exact, schemes=schemes, th=th, procs=hf_processors(penalty, bad_words, ngram), prompts=prompts, seeds=seeds, max_new=draw(st.integers(1, 6)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
def test_context_processors_equal_hsd_ref_draw_for_draw(s):
    dec = SpeculativeDecoder(s["levels"], scheme=s["schemes"] or "tokenwise", thresholds=s["th"] or None, eos_token_id=None, context_processor=s["procs"])
    res = dec.generate(s["prompts"], max_new_tokens=s["max_new"], seeds=s["seeds"])
    for b, prompt in enumerate(s["prompts"]):
        assert res.tokens[b] == reference_tokens(s["exact"], dec.schemes, s["th"], prompt, s["seeds"][b], s["max_new"])


def test_context_processor_changes_the_law():
    """The check above can fail: the same stack without the processors gives other tokens (a
    penalty of 2 and a banned id move the law far), and banned ids never appear with them."""
    t, d = (TableLM.random(3, seed, max_denominator=8, zero_prob=0, peaked_prob=0) for seed in (3, 4))
    prompts, seeds = [[0, 1, 2]] * 30, list(range(30))
    kw = dict(scheme="block", thresholds=3, eos_token_id=None)
    with_p = SpeculativeDecoder([TableModel([d]), TableModel([t])], context_processor=hf_processors(True, True), **kw).generate(prompts, max_new_tokens=6, seeds=seeds).tokens
    without = SpeculativeDecoder([TableModel([d]), TableModel([t])], **kw).generate(prompts, max_new_tokens=6, seeds=seeds).tokens
    assert with_p != without
    assert all(x != 1 for row in with_p for x in row)
    assert any(1 in row for row in without)
    assert all((a, b) != (0, 2) for row, p in zip(with_p, prompts) for a, b in zip(p[-1:] + row, row))


def test_custom_level_must_pass_its_context():
    class Plain:
        vocab_size = 3

        def probs(self, seq, lens, n_out, warp):
            import torch

            return warp.probs(torch.zeros(seq.shape[0], n_out, 3))  # no seq, lens: refused

    dec = SpeculativeDecoder([Plain()], context_processor=hf_processors(True, False), eos_token_id=None)
    with pytest.raises(ValueError, match="context_processor: this warp needs each row's context"):
        dec.generate([[0]], max_new_tokens=2)


# ------------------------------------------------------------------ vocabularies differing by padding

@pytest.mark.parametrize("scheme", ["tokenwise", "block", "hsd_capped", "greedy"])
def test_padded_vocabulary_is_the_target_conditioned_on_shared_ids(scheme):
    """Target V = 5, draft V = 3, ``vocab_size=3``: the law is the target's on ids 0..2, renormalised."""
    t5 = TableLM.random(5, 11, max_denominator=8, zero_prob=0, peaked_prob=0)
    d3 = TableLM.random(3, 12, max_denominator=8, zero_prob=0, peaked_prob=0)

    def cut(ctx):
        row = t5.probs(ctx)[:3]
        return tuple(p / sum(row) for p in row)

    t3 = TableLM(3, cut, "t5 on ids < 3")
    temperature = 0 if scheme == "greedy" else 1
    exact = [d3, t3]
    if temperature == 0:
        from hsd_ref.warp import warped_model

        exact = [warped_model(m, temperature=0) for m in exact]
    dec = SpeculativeDecoder([TableModel([d3]), TableModel([t5])], scheme=scheme, temperature=temperature, thresholds=3, vocab_size=3, eos_token_id=None)
    assert dec.vocab_size == 3
    prompts, seeds = [[0], [1, 2], [2, 2, 0]] * 4, [50 + b for b in range(12)]
    res = dec.generate(prompts, max_new_tokens=7, seeds=seeds)
    for b, prompt in enumerate(prompts):
        assert res.tokens[b] == reference_tokens(exact, dec.schemes, (3,), prompt, seeds[b], 7)


def test_padded_vocabulary_errors():
    t5, d3 = TableLM.random(5, 1), TableLM.random(3, 2)
    with pytest.raises(ValueError, match=r"vocabulary size 3 of .* differs from the target's 5.*pass vocab_size="):
        SpeculativeDecoder([TableModel([d3]), TableModel([t5])])
    with pytest.raises(ValueError, match="vocab_size: 4 exceeds the vocabulary 3"):
        SpeculativeDecoder([TableModel([d3]), TableModel([t5])], vocab_size=4)
    with pytest.raises(ValueError, match="vocab_size: expected None or an int >= 1"):
        SpeculativeDecoder([TableModel([t5])], vocab_size=0)


# ------------------------------------------------------------------ stop rules

def test_stop_rule_cuts_the_stream_the_seeds_give():
    """Stopping after the first id 2 keeps exactly the prefix of the unstopped output up to it."""
    t, d = (TableLM.random(4, seed, max_denominator=8) for seed in (21, 22))
    levels = lambda: [TableModel([d]), TableModel([t])]  # noqa: E731
    prompts, seeds = [[0, 1]] * 40, list(range(40))
    full = SpeculativeDecoder(levels(), scheme="block", thresholds=4, eos_token_id=None).generate(prompts, max_new_tokens=12, seeds=seeds)
    calls = []

    def stop(b, tokens, n_new):
        calls.append((b, len(tokens), n_new))
        for m in range(len(tokens) - n_new + 1, len(tokens) + 1):
            if tokens[m - 1] == 2:
                return m
        return None

    streamed: list = [[] for _ in prompts]

    def on_tokens(new):
        for b, toks in enumerate(new):
            streamed[b].extend(toks)

    cut = SpeculativeDecoder(levels(), scheme="block", thresholds=4, eos_token_id=None).generate(prompts, max_new_tokens=12, seeds=seeds, stop=stop, on_tokens=on_tokens)
    n_stopped = 0
    for b in range(len(prompts)):
        want = full.tokens[b][: full.tokens[b].index(2) + 1] if 2 in full.tokens[b] else full.tokens[b]
        assert cut.tokens[b] == want and streamed[b] == want
        assert cut.finish_reasons[b] == ("stop" if 2 in full.tokens[b] else "length")
        n_stopped += 2 in full.tokens[b]
    assert 0 < n_stopped < len(prompts) and calls


def test_stop_rule_errors():
    t = TableLM.random(3, 5)
    dec = SpeculativeDecoder([TableModel([t])], eos_token_id=None)
    with pytest.raises(ValueError, match=r"stop: returned 0 for row 0; expected None or a cut length in \(0, 1\]"):
        dec.generate([[0]], max_new_tokens=3, stop=lambda b, tokens, n: 0)
    with pytest.raises(ValueError, match="stop: expected a callable"):
        dec.generate([[0]], max_new_tokens=3, stop=3)
