"""The schemes of hsd_ref, written once against the numeric interface of :mod:`proofs.smt.ops`.

Each function mirrors the hsd_ref function named in its docstring, statement for statement: Python
``min``/``max`` become ``ops.min``/``ops.max``, ``if`` on a number becomes ``ops.ite``, and a loop
cut short by a data-dependent ``break`` is encoded as an ``ite`` over the possible cut points.  With
:class:`~proofs.smt.ops.FracOps` every function returns exactly what hsd_ref returns (asserted with
``==`` on random and degenerate inputs by tests/proofs/test_proofs.py); with
:class:`~proofs.smt.ops.Z3Ops` it returns the z3 term of the same computation.

The single-draft functions return :class:`hsd_ref.Plan` objects, so the tau law of a plan is
hsd_ref's own :meth:`hsd_ref.Plan.tau_law` (it has no branches and runs on z3 terms unchanged).

Models are given as *row functions*: ``rows(ctx) -> tuple`` (a :class:`hsd_ref.TableLM`'s ``probs``
for the exact evaluation, a table of z3 variables for the proofs).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

from hsd_ref.scheme import PLACEHOLDER, Plan

__all__ = [
    "argmax_onehot",
    "block_parts",
    "block_plan",
    "candidate_law",
    "extend_law",
    "greedy_plan",
    "branch_excess_terms",
    "hsd_capped_build",
    "hsd_capped_plan",
    "joint_masses",
    "hsd_naive_draft_law",
    "hsd_naive_outcome",
    "hierarchy_outcome",
    "kseq_residual",
    "lenience_plan",
    "multidraft_outcome",
    "node_law",
    "positive_part",
    "ratio_chance",
    "residual_or_target",
    "resample_from_target_plan",
    "rrs_decide",
    "single_draft_outcome",
    "spectr_decide",
    "tokenwise_plan",
]

Rows = Callable[[tuple], Sequence]


def _add(law: dict, key, mass) -> None:
    law[key] = law[key] + mass if key in law else mass


# ------------------------------------------------------------------------------------- primitives


def ratio_chance(ops, p_x, q_x, scale=1):
    """hsd_ref.schemes.tokenwise.ratio_chance / hsd_ref.multidraft.ratio_chance:
    ``min(1, p(x) / (scale * q(x)))``, 0 when ``q(x) == 0``."""
    return ops.ite(ops.is_zero(q_x), lambda: ops.num(0), lambda: ops.min(ops.num(1), p_x / (scale * q_x)))


def positive_part(ops, a, b, scale=1):
    """hsd_ref.exact.positive_part: elementwise ``max(scale * a - b, 0)``."""
    return tuple(ops.max(scale * x - y, ops.num(0)) for x, y in zip(a, b))


def residual_or_target(ops, weights, target_row):
    """hsd_ref.scheme.residual_or_target (with hsd_ref.exact.normalize): the normalised weights, the
    target row when they sum to 0."""
    total = sum(weights[1:], weights[0])
    zero = ops.is_zero(total)
    return tuple(ops.ite(zero, lambda t=t: t, lambda w=w: w / total) for w, t in zip(weights, target_row))


def argmax_onehot(ops, row):
    """hsd_ref.exact.argmax + one_hot: the point mass on the first largest entry (the same scan)."""
    best = [ops.num(1)] + [ops.num(0)] * (len(row) - 1)
    best_val = row[0]
    for v in range(1, len(row)):
        bigger = ops.lt(best_val, row[v])  # dist[v] > dist[best]
        best = [ops.ite(bigger, lambda u=u: ops.num(int(u == v)), lambda u=u: best[u]) for u in range(len(row))]
        best_val = ops.ite(bigger, lambda v=v: row[v], lambda bv=best_val: bv)
    return tuple(best)


# ------------------------------------------------------------------------------ single-draft plans


def tokenwise_plan(ops, target_probs, draft_probs, draft_tokens, lenience=1) -> Plan:
    """hsd_ref.schemes.tokenwise.Tokenwise.plan (tokenwise_chances + tokenwise_residuals); with
    ``lenience != 1`` hsd_ref.schemes.lenience.Lenience.plan."""
    k = len(draft_tokens)
    chances = tuple(ratio_chance(ops, target_probs[i][x], draft_probs[i][x], lenience) for i, x in enumerate(draft_tokens))
    emit = tuple(
        residual_or_target(ops, positive_part(ops, target_probs[j], draft_probs[j]), target_probs[j]) for j in range(k)
    ) + (tuple(target_probs[k]),)
    return Plan("forward", chances, emit)


def lenience_plan(ops, target_probs, draft_probs, draft_tokens, lenience) -> Plan:
    """hsd_ref.schemes.lenience.Lenience.plan."""
    return tokenwise_plan(ops, target_probs, draft_probs, draft_tokens, lenience)


def resample_from_target_plan(ops, target_probs, draft_probs, draft_tokens) -> Plan:
    """hsd_ref.schemes.resample_from_target.ResampleFromTarget.plan."""
    chances = tuple(ratio_chance(ops, target_probs[i][x], draft_probs[i][x]) for i, x in enumerate(draft_tokens))
    return Plan("forward", chances, tuple(tuple(r) for r in target_probs))


def greedy_plan(ops, target_probs, draft_probs, draft_tokens) -> Plan:
    """hsd_ref.schemes.greedy.Greedy.plan: chance 1 iff the draft token is the target's argmax."""
    best = [argmax_onehot(ops, row) for row in target_probs]
    chances = tuple(best[i][x] for i, x in enumerate(draft_tokens))
    return Plan("forward", chances, tuple(best))


def block_parts(ops, target_probs, draft_probs, draft_tokens):
    """hsd_ref.schemes.block.Block.plan (with clamped_ratios), returning its intermediate terms:
    ``(pis, excess, plan)``."""
    k = len(draft_tokens)
    pis = [ops.num(1)]
    for i, x in enumerate(draft_tokens):
        q_x, p_x, prev = draft_probs[i][x], target_probs[i][x], pis[-1]
        pis.append(ops.ite(ops.is_zero(q_x), lambda: ops.num(0), lambda: ops.min(ops.num(1), prev * p_x / q_x)))
    excess = [positive_part(ops, target_probs[j], draft_probs[j], pis[j]) for j in range(k)]
    chances = []
    for i in range(1, k + 1):
        if i == k:
            chances.append(pis[k])
            continue
        s_i = sum(excess[i][1:], excess[i][0])
        reach = s_i + 1 - pis[i]
        chances.append(ops.ite(ops.is_zero(reach), lambda: ops.num(1), lambda: s_i / reach))
    emit = tuple(residual_or_target(ops, excess[j], target_probs[j]) for j in range(k)) + (tuple(target_probs[k]),)
    return pis, excess, Plan("backward", tuple(chances), emit)


def block_plan(ops, target_probs, draft_probs, draft_tokens) -> Plan:
    """hsd_ref.schemes.block.Block.plan."""
    return block_parts(ops, target_probs, draft_probs, draft_tokens)[2]


def _by_usable_length(ops, draft_probs, draft_tokens, build):
    """hsd_ref.schemes.hsd_capped.joint_masses cuts the draft before its first token of draft
    probability 0 (``m`` usable tokens).  This returns ``build(m)`` selected by nested ites on "token
    i has probability > 0" (i = 1, 2, ...); identical branches are merged, so a quantity that does
    not depend on where a later cut falls gets one term.  With exact numbers (Python bool
    conditions) only the selected ``build(m)`` is evaluated."""
    k = len(draft_tokens)

    def go(i):
        if i == k:
            return build(k)
        cut = ops.is_zero(draft_probs[i][draft_tokens[i]])
        if isinstance(cut, bool):
            return build(i) if cut else go(i + 1)
        return _ite_tree(ops, ops.Not(cut), go(i + 1), build(i))

    return go(0)


def _same(a, b) -> bool:
    if hasattr(a, "eq") and hasattr(b, "eq"):
        return a.eq(b)
    return type(a) is type(b) and a == b


def _ite_tree(ops, cond, a, b):
    if isinstance(a, Plan):
        return Plan(a.order, _ite_tree(ops, cond, a.chances, b.chances), _ite_tree(ops, cond, a.emit, b.emit))
    if isinstance(a, (tuple, list)):
        return tuple(_ite_tree(ops, cond, x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        keys = list(a) + [key for key in b if key not in a]
        zero = ops.num(0)
        return {key: _ite_tree(ops, cond, a.get(key, zero), b.get(key, zero)) for key in keys}
    if _same(a, b):
        return a
    return ops.ite(cond, lambda: a, lambda: b)


def joint_masses(ops, target_probs, draft_probs, draft_tokens, m):
    """hsd_ref.schemes.hsd_capped.joint_masses when the cut is at ``m``."""
    P, Q = [ops.num(1)], [ops.num(1)]
    for i in range(m):
        x = draft_tokens[i]
        P.append(P[-1] * target_probs[i][x])
        Q.append(Q[-1] * draft_probs[i][x])
    return P, Q


def hsd_capped_build(ops, target_probs, draft_probs, draft_tokens, m, capped_final=True):
    """hsd_ref.schemes.hsd_capped.HSDCapped.plan when joint_masses cuts the draft at ``m``; returns
    ``(plan, parts)`` with the intermediate terms in ``parts`` (joint masses ``P``, ``Q``, caps, and
    per branch ``t`` the excess ``plus[t]`` and the per-token deficits ``minus_terms[t]``)."""
    k = len(draft_tokens)
    P, Q = joint_masses(ops, target_probs, draft_probs, draft_tokens, m)
    caps = [ops.num(1)]
    for t in range(1, m + 1):
        caps.append(ops.max(caps[-1], P[t] / Q[t]))
    branch, minus_parts, chances = [], [], []
    for t in range(min(m, k - 1) + 1):
        capped_p = [P[t] * pv / caps[t] for pv in target_probs[t]]
        plus = tuple(ops.max(a - Q[t] * qv, ops.num(0)) for a, qv in zip(capped_p, draft_probs[t]))
        minus_terms = [ops.max(Q[t] * qv - a, ops.num(0)) for a, qv in zip(capped_p, draft_probs[t])]
        minus = sum(minus_terms[1:], minus_terms[0])
        branch.append(plus)
        minus_parts.append(tuple(minus_terms))
        if 1 <= t < k:
            s_plus = sum(plus[1:], plus[0])
            chances.append(ops.ite(ops.is_zero(minus), lambda: ops.num(1), lambda s=s_plus, d=minus: s / d))
    if m == k and k > 0:
        r_k = P[k] / Q[k]
        chances.append(ops.min(r_k / caps[k - 1], ops.num(1)) if capped_final else ops.min(r_k, ops.num(1)))
    chances += [ops.num(0)] * (k - len(chances))
    emit = tuple(
        residual_or_target(ops, branch[t], target_probs[t]) if t < len(branch) else tuple(target_probs[t]) for t in range(k)
    ) + (tuple(target_probs[k]),)
    parts = {"P": P, "Q": Q, "caps": caps, "plus": branch, "minus_terms": minus_parts}
    return Plan("backward", tuple(chances), emit), parts


def hsd_capped_plan(ops, target_probs, draft_probs, draft_tokens, capped_final=True) -> Plan:
    """hsd_ref.schemes.hsd_capped.HSDCapped.plan; ``capped_final=False`` is
    hsd_ref.schemes.hsd_released.HSDReleased (the uncapped final acceptance)."""
    return _by_usable_length(
        ops, draft_probs, draft_tokens, lambda m: hsd_capped_build(ops, target_probs, draft_probs, draft_tokens, m, capped_final)[0]
    )


def branch_excess_terms(ops, P_t, Q_t, p_row, q_row):
    """hsd_ref.schemes.hsd_naive.branch_excess, with the per-token deficits: ``(plus, minus_terms)``."""
    plus = tuple(ops.max(P_t * a - Q_t * b, ops.num(0)) for a, b in zip(p_row, q_row))
    minus_terms = tuple(ops.max(Q_t * b - P_t * a, ops.num(0)) for a, b in zip(p_row, q_row))
    return plus, minus_terms


def _branch_excess(ops, P_t, Q_t, p_row, q_row):
    """hsd_ref.schemes.hsd_naive.branch_excess: ``(plus, sum of the deficits)``."""
    plus, minus_terms = branch_excess_terms(ops, P_t, Q_t, p_row, q_row)
    return plus, sum(minus_terms[1:], minus_terms[0])


def _hsd_naive_plan_with(ops, target_probs, draft_probs, draft_tokens, m, P, Q) -> Plan:
    """hsd_ref.schemes.hsd_naive.HSDNaive.plan when joint_masses cuts the draft at ``m``."""
    k = len(draft_tokens)
    chances, emit = [], []
    for t in range(k):
        if t > m:
            emit.append(tuple(target_probs[t]))
            chances.append(ops.num(0))
            continue
        plus, minus = _branch_excess(ops, P[t], Q[t], target_probs[t], draft_probs[t])
        emit.append(residual_or_target(ops, plus, target_probs[t]))
        if t >= 1:
            s_plus = sum(plus[1:], plus[0])
            denom = ops.max(s_plus, minus)
            chances.append(ops.ite(ops.is_zero(denom), lambda: ops.num(1), lambda s=s_plus, d=denom: s / d))
    if k:
        chances.append(ops.min(ops.num(1), P[k] / Q[k]) if m == k else ops.num(0))
    return Plan("backward", tuple(chances), tuple(emit) + (tuple(target_probs[k]),))


def hsd_naive_draft_law(ops, target: Rows, draft: Rows, prefix: tuple, xs: tuple) -> dict:
    """hsd_ref.schemes.hsd_naive.HSDNaive.joint_law for ONE draft ``xs`` (its draft mass excluded):
    ``{emitted tokens: mass}``, the recursive resampling off the draft path (_resample_law) included.

    One difference of form, none of value: hsd_ref cuts the joint masses at the first draft token of
    draft probability 0 (``m`` usable tokens) and skips the levels ``tau > m``; here the plan is
    selected by the cut (:func:`_by_usable_length`) but the joint masses are the full products and
    no level is skipped.  Levels above the cut have chance 0, so P(tau) = 0 there, and below the cut
    the full products are the cut ones; the cross-check tests confirm equality with hsd_ref."""
    k = len(xs)
    t_rows = [target(prefix + xs[:i]) for i in range(k + 1)]
    d_rows = [draft(prefix + xs[:i]) for i in range(k)]

    def build(m):
        P, Q = joint_masses(ops, t_rows, d_rows, xs, m)
        return _hsd_naive_plan_with(ops, t_rows, d_rows, xs, m, P, Q)

    plan = _by_usable_length(ops, d_rows, xs, build)
    P, Q = joint_masses(ops, t_rows, d_rows, xs, k)
    law: dict = {}
    for tau, pt in enumerate(plan.tau_law()):
        n_left = 1 if tau == k else k - tau
        ctx = prefix + xs[:tau]

        def walk(path, mass, P_t, Q_t, row_law):
            if len(path) == n_left:
                _add(law, xs[:tau] + path, pt * mass)
                return
            p_row, q_row = target(ctx + path), draft(ctx + path)
            if row_law is None:
                row_law = residual_or_target(ops, _branch_excess(ops, P_t, Q_t, p_row, q_row)[0], p_row)
            for v, w in enumerate(row_law):
                walk(path + (v,), mass * w, P_t * p_row[v], Q_t * q_row[v], None)

        walk((), ops.num(1), P[tau], Q[tau], plan.emit[tau])
    return law


def hsd_naive_outcome(ops, target: Rows, draft: Rows, prefix: tuple, k: int, vocab: int) -> dict:
    """hsd_ref.schemes.hsd_naive.HSDNaive.joint_law + outcome_law: every draft, with its draft mass."""
    law: dict = {}
    for xs in itertools.product(range(vocab), repeat=k):
        mass = ops.num(1)
        for i, x in enumerate(xs):
            mass = mass * draft(prefix + xs[:i])[x]
        for seq, m in hsd_naive_draft_law(ops, target, draft, prefix, xs).items():
            _add(law, seq, mass * m)
    return law


# --------------------------------------------------------------------------- single-draft laws


def single_draft_outcome(ops, plan_fn, reference: Rows, proposal: Rows, prefix: tuple, k: int, vocab: int) -> dict:
    """hsd_ref.scheme.SingleDraftScheme.joint_law + outcome_law: ``{emitted tokens: mass}`` of one
    iteration, the drafting (from ``proposal``) included; ``plan_fn(ops, t_rows, d_rows, xs)``."""
    law: dict = {}
    for xs in itertools.product(range(vocab), repeat=k):
        mass = ops.num(1)
        for i, x in enumerate(xs):
            mass = mass * proposal(prefix + xs[:i])[x]
        t_rows = [reference(prefix + xs[:i]) for i in range(k + 1)]
        d_rows = [proposal(prefix + xs[:i]) for i in range(k)]
        plan = plan_fn(ops, t_rows, d_rows, xs)
        for tau, pt in enumerate(plan.tau_law()):
            for v, pv in enumerate(plan.emit[tau]):
                _add(law, xs[:tau] + (v,), mass * pt * pv)
    return law


def extend_law(ops, law: dict, reference: Rows, prefix: tuple, length: int) -> dict:
    """hsd_ref.enumerate.extend_law: extend (or truncate) every outcome to ``length`` tokens with the
    reference model."""
    out: dict = {}
    for seq, mass in law.items():
        if len(seq) >= length:
            _add(out, tuple(seq[:length]), mass)
            continue
        for tail in itertools.product(range(len(reference(prefix))), repeat=length - len(seq)):
            m = mass
            for i, t in enumerate(tail):
                m = m * reference(prefix + tuple(seq) + tail[:i])[t]
            _add(out, tuple(seq) + tail, m)
    return out


# ------------------------------------------------------------------------------------ multi-draft


def rrs_decide(ops, p_row, q_row, tokens, replacement=True):
    """hsd_ref.schemes.rrs.RRS.decide (``replacement=False``: the without-replacement rule,
    hsd_ref.multidraft.drop_token): ``(chances, residual)``."""
    chances = []
    p_row, q_row = tuple(p_row), tuple(q_row)
    for x in tokens:
        if x == PLACEHOLDER:
            chances.append(ops.num(0))  # ratio_chance: the placeholder is never accepted
        else:
            chances.append(ratio_chance(ops, p_row[x], q_row[x]))
        new_p = residual_or_target(ops, positive_part(ops, p_row, q_row), p_row)  # rrs_residual
        if not replacement and x != PLACEHOLDER:
            weights = tuple(ops.num(0) if v == x else w for v, w in enumerate(q_row))
            total = sum(weights[1:], weights[0])
            zero = ops.is_zero(total)  # drop_token: the zero vector once the support is exhausted
            q_row = tuple(ops.ite(zero, lambda w=w: w, lambda w=w: w / total) for w in weights)
        p_row = new_p
    return tuple(chances), p_row


def kseq_residual(ops, p_row, q_row, m: int, rho):
    """hsd_ref.schemes.spectr_kseq.kseq_residual (and kseq_beta) for a given ``rho``."""
    mins = [ops.min(qx, px / rho) for px, qx in zip(p_row, q_row)]
    beta = sum(mins, ops.num(0))
    none = ops.power(1 - beta, m)
    degenerate = ops.Or(ops.is_zero(beta), ops.is_zero(none))
    return tuple(
        ops.ite(degenerate, lambda px=px: px, lambda px=px, mn=mn: (px - mn * ((1 - none) / beta)) / none)
        for px, mn in zip(p_row, mins)
    )


def spectr_decide(ops, p_row, q_row, tokens, rho, residual):
    """hsd_ref.schemes.spectr_kseq.SpecTrKSeq.decide: ``(chances, residual)`` for the node's ``rho``."""
    chances = tuple(ops.num(0) if x == PLACEHOLDER else ratio_chance(ops, p_row[x], q_row[x], rho) for x in tokens)
    return chances, residual


def candidate_law(ops, q_row, m: int, replacement: bool):
    """hsd_ref.multidraft.MultiDraftScheme.candidate_law: ``[(tokens, mass)]`` of the next tokens of
    ``m`` drafts sharing a node (zero-mass token tuples are kept; they carry mass 0)."""
    vocab = len(q_row)
    if replacement:
        out = []
        for tokens in itertools.product(range(vocab), repeat=m):
            mass = ops.num(1)
            for x in tokens:
                mass = mass * q_row[x]
            out.append((tokens, mass))
        return out
    out = []

    def draw(prefix, mass, left):
        if len(prefix) == m:
            out.append((prefix, mass))
            return
        exhausted = ops.is_zero(left)  # support exhausted: the rest of the group is absent
        out.append((prefix + (PLACEHOLDER,) * (m - len(prefix)), ops.ite(exhausted, lambda: mass, lambda: ops.num(0))))
        for x in range(vocab):
            if x not in prefix:
                draw(prefix + (x,), ops.ite(exhausted, lambda: ops.num(0), lambda x=x: mass * q_row[x] / left), left - q_row[x])

    draw((), ops.num(1), ops.num(1))
    return out


def node_law(ops, decide, p_row, q_row, m: int, replacement: bool):
    """hsd_ref.multidraft.MultiDraftScheme.node_law: ``({(token, drafts continuing): mass}, emitted
    masses)``; ``decide(tokens) -> (chances, residual)`` is the node rule."""
    accept: dict = {}
    emit = [ops.num(0)] * len(p_row)
    for tokens, mass in candidate_law(ops, q_row, m, replacement):
        chances, residual = decide(tokens)
        reach = mass
        for x, c in zip(tokens, chances):
            if x == PLACEHOLDER:
                continue  # chance 0: accepts nothing, leaves reach unchanged
            _add(accept, (x, tokens.count(x)), reach * c)
            reach = reach * (1 - c)
        emit = [e + reach * r for e, r in zip(emit, residual)]
    return accept, emit


def multidraft_outcome(ops, node_rule, target: Rows, draft: Rows, prefix: tuple, k: int, n_drafts: int, replacement: bool) -> dict:
    """hsd_ref.multidraft.MultiDraftScheme.joint_law + outcome_law (the tree walk):
    ``node_rule(ctx, p_row, q_row, m) -> decide`` gives the node rule for ``m`` candidates at ``ctx``."""

    def walk(ctx, m, left):
        p_row = target(ctx)
        if left == 0:
            return {(v,): pv for v, pv in enumerate(p_row)}
        q_row = draft(ctx)
        accept, emit = node_law(ops, node_rule(ctx, p_row, q_row, m), p_row, q_row, m, replacement)
        out = {(v,): e for v, e in enumerate(emit)}
        for (x, m_next), a in accept.items():
            for seq, s in walk(ctx + (x,), m_next, left - 1).items():
                _add(out, (x,) + seq, a * s)
        return out

    return walk(prefix, n_drafts, k)


# ------------------------------------------------------------------------------------- hierarchy


def hierarchy_outcome(ops, models: Sequence[Rows], plan_fns: Sequence, thresholds: Sequence[int], prefix: tuple, vocab: int) -> dict:
    """hsd_ref.schemes.hierarchy._Engine (``top``, ``rest``, ``batch``; ``surplus="truncate"``):
    ``{emitted tokens: mass}`` of one target iteration.  ``models[0]`` is the draft, ``models[-1]``
    the target; ``plan_fns[l]`` (l >= 1) the single-draft verifier of level l; ``thresholds`` is
    ``(T_0, ..., T_{n-1})``."""
    n = len(models) - 1

    def sequence_law(rows, ctx, length):  # TableLM.sequence_law
        law = {(): ops.num(1)}
        for _ in range(length):
            nxt: dict = {}
            for seq, mass in law.items():
                for v, pv in enumerate(rows(ctx + seq)):
                    _add(nxt, seq + (v,), mass * pv)
            law = nxt
        return law

    def plan(level, ctx, batch):  # _Engine._plan
        upper, lower = models[level], models[level - 1]
        t_rows = [upper(ctx + batch[:j]) for j in range(len(batch) + 1)]
        d_rows = [lower(ctx + batch[:j]) for j in range(len(batch))]
        return plan_fns[level](ops, t_rows, d_rows, batch)

    def batch(level, ctx):
        if level == 0:
            return sequence_law(models[0], ctx, thresholds[0])
        return rest(level, ctx, thresholds[level])

    def rest(level, ctx, need):
        if need <= 0:
            return {(): ops.num(1)}
        chunks: dict = {}
        for b, pb in batch(level - 1, ctx).items():
            pl = plan(level, ctx, b)
            for tau, pt in enumerate(pl.tau_law()):
                for v, pv in enumerate(pl.emit[tau]):
                    _add(chunks, b[:tau] + (v,), pb * pt * pv)
        law: dict = {}
        for chunk, m in chunks.items():
            if len(chunk) >= need:
                _add(law, chunk[:need], m)
                continue
            for tail, ms in rest(level, ctx + chunk, need - len(chunk)).items():
                _add(law, chunk + tail, m * ms)
        return law

    joint: dict = {}
    for b, pb in batch(n - 1, prefix).items():
        pl = plan(n, prefix, b)
        for tau, pt in enumerate(pl.tau_law()):
            for v, pv in enumerate(pl.emit[tau]):
                _add(joint, b[:tau] + (v,), pb * pt * pv)
    return joint
