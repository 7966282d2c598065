"""The engine users run, draw for draw against hsd_ref's hierarchy sampler, over exact models.

Every cell of the fidelity run (each engine scheme x each level kind of hsd_fast.fidelity.cells)
and random stacks drawn by hypothesis run :class:`SpeculativeDecoder` over
:class:`hsd_fast.engine.tables.TableModel` levels; the oracle is ``hsd_ref.Hierarchy.
sample_iteration`` on the exact (Fraction) models, warped exactly (``hsd_ref.warp``), driven by the
same uniforms (``hsd_fast.rng.reference_uniform``, the pure-Python twin of the engine's
stream), iteration after iteration, then cut at the first EOS and at ``max_new_tokens``.

A model-free drafter proposes a block from the context it is asked at; as an hsd_ref draft model it
is the point mass on its one-token proposal, so its draw-for-draw cells draft one token per call
(``T_0 = 1``); the statistical cells run it at ``T_0 = 3``.  Float rows and exact rows can order a
uniform differently only within rounding of a CDF boundary (probability ~1e-16 per draw).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsd_fast.drafters import NGramDrafter, fill_placeholders
from hsd_fast.engine import ENGINE_SCHEMES, EarlyExit, SpeculativeDecoder

from hsd_fast.engine.tables import TableModel
from hsd_fast.fidelity import cells as C
from hsd_ref import TableLM
from hsd_ref.exact import one_hot, sample_index
from hsd_ref.registry import get_scheme
from hsd_ref.schemes.adaptive import AdaptiveLength
from hsd_ref.schemes.hierarchy import Hierarchy
from hsd_ref.warp import warped_model

from tests.helpers import Replay

pytestmark = pytest.mark.usefixtures("one_thread")

def drafter_model(drafter, vocab_size: int) -> TableLM:
    """A model-free drafter drafting one token per call, as an exact draft model: the point mass on
    its proposal (a missing proposal repeats the context's last token, as the engine does)."""

    def fn(ctx):
        seq = torch.tensor([list(ctx)], dtype=torch.int64)
        tok = fill_placeholders(drafter.propose(seq, torch.tensor([len(ctx)]), 1), seq[:, -1])
        return one_hot(int(tok[0, 0]), vocab_size)

    return TableLM(vocab_size, fn, "drafter")

def reference_tokens(exact, schemes, thresholds, prompt, seed, n, eos=()):
    """hsd_ref's stream for one row (``exact``: the warped models bottom-up, target last), cut at EOS."""
    rng = Replay(seed)
    out: tuple[int, ...] = ()
    if len(exact) == 1:  # the target alone: one inverse-CDF draw per token
        while len(out) < n:
            out += (sample_index(exact[0].probs(tuple(prompt) + out), Fraction(rng.random())),)
    else:
        # greedy is token-wise verification of the argmax models' point masses (hsd_ref.schemes.greedy),
        # which is how hsd_ref's hierarchy runs it; the engine's layout of uniforms is the same
        verifiers = [get_scheme("tokenwise" if s == "greedy" else s) for s in schemes]
        h = Hierarchy(middles=list(exact[1:-1]), verifiers=verifiers, thresholds=tuple(thresholds[:-1]))
        while len(out) < n:
            out += h.sample_iteration(exact[-1], exact[0], tuple(prompt) + out, thresholds[-1], rng).tokens
    out = list(out[:n])
    for i, x in enumerate(out):
        if x in eos:
            return out[: i + 1]
    return out

def adaptive_reference(exact, scheme, rule, k, prompt, seed, n):
    """hsd_ref's stream for one row of a two-level stack whose draft length is a stopping time
    (``AdaptiveLength``, greedy as token-wise on the argmax models' point masses), cut at n."""
    ad = AdaptiveLength(get_scheme("tokenwise" if scheme == "greedy" else scheme), rule)
    rng, out = Replay(seed), ()
    while len(out) < n:
        u = [rng.random() for _ in range(ad.iteration_draws(k))]
        out += ad.sample_iteration(exact[-1], exact[0], tuple(prompt) + out, k, u).result.tokens
    return list(out[:n])

@pytest.mark.parametrize("kind", C.LEVEL_KINDS)
@pytest.mark.parametrize("scheme", ENGINE_SCHEMES)
def test_every_fidelity_cell_equals_hsd_ref_draw_for_draw(scheme, kind):
    setup = C.build(scheme, kind)
    th, exact = setup.thresholds, list(setup.exact)
    if exact[0] is None:  # a drafter at the bottom: one token per call (module docstring)
        th = (1, *th[1:])
        exact[0] = drafter_model(NGramDrafter(), setup.vocab_size)
    dec = setup.decoder(thresholds=th)
    n_rows, seeds = 6, [1000 + 7 * b for b in range(6)]
    prompts = setup.prompts_for(n_rows)
    res = dec.generate(prompts, max_new_tokens=setup.n_tokens, seeds=seeds)
    for b in range(n_rows):
        if setup.stop_rule is not None:  # the adaptive kind: hsd_ref.schemes.adaptive's iteration
            want = adaptive_reference(exact, dec.schemes[0], setup.stop_rule, th[0], prompts[b], seeds[b], setup.n_tokens)
        else:
            want = reference_tokens(exact, dec.schemes, th, prompts[b], seeds[b], setup.n_tokens, setup.eos)
        assert res.tokens[b] == want, (b, prompts[b])
        assert res.finish_reasons[b] == ("eos" if want and want[-1] in setup.eos else "length")

@st.composite
def stacks(draw):
    """A random stack: 1-4 levels of random context-dependent TableLMs (V 2-4), optionally an
    n-gram drafter at the bottom and an early exit as a middle; random schemes, thresholds, warps,
    restricted vocabulary, EOS, ragged batch, seeds and lengths."""
    V = draw(st.integers(2, 4))
    n_models = draw(st.integers(1, 4))
    allowed = draw(st.one_of(st.none(), st.sets(st.integers(0, V - 1), min_size=1, max_size=V).map(sorted)))
    # with a restricted vocabulary, rows without zeros (so no context leaves the allowed ids no mass)
    zeros = {} if allowed is None else dict(zero_prob=0, peaked_prob=0)
    lms = [TableLM.random(V, draw(st.integers(0, 10**6)), max_denominator=8, **zeros) for _ in range(n_models)]
    greedy = draw(st.booleans()) and n_models > 1
    use_drafter = n_models > 1 and draw(st.booleans())
    warp = {"temperature": 0 if greedy else 1, "allowed_ids": tuple(allowed) if allowed else None}
    warp = {k: v for k, v in warp.items() if v is not None}
    exact = [warped_model(m, **warp) for m in lms]
    levels: list = [TableModel([m], f"m{i}") for i, m in enumerate(lms)]
    exit_mid = n_models >= 3 and draw(st.booleans())
    if exit_mid:  # the level below the target becomes an early exit of a two-layer target
        full = TableModel([lms[-2], lms[-1]], "target+exit")
        levels[-2:] = [EarlyExit(full, 1), full]
    if use_drafter:
        levels[0] = NGramDrafter(draw(st.integers(1, 3)))
        exact[0] = drafter_model(levels[0], V)
    n = n_models - 1
    schemes = ["greedy"] * n if greedy else [draw(st.sampled_from(["tokenwise", "block", "hsd_capped"])) for _ in range(n)]
    th = tuple(draw(st.integers(1, 3)) for _ in range(n))
    if use_drafter:
        th = (1, *th[1:])
    B = draw(st.integers(1, 4))
    prompts = [draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=3)) for _ in range(B)]
    eos = draw(st.one_of(st.none(), st.integers(0, V - 1)))
    seeds = [draw(st.integers(0, 2**40)) for _ in range(B)]
    max_new = draw(st.integers(1, 6))
    return dict(levels=levels, exact=exact, schemes=schemes, th=th, warp=warp, prompts=prompts, eos=eos, seeds=seeds, max_new=max_new)

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
def test_random_stacks_equal_hsd_ref_draw_for_draw(s):
    kw = {k: (float(v) if k == "temperature" else v) for k, v in s["warp"].items()}
    dec = SpeculativeDecoder(s["levels"], scheme=s["schemes"] or "tokenwise", thresholds=s["th"] or None, eos_token_id=s["eos"], **kw)
    res = dec.generate(s["prompts"], max_new_tokens=s["max_new"], seeds=s["seeds"])
    eos = () if s["eos"] is None else (s["eos"],)
    for b, prompt in enumerate(s["prompts"]):
        want = reference_tokens(s["exact"], dec.schemes, s["th"], prompt, s["seeds"][b], s["max_new"], eos)
        assert res.tokens[b] == want
        assert len(want) == s["max_new"] or want[-1] in eos  # the cuts: length, or the first EOS
        assert res.finish_reasons[b] == ("eos" if want and want[-1] in eos else "length")

# ------------------------------------------------- regression: hsd_capped and the placeholder (issue 12)

def test_hsd_capped_placeholder_regression_kernel_inputs():
    """The old engine passed a drafted id outside allowed_ids as token -1 with an ALL-ZERO draft row
    (validate=False); hsd_capped's minus side at the cut was then 0 and the prefix before it always
    accepted.  The full-vocabulary computation (V = 3, p(2) = 0, token 2 drafted after token 1)
    rejects token 1 with probability 0.7; the sink column of the engine's vocabulary (engine id 2
    here, the same point mass) computes exactly that, and the zero-row convention is refused by the
    validating API."""
    from hsd_fast.drafters import point_mass_rows
    from hsd_fast.kernels import verify

    p3 = torch.tensor([[[0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0]]], dtype=torch.float64)
    tok = torch.tensor([[1, 2]])
    rejected = 0
    for i in range(100):
        u = (i + 0.5) / 100
        out = verify("hsd_capped", p3, point_mass_rows(tok, 3), tok, draws=torch.tensor([[u, u, 0.5]], dtype=torch.float64))
        rejected += out.tokens.tolist() == [[0, -1, -1]]
    assert rejected == 70
    zero_row = point_mass_rows(torch.tensor([[1, -1]]), 2)
    with pytest.raises(ValueError, match="draft_probs"):
        verify("hsd_capped", p3[..., :2], zero_row, torch.tensor([[1, -1]]), draws=torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64))

@pytest.mark.parametrize("scheme", [s for s in ENGINE_SCHEMES if s != "greedy"] + ["greedy"])
def test_hsd_capped_placeholder_regression_restricted_equals_full_vocabulary(scheme):
    """Restricted vocabulary == full vocabulary, draw for draw, with n-gram blocks of 3 (proposals
    outside allowed_ids inside a block): the compressed run against the full-vocabulary run (an
    identity logits processor disables the compression), every scheme."""
    t, d = (TableLM.random(3, seed, zero_prob=0, peaked_prob=0) for seed in (1, 2))  # every allowed row has mass
    levels = lambda: [NGramDrafter(2), TableModel([d], "d"), TableModel([t], "t")]  # noqa: E731
    kw = dict(scheme=scheme, thresholds=(3, 3), allowed_ids=[0, 2], eos_token_id=None)
    small = SpeculativeDecoder(levels(), **kw)
    full = SpeculativeDecoder(levels(), logits_processor=lambda x: x, **kw)
    assert small.V == 3 and full.V == 3 and small.vocab.restricted and not full.vocab.restricted
    prompts = [[0, 1, 0, 1, 2], [1, 1, 1], [2, 0, 1, 2, 0]] * 40  # drafts of the excluded id 1
    seeds = list(range(len(prompts)))
    a = small.generate(prompts, max_new_tokens=8, seeds=seeds).tokens
    b = full.generate(prompts, max_new_tokens=8, seeds=seeds).tokens
    assert a == b and all(x != 1 for row in a for x in row)
