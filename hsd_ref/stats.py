"""Exact efficiency statistics of a scheme on an instance.

* :func:`expected_accepted`: E[number of accepted drafts] of one iteration.
* :func:`tokens_per_target_call`: E[tokens emitted] / E[target forward calls] (block efficiency).
* :func:`coupling_bounds`: for single-draft schemes, the accepted prefix is both a draft sample and
  an output sample, so any lossless single-draft verifier satisfies
  ``P(tau >= i) <= sum_{x_{1:i}} min(P(x_{1:i}), Q(x_{1:i}))`` (peers.md §3.7).  A scheme that claims
  losslessness and exceeds the bound is provably lossy.  Multi-draft schemes are not bound by it.

>>> from fractions import Fraction as F
>>> from hsd_ref import TableLM, SCHEMES
>>> p, q = TableLM.context_free((F(1, 3), F(2, 3))), TableLM.context_free((F(2, 3), F(1, 3)))
>>> expected_accepted(SCHEMES["block"], p, q, (), 2)
Fraction(11, 9)
>>> [b for b in coupling_bounds(SCHEMES["block"], p, q, (), 2)]
[Fraction(2, 3), Fraction(2, 3)]
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .enumerate import reference_model
from .exact import HSDInputError
from .models import TableLM, check_context, check_pair
from .scheme import Scheme, check_k, law_add

__all__ = ["accepted_law", "expected_accepted", "tokens_per_target_call", "coupling_bounds", "CouplingCheck", "coupling_check", "coupling_bound_applies"]


def _check_call(target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> tuple[tuple[int, ...], int]:
    """Validate the arguments here, so that a user scheme without checks of its own gets them too."""
    vocab = check_pair(target, draft)
    return check_context(prefix, vocab), check_k(k)


def accepted_law(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[int, Fraction]:
    """Law of the number of accepted drafts.  Uses the scheme's ``accepted_law`` when it has one;
    otherwise assumes one emitted token beyond the accepted ones (``len(tokens) - 1``)."""
    prefix, k = _check_call(target, draft, prefix, k)
    own = getattr(scheme, "accepted_law", None)
    if callable(own):
        return dict(own(target, draft, prefix, k))
    law: dict[int, Fraction] = {}
    for seq, m in scheme.outcome_law(target, draft, prefix, k).items():
        law_add(law, len(seq) - 1, m)
    return law


def expected_accepted(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Fraction:
    """E[accepted drafts] of one iteration, exactly."""
    return sum((t * m for t, m in accepted_law(scheme, target, draft, prefix, k).items()), Fraction(0))


def tokens_per_target_call(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Fraction:
    """E[tokens emitted] / E[target calls] for one iteration (one call unless the scheme defines
    ``target_calls(tau, k)``, as ``hsd_naive`` does)."""
    prefix, k = _check_call(target, draft, prefix, k)
    joint = getattr(scheme, "joint_law", None)
    calls = getattr(scheme, "target_calls", None)
    if callable(joint):
        law = joint(target, draft, prefix, k)
        tokens = sum((len(seq) * m for (_, seq), m in law.items()), Fraction(0))
        n_calls = sum(((calls(tau, k) if callable(calls) else 1) * m for (tau, _), m in law.items()), Fraction(0))
        return tokens / n_calls
    law = scheme.outcome_law(target, draft, prefix, k)
    return sum((len(seq) * m for seq, m in law.items()), Fraction(0))


def coupling_bounds(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> list[Fraction]:
    """``[b_1, ..., b_k]`` with ``b_i = sum_{x_{1:i}} min(P(x_{1:i}), Q(x_{1:i}))``, computed on the
    scheme's reference and proposal models (the argmax models for greedy)."""
    prefix, k = _check_call(target, draft, prefix, k)
    ref = reference_model(scheme, target)
    proposal = getattr(scheme, "proposal", None)
    prop = proposal(draft) if callable(proposal) else draft
    bounds = []
    q_law = {(): Fraction(1)}
    for i in range(1, k + 1):
        nxt = {}
        for seq, qm in q_law.items():
            for v, qv in enumerate(prop.probs(prefix + seq)):
                if qv:
                    nxt[seq + (v,)] = qm * qv
        q_law = nxt
        bounds.append(sum((min(qm, ref.sequence_prob(seq, prefix)) for seq, qm in q_law.items()), Fraction(0)))
    return bounds


@dataclass(frozen=True)
class CouplingCheck:
    tail: tuple[Fraction, ...]  # P(tau >= i), i = 1..k
    bounds: tuple[Fraction, ...]  # coupling bounds b_i
    expected_accepted: Fraction
    expected_bound: Fraction

    @property
    def ok(self) -> bool:
        return all(t <= b for t, b in zip(self.tail, self.bounds))


def coupling_bound_applies(scheme: Scheme) -> bool:
    """True for single-draft schemes whose accepted prefix is a sample of ``draft`` (the bound's
    premise); multi-draft schemes and hierarchies (whose target sees a middle model's draft) opt out."""
    return bool(getattr(scheme, "coupling_bound_applies", getattr(scheme, "n_drafts", 1) == 1))


def coupling_check(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> CouplingCheck:
    """Compare ``P(tau >= i)`` with the coupling bound for a single-draft scheme."""
    if not coupling_bound_applies(scheme):
        raise HSDInputError(f"scheme: {scheme.name!r} is not a single-draft scheme; the coupling bound does not apply")
    law = accepted_law(scheme, target, draft, prefix, k)
    tail = tuple(sum((m for t, m in law.items() if t >= i), Fraction(0)) for i in range(1, k + 1))
    bounds = tuple(coupling_bounds(scheme, target, draft, prefix, k))
    return CouplingCheck(tail, bounds, sum(tail, Fraction(0)), sum(bounds, Fraction(0)))
