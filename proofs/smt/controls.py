"""The lossy controls: z3 finds a counterexample, and hsd_ref confirms it exactly.

For each known-lossy scheme the query is the negation of the losslessness claim on the law built by
the mirrored code (:mod:`.encode`): "there are target and draft models (every conditional a
distribution) under which the iteration law differs from the reference law at some sequence".  A
``sat`` answer comes with a model; its values become exact Fractions (rational models are taken as
they are; an algebraic value would be rounded and each row renormalised exactly), the rows become
:class:`hsd_ref.TableLM` models, and :func:`hsd_ref.check_lossless` -- the project's exact oracle,
independent of z3 and of the mirrored encoding -- must report the scheme lossy on that instance.
This is also the non-vacuity check of the z3 side: the same law construction that the proofs call
lossless is refuted when the scheme is wrong.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import z3

from hsd_ref import Instance, TableLM, check_lossless
from hsd_ref.registry import SCHEMES

from . import encode as E
from .ops import Z3Ops
from .symbolic import SymModel

__all__ = ["CONTROLS", "ControlResult", "find_counterexample"]

ops = Z3Ops()


@dataclass
class ControlResult:
    scheme: str
    vocab: int
    k: int
    status: str  # "sat" (counterexample found), "unsat" or "unknown"
    seconds: float
    confirmed: bool = False  # hsd_ref.check_lossless reported the instance lossy
    target: TableLM | None = None
    draft: TableLM | None = None
    report: object = None


def _single(plan_fn) -> Callable:
    def law(p, q, V, k):
        return E.extend_law(ops, E.single_draft_outcome(ops, plan_fn, p, q, (), k, V), p, (), k + 1)

    return law


def _hierarchy_resample_middle(p, q, V, k):
    """hsd_ref.schemes.hierarchy.hierarchy_resample_middle(): draft -> mix (p + q)/2 -> target, the
    middle level verifying with resample_from_target, the target token-wise."""
    scheme = _scheme("hierarchy_resample_middle")
    half = Fraction(1, 2)

    def mid(ctx):
        return tuple(half * a + (1 - half) * b for a, b in zip(p(ctx), q(ctx)))

    plans = [None, E.resample_from_target_plan, E.tokenwise_plan]
    law = E.hierarchy_outcome(ops, [q, mid, p], plans, scheme.thresholds_for(k), (), V)
    return E.extend_law(ops, law, p, (), k + 1)


def _scheme(name: str):
    if name in SCHEMES:
        return SCHEMES[name]
    if name == "hierarchy_resample_middle":
        from hsd_ref.schemes.hierarchy import hierarchy_resample_middle

        return hierarchy_resample_middle()
    raise KeyError(name)


# name -> (draft length of the query, law builder)
CONTROLS: dict[str, tuple[int, Callable]] = {
    "hsd_released": (2, _single(lambda o, t, d, x: E.hsd_capped_plan(o, t, d, x, capped_final=False))),
    "lenience": (1, _single(lambda o, t, d, x: E.lenience_plan(o, t, d, x, _scheme("lenience").lenience))),
    "resample_from_target": (1, _single(E.resample_from_target_plan)),
    "hierarchy_resample_middle": (1, _hierarchy_resample_middle),
}


def _value(model: z3.ModelRef, var) -> Fraction:
    val = model.eval(var, model_completion=True)
    if z3.is_rational_value(val):
        return Fraction(val.numerator_as_long(), val.denominator_as_long())
    return Fraction(val.approx(20).as_decimal(20).rstrip("?")).limit_denominator(10**6)


def _table(model: z3.ModelRef, sym: SymModel) -> TableLM:
    V = sym.vocab
    rows = {}
    for ctx, row in sym.rows.items():
        vals = [max(_value(model, x), Fraction(0)) for x in row]
        total = sum(vals)
        rows[ctx] = tuple(v / total for v in vals) if total else tuple(Fraction(1, V) for _ in range(V))
    uniform = tuple(Fraction(1, V) for _ in range(V))
    return TableLM.from_function(V, lambda ctx: rows.get(tuple(ctx), uniform))


def _search(name: str, vocab: int, timeout: float, context_free: bool):
    k, build = CONTROLS[name]
    p, q = SymModel("p", vocab), SymModel("q", vocab)
    law = build(p, q, vocab, k)
    hyps = [h.formula for h in p.all_hyps() + q.all_hyps()]
    if context_free:  # every conditional equal to the first one: fewer unknowns, still a valid model
        for m in (p, q):
            root = m(())
            hyps += [a == b for ctx, row in m.rows.items() if ctx for a, b in zip(row, root)]
    cells = list(itertools.product(range(vocab), repeat=k + 1))
    queries = [[c] for c in cells] if context_free else [cells]
    spent = 0.0
    for group in queries:
        differs = []
        for z in group:
            want = z3.RealVal(1)
            for i, t in enumerate(z):
                want = want * p(z[:i])[t]
            differs.append(law.get(z, z3.RealVal(0)) != want)
        solver = z3.Solver()
        solver.set("timeout", max(1, int(max(timeout - spent, 0.001) * 1000)))
        solver.add(*hyps)
        solver.add(z3.Or(*differs))
        t0 = time.perf_counter()
        res = solver.check()
        spent += time.perf_counter() - t0
        if res == z3.sat:
            return "sat", spent, solver.model(), p, q, k
        if spent >= timeout:
            break
    return ("unsat" if res == z3.unsat and not context_free else "unknown"), spent, None, p, q, k


def find_counterexample(name: str, vocab: int = 2, timeout: float = 60.0) -> ControlResult:
    """Ask z3 for models under which ``name``'s iteration law is not the target's (context-free
    models first, one output sequence at a time; then unrestricted models), then confirm the model
    with :func:`hsd_ref.check_lossless` (exact, on that one instance)."""
    status, dt, model, p, q, k = _search(name, vocab, timeout / 2, context_free=True)
    if model is None:
        status, dt2, model, p, q, k = _search(name, vocab, timeout / 2, context_free=False)
        dt += dt2
    out = ControlResult(name, vocab, k, status, dt)
    if model is not None:
        out.target, out.draft = _table(model, p), _table(model, q)
        out.report = check_lossless(_scheme(name), instances=[Instance(out.target, out.draft, (), k, "z3 model")])
        out.confirmed = not out.report.lossless and out.report.counterexample is not None
    return out
