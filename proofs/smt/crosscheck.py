"""The tie between the z3 proofs and hsd_ref's code: each mirrored encoding (:mod:`.encode`),
evaluated with exact Fractions (:class:`~.ops.FracOps`), must return exactly what the hsd_ref scheme
returns (``outcome_law``, compared with ``==``) on a seeded family of instances -- the instance
family of :func:`hsd_ref.check.instance_family` (toy pair, draft == target, point-mass draft on a
target zero, random context-dependent pairs with zeros and point masses) plus extra random pairs.

This is the cheap half of tying the proofs to the code; the other half, a refactor of hsd_ref that
would let the proofs run hsd_ref's own kernels on z3 terms, is described in docs/proofs.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from hsd_ref import TableLM
from hsd_ref.check import instance_family
from hsd_ref.registry import SCHEMES
from hsd_ref.schemes.spectr_kseq import kseq_rho

from . import encode as E
from .ops import FracOps

__all__ = ["CROSSCHECKED", "CrossResult", "crosscheck", "encoded_outcome"]

ops = FracOps()

_PLANS = {
    "tokenwise": E.tokenwise_plan,
    "greedy": E.greedy_plan,
    "block": E.block_plan,
    "hsd_capped": E.hsd_capped_plan,
    "hsd_released": lambda o, t, d, x: E.hsd_capped_plan(o, t, d, x, capped_final=False),
    "resample_from_target": E.resample_from_target_plan,
}
_MULTI = ("rrs", "rrs_without_replacement", "spectr_kseq")
CROSSCHECKED = tuple(_PLANS) + ("lenience", "hsd_naive") + _MULTI + ("hierarchy", "hierarchy_resample_middle")


def _scheme(name: str):
    if name in SCHEMES:
        return SCHEMES[name]
    from hsd_ref.schemes import hierarchy as H

    return {"hierarchy": H.hierarchy, "hierarchy_resample_middle": H.hierarchy_resample_middle}[name]()


def encoded_outcome(name: str, target: TableLM, draft: TableLM, prefix: tuple, k: int) -> dict:
    """The mirrored encoding of scheme ``name``, evaluated exactly: ``{emitted tokens: mass}``."""
    scheme = _scheme(name)
    V = target.vocab_size
    if name in _PLANS or name == "lenience":
        plan = _PLANS.get(name) or (lambda o, t, d, x: E.lenience_plan(o, t, d, x, scheme.lenience))
        return E.single_draft_outcome(ops, plan, scheme.reference(target).probs, scheme.proposal(draft).probs, prefix, k, V)
    if name == "hsd_naive":
        return E.hsd_naive_outcome(ops, target.probs, draft.probs, prefix, k, V)
    if name in _MULTI:
        replacement = name != "rrs_without_replacement"

        def rule(ctx, p_row, q_row, m):
            if name == "spectr_kseq":
                rho = kseq_rho(p_row, q_row, m)
                res = E.kseq_residual(ops, p_row, q_row, m, rho)
                return lambda tokens: E.spectr_decide(ops, p_row, q_row, tokens, rho, res)
            return lambda tokens: E.rrs_decide(ops, p_row, q_row, tokens, replacement)

        return E.multidraft_outcome(ops, rule, target.probs, draft.probs, prefix, k, scheme.n_drafts, replacement)
    if name in ("hierarchy", "hierarchy_resample_middle"):
        mid = scheme.models(target, draft)[1]
        plans = [None, E.resample_from_target_plan if name == "hierarchy_resample_middle" else E.tokenwise_plan, E.tokenwise_plan]
        return E.hierarchy_outcome(ops, [draft.probs, mid.probs, target.probs], plans, scheme.thresholds_for(k), prefix, V)
    raise KeyError(f"name: no encoding for scheme {name!r}")


@dataclass
class CrossResult:
    scheme: str
    checked: int = 0
    mismatches: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.mismatches


def _nonzero(law: dict) -> dict:
    return {key: Fraction(v) for key, v in law.items() if v}


def crosscheck(name: str, *, vocab_sizes=(2, 3), ks=(0, 1, 2), extra: int = 4, seed: int = 0) -> CrossResult:
    """Compare the encoding of ``name`` with hsd_ref's ``outcome_law`` (exact ``==``) on the instance
    family of :func:`hsd_ref.check.instance_family` and ``extra`` more random pairs per (V, k)."""
    scheme = _scheme(name)
    out = CrossResult(name)
    ks_used = [k for k in ks if not (k == 0 and name.startswith("hierarchy"))]
    family = [(inst.target, inst.draft, inst.k) for inst in instance_family(vocab_sizes, [k for k in ks_used if k > 0], 2, seed)]
    for V in vocab_sizes:
        for k in ks_used:
            for i in range(extra):
                s = 7 * seed + 1000 * V + 100 * k + i
                family.append((TableLM.random(V, 2 * s, max_denominator=6, zero_prob=0.35, peaked_prob=0.2),
                               TableLM.random(V, 2 * s + 1, max_denominator=6, zero_prob=0.35, peaked_prob=0.2), k))
    for target, draft, k in family:
        got = _nonzero(encoded_outcome(name, target, draft, (), k))
        want = _nonzero(scheme.outcome_law(target, draft, (), k))
        out.checked += 1
        if got != want:
            out.mismatches.append((target, draft, k))
    return out
