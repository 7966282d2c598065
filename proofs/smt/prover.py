"""The lemma-guided proof discipline used by every z3 proof in :mod:`proofs.smt`.

A proof is a sequence of small z3 queries.  Each query asks whether ``hypotheses and not goal`` is
unsatisfiable over the reals (``unsat`` = the implication holds for every real assignment).  Its
hypotheses are the distribution constraints and *earlier proved facts*; so the chain of queries is a
proof of the last goal (modus ponens), and only the queries themselves are trusted to z3.

Two devices keep each query small:

* **Abstraction** (sound generalisation): before a query is sent, chosen subterms -- typically the
  ``If``-laden terms of the scheme's code that an earlier lemma already characterised -- are replaced
  by fresh constants everywhere in the query.  If the generalised query is unsat for every value of
  the constants, it is unsat for the original subterms in particular.
* **Multiplied facts**: a proved equation ``a == b`` may be used as ``m * (a - b) == 0`` for any
  term ``m`` (trivially valid).  The proof scripts pass the multipliers their paper proof uses, so
  the final identity is a *linear* combination of the hypotheses over monomials.
* **Linearisation** (sound generalisation again): such a query may be sent with ``linear=True``:
  every formula is expanded into a sum of monomials (:func:`expand`, exact) and every
  non-constant monomial is replaced by a fresh variable.  Forgetting that the monomials are
  products only removes constraints, so an unsat linear problem proves the original query; z3
  decides the linear problem at once, where searching for the multipliers would time out.

:class:`Session` records every query (name, status, seconds) for the runner's table.
"""

from __future__ import annotations

import time
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import z3

__all__ = ["Fact", "Query", "ProofFailed", "Session", "Times", "expand", "linearize", "times", "term_size"]


@dataclass(frozen=True)
class Fact:
    """A proved formula (or a hypothesis of the theorem) about terms of the encoding."""

    name: str
    formula: z3.BoolRef

    def __repr__(self) -> str:
        return f"Fact({self.name})"


@dataclass
class Query:
    name: str
    status: str  # "unsat" (proved), "sat" (refuted), "unknown" (timeout / gave up)
    seconds: float
    model: z3.ModelRef | None = None


class ProofFailed(Exception):
    """A query of a proof did not come back ``unsat``."""

    def __init__(self, query: Query):
        super().__init__(f"query {query.name!r}: {query.status} after {query.seconds:.2f}s")
        self.query = query


@dataclass(frozen=True)
class Times:
    """The hypothesis ``multiplier * (lhs - rhs) == 0`` derived from an equation fact ``lhs == rhs``."""

    fact: Fact
    multiplier: object

    def formula(self) -> z3.BoolRef:
        f = self.fact.formula
        return self.multiplier * (f.arg(0) - f.arg(1)) == 0


def times(fact: Fact, multiplier) -> Times:
    """``multiplier * (lhs - rhs) == 0`` for an equation fact ``lhs == rhs`` (valid when the fact is)."""
    f = fact.formula
    if not (z3.is_eq(f) and f.num_args() == 2):
        raise ValueError(f"times: fact {fact.name!r} is not an equation")
    return Times(fact, multiplier)


def term_size(t: z3.ExprRef, memo: dict | None = None) -> int:
    """Number of nodes of a term's DAG (shared subterms counted once)."""
    seen = set()
    stack = [t]
    while stack:
        e = stack.pop()
        key = e.get_id()
        if key in seen:
            continue
        seen.add(key)
        stack.extend(e.children())
    return len(seen)


def _numeral(e: z3.ExprRef) -> Fraction | None:
    if z3.is_rational_value(e):
        return Fraction(e.numerator_as_long(), e.denominator_as_long())
    if z3.is_int_value(e):
        return Fraction(e.as_long())
    return None


def expand(e: z3.ExprRef, memo: dict | None = None) -> dict[tuple, Fraction]:
    """The polynomial of ``e`` as ``{monomial: coefficient}``; a monomial is the sorted tuple of the
    ids of its factors (with multiplicity).  Any subterm that is not ``+ - *``, a numeral or a
    division by a numeral is an opaque factor."""
    memo = {} if memo is None else memo
    key = e.get_id()
    hit = memo.get(key)
    if hit is not None:
        return hit[1]
    c = _numeral(e)
    if c is not None:
        out = {(): c} if c else {}
    elif z3.is_add(e):
        out = {}
        for ch in e.children():
            for m, v in expand(ch, memo).items():
                out[m] = out.get(m, 0) + v
    elif z3.is_sub(e):
        out = dict(expand(e.arg(0), memo))
        for ch in e.children()[1:]:
            for m, v in expand(ch, memo).items():
                out[m] = out.get(m, 0) - v
    elif z3.is_app_of(e, z3.Z3_OP_UMINUS):
        out = {m: -v for m, v in expand(e.arg(0), memo).items()}
    elif z3.is_mul(e):
        out = {(): Fraction(1)}
        for ch in e.children():
            factor = expand(ch, memo)
            nxt: dict = {}
            for m1, v1 in out.items():
                for m2, v2 in factor.items():
                    m = tuple(sorted(m1 + m2))
                    nxt[m] = nxt.get(m, 0) + v1 * v2
            out = nxt
    elif z3.is_div(e) and _numeral(e.arg(1)) not in (None, 0):
        d = _numeral(e.arg(1))
        out = {m: v / d for m, v in expand(e.arg(0), memo).items()}
    elif z3.is_to_real(e):
        out = expand(e.arg(0), memo)
    else:
        out = {(key,): Fraction(1)}
    out = {m: v for m, v in out.items() if v}
    memo[key] = (e, out)  # keep e alive: z3 reuses the ids of freed terms
    return out


def _mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for m1, v1 in a.items():
        for m2, v2 in b.items():
            m = tuple(sorted(m1 + m2))
            out[m] = out.get(m, 0) + v1 * v2
    return {m: v for m, v in out.items() if v}


def _diff(a: dict, b: dict) -> dict:
    out = dict(a)
    for m, v in b.items():
        out[m] = out.get(m, 0) - v
    return {m: v for m, v in out.items() if v}


def linearize(formulas: Sequence, memo: dict | None = None) -> list[z3.BoolRef]:
    """Expand equations ``a == b`` into ``sum of monomials == 0`` (:func:`expand`) and replace each
    non-constant monomial by a fresh variable shared across the formulas (module docstring).  An
    entry ``("times", m, a, b)`` stands for ``m * (a - b) == 0``."""
    names: dict[tuple, z3.ExprRef] = {}
    memo = {} if memo is None else memo
    out = []
    for f in formulas:
        neg = False
        if isinstance(f, tuple):
            _, mult, lhs, rhs = f
            mpoly = expand(mult, memo) if isinstance(mult, z3.ExprRef) else ({(): Fraction(mult)} if mult else {})
            poly = _mul(mpoly, _diff(expand(lhs, memo), expand(rhs, memo)))
        else:
            if z3.is_not(f):
                neg, f = True, f.arg(0)
            if not (z3.is_eq(f) and f.num_args() == 2):
                raise ValueError(f"linearize: only equations and their negations are supported, got {f}")
            poly = _diff(expand(f.arg(0), memo), expand(f.arg(1), memo))
        lin = []
        for m, v in poly.items():
            if not v:
                continue
            coeff = z3.RealVal(f"{v.numerator}/{v.denominator}")
            if not m:
                lin.append(coeff)
                continue
            if m not in names:
                names[m] = z3.Real(f"#m{len(names)}")
            lin.append(coeff * names[m])
        expr = z3.Sum(lin) if lin else z3.RealVal(0)
        out.append(z3.Not(expr == 0) if neg else expr == 0)
    return out


@dataclass
class Session:
    """Runs the queries of one theorem; ``timeout`` is the per-query limit in seconds."""

    timeout: float = 60.0
    queries: list[Query] = field(default_factory=list)
    atoms: dict[int, tuple[z3.ExprRef, z3.ExprRef]] = field(default_factory=dict)
    _abs_cache: dict = field(default_factory=dict, repr=False)
    _poly_cache: dict = field(default_factory=dict, repr=False)
    _subst_arrays: dict = field(default_factory=dict, repr=False)

    def atom(self, term: z3.ExprRef, name: str) -> z3.ExprRef:
        """The fresh constant that stands for ``term`` whenever a query abstracts it."""
        key = term.get_id()
        if key not in self.atoms:
            self.atoms[key] = (term, z3.Real(f"@{name}"))
        return self.atoms[key][1]

    def alias(self, term: z3.ExprRef, fact: Fact, other: z3.ExprRef) -> None:
        """After ``fact`` proved ``term == other``, abstract ``term`` by the atom of ``other``
        (substituting equals for equals, then generalising)."""
        f = fact.formula
        if not (z3.is_eq(f) and f.arg(0).eq(term) and f.arg(1).eq(other)):
            raise ValueError(f"alias: fact {fact.name!r} does not state term == other")
        key = other.get_id()
        if key not in self.atoms:
            raise KeyError("alias: register an atom for the other term first")
        self.atoms[term.get_id()] = (term, self.atoms[key][1])

    def _pairs(self, terms: Iterable[z3.ExprRef]) -> tuple[tuple, list]:
        pairs = []
        for t in terms:
            key = t.get_id()
            if key not in self.atoms:
                raise KeyError(f"abstract: no atom registered for term {t}")
            pairs.append(self.atoms[key])
        sig = tuple(sorted(src.get_id() for src, _ in pairs))
        return sig, pairs

    def _abs(self, t, sig, pairs):
        """``t`` with every listed term replaced by its atom (one simultaneous substitution, which
        matches an enclosing term before the terms inside it, as ``z3.substitute``); cached."""
        if not isinstance(t, z3.ExprRef) or not pairs:
            return t
        key = (t.get_id(), sig)
        hit = self._abs_cache.get(key)
        if hit is None:
            arrays = self._subst_arrays.get(sig)
            if arrays is None:
                n = len(pairs)
                src, dst = (z3.Ast * n)(), (z3.Ast * n)()
                for i, (a, b) in enumerate(pairs):
                    src[i], dst[i] = a.as_ast(), b.as_ast()
                arrays = self._subst_arrays[sig] = (n, src, dst, pairs)
            n, src, dst, _ = arrays
            res = z3.z3._to_expr_ref(z3.Z3_substitute(t.ctx_ref(), t.as_ast(), n, src, dst), t.ctx)
            hit = (t, res)  # keep t alive: z3 reuses the ids of freed terms
            self._abs_cache[key] = hit
        return hit[1]

    def check(self, name: str, hyps: Sequence, goal: z3.BoolRef, abstract: Iterable[z3.ExprRef] = (), linear: bool = False) -> Query:
        """Run one query: is ``hyps and not goal`` unsat (after abstraction, and linearisation when
        ``linear``; then every hypothesis and the goal must be equations)?"""
        sig, pairs = self._pairs(abstract)
        formulas = []
        for h in list(hyps) + [z3.Not(goal)]:
            if isinstance(h, Times):
                f = h.fact.formula
                lhs, rhs = self._abs(f.arg(0), sig, pairs), self._abs(f.arg(1), sig, pairs)
                mult = self._abs(h.multiplier, sig, pairs)
                if linear:
                    formulas.append(("times", mult, lhs, rhs))
                else:
                    formulas.append(mult * (lhs - rhs) == 0)
            else:
                formulas.append(self._abs(h.formula if isinstance(h, Fact) else h, sig, pairs))
        if linear:
            formulas = linearize(formulas, self._poly_cache)
        solver = z3.Solver()
        solver.set("timeout", max(1, int(self.timeout * 1000)))
        solver.add(*formulas)
        t0 = time.perf_counter()
        res = solver.check()
        dt = time.perf_counter() - t0
        q = Query(name, str(res), dt, solver.model() if res == z3.sat else None)
        self.queries.append(q)
        return q

    def prove(self, name: str, hyps: Sequence, goal: z3.BoolRef, abstract: Iterable[z3.ExprRef] = (), linear: bool = False) -> Fact:
        """As :meth:`check`, and return the goal as a proved :class:`Fact`; raise on anything but unsat."""
        q = self.check(name, hyps, goal, abstract, linear)
        if q.status != "unsat":
            raise ProofFailed(q)
        return Fact(name, goal)

    @property
    def seconds(self) -> float:
        return sum(q.seconds for q in self.queries)
