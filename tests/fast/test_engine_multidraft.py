"""Multi-draft levels through the engine users run (``SpeculativeDecoder(scheme="rrs", n_drafts=N)``).

Draw for draw against an exact (Fraction) iteration over ``hsd_ref`` TableLMs driven by the
engine's own uniforms (``tests.helpers.Replay``), iteration after iteration: the drafting law
(i.i.d., or without replacement per tree node, :mod:`hsd_ref.multidraft`) written out below with
``hsd_ref.exact.sample_index``, then ``hsd_ref``'s ``MultiDraftScheme.verify`` on the same uniforms
(layout: :mod:`hsd_fast.engine.multidraft`).  Float and exact arithmetic could order a uniform
differently only within rounding of a CDF boundary (~1e-16 per draw).  Then a G test of the first
tokens' law against the exact target law at 1e-6, with a power check, and the argument errors.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsd_fast.drafters import NGramDrafter
from hsd_fast.engine import EarlyExit, SpeculativeDecoder
from hsd_fast.engine.multidraft import MULTI_DRAFT_SCHEMES
from hsd_fast.engine.tables import TableModel
from hsd_ref import TableLM
from hsd_ref.exact import sample_index
from hsd_ref.registry import get_scheme
from tests.helpers import Replay, assert_target_law_with_power

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ["rrs", "rrs_without_replacement", "spectr_kseq"]


def pair(seed: int, V: int = 3, **kw):
    return TableLM.random(V, seed, max_denominator=8, **kw), TableLM.random(V, seed + 1, max_denominator=8, **kw)


def ref_iteration(scheme, target: TableLM, draft: TableLM, prefix: tuple, k: int, u) -> tuple[int, ...]:
    """One exact multi-draft iteration on explicit uniforms ``u`` (``2 k N + 1`` of them): drafting,
    position-major (``u[t N + j]`` draws slot ``j`` at position ``t``), then ``hsd_ref``'s verify."""
    n = scheme.n_drafts
    tokens: list[list[int]] = [[] for _ in range(n)]
    for t in range(k):
        for j in range(n):
            if -1 in tokens[j]:  # absent from an earlier position on (its uniform is still used up)
                tokens[j].append(-1)
                continue
            q = list(draft.probs(prefix + tuple(tokens[j])))
            if not scheme.replacement:  # without replacement from what the same node's earlier slots drew
                for i in range(j):
                    if tokens[i][:t] == tokens[j] and tokens[i][t] != -1:
                        q[tokens[i][t]] = Fraction(0)
                total = sum(q)
                if total == 0:
                    tokens[j].append(-1)
                    continue
                q = [w / total for w in q]
            tokens[j].append(sample_index(q, Fraction(u[t * n + j])))
    paths = [tuple(row[: row.index(-1)]) if -1 in row else tuple(row) for row in tokens]
    # an absent draft's later rows are those of the node where it stopped (never read by verify)
    t_rows = [[target.probs(prefix + p[: min(t, len(p))]) for t in range(k + 1)] for p in paths]
    d_rows = [[draft.probs(prefix + p[: min(t, len(p))]) for t in range(k)] for p in paths]
    return scheme.verify(t_rows, d_rows, tokens, [Fraction(x) for x in u[k * n :]]).tokens


def reference(name, n_drafts, target, draft, prompt, seed, k, n):
    """The exact stream of one row (seed ``seed``), iteration after iteration, cut at ``n`` tokens."""
    scheme = get_scheme(name).with_drafts(n_drafts)
    rng, out = Replay(seed), ()
    while len(out) < n:
        u = [rng.random() for _ in range(2 * k * n_drafts + 1)]
        out += ref_iteration(scheme, target, draft, tuple(prompt) + out, k, u)
    return list(out[:n])


def decoder(name, n_drafts, target, draft, k, **kw):
    return SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme=name, n_drafts=n_drafts,
                              thresholds=k, eos_token_id=None, **kw)


def test_the_engine_runs_every_multi_draft_kernel():
    assert set(SCHEMES) == set(MULTI_DRAFT_SCHEMES)


@pytest.mark.parametrize("n_drafts", [1, 2, 3])
@pytest.mark.parametrize("name", SCHEMES)
def test_multidraft_engine_equals_hsd_ref_draw_for_draw(name, n_drafts):
    for case in range(4):
        # zero_prob and V = 2: small supports, so that drafts without replacement exhaust them (absent drafts)
        target, draft = pair(100 * case + 7 * n_drafts, V=(3, 3, 4, 2)[case], zero_prob=0.4 if case == 1 else 0.2)
        k = 1 + case % 3
        dec = decoder(name, n_drafts, target, draft, k)
        prompts = [[0], [1, 0], [1, 1, 0], [1], [0, 1]]  # ragged; rows finish at different iterations
        seeds = [31 * case + 5 * n_drafts + b for b in range(len(prompts))]
        res = dec.generate(prompts, max_new_tokens=8, seeds=seeds)
        for b, prompt in enumerate(prompts):
            want = reference(name, n_drafts, target, draft, prompt, seeds[b], k, 8)
            assert res.tokens[b] == want, (case, b)


@st.composite
def cases(draw):
    """A random pair (V 2-4, context-dependent rows, often small supports), scheme, N, K, warp
    (temperature, top-k), ragged batch, seeds and length."""
    V = draw(st.integers(2, 4))
    zero = draw(st.sampled_from([0.0, 0.2, 0.5]))
    target, draft = (TableLM.random(V, draw(st.integers(0, 10**6)), max_denominator=8, zero_prob=zero) for _ in range(2))
    B = draw(st.integers(1, 4))
    return dict(
        target=target, draft=draft, name=draw(st.sampled_from(SCHEMES)), n=draw(st.integers(1, 3)), k=draw(st.integers(1, 3)),
        warp=draw(st.sampled_from([{}, {"temperature": 0.5}, {"top_k": 2}])),
        prompts=[draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=3)) for _ in range(B)],
        seeds=[draw(st.integers(0, 2**40)) for _ in range(B)], max_new=draw(st.integers(1, 7)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_multidraft_cases_equal_hsd_ref_draw_for_draw(c):
    from hsd_ref.warp import warped_model

    warp = {k: (Fraction(v).limit_denominator(8) if k == "temperature" else v) for k, v in c["warp"].items()}
    et, ed = warped_model(c["target"], **warp), warped_model(c["draft"], **warp)
    dec = decoder(c["name"], c["n"], c["target"], c["draft"], c["k"], **c["warp"])
    res = dec.generate(c["prompts"], max_new_tokens=c["max_new"], seeds=c["seeds"])
    for b, prompt in enumerate(c["prompts"]):
        assert res.tokens[b] == reference(c["name"], c["n"], et, ed, prompt, c["seeds"][b], c["k"], c["max_new"])


def test_exact_verify_fn_takes_the_multi_draft_shapes():
    """``verify_fn=exact_verify`` (hsd_ref row by row on the engine's rows) decodes the same tokens."""
    from hsd_fast.engine.refverify import exact_verify

    target, draft = pair(21)
    prompts, seeds = [[0], [2, 1]], [3, 4]
    fast = decoder("spectr_kseq", 3, target, draft, 2).generate(prompts, max_new_tokens=9, seeds=seeds).tokens
    exact = decoder("spectr_kseq", 3, target, draft, 2, verify_fn=exact_verify).generate(prompts, max_new_tokens=9, seeds=seeds).tokens
    assert fast == exact


def test_without_replacement_drafts_really_are_absent_sometimes():
    """The draw-for-draw cells above must reach the support-exhausted branch (absent drafts, -1)."""
    from hsd_fast.engine import multidraft as M

    seen = []
    real = M.draft_multi

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(bool((out[0] < 0).any()))
        return out

    M.draft_multi = spy
    try:
        target, draft = pair(107, zero_prob=0.4)
        decoder("rrs_without_replacement", 3, target, draft, 2).generate([[0], [1, 2]] * 4, max_new_tokens=8, seeds=list(range(8)))
    finally:
        M.draft_multi = real
    assert any(seen)


def test_multidraft_restricted_vocabulary_and_eos_equal_hsd_ref():
    """allowed_ids (the engine's compressed vocabulary) and the EOS cut, draw for draw."""
    from hsd_ref.warp import warped_model

    target, draft = pair(5, V=4, zero_prob=0, peaked_prob=0)
    warp = dict(allowed_ids=(0, 2, 3))
    et, ed = warped_model(target, **warp), warped_model(draft, **warp)
    dec = SpeculativeDecoder([TableModel([draft], "d"), TableModel([target], "t")], scheme="rrs_without_replacement", n_drafts=2,
                             thresholds=2, eos_token_id=3, allowed_ids=[0, 2, 3])
    assert dec.vocab.restricted
    prompts, seeds = [[0], [2, 0], [3]], [4, 5, 6]
    res = dec.generate(prompts, max_new_tokens=10, seeds=seeds)
    for b, prompt in enumerate(prompts):
        want = reference("rrs_without_replacement", 2, et, ed, prompt, seeds[b], 2, 10)
        want = want[: want.index(3) + 1] if 3 in want else want
        assert res.tokens[b] == want
        assert res.finish_reasons[b] == ("eos" if want[-1] == 3 else "length")


def test_one_draft_rrs_is_tokenwise_speculative_sampling():
    """N = 1: RRS is token-wise speculative sampling, and both layouts are K + (K + 1) uniforms."""
    target, draft = pair(9)
    a = decoder("rrs", 1, target, draft, 3).generate([[0], [1, 2]], max_new_tokens=12, seeds=[1, 2]).tokens
    b = decoder("tokenwise", None, target, draft, 3).generate([[0], [1, 2]], max_new_tokens=12, seeds=[1, 2]).tokens
    assert a == b


def test_multidraft_cached_model_equals_recompute():
    """A position-indexed KV cache (CachedLM) over the N B draft rows, rows retiring at different
    iterations (select_rows on the draft rows), equals the cache-free backend token for token."""
    from hsd_fast.tiny import tiny_pair

    draft, target, _ = tiny_pair(0, target_layers=2, draft_layers=1, noise=0.3, tokenizer="chars", dtype=torch.float64)
    out = {}
    for cache in ("cached", "recompute"):
        dec = SpeculativeDecoder([draft, target], scheme="rrs_without_replacement", n_drafts=3, thresholds=3, cache=cache,
                                 eos_token_id=None, probs_dtype="float64")
        out[cache] = dec.generate([[5, 6, 7], [8], [9, 10, 11, 12]], max_new_tokens=10, seeds=[1, 2, 3]).tokens
    assert out["cached"] == out["recompute"]


def test_multidraft_metrics_count_the_target_rounds():
    target, draft = pair(3)
    res = decoder("rrs", 3, target, draft, 3).generate([[0], [1, 2]], max_new_tokens=12, seeds=[1, 2])
    lo, top = res.metrics.levels
    assert top.rounds == sum(top.accept_counts) and len(top.accept_counts) == 4
    assert top.drafted == 3 * top.rounds and top.accepted <= top.drafted
    assert sum(map(len, res.tokens)) <= top.accepted + top.rounds  # the length cut may drop some
    assert "<rrs, 3 drafts>" in decoder("rrs", 3, target, draft, 3).describe()


# ------------------------------------------------------------ the law, statistically

@pytest.mark.parametrize("name", ["rrs", "rrs_without_replacement"])
def test_multidraft_keeps_the_target_law_and_the_test_has_power(name):
    """First 3 tokens of 6000 rows, G test at false-failure probability 1e-6 against the exact target
    law.  Power: the same test on the DRAFT's law (TV to the target's >= 0.15) must reject."""
    target, draft = pair(11)
    assert_target_law_with_power(decoder(name, 3, target, draft, 2), target, draft, (1,))


# ------------------------------------------------------------ errors


def test_multidraft_errors_name_the_argument():
    target, draft = pair(1)
    d, t = TableModel([draft], "d"), TableModel([target], "t")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_drafts"):
            SpeculativeDecoder([d, t], scheme="rrs", n_drafts=bad)
    with pytest.raises(ValueError, match="n_drafts: 3 drafts need a multi-draft scheme"):
        SpeculativeDecoder([d, t], scheme="tokenwise", n_drafts=3)
    with pytest.raises(ValueError, match="levels: multi-draft scheme 'rrs' runs on exactly two levels"):
        SpeculativeDecoder([d, TableModel([draft], "m"), t], scheme="rrs", n_drafts=2)
    with pytest.raises(ValueError, match="levels: multi-draft scheme"):
        SpeculativeDecoder([t], scheme="rrs", n_drafts=2)
    with pytest.raises(ValueError, match="levels\\[0\\]: multi-draft scheme 'rrs' needs a draft model"):
        SpeculativeDecoder([NGramDrafter(), t], scheme="rrs", n_drafts=2)
    with pytest.raises(ValueError, match="temperature: multi-draft"):
        SpeculativeDecoder([d, t], scheme="rrs", n_drafts=2, temperature=0)
    with pytest.raises(ValueError, match="thresholds: multi-draft"):
        SpeculativeDecoder([d, t], scheme="rrs", n_drafts=2, thresholds="auto")
    with pytest.raises(ValueError, match="draft_stop: adaptive"):
        SpeculativeDecoder([d, t], scheme="rrs", n_drafts=2, draft_stop=0.5)
    with pytest.raises(ValueError, match="scheme: a multi-draft scheme"):
        SpeculativeDecoder([d, TableModel([draft], "m"), t], scheme=["tokenwise", "rrs"])
    with pytest.raises(ValueError, match="scheme: multi-draft scheme 'rrs' needs n_drafts="):
        SpeculativeDecoder([d, t], scheme="rrs")  # no silent default number of drafts
    dec = SpeculativeDecoder([d, t], scheme="rrs", n_drafts=2)
    assert dec.n_drafts == 2 and dec.multi_draft
    assert SpeculativeDecoder([d, t], scheme="rrs", n_drafts=1).n_drafts == 1
    assert not SpeculativeDecoder([d, t], scheme="block", n_drafts=1).multi_draft
    ee = TableModel([draft, target], "two")
    assert SpeculativeDecoder([EarlyExit(ee, 1), ee], scheme="spectr_kseq", n_drafts=2).multi_draft  # an exit is a draft model
