"""check_lossless on user-defined schemes, its report, and its input validation."""

from fractions import Fraction as F

import pytest

from hsd_ref import Instance, SCHEMES, TableLM, check_lossless


class TargetSampler:
    """A user-defined 'scheme' that ignores the draft and emits one token from the target: lossless."""

    name = "target_sampler"
    lossless = True

    def outcome_law(self, target, draft, prefix, k):
        return {(v,): m for v, m in enumerate(target.probs(prefix)) if m}


class DraftSampler:
    """Emits one token from the draft: lossy whenever draft != target."""

    name = "draft_sampler"
    lossless = True  # a false claim that the checker must refute

    def outcome_law(self, target, draft, prefix, k):
        return {(v,): m for v, m in enumerate(draft.probs(prefix)) if m}


def test_any_protocol_object_can_be_checked():
    report = check_lossless(TargetSampler())
    assert report.lossless and report.max_error == 0 and report.tv == 0 and report.counterexample is None
    assert report.verdict == "verified lossless"


def test_false_claim_is_refuted_with_smallest_counterexample():
    report = check_lossless(DraftSampler())
    assert not report.lossless and report.verdict == "CLAIM FALSE: lossy"
    cex = report.counterexample
    assert cex.instance.vocab_size == 2 and cex.instance.k == 1  # smallest-first order
    assert cex.recheck(DraftSampler())
    # the toy pair comes first: P_draft(A, ...) = 2/3 * ..., P_target = 1/3 * ...
    assert cex.target_prob == TableLM.context_free((F(1, 3), F(2, 3))).sequence_prob(cex.sequence)
    text = str(cex)
    assert "draft_sampler" in text and "every context: (2/3, 1/3)" in text
    assert report.tv > 0 and report.max_error > 0


def test_explicit_instances_are_checked_instead_of_the_family():
    p = TableLM.context_free((F(1, 2), F(1, 2)))
    q = TableLM.context_free((F(1), F(0)))
    report = check_lossless(SCHEMES["resample_from_target"], instances=[Instance(p, q, (), 1)], n_tokens=2)
    assert report.instances_checked == 1 and not report.lossless
    # z3's model for this control (formal.md): P(out = 0) = 3/4 instead of 1/2
    assert report.counterexample.horizon == "iteration"
    law_first = {}
    from hsd_ref import iteration_law

    for seq, m in iteration_law(SCHEMES["resample_from_target"], p, q, (), 1).items():
        law_first[seq[0]] = law_first.get(seq[0], 0) + m
    assert law_first[0] == F(3, 4)


def test_report_bad_inputs():
    with pytest.raises(ValueError, match="scheme: does not follow"):
        check_lossless(object())
    with pytest.raises(ValueError, match="n_tokens"):
        check_lossless(TargetSampler(), n_tokens=0)
    with pytest.raises(ValueError, match="vocab_sizes"):
        check_lossless(TargetSampler(), vocab_sizes=(0,))
    with pytest.raises(ValueError, match="k: draft length"):
        check_lossless(TargetSampler(), ks=(-1,))
    with pytest.raises(ValueError, match=r"instances\[0\]"):
        check_lossless(TargetSampler(), instances=["nope"])
    with pytest.raises(ValueError, match="draft: vocab_size"):
        Instance(TableLM.random(2, 0), TableLM.random(3, 0))


def test_non_fraction_masses_from_a_user_scheme_are_refused():
    class FloatScheme(TargetSampler):
        def outcome_law(self, target, draft, prefix, k):
            return {(0,): 0.5, (1,): 0.5}

    with pytest.raises(ValueError, match="non-Fraction"):
        check_lossless(FloatScheme())


# ------------------------------------------------------------------------------------ regressions
# An empty family verifies nothing: check_lossless used to report lossless=True over 0 instances,
# even for the lossy hsd_released.


def test_check_lossless_refuses_empty_vocab_sizes():
    with pytest.raises(ValueError, match=r"^vocab_sizes: empty"):
        check_lossless(SCHEMES["hsd_released"], vocab_sizes=())


def test_check_lossless_refuses_empty_ks():
    with pytest.raises(ValueError, match=r"^ks: empty"):
        check_lossless(SCHEMES["hsd_released"], ks=())


def test_check_lossless_refuses_empty_instances():
    with pytest.raises(ValueError, match=r"^instances: no instances"):
        check_lossless(SCHEMES["hsd_released"], instances=[])


def test_check_lossless_refuses_an_exhausted_instance_iterator():
    with pytest.raises(ValueError, match=r"^instances: no instances"):
        check_lossless(SCHEMES["hsd_released"], instances=(inst for inst in ()))


def test_instance_family_refuses_a_negative_count():
    from hsd_ref.check import instance_family

    with pytest.raises(ValueError, match=r"^instances: expected a count >= 0"):
        instance_family((2,), (1,), -1)
    assert instance_family((), (1,), 1) == [] and instance_family((2,), (), 1) == []  # check_lossless refuses these
    with pytest.raises(ValueError, match=r"^vocab_sizes: every entry"):
        instance_family((0,), (1,), 1)
    assert len(instance_family((2,), (1,), 0)) == 3  # toy pair, draft == target, point-mass draft


def test_lossless_report_over_zero_instances_cannot_say_lossless():
    from hsd_ref import LosslessReport

    with pytest.raises(ValueError, match=r"^instances_checked: "):
        LosslessReport("s", True, True, F(0), F(0), 0)
