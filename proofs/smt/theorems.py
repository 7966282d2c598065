"""z3 proofs that the lossless schemes of hsd_ref are lossless, for a fixed vocabulary size ``V``.

Every proof quantifies over ALL target and draft models: each conditional an iteration can read is
a row of free real variables constrained only to be a distribution (:class:`~.symbolic.SymModel`).
The law of one iteration is built by the mirrored scheme code (:mod:`.encode`, itself checked
against hsd_ref with exact Fractions) and extended to ``k + 1`` tokens with the reference model, as
hsd_ref's :func:`~hsd_ref.iteration_law`.  The theorem proved is, for every sequence ``z`` of
``k + 1`` tokens::

    iteration_law(scheme)(z) == reference(z_1) reference(z_2 | z_1) ... reference(z_{k+1} | z_1..z_k)

(papers.md §0.2; by marginalisation this covers every shorter horizon, and across iterations the
Coq theorem ``decode_lossless`` of proofs/coq/Common.v does the induction).  Each proof follows the
paper proof of its scheme: local lemmas about the code's terms (where all case analysis happens),
then one linear query per output sequence ``z`` (:mod:`.prover` explains the discipline).

``THEOREMS[name](V, k, timeout)`` returns the :class:`~.prover.Session` of a successful proof and
raises :class:`~.prover.ProofFailed` otherwise; ``k`` is 1 or 2.
"""

from __future__ import annotations

import itertools
from typing import Callable

import z3

from . import encode as E
from .lemmas import node_tokenwise, nonneg, onehot_facts, residual_distribution, residual_lemma, residual_parts
from .ops import Z3Ops
from .prover import Fact, Session, times
from .symbolic import SymModel

__all__ = ["COQ_ALSO", "COQ_ONLY", "THEOREMS", "SUPPORTED_K"]

# lossless schemes whose proof is in Coq only (no fixed-V z3 proof)
COQ_ONLY = {
    "hierarchy": "proofs/coq/Compose.v: hierarchy_tokenwise_block_lossless (surplus='truncate', token-wise/block levels)",
    "adaptive_tokenwise": "proofs/coq/Adaptive.v: adaptive_tokenwise_lossless (every k, any stopping rule of the context and drafted prefix)",
    "adaptive_block": "proofs/coq/Adaptive.v: adaptive_block_lossless (every k, any stopping rule of the context and drafted prefix)",
    "adaptive_hsd_capped": "proofs/coq/Adaptive.v: adaptive_hsd_capped_lossless (every k, any stopping rule of the context and drafted prefix)",
}

# lossless schemes with a fixed-V z3 proof here AND a Coq proof for every V, k and number of drafts
COQ_ALSO = {
    "rrs": "proofs/coq/RRS.v: rrs_lossless (every k, every number of drafts N, i.i.d. drafts)",
    "rrs_without_replacement": (
        "proofs/coq/RRS.v: rrs_without_replacement_lossless (every k, every number of drafts N, drafting without replacement)"
    ),
}

ops = Z3Ops()
SUPPORTED_K = (1, 2)


def _check_k(k: int) -> None:
    if k not in SUPPORTED_K:
        raise ValueError(f"k: the z3 proofs exist for k in {SUPPORTED_K}, got {k!r}")


def _target_law(p: Callable, z: tuple):
    out = z3.RealVal(1)
    for i, t in enumerate(z):
        out = out * p(z[:i])[t]
    return out


def _rows(m: SymModel, ctx=()):
    """The distribution hypotheses of a symbolic row: non-negativity of each entry, then the row sum
    (the order node_tokenwise wants)."""
    return m.hyps(ctx)


def _same_terms(terms) -> None:
    first = terms[0]
    for t in terms[1:]:
        for a, b in zip(first, t):
            if not a.eq(b):
                raise AssertionError("a term that the proof names once differs between drafts")


# ---------------------------------------------------------------------------------------- k = 1


def _single_k1(S: Session, V: int, plan_fn) -> None:
    """Any single-draft scheme whose k = 1 plan is one test of the drafted token followed by the
    bonus row (tokenwise, block, hsd_capped, hsd_naive): the token-wise node identity at the root,
    proved about the scheme's own chance and residual terms, then one query per output pair."""
    p, q = SymModel("p", V), SymModel("q", V)
    plans = [plan_fn(ops, [p(()), p((x,))], [q(())], (x,)) for x in range(V)]
    chance = [plans[x].chances[0] for x in range(V)]
    res = plans[0].emit[0]
    _same_terms([pl.emit[0] for pl in plans])
    for x in range(V):
        if not all(a.eq(b) for a, b in zip(plans[x].emit[1], p((x,)))):
            raise AssertionError("the bonus token must be drawn from the target row")
    node = node_tokenwise(S, "root", p(()), q(()), chance, res, _rows(p), _rows(q))
    law = E.extend_law(ops, E.single_draft_outcome(ops, plan_fn, p, q, (), 1, V), p, (), 2)
    atoms = list(chance) + list(res)
    for z in itertools.product(range(V), repeat=2):
        S.prove(f"law {z}", [times(node[z[0]], p(z[:1])[z[1]])], law[z] == _target_law(p, z), abstract=atoms, linear=True)


# ------------------------------------------------------------------------------------ tokenwise


def tokenwise(V: int, k: int, timeout: float = 60.0) -> Session:
    """Token-wise speculative sampling (hsd_ref/schemes/tokenwise.py): at every node, accepted mass
    plus rejected mass times the residual is the target row; the iteration law factorises along the
    draft path."""
    _check_k(k)
    S = Session(timeout)
    if k == 1:
        _single_k1(S, V, E.tokenwise_plan)
        return S
    p, q = SymModel("p", V), SymModel("q", V)
    plans = {xs: E.tokenwise_plan(ops, [p(xs[:i]) for i in range(3)], [q(xs[:i]) for i in range(2)], xs) for xs in itertools.product(range(V), repeat=2)}
    a0 = [plans[x, 0].chances[0] for x in range(V)]
    r0 = plans[0, 0].emit[0]
    a1 = {x: [plans[x, y].chances[1] for y in range(V)] for x in range(V)}
    r1 = {x: plans[x, 0].emit[1] for x in range(V)}
    node0 = node_tokenwise(S, "root", p(()), q(()), a0, r0, _rows(p), _rows(q))
    node1 = {x: node_tokenwise(S, f"node {x}", p((x,)), q((x,)), a1[x], r1[x], _rows(p, (x,)), _rows(q, (x,))) for x in range(V)}
    law = E.extend_law(ops, E.single_draft_outcome(ops, E.tokenwise_plan, p, q, (), 2, V), p, (), 3)
    atoms = a0 + list(r0) + [t for x in range(V) for t in a1[x] + list(r1[x])]
    for z in itertools.product(range(V), repeat=3):
        z1, z2, _ = z
        P1, T = p((z1,))[z2], p(z[:2])[z[2]]
        hyps = [times(node1[z1][z2], q(())[z1] * a0[z1] * T), times(node0[z1], P1 * T)]
        hyps += [times(q.total[(x,)], q(())[x] * (1 - a0[x]) * r0[z1] * P1 * T) for x in range(V)]
        S.prove(f"law {z}", hyps, law[z] == _target_law(p, z), abstract=atoms, linear=True)
    return S


# ---------------------------------------------------------------------------------------- block


class _BlockTerms:
    """The terms a block-type (backward-scan) k = 2 proof names: clamped ratio ``pi1[x]`` of the
    first draft token, the excess weights ``X0`` (root) and ``X1[x]`` (node x), the tests ``h1[x]``
    and ``h2[x, y]`` and the emitted laws ``e0`` (root residual), ``e1[x]`` (node-x residual)."""

    def __init__(self, pi1, X0, X1, h1, h2, e0, e1):
        self.pi1, self.X0, self.X1, self.h1, self.h2, self.e0, self.e1 = pi1, X0, X1, h1, h2, e0, e1


def _block_k2_from(S: Session, V: int, p: SymModel, q: SymModel, t: _BlockTerms, plan_fn, facts: dict) -> None:
    """The per-sequence queries of the block proof (papers.md §2-§3, Block.v ``level_avg``), given
    the facts ``B1[x]``: q0(x) pi1(x) + X0(x) = p0(x); ``B2[x, y]``: q1x(y) h2(x,y) + X1x(y) =
    pi1(x) p1x(y); ``B3[x]``: h1(x) (S1x + 1 - pi1(x)) = S1x; ``B4[x, v]``: S1x e1x(v) = X1x(v);
    ``B5[v]``: S0 e0(v) = X0(v) (S = sums of the X's)."""
    B1, B2, B3, B4, B5 = facts["B1"], facts["B2"], facts["B3"], facts["B4"], facts["B5"]
    law = E.extend_law(ops, E.single_draft_outcome(ops, plan_fn, p, q, (), 2, V), p, (), 3)
    atoms = list(t.pi1) + list(t.h1) + list(t.X0) + list(t.e0)
    atoms += [a for x in range(V) for a in list(t.X1[x]) + list(t.e1[x]) + [t.h2[x, y] for y in range(V)]]
    q0 = q(())
    for z in itertools.product(range(V), repeat=3):
        z1, z2, _ = z
        P1, T = p((z1,))[z2], p(z[:2])[z[2]]
        m = q0[z1] * t.h1[z1] * t.e1[z1][z2] * T
        hyps = [times(B2[z1, z2], q0[z1] * T), times(q.total[(z1,)], m), times(p.total[(z1,)], m * t.pi1[z1])]
        hyps += [times(B2[z1, y], m) for y in range(V)]
        hyps += [times(B3[z1], q0[z1] * t.e1[z1][z2] * T), times(B4[z1, z2], q0[z1] * T), times(B1[z1], P1 * T)]
        for x in range(V):
            mx = q0[x] * (1 - t.h1[x]) * t.e0[z1] * P1 * T
            hyps += [times(q.total[(x,)], mx), times(p.total[(x,)], mx * t.pi1[x])] + [times(B2[x, y], mx) for y in range(V)]
            hyps += [times(B3[x], q0[x] * t.e0[z1] * P1 * T), times(B1[x], t.e0[z1] * P1 * T)]
        hyps += [times(q.total[()], t.e0[z1] * P1 * T), times(p.total[()], t.e0[z1] * P1 * T), times(B5[z1], P1 * T)]
        S.prove(f"law {z}", hyps, law[z] == _target_law(p, z), abstract=atoms, linear=True)


def block(V: int, k: int, timeout: float = 60.0) -> Session:
    """Block verification (hsd_ref/schemes/block.py): the telescoping proof of Block.v at fixed V."""
    _check_k(k)
    S = Session(timeout)
    if k == 1:
        _single_k1(S, V, E.block_plan)
        return S
    p, q = SymModel("p", V), SymModel("q", V)
    parts = {xs: E.block_parts(ops, [p(xs[:i]) for i in range(3)], [q(xs[:i]) for i in range(2)], xs) for xs in itertools.product(range(V), repeat=2)}
    t = _BlockTerms(
        pi1=[parts[x, 0][0][1] for x in range(V)],
        X0=parts[0, 0][1][0],
        X1={x: parts[x, 0][1][1] for x in range(V)},
        h1=[parts[x, 0][2].chances[0] for x in range(V)],
        h2={(x, y): parts[x, y][0][2] for x in range(V) for y in range(V)},
        e0=parts[0, 0][2].emit[0],
        e1={x: parts[x, 0][2].emit[1] for x in range(V)},
    )
    for x in range(V):
        _same_terms([[parts[x, y][0][1], parts[x, y][2].chances[0]] + list(parts[x, y][2].emit[1]) for y in range(V)])
    _block_terms_atoms(S, V, t)
    B1, B2, B3, B4 = {}, {}, {}, {}
    pi_range = {}
    for x in range(V):
        B1[x] = S.prove(f"B1 q0 pi1 + X0 = p0 [{x}]", [p.nonneg[()][x], q.nonneg[()][x]], q(())[x] * t.pi1[x] + t.X0[x] == p(())[x])
        pi_range[x] = S.prove(f"0 <= pi1 <= 1 [{x}]", [p.nonneg[()][x], q.nonneg[()][x]], z3.And(t.pi1[x] >= 0, t.pi1[x] <= 1))
    X0_nonneg = nonneg(S, "X0", t.X0, p.nonneg[()])
    for x in range(V):
        X1_nonneg = nonneg(S, f"X1[{x}]", t.X1[x], [pi_range[x]] + p.nonneg[(x,)])
        for y in range(V):
            B2[x, y] = S.prove(f"B2 q1 pi2 + X1 = pi1 p1 [{x}{y}]", [pi_range[x], p.nonneg[(x,)][y], q.nonneg[(x,)][y]],
                               q((x,))[y] * t.h2[x, y] + t.X1[x][y] == t.pi1[x] * p((x,))[y], abstract=[t.pi1[x]])
        S1 = z3.Sum(list(t.X1[x]))
        B3[x] = S.prove(f"B3 h1 (S1 + 1 - pi1) = S1 [{x}]", [pi_range[x]] + X1_nonneg, t.h1[x] * (S1 + 1 - t.pi1[x]) == S1,
                        abstract=[t.pi1[x]] + list(t.X1[x]))
        for v, f in enumerate(residual_lemma(S, f"e1[{x}]", t.e1[x], X1_nonneg, [t.pi1[x]])):
            B4[x, v] = f
    B5 = dict(enumerate(residual_lemma(S, "e0", t.e0, X0_nonneg)))
    _block_k2_from(S, V, p, q, t, E.block_plan, {"B1": B1, "B2": B2, "B3": B3, "B4": B4, "B5": B5})
    return S


def _block_terms_atoms(S: Session, V: int, t: _BlockTerms) -> None:
    for x in range(V):
        S.atom(t.pi1[x], f"pi1[{x}]")
        S.atom(t.h1[x], f"h1[{x}]")
        S.atom(t.X0[x], f"X0[{x}]")
        S.atom(t.e0[x], f"e0[{x}]")
        for y in range(V):
            S.atom(t.X1[x][y], f"X1[{x}{y}]")
            S.atom(t.e1[x][y], f"e1[{x}{y}]")
            S.atom(t.h2[x, y], f"h2[{x}{y}]")


# ----------------------------------------------------------------------------------- hsd_capped


def hsd_capped(V: int, k: int, timeout: float = 60.0, capped_final: bool = True) -> Session:
    """HSD with capped branch resampling (hsd_ref/schemes/hsd_capped.py).  k = 2: its own terms are
    related to block verification's clamped ratio pi1 = min(1, p0/q0) (the per-draft equality of
    papers.md §3.4: P1 / M1 = Q1 pi1, branch excess = Q1 * block excess), then the block proof runs
    on the HSD terms.  ``capped_final=False`` runs the same proof on the released (lossy) rule
    hsd_released; it must fail (a test checks that)."""
    _check_k(k)
    S = Session(timeout)
    plan_fn = E.hsd_capped_plan if capped_final else (lambda o, t, d, x: E.hsd_capped_plan(o, t, d, x, capped_final=False))
    if k == 1:
        _single_k1(S, V, plan_fn)
        return S
    p, q = SymModel("p", V), SymModel("q", V)
    pairs = list(itertools.product(range(V), repeat=2))
    plans = {xs: plan_fn(ops, [p(xs[:i]) for i in range(3)], [q(xs[:i]) for i in range(2)], xs) for xs in pairs}
    full = {xs: E.hsd_capped_build(ops, [p(xs[:i]) for i in range(3)], [q(xs[:i]) for i in range(2)], xs, 2, capped_final)[1] for xs in pairs}
    blk = {x: E.block_parts(ops, [p(()), p((x,)), p((x, 0))], [q(()), q((x,))], (x, 0)) for x in range(V)}
    for x in range(V):
        _same_terms([[plans[x, y].chances[0]] + list(plans[x, y].emit[1]) for y in range(V)])
    e0 = plans[0, 0].emit[0]
    t = _BlockTerms(
        pi1=[blk[x][0][1] for x in range(V)],       # block's clamped ratio (an auxiliary term)
        X0=residual_parts(e0)[0],                  # HSD's root excess
        X1={x: blk[x][1][1] for x in range(V)},    # block's excess at node x (auxiliary)
        h1=[plans[x, 0].chances[0] for x in range(V)],
        h2={xs: plans[xs].chances[1] for xs in pairs},
        e0=e0,
        e1={x: plans[x, 0].emit[1] for x in range(V)},
    )
    _block_terms_atoms(S, V, t)
    p0, q0 = p(()), q(())
    B1, B2, B3, B4 = {}, {}, {}, {}
    for x in range(V):
        base = [p.nonneg[()][x], q.nonneg[()][x]]
        B1[x] = S.prove(f"B1 q0 pi1 + X0 = p0 [{x}]", base, q0[x] * t.pi1[x] + t.X0[x] == p0[x])
        pi_range = S.prove(f"0 <= pi1 <= 1 [{x}]", base, z3.And(t.pi1[x] >= 0, t.pi1[x] <= 1))
        pi_zero = S.prove(f"q0 = 0 -> pi1 = 0 [{x}]", base, z3.Implies(q0[x] == 0, t.pi1[x] == 0))
        plus1, minus1 = full[x, 0]["plus"][1], full[x, 0]["minus_terms"][1]
        c1 = q0[x] != 0
        X1_nonneg, HP, HM, X1_zero = [], [], [], []
        for v in range(V):
            node = base + [p.nonneg[(x,)][v], q.nonneg[(x,)][v]]
            X1_nonneg.append(S.prove(f"X1 >= 0 [{x}{v}]", [pi_range] + node, t.X1[x][v] >= 0))
            X1_zero.append(S.prove(f"q0 = 0 -> X1 = 0 [{x}{v}]", node, z3.Implies(q0[x] == 0, t.X1[x][v] == 0)))
            HP.append(S.prove(f"HSD excess = q0 * block excess [{x}{v}]", node, z3.Implies(c1, plus1[v] == q0[x] * t.X1[x][v])))
            HM.append(S.prove(f"HSD deficit [{x}{v}]", node,
                              z3.Implies(c1, minus1[v] == q0[x] * (t.X1[x][v] + q((x,))[v] - t.pi1[x] * p((x,))[v]))))
        for y in range(V):
            B2[x, y] = S.prove(f"B2 q1 h2 + X1 = pi1 p1 [{x}{y}]", base + [p.nonneg[(x,)][y], q.nonneg[(x,)][y]],
                               q((x,))[y] * t.h2[x, y] + t.X1[x][y] == t.pi1[x] * p((x,))[y])
        S1 = z3.Sum(list(t.X1[x]))
        inner = list(plus1) + list(minus1) + list(t.X1[x]) + [t.pi1[x]]
        for i, a in enumerate(list(plus1) + list(minus1)):
            S.atom(a, f"hsd[{x}].{i}")
        hyps = [pi_range, pi_zero, q.nonneg[()][x], p.total[(x,)], q.total[(x,)]] + X1_nonneg + X1_zero + HP + HM
        hyps += [times(p.total[(x,)], q0[x] * t.pi1[x])]
        B3[x] = S.prove(f"B3 h1 (S1 + 1 - pi1) = S1 [{x}]", hyps, t.h1[x] * (S1 + 1 - t.pi1[x]) == S1, abstract=inner)
        for v in range(V):
            B4[x, v] = S.prove(f"B4 S1 e1 = X1 [{x}{v}]", hyps, S1 * t.e1[x][v] == t.X1[x][v], abstract=inner)
    X0_nonneg = nonneg(S, "X0", t.X0, p.nonneg[()])
    B5 = dict(enumerate(residual_lemma(S, "e0", e0, X0_nonneg)))
    _block_k2_from(S, V, p, q, t, plan_fn, {"B1": B1, "B2": B2, "B3": B3, "B4": B4, "B5": B5})
    return S


# ------------------------------------------------------------------------------------ hsd_naive


def _hsd_naive_plan(ops_, t_rows, d_rows, xs):
    """The scan part of hsd_naive (for the k = 1 proof, where the one resampled token is the
    plan's emitted token)."""
    return E._by_usable_length(ops_, d_rows, xs, lambda m: E._hsd_naive_plan_with(ops_, t_rows, d_rows, xs, m, *E.joint_masses(ops_, t_rows, d_rows, xs, m)))


def hsd_naive(V: int, k: int, timeout: float = 60.0) -> Session:
    """Naive HSD with recursive resampling (hsd_ref/schemes/hsd_naive.py).  k = 2 (papers.md §3.2):
    with uncapped joint masses, D(p,q) - D(q,p) = P1 - Q1 (the branch asymmetry), the drafted
    continuations of x leave the deficit D(q,p|x) unaccepted, the level-1 test passes h1 D(q,p) of
    it and the rest, summed over x, is the root excess; both are resampled from the same branch
    residual.  k = 1 is the token-wise step on its own terms."""
    _check_k(k)
    S = Session(timeout)
    if k == 1:
        p, q = SymModel("p", V), SymModel("q", V)
        law = E.extend_law(ops, E.hsd_naive_outcome(ops, p, q, (), 1, V), p, (), 2)
        plans = [_hsd_naive_plan(ops, [p(()), p((x,))], [q(())], (x,)) for x in range(V)]
        chance = [pl.chances[0] for pl in plans]
        res = plans[0].emit[0]
        node = node_tokenwise(S, "root", p(()), q(()), chance, res, _rows(p), _rows(q))
        for z in itertools.product(range(V), repeat=2):
            S.prove(f"law {z}", [times(node[z[0]], p(z[:1])[z[1]])], law[z] == _target_law(p, z), abstract=list(chance) + list(res), linear=True)
        return S
    p, q = SymModel("p", V), SymModel("q", V)
    p0, q0 = p(()), q(())
    pairs = list(itertools.product(range(V), repeat=2))
    plans = {xs: _hsd_naive_plan(ops, [p(xs[:i]) for i in range(3)], [q(xs[:i]) for i in range(2)], xs) for xs in pairs}
    for x in range(V):
        _same_terms([[plans[x, y].chances[0]] + list(plans[x, y].emit[1]) for y in range(V)])
    h1 = [plans[x, 0].chances[0] for x in range(V)]
    h2 = {xs: plans[xs].chances[1] for xs in pairs}
    e0 = plans[0, 0].emit[0]
    e1 = {x: plans[x, 0].emit[1] for x in range(V)}
    X0 = residual_parts(e0)[0]
    plus, minus, R1, Dp, Dm = {}, {}, {}, {}, {}
    for x in range(V):
        Px, Qx = E.joint_masses(ops, [p0], [q0], (x,), 1)
        plus[x], minus[x] = E.branch_excess_terms(ops, Px[1], Qx[1], p((x,)), q((x,)))
        R1[x] = E.residual_or_target(ops, plus[x], p((x,)))
        Dp[x], Dm[x] = residual_parts(R1[x])[1], sum(minus[x][1:], minus[x][0])
    for x in range(V):
        S.atom(h1[x], f"h1[{x}]")
        S.atom(X0[x], f"X0[{x}]")
        S.atom(e0[x], f"e0[{x}]")
        for v in range(V):
            S.atom(h2[x, v], f"h2[{x}{v}]")
            S.atom(e1[x][v], f"e1[{x}{v}]")
            S.atom(R1[x][v], f"R1[{x}{v}]")
            S.atom(plus[x][v], f"plus[{x}{v}]")
            S.atom(minus[x][v], f"minus[{x}{v}]")
    N1, N2, N3, N5, N6, N7 = {}, {}, {}, {}, {}, {}
    for x in range(V):
        base = [p.nonneg[()][x], q.nonneg[()][x]]
        plus_nonneg, minus_nonneg, minus_le, split = [], [], [], []
        for y in range(V):
            node = base + [p.nonneg[(x,)][y], q.nonneg[(x,)][y]]
            N1[x, y] = S.prove(f"N1 Q2 h2 + plus = P2 [{x}{y}]", node, q0[x] * q((x,))[y] * h2[x, y] + plus[x][y] == p0[x] * p((x,))[y])
            plus_nonneg.append(S.prove(f"plus >= 0 [{x}{y}]", [], plus[x][y] >= 0))
            minus_nonneg.append(S.prove(f"minus >= 0 [{x}{y}]", [], minus[x][y] >= 0))
            minus_le.append(S.prove(f"minus <= Q1 q1 [{x}{y}]", node, minus[x][y] <= q0[x] * q((x,))[y]))
            split.append(S.prove(f"plus - minus = P2 - Q2 [{x}{y}]", [], plus[x][y] - minus[x][y] == p0[x] * p((x,))[y] - q0[x] * q((x,))[y]))
        atoms_x = list(plus[x]) + list(minus[x])
        N2[x] = S.prove(f"N2 asymmetry D(p,q) - D(q,p) = P1 - Q1 [{x}]", split + [times(p.total[(x,)], p0[x]), times(q.total[(x,)], q0[x])],
                        Dp[x] - Dm[x] == p0[x] - q0[x], abstract=atoms_x, linear=True)
        N3[x] = S.prove(f"N3 unaccepted drafted mass = D(q,p) [{x}]", [N1[x, y] for y in range(V)] + [N2[x], times(p.total[(x,)], p0[x]), times(q.total[(x,)], q0[x])],
                        z3.Sum([q0[x] * q((x,))[y] * (1 - h2[x, y]) for y in range(V)]) == Dm[x],
                        abstract=atoms_x + [h2[x, y] for y in range(V)], linear=True)
        hyps = [N2[x], q.nonneg[()][x], q.total[(x,)]] + base + plus_nonneg + minus_nonneg + minus_le + list(q.nonneg[(x,)])
        N5[x] = S.prove(f"N5 h1 D(q,p) + X0 = D(p,q) [{x}]", hyps, h1[x] * Dm[x] + X0[x] == Dp[x], abstract=atoms_x)
        for v, f in enumerate(residual_lemma(S, f"R1[{x}]", R1[x], plus_nonneg)):
            N6[x, v] = f
        for v in range(V):
            N7[x, v] = S.prove(f"N7 D(q,p) (e1 - R1) = 0 [{x}{v}]", hyps, Dm[x] * (e1[x][v] - R1[x][v]) == 0, abstract=atoms_x + list(R1[x]))
    X0_nonneg = nonneg(S, "X0", X0, p.nonneg[()])
    root = dict(enumerate(residual_lemma(S, "e0", e0, X0_nonneg)))
    law = E.extend_law(ops, E.hsd_naive_outcome(ops, p, q, (), 2, V), p, (), 3)
    atoms = list(h1) + list(X0) + list(e0) + [a for x in range(V) for a in [h2[x, v] for v in range(V)] + list(e1[x]) + list(R1[x]) + list(plus[x]) + list(minus[x])]
    for z in itertools.product(range(V), repeat=3):
        z1, z2, _ = z
        T = p(z[:2])[z[2]]
        rr = e0[z1] * R1[z1][z2] * T
        hyps = [times(N1[z1, z2], T), times(N3[z1], h1[z1] * e1[z1][z2] * T), times(N7[z1, z2], h1[z1] * T)]
        hyps += [times(N3[x], (1 - h1[x]) * rr) for x in range(V)] + [times(N5[x], rr) for x in range(V)] + [times(N2[x], rr) for x in range(V)]
        hyps += [times(q.total[()], rr), times(p.total[()], rr), times(root[z1], R1[z1][z2] * T), times(N5[z1], R1[z1][z2] * T), times(N6[z1, z2], T)]
        S.prove(f"law {z}", hyps, law[z] == _target_law(p, z), abstract=atoms, linear=True)
    return S


# --------------------------------------------------------------------------------------- greedy


def greedy(V: int, k: int, timeout: float = 60.0) -> Session:
    """Greedy verification (hsd_ref/schemes/greedy.py) against the argmax model of the target, with
    drafts from the argmax model of the draft: token-wise sampling on point masses.  The argmax
    one-hots of the code are point masses (sum 1, e(u) e(v) = [u = v] e(v)), and the plan's argmax of
    an argmax row is that row."""
    _check_k(k)
    S = Session(timeout)
    p, q = SymModel("p", V), SymModel("q", V)
    P = {}
    Qh = {}

    def ref(ctx):
        if ctx not in P:
            P[ctx] = E.argmax_onehot(ops, p(ctx))
        return P[ctx]

    def prop(ctx):
        if ctx not in Qh:
            Qh[ctx] = E.argmax_onehot(ops, q(ctx))
        return Qh[ctx]

    law = E.extend_law(ops, E.single_draft_outcome(ops, E.greedy_plan, ref, prop, (), k, V), ref, (), k + 1)
    oh = {}
    for ctx in list(P):
        e = P[ctx]
        for v in range(V):
            S.atom(e[v], f"P{ctx}[{v}]")
        oh[ctx] = onehot_facts(S, f"argmax p{ctx}", e)
        twice = E.argmax_onehot(ops, e)
        for v in range(V):
            f = S.prove(f"argmax of argmax p{ctx} [{v}]", [oh[ctx]["sum"]] + [oh[ctx][u, u] for u in range(V)], twice[v] == e[v], abstract=list(e))
            S.alias(twice[v], f, e[v])
    qsum = {}
    for ctx in list(Qh):
        for v in range(V):
            S.atom(Qh[ctx][v], f"Q{ctx}[{v}]")
        qsum[ctx] = S.prove(f"argmax q{ctx} sums to 1", [], z3.Sum(list(Qh[ctx])) == 1)
    atoms = []
    for ctx in P:  # the argmax rows of the target, and the plan's argmax of them (aliased to them)
        atoms += list(P[ctx]) + list(E.argmax_onehot(ops, P[ctx]))
    for ctx in Qh:
        atoms += list(Qh[ctx])

    def first(z1, mult):
        """(p0-hat(z1) = q0(z1) p0(z1) + (1 - sum_x q0(x) p0(x)) p0(z1)) times mult."""
        e, qh = P[()], Qh[()]
        hs = [times(qsum[()], e[z1] * mult), times(oh[()][z1, z1], qh[z1] * mult)]
        return hs + [times(oh[()][x, z1], qh[x] * mult) for x in range(V) if x != z1]

    for z in itertools.product(range(V), repeat=k + 1):
        z1 = z[0]
        if k == 1:
            hyps = first(z1, P[(z1,)][z[1]])
        else:
            z2, T = z[1], P[z[:2]][z[2]]
            e1, qh1 = P[(z1,)], Qh[(z1,)]
            m = Qh[()][z1] * P[()][z1] * T
            hyps = [times(qsum[(z1,)], e1[z2] * m), times(oh[(z1,)][z2, z2], qh1[z2] * m)]
            hyps += [times(oh[(z1,)][y, z2], qh1[y] * m) for y in range(V) if y != z2]
            hyps += [times(qsum[(x,)], Qh[()][x] * (1 - P[()][x]) * P[()][z1] * e1[z2] * T) for x in range(V)]
            hyps += first(z1, e1[z2] * T)
        S.prove(f"law {z}", hyps, law[z] == _target_law(ref, z), abstract=atoms, linear=True)
    return S


# ---------------------------------------------------------------------------------- multi-draft


N_DRAFTS = 2


class _Tree:
    """The symbolic setting of a multi-draft proof: models, the node rule of the scheme, and the
    node identities (``accepted + emitted mass == target row``) proved so far."""

    def __init__(self, S: Session, V: int, scheme: str):
        self.S, self.V, self.scheme = S, V, scheme
        self.p, self.q = SymModel("p", V), SymModel("q", V)
        self.replacement = scheme != "rrs_without_replacement"
        self.rho: dict = {}
        self.rho_hyps: list[Fact] = []

    def rule(self, ctx, p_row, q_row, m):
        if self.scheme == "spectr_kseq":
            rho, res = self.kseq(ctx, p_row, q_row, m)
            return lambda tokens: E.spectr_decide(ops, p_row, q_row, tokens, rho, res)
        replacement = self.replacement
        return lambda tokens: E.rrs_decide(ops, p_row, q_row, tokens, replacement)

    def kseq(self, ctx, p_row, q_row, m):
        """SpecTr's rho at a node: a free variable with the bisection's guarantee as hypothesis
        (1 <= rho <= m and the feasibility condition; hsd_ref.schemes.spectr_kseq.kseq_rho keeps the
        upper end of its interval feasible, and rho = m is feasible: lemma "feasible at m")."""
        key = (ctx, m)
        if key not in self.rho:
            rho = z3.Real(f"rho{''.join(map(str, ctx))}_{m}")
            mins = [ops.min(qx, px / rho) for px, qx in zip(p_row, q_row)]
            beta = sum(mins, ops.num(0))
            feasible = 1 - ops.power(1 - beta, m) <= rho * beta
            self.rho_hyps.append(Fact(f"hypothesis rho{ctx}_{m} in [1, {m}]", z3.And(rho >= 1, rho <= m)))
            self.rho_hyps.append(Fact(f"hypothesis rho{ctx}_{m} feasible", feasible))
            at_m = z3.substitute(feasible, (rho, z3.RealVal(m)))
            self.S.prove(f"kseq: rho = {m} is feasible{ctx}", self._row_facts(ctx), at_m)
            self.rho[key] = (rho, E.kseq_residual(ops, p_row, q_row, m, rho))
        return self.rho[key]

    def _row_facts(self, ctx):
        return self.p.hyps(ctx) + self.q.hyps(ctx)

    def node(self, ctx, m):
        """Prove ``sum_c accept[(v, c)] + emit[v] == p(v | ctx)`` for the node ``(ctx, m)``."""
        S, V, P, Q = self.S, self.V, self.p(ctx), self.q(ctx)
        tag = f"{self.scheme} node{ctx} m={m}"
        accept, emit = E.node_law(ops, self.rule(ctx, P, Q, m), P, Q, m, self.replacement)
        total = [sum([a for (x, c), a in accept.items() if x == v], ops.num(0)) + emit[v] for v in range(V)]
        if self.scheme == "spectr_kseq":
            hyps, atoms = self._kseq_node(tag, ctx, m)
        elif m == 1:
            hyps, atoms = self._rrs_first(tag, ctx)
        elif self.replacement:
            hyps, atoms = self._rrs_pair(tag, ctx)
        else:
            hyps, atoms = self._wor_pair(tag, ctx)
        return [S.prove(f"{tag} identity [{v}]", hyps[v], total[v] == P[v], abstract=atoms, linear=True) for v in range(V)]

    # -- recursive rejection sampling ----------------------------------------------------------

    def _first(self, tag, ctx):
        """The first candidate: the token-wise step at (P, q) with the rrs residual."""
        P, Q = self.p(ctx), self.q(ctx)
        chance = [E.ratio_chance(ops, P[x], Q[x]) for x in range(self.V)]
        P1 = E.residual_or_target(ops, E.positive_part(ops, P, Q), P)
        tn1 = node_tokenwise(self.S, f"{tag} first", P, Q, chance, P1, _rows(self.p, ctx), _rows(self.q, ctx))
        return chance, P1, tn1

    def _rrs_first(self, tag, ctx):
        chance, P1, tn1 = self._first(tag, ctx)
        return [[tn1[v]] for v in range(self.V)], list(chance) + list(P1)

    def _P1_facts(self, tag, ctx, P1):
        S, P = self.S, self.p(ctx)
        weights = residual_parts(P1)[0]
        w_nonneg = nonneg(S, f"{tag} P1 weights", weights, self.p.nonneg[ctx])
        resid = residual_lemma(S, f"{tag} P1", P1, w_nonneg)
        return residual_distribution(S, f"{tag} P1", P1, P, _rows(self.p, ctx), w_nonneg, resid)

    def _rrs_pair(self, tag, ctx):
        """Two i.i.d. candidates: the token-wise step at (P, q), then at (P1, q) with P1 the residual."""
        S, V, Q = self.S, self.V, self.q(ctx)
        chance, P1, tn1 = self._first(tag, ctx)
        P1_facts = self._P1_facts(tag, ctx, P1)
        chance2 = [E.ratio_chance(ops, P1[x], Q[x]) for x in range(V)]
        res2 = E.residual_or_target(ops, E.positive_part(ops, P1, Q), P1)
        for x in range(V):
            S.atom(P1[x], f"{tag} P1[{x}]")
        tn2 = node_tokenwise(S, f"{tag} second", P1, Q, chance2, res2, P1_facts, _rows(self.q, ctx), abstract=list(P1))
        reject1 = z3.Sum([Q[x] * (1 - chance[x]) for x in range(V)])
        hyps = [[tn1[v], times(tn2[v], reject1), times(self.q.total[ctx], Q[v] * chance[v])] for v in range(V)]
        return hyps, list(chance) + list(P1) + list(chance2) + list(res2)

    def _wor_pair(self, tag, ctx):
        """Two candidates drawn without replacement.  After rejecting x1 the second candidate is a
        draw from q' = drop_token(q, x1) checked against (P1, q'): the token-wise step at (P1, q'),
        weighted by M(x1) = q(x1) if q(x1) < 1, else 0 (then the second draft is absent and the
        residual is P1 itself).  The pair masses of the drafting law are M(x1) q'(x2)."""
        S, V, P, Q = self.S, self.V, self.p(ctx), self.q(ctx)
        chance, P1, tn1 = self._first(tag, ctx)
        P1_facts = self._P1_facts(tag, ctx, P1)
        for x in range(V):
            S.atom(P1[x], f"{tag} P1[{x}]")
        mass = dict(E.candidate_law(ops, Q, 2, False))
        hyps = [[tn1[v]] for v in range(V)]
        atoms = list(chance) + list(P1)
        qrow = self._row_facts(ctx)
        for x1 in range(V):
            t2 = f"{tag} after {x1}"
            dec = E.rrs_decide(ops, P, Q, (x1, (x1 + 1) % V), False)
            res2 = dec[1]
            # drop_token(q, x1): its weights, their total T, the renormalised row q'
            weights = tuple(ops.num(0) if v == x1 else w for v, w in enumerate(Q))
            tot = sum(weights[1:], weights[0])
            qd = tuple(ops.ite(ops.is_zero(tot), lambda w=w: w, lambda w=w: w / tot) for w in weights)
            chance2 = [E.ratio_chance(ops, P1[x], qd[x]) for x in range(V)]
            M = z3.If(1 - Q[x1] == 0, z3.RealVal(0), Q[x1])
            S.atom(tot, f"{t2} T")
            for x2 in range(V):
                S.atom(qd[x2], f"{t2} q'[{x2}]")
            F_tot = S.prove(f"{t2} T = 1 - q(x1)", [self.q.total[ctx]], tot == 1 - Q[x1], linear=True)
            QN = [S.prove(f"{t2} T q'(v) = w(v) [{v}]", qrow, tot * qd[v] == weights[v]) for v in range(V)]
            QZ = [S.prove(f"{t2} T = 0 -> q'(v) = 0 [{v}]", qrow, z3.Implies(tot == 0, qd[v] == 0)) for v in range(V)]
            qd_nonneg = [S.prove(f"{t2} q' >= 0 [{v}]", qrow, qd[v] >= 0) for v in range(V)]
            TQ = S.prove(f"{t2} T (sum q' - 1) = 0", QN, tot * (z3.Sum(list(qd)) - 1) == 0, abstract=list(qd), linear=True)
            qd_sum = S.prove(f"{t2} M sum q' = M", [TQ, F_tot], M * z3.Sum(list(qd)) == M, abstract=[tot] + list(qd))
            qd_zero = S.prove(f"{t2} q'[{x1}] = 0", [], qd[x1] == 0)
            tn2 = node_tokenwise(S, t2, P1, qd, chance2, res2, P1_facts, qd_nonneg + [qd_sum], abstract=list(P1) + list(qd), scale=M)
            others = [x2 for x2 in range(V) if x2 != x1]
            W1 = [S.prove(f"{t2} mass({x1},{x2}) = M q'", [F_tot, self.q.nonneg[ctx][x1], self.q.nonneg[ctx][x2]], mass[x1, x2] == M * qd[x2], abstract=[tot]) for x2 in others]
            absent = mass[x1, E.PLACEHOLDER]
            W3 = S.prove(f"{t2} absent mass + M = q(x1)", [], absent + M == Q[x1])
            W2 = [S.prove(f"{t2} absent second draft -> P1 [{v}]", [F_tot] + QZ + P1_facts, absent * (res2[v] - P1[v]) == 0, abstract=[tot] + list(P1) + list(qd)) for v in range(V)]
            for v in range(V):
                c = 1 - chance[x1]
                hyps[v] += [times(f, c * (chance2[v] if x2 == v else 0) + c * (1 - chance2[x2]) * res2[v]) for f, x2 in zip(W1, others)]
                hyps[v] += [times(tn2[v], c), times(qd_zero, c * chance2[x1] * M), times(qd_zero, c * M * (1 - chance2[x1]) * res2[v]),
                            times(W3, c * P1[v]), times(W2[v], c)]
                if x1 == v:  # the pairs (v, x2) have total mass M: sum_x2 M q'(x2) = M
                    hyps[v] += [times(f, chance[x1]) for f in W1] + [times(W3, chance[x1]), times(qd_sum, chance[x1]), times(qd_zero, chance[x1] * M)]
            atoms += list(chance2) + list(res2) + list(qd) + [tot]
        return hyps, atoms

    # -- SpecTr K-SEQ -----------------------------------------------------------------------------

    def _kseq_node(self, tag, ctx, m):
        """K-SEQ at a node with m candidates (P not updated): q c = min(q, P / rho) =: n, beta = sum n,
        accepted mass n(v) (1 + (1 - beta) + ... + (1 - beta)^(m-1)), emitted (1 - beta)^m res(v);
        the residual is a distribution (uses feasibility)."""
        S, V, P, Q = self.S, self.V, self.p(ctx), self.q(ctx)
        rho, res = self.kseq(ctx, P, Q, m)
        hyp_rho = next(h for h in self.rho_hyps if h.name == f"hypothesis rho{ctx}_{m} in [1, {m}]")
        hyp_feasible = next(h for h in self.rho_hyps if h.name == f"hypothesis rho{ctx}_{m} feasible")
        rows = self._row_facts(ctx)
        local = lambda x: [hyp_rho, self.p.nonneg[ctx][x], self.q.nonneg[ctx][x]]
        chance = [E.ratio_chance(ops, P[x], Q[x], rho) for x in range(V)]
        mins = [ops.min(qx, px / rho) for px, qx in zip(P, Q)]
        beta = sum(mins, ops.num(0))
        none = ops.power(1 - beta, m)
        for x in range(V):
            S.atom(chance[x], f"{tag} c[{x}]")
            S.atom(mins[x], f"{tag} n[{x}]")
            S.atom(res[x], f"{tag} res[{x}]")
        acc_mass = [S.prove(f"{tag} q c = min(q, P/rho) [{x}]", local(x), Q[x] * chance[x] == mins[x]) for x in range(V)]
        n_range = [S.prove(f"{tag} 0 <= n <= P [{x}]", local(x), z3.And(mins[x] >= 0, mins[x] <= P[x])) for x in range(V)]
        n_le = [S.prove(f"{tag} rho n <= P [{x}]", local(x), rho * mins[x] <= P[x]) for x in range(V)]
        # the residual: beta none res(v) + n(v) (1 - none) == beta P(v)
        scaled = [S.prove(f"{tag} beta none res + n (1 - none) = beta P [{v}]", [hyp_rho] + rows + n_range, beta * none * res[v] + mins[v] * (1 - none) == beta * P[v], abstract=list(mins)) for v in range(V)]
        geo = sum((ops.power(1 - beta, j) for j in range(m)), ops.num(0))
        deg = [S.prove(f"{tag} beta = 0 -> res = P, n = 0 [{v}]", [hyp_rho] + rows + n_range, z3.Implies(beta == 0, z3.And(res[v] == P[v], mins[v] == 0)), abstract=list(mins)) for v in range(V)]
        full = [S.prove(f"{tag} none = 0 -> res = P [{v}]", [], z3.Implies(none == 0, res[v] == P[v]), abstract=list(mins)) for v in range(V)]
        ident = [S.prove(f"{tag} n geo + none res = P [{v}]", [scaled[v], deg[v], hyp_rho] + n_range, mins[v] * geo + none * res[v] == P[v], abstract=list(mins) + list(res)) for v in range(V)]
        # beta as one atom for the lemmas about the residual's values
        S.atom(beta, f"{tag} beta")
        n_le_q = [S.prove(f"{tag} n <= q [{x}]", local(x), mins[x] <= Q[x]) for x in range(V)]
        beta_range = S.prove(f"{tag} 0 <= beta <= 1", n_range + n_le_q + [self.q.total[ctx]], z3.And(beta >= 0, beta <= 1), abstract=list(mins))
        # the residual is a sampling law: non-negative (this is where feasibility is needed) ...
        for v in range(V):
            S.prove(f"{tag} res >= 0 [{v}] (feasibility)", [hyp_rho, hyp_feasible, beta_range, n_range[v], n_le[v], self.p.nonneg[ctx][v]],
                    res[v] >= 0, abstract=[beta, mins[v]])
        # ... and sums to 1
        sum_scaled = S.prove(f"{tag} none (sum res - 1) = 0", ident + [self.p.total[ctx]], none * (z3.Sum(list(res)) - 1) == 0, abstract=list(mins) + list(res), linear=True)
        S.prove(f"{tag} res sums to 1", [sum_scaled, self.p.total[ctx]] + full, z3.Sum(list(res)) == 1, abstract=[beta] + list(mins) + list(res))
        reject = z3.Sum([Q[x] * (1 - chance[x]) for x in range(V)])
        rej = S.prove(f"{tag} sum q (1 - c) = 1 - beta", acc_mass + [self.q.total[ctx]], reject == 1 - beta, abstract=list(chance) + list(mins), linear=True)
        hyps = []
        for v in range(V):
            if m == 2:  # accepted: q(v) c(v) (sum q + R), emitted: R^2 res(v), R = sum q (1 - c)
                h = [ident[v], times(acc_mass[v], z3.Sum(list(Q)) + reject), times(self.q.total[ctx], mins[v]),
                     times(rej, mins[v]), times(rej, (reject + 1 - beta) * res[v])]
            else:  # accepted: q(v) c(v), emitted: R res(v)
                h = [ident[v], acc_mass[v], times(rej, res[v])]
            hyps.append(h)
        return hyps, list(chance) + list(mins) + list(res)

    # -- the tree law ------------------------------------------------------------------------------

    def prove_law(self, k: int) -> None:
        S, V, p = self.S, self.V, self.p
        law = E.extend_law(ops, E.multidraft_outcome(ops, self.rule, p, self.q, (), k, N_DRAFTS, self.replacement), p, (), k + 1)
        root = self.node((), N_DRAFTS)
        accept, _ = E.node_law(ops, self.rule((), p(()), self.q(()), N_DRAFTS), p(()), self.q(()), N_DRAFTS, self.replacement)
        kids = {}
        if k == 2:
            for (x, c) in accept:
                if (x, c) not in kids:
                    kids[x, c] = self.node((x,), c)
        atoms = [t for t, _ in self.S.atoms.values()]
        for z in itertools.product(range(V), repeat=k + 1):
            z1 = z[0]
            if k == 1:
                hyps = [times(root[z1], p((z1,))[z[1]])]
            else:
                T = p(z[:2])[z[2]]
                hyps = [times(root[z1], p((z1,))[z[1]] * T)]
                hyps += [times(kids[x, c][z[1]], a * T) for (x, c), a in accept.items() if x == z1]
            S.prove(f"law {z}", hyps, law[z] == _target_law(p, z), abstract=atoms, linear=True)


def _multidraft(scheme: str):
    def theorem(V: int, k: int, timeout: float = 60.0) -> Session:
        _check_k(k)
        S = Session(timeout)
        _Tree(S, V, scheme).prove_law(k)
        return S

    theorem.__name__ = scheme
    theorem.__doc__ = f"{scheme} with N = {N_DRAFTS} drafts (hsd_ref/schemes/{scheme}.py, hsd_ref/multidraft.py): node identities, then the tree law."
    return theorem


THEOREMS: dict[str, Callable[..., Session]] = {
    "tokenwise": tokenwise,
    "greedy": greedy,
    "block": block,
    "hsd_capped": hsd_capped,
    "hsd_naive": hsd_naive,
    "rrs": _multidraft("rrs"),
    "rrs_without_replacement": _multidraft("rrs_without_replacement"),
    "spectr_kseq": _multidraft("spectr_kseq"),
}
