"""Reusable lemmas of the z3 proofs: facts about the terms one node of a scheme builds.

Every function here proves its facts with :class:`proofs.smt.prover.Session` queries about the terms
that :mod:`proofs.smt.encode` built (so about hsd_ref's code, via the mirrored encodings), and
returns them as :class:`~proofs.smt.prover.Fact` objects for later queries.
"""

from __future__ import annotations

from typing import Sequence

import z3

from .prover import Fact, Session, times

__all__ = ["residual_parts", "residual_lemma", "residual_distribution", "node_tokenwise", "onehot_facts", "nonneg"]


def residual_parts(res: Sequence[z3.ExprRef]) -> tuple[list[z3.ExprRef], z3.ExprRef]:
    """The weights ``w`` and their total of a residual built by
    :func:`proofs.smt.encode.residual_or_target` (``If(total == 0, target, w / total)`` per token)."""
    weights, total = [], None
    for t in res:
        if not (z3.is_app_of(t, z3.Z3_OP_ITE) and z3.is_eq(t.arg(0)) and z3.is_div(t.arg(2))):
            raise ValueError(f"residual_parts: not a residual_or_target term: {t}")
        weights.append(t.arg(2).arg(0))
        tot = t.arg(2).arg(1)
        if total is None:
            total = tot
        elif not total.eq(tot):
            raise ValueError("residual_parts: the tokens of the residual have different totals")
    return weights, total


def nonneg(S: Session, tag: str, terms: Sequence[z3.ExprRef], hyps: Sequence = ()) -> list[Fact]:
    """``t >= 0`` for each term (the weights of a residual are ``max(., 0)``)."""
    return [S.prove(f"{tag} [{i}] >= 0", list(hyps), t >= 0) for i, t in enumerate(terms)]


def residual_lemma(S: Session, tag: str, res, weight_nonneg: Sequence[Fact], abstract=()) -> list[Fact]:
    """``total * res(v) == w(v)`` for every token: the residual is its weights normalised, and when
    the total is 0 every weight is 0 (they are non-negative), so the fallback row never matters."""
    weights, total = residual_parts(res)
    for i, w in enumerate(weights):
        S.atom(w, f"{tag}.w{i}")
    out = []
    for v, r in enumerate(res):
        out.append(S.prove(f"{tag} residual [{v}]", list(weight_nonneg), total * r == weights[v], abstract=list(weights) + list(abstract)))
    return out


def node_tokenwise(S: Session, tag: str, P, Q, chance, res, P_facts: Sequence[Fact], Q_facts: Sequence[Fact], abstract=(), scale=None) -> list[Fact]:
    """The token-wise step at one node: for every token ``v``::

        P(v) == Q(v) * chance(v) + (sum_x Q(x) * (1 - chance(x))) * res(v)

    where ``chance`` are the acceptance chances of the drafted tokens and ``res`` the residual that
    is emitted after a rejection.  ``P_facts``/``Q_facts``: non-negativity of every entry then the
    row sum (``== 1``) of ``P`` and ``Q``.  ``abstract``: subterms of ``P``/``Q`` to treat as atoms.
    With ``scale`` given, the last ``Q_facts`` entry is ``scale * sum Q == scale`` (``Q`` sums to 1
    only where ``scale != 0``) and the identity is proved multiplied by ``scale``.

    Sub-lemmas (each a small query): per token, ``Q(x) * chance(x) + w(x) == P(x)`` with ``w`` the
    residual's weight (accepted mass + excess = target); the residual lemma; then the identity as a
    linear combination of these (multiplied by ``res(v)``) and the two row sums.
    """
    V = len(P)
    weights, total = residual_parts(res)
    for x in range(V):
        S.atom(chance[x], f"{tag}.a{x}")
        S.atom(res[x], f"{tag}.r{x}")
        S.atom(weights[x], f"{tag}.w{x}")
    P_nonneg, P_sum = P_facts[:V], P_facts[V]
    Q_nonneg, Q_sum = Q_facts[:V], Q_facts[V]
    step = []
    for x in range(V):
        step.append(S.prove(f"{tag} accepted+excess [{x}]", [P_nonneg[x], Q_nonneg[x]], Q[x] * chance[x] + weights[x] == P[x], abstract=abstract))
    w_nonneg = nonneg(S, f"{tag} excess", weights, [P_nonneg[x] for x in range(V)])
    resid = residual_lemma(S, tag, res, w_nonneg, abstract)
    reject = z3.Sum([Q[x] * (1 - chance[x]) for x in range(V)])
    atoms = list(chance) + list(res) + list(weights) + list(abstract)
    out = []
    c = 1 if scale is None else scale
    for v in range(V):
        hyps = [times(step[x], c * res[v]) for x in range(V)] + [times(step[v], c), times(resid[v], c), times(P_sum, c * res[v]), times(Q_sum, res[v])]
        goal = P[v] == Q[v] * chance[v] + reject * res[v]
        if scale is not None:
            goal = scale * P[v] == scale * (Q[v] * chance[v] + reject * res[v])
        out.append(S.prove(f"{tag} node [{v}]", hyps, goal, abstract=atoms, linear=True))
    return out


def residual_distribution(S: Session, tag: str, res, target, target_facts: Sequence[Fact], weight_nonneg: Sequence[Fact], resid: Sequence[Fact], abstract=()) -> list[Fact]:
    """A residual with non-negative weights whose fallback is the distribution ``target`` is itself
    a distribution: ``res(v) >= 0`` for every token, then ``sum res == 1`` (last entry)."""
    V = len(res)
    weights, total = residual_parts(res)
    fallback = [S.prove(f"{tag} empty -> target [{v}]", [], z3.Implies(total == 0, res[v] == target[v]), abstract=list(weights) + list(abstract)) for v in range(V)]
    atoms = list(res) + list(weights) + list(abstract)
    out = [S.prove(f"{tag} >= 0 [{v}]", [weight_nonneg[v], resid[v], fallback[v], target_facts[v]] + list(weight_nonneg), res[v] >= 0, abstract=atoms) for v in range(V)]
    scaled = S.prove(f"{tag} total (sum - 1) = 0", list(resid), total * (z3.Sum(list(res)) - 1) == 0, abstract=atoms, linear=True)
    out.append(S.prove(f"{tag} sums to 1", [scaled] + fallback + [target_facts[V]], z3.Sum(list(res)) == 1, abstract=atoms))
    return out


def onehot_facts(S: Session, tag: str, e, hyps: Sequence = (), abstract=()) -> dict:
    """For a point-mass vector ``e`` (an argmax one-hot): ``sum e == 1``, ``e(v) * e(v) == e(v)`` and
    ``e(u) * e(v) == 0`` for ``u != v``."""
    V = len(e)
    facts = {"sum": S.prove(f"{tag} sums to 1", list(hyps), z3.Sum(list(e)) == 1, abstract=abstract)}
    for u in range(V):
        for v in range(u, V):
            goal = e[u] * e[v] == (e[u] if u == v else 0)
            facts[u, v] = facts[v, u] = S.prove(f"{tag} [{u}]*[{v}]", list(hyps), goal, abstract=abstract)
    return facts
