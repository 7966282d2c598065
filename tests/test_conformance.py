"""The scheme registry drives conformance: a scheme without its exact check, its fast twin and its
statistical test is not done.  This meta-test fails when a scheme is registered without them.

* exact check: every registered scheme is audited (``hsd-ref audit``) and parametrised into the
  exact tests of ``tests/ref``; here we run ``check_lossless`` once more on the smallest family;
* fast twin: a kernel under the same name in ``hsd_fast.kernels.KERNELS``, whose capability flags
  are those of the hsd_ref scheme (and of the hand-written table below);
* statistical test: the scheme is in the fidelity run (``hsd_fast.fidelity``), lossy controls as
  power checks.

Exemptions are listed with their reason and must stay in sync with the registry.
"""

import pytest

from hsd_ref import SCHEMES, check_lossless

# lossless schemes whose fast twin is not a probability-row kernel, with the reason
NO_KERNEL = {
    "hsd_naive": "resamples every position after tau off the draft path, so it needs the target and draft "
    "models (k - tau - 1 extra sequential calls); its verify takes the models, not probability rows",
    "hierarchy": "a cascade of models, each level verified by a single-draft kernel (tokenwise, block, ...); "
    "the hsd_fast engine composes them, there is no one-call kernel",
}
# lossless schemes whose fast twin is the engine driving another scheme's kernel, with how: the
# adaptive schemes are the engine's draft_stop (hsd_fast.engine.stopping) verified by the base
# scheme's kernel with ragged drafts (verify(..., draft_lens=)), in the fidelity run's
# "adaptive" level kind and draw for draw in tests/fast/test_engine_adaptive.py
ENGINE_TWINS = {f"adaptive_{base}": (base, "adaptive") for base in ("tokenwise", "block", "hsd_capped")}
# lossy controls the fidelity run does not sample, with the reason
NO_FIDELITY_CONTROL = {
    "hierarchy_resample_middle": "a model stack, not a verification kernel; caught exactly by the audit and tests/ref/test_hierarchy.py",
    **{
        name: "its defect is in the drafting loop (discarding the trigger, or a stop coin shared with the verifier), "
        "which the engine's draft_stop cannot express by design; caught exactly by the audit and tests/ref/test_adaptive.py"
        for name in ("adaptive_tokenwise_drop_trigger", "adaptive_block_drop_trigger", "adaptive_block_shared_coin")
    },
}
# the capability flags (multi_draft, needs_draws, needs_draft_probs) of every kernel, written by hand
# rather than read from either package, so a flag changed or derived wrongly on one side fails
EXPECTED_FLAGS = {
    "tokenwise": (False, True, True),
    "greedy": (False, False, False),
    "block": (False, True, True),
    "hsd_capped": (False, True, True),
    "rrs": (True, True, True),
    "rrs_without_replacement": (True, True, True),
    "spectr_kseq": (True, True, True),
}


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_registered_scheme_matches_its_claim_exactly(name):
    scheme = SCHEMES[name]
    report = check_lossless(scheme, vocab_sizes=(2,), ks=(1, 2), n_tokens=3, instances=1)
    assert report.lossless == scheme.lossless, str(report)
    assert getattr(scheme, "theorem", ""), f"{name}: the scheme must name the proof or counterexample covering it"


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMES.items() if s.lossless))
def test_every_lossless_scheme_has_a_fast_twin_and_a_statistical_test(name):
    from hsd_fast.fidelity import LOSSLESS_SCHEMES
    from hsd_fast.kernels import KERNELS

    if name in NO_KERNEL:
        assert name not in KERNELS, f"{name} now has a kernel: remove its exemption"
        pytest.skip(f"{name}: {NO_KERNEL[name]}")
    if name in ENGINE_TWINS:
        import torch

        from hsd_fast.engine import ENGINE_SCHEMES
        from hsd_fast.fidelity import cells
        from hsd_fast.kernels import verify

        base, kind = ENGINE_TWINS[name]
        assert base in KERNELS and base in ENGINE_SCHEMES and kind in cells.LEVEL_KINDS, name
        assert cells.build(base, kind).decoder().draft_stop is not None, f"{name}: the {kind!r} cells run no stopping rule"
        # the base kernel verifies ragged drafts (a length-0 row emits from the target row alone)
        out = verify(base, torch.tensor([[[0.0, 1.0], [0.5, 0.5]]]), torch.tensor([[[0.5, 0.5]]]), torch.tensor([[-1]]),
                     draws=torch.tensor([[0.9, 0.1]], dtype=torch.float64), draft_lens=torch.tensor([0]))
        assert out.tokens.tolist() == [[1, -1]], f"{name}: {base}'s kernel does not verify ragged drafts"
        return
    assert name in KERNELS, f"{name}: no hsd_fast kernel"
    assert name in LOSSLESS_SCHEMES, f"{name}: not in the fidelity run"


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMES.items() if not s.lossless))
def test_every_lossy_control_is_a_power_check_of_the_fidelity_run(name):
    from hsd_fast.fidelity import CONTROL_SCHEMES

    if name in NO_FIDELITY_CONTROL:
        pytest.skip(f"{name}: {NO_FIDELITY_CONTROL[name]}")
    assert name in CONTROL_SCHEMES


def test_exemptions_name_registered_schemes_and_every_kernel_has_an_exact_twin():
    from hsd_fast.kernels import KERNELS

    assert set(NO_KERNEL) <= set(SCHEMES) and set(NO_FIDELITY_CONTROL) <= set(SCHEMES) and set(ENGINE_TWINS) <= set(SCHEMES)
    assert set(KERNELS) <= {n for n, s in SCHEMES.items() if s.lossless}


def test_every_kernel_has_its_flags_written_down():
    from hsd_fast.kernels import KERNELS

    assert set(KERNELS) == set(EXPECTED_FLAGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_FLAGS))
def test_fast_capability_flags_agree_with_the_ref_scheme(name):
    from hsd_fast.kernels import KERNELS, draws_needed

    ref, fast = SCHEMES[name], KERNELS[name]
    assert (ref.multi_draft, ref.needs_draws, ref.needs_draft_probs) == EXPECTED_FLAGS[name], "hsd_ref flags"
    assert (fast.multi_draft, fast.needs_draws, fast.needs_draft_probs) == EXPECTED_FLAGS[name], "hsd_fast flags"
    for k in (0, 1, 3):
        assert draws_needed(name, k, ref.n_drafts) == ref.draws_needed(k), (name, k)
        assert (ref.draws_needed(k) > 0) == ref.needs_draws, (name, k)


def test_every_engine_scheme_is_sampled_through_the_engine_in_every_level_kind():
    """The statistical and draw-for-draw tests of a single-draft scheme go through SpeculativeDecoder
    (not a twin) in every level kind of hsd_fast.fidelity.cells.  Multi-draft schemes go through
    SpeculativeDecoder(n_drafts=N) draw for draw and by G test in tests/fast/test_engine_multidraft.py
    (two-level stacks); the fidelity run still samples them with its small multi-draft sampler."""
    from hsd_fast.engine import ENGINE_SCHEMES, SpeculativeDecoder
    from hsd_fast.fidelity import LOSSLESS_SCHEMES, MULTI_DRAFT_SCHEMES, cells
    from hsd_fast.kernels import KERNELS

    assert set(ENGINE_SCHEMES) == {n for n, s in KERNELS.items() if not s.multi_draft}
    assert set(MULTI_DRAFT_SCHEMES) == {n for n, s in KERNELS.items() if s.multi_draft}
    assert set(LOSSLESS_SCHEMES) == set(KERNELS) and tuple(cells.ENGINE_SCHEMES) == tuple(ENGINE_SCHEMES)
    for scheme in MULTI_DRAFT_SCHEMES:  # the engine runs every multi-draft scheme at a two-level stack
        setup = cells.build("tokenwise", "draft")
        dec = SpeculativeDecoder(setup.levels, scheme=scheme, n_drafts=2, thresholds=2)
        assert dec.generate([[0]], max_new_tokens=3, seeds=[0]).tokens[0], scheme
    for scheme in ENGINE_SCHEMES:
        for kind in cells.LEVEL_KINDS:
            dec = cells.build(scheme, kind).decoder()
            assert isinstance(dec, SpeculativeDecoder) and (dec.schemes[-1] == scheme), (scheme, kind)
