"""Multi-draft schemes (rrs, rrs_without_replacement, spectr_kseq) of hsd_ref.

* the exact one-iteration and decoding-loop laws equal the target's (``==`` on Fractions) for
  N in {1, 2, 3} on seeded context-dependent pairs with zeros and point masses;
* N = 1 is token-wise speculative sampling, law for law and draw for draw;
* the law of ``verify`` itself, computed exactly by cutting the draws' cube into the cells where the
  outcome is constant, equals ``joint_law`` (the draft arrays drafted by an enumerator written here);
* the papers.md §6 vectors (0.70, 0.76, 0.82, 0.79136, rho 1.45678), two of them re-derived by hand;
* hand-built draws, bad inputs, and lossy mutations that the exact check must catch.
"""

import itertools
import math
import random
from fractions import Fraction as F

import pytest

from hsd_ref import TableLM, iteration_law, sequence_law
from hsd_ref.multidraft import MultiDraftScheme, rrs_residual
from hsd_ref.schemes.rrs import RRS
from hsd_ref.schemes.rrs_without_replacement import RRSWithoutReplacement
from hsd_ref.schemes.spectr_kseq import SpecTrKSeq, kseq_beta, kseq_feasible, kseq_residual, kseq_rho
from hsd_ref.schemes.tokenwise import Tokenwise

CLASSES = [RRS, RRSWithoutReplacement, SpecTrKSeq]
IDS = ["rrs", "rrs_without_replacement", "spectr_kseq"]

# papers.md §6 test vector (context-free)
P3 = (F(1, 2), F(3, 10), F(1, 5))
Q3 = (F(1, 5), F(3, 10), F(1, 2))
P3_LM, Q3_LM = TableLM.context_free(P3), TableLM.context_free(Q3)


def model_pairs(V, seeds):
    """Seeded context-dependent pairs: a mix of rows with zeros, point masses and full support,
    plus a point-mass draft against a target with zeros, and draft == target."""
    out = []
    for s in seeds:
        zp, pp = (0.25, 0.15) if s % 2 else (0.5, 0.3)
        out.append((TableLM.random(V, 1000 + 2 * s, zero_prob=zp, peaked_prob=pp),
                    TableLM.random(V, 1001 + 2 * s, zero_prob=zp, peaked_prob=pp)))
    zeros = tuple([F(0)] + [F(1, V - 1)] * (V - 1))
    point = tuple(F(int(v == 0)) for v in range(V))
    out.append((TableLM.context_free(zeros), TableLM.context_free(point)))
    same = TableLM.random(V, 77, depth=1)
    out.append((same, same))
    return out


# ------------------------------------------------------------------ the exact law equals the target's


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("n, V, ks, seeds", [(1, 3, (0, 1, 2, 3), (0, 1)), (2, 2, (0, 1, 2, 3), (0, 1, 2)),
                                             (2, 3, (1, 2, 3), (3, 4, 5)), (3, 2, (1, 2), (6, 7)),
                                             (3, 3, (1, 2), (8,))])
def test_one_iteration_law_equals_target(cls, n, V, ks, seeds):
    scheme = cls(n)
    for target, draft in model_pairs(V, seeds):
        for k in ks:
            assert iteration_law(scheme, target, draft, (), k) == target.sequence_law(k + 1), (target, draft, k)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("n, V, k, prefix", [(1, 3, 2, (1,)), (2, 2, 2, (0, 1)), (2, 3, 2, ()), (3, 2, 2, (1,)),
                                             (3, 3, 1, (2,))])
def test_decoding_loop_law_equals_target(cls, n, V, k, prefix):
    scheme = cls(n)
    for target, draft in model_pairs(V, (11, 12)):
        assert sequence_law(scheme, target, draft, prefix, k, 4) == target.sequence_law(4, prefix)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_laws_are_consistent_distributions(cls):
    scheme = cls(2)
    target, draft = TableLM.random(3, 5), TableLM.random(3, 6)
    joint = scheme.joint_law(target, draft, (), 3)
    assert sum(joint.values()) == 1 and all(m > 0 for m in joint.values())
    assert all(tau == len(seq) - 1 for tau, seq in joint)
    accepted = scheme.accepted_law(target, draft, (), 3)
    assert set(accepted) <= {0, 1, 2, 3} and sum(accepted.values()) == 1
    # the node-law cache is per model pair: another pair, then the first again, give their own laws
    other = TableLM.random(3, 9)
    assert scheme.outcome_law(other, draft, (), 2) != scheme.outcome_law(target, draft, (), 2)
    assert scheme.joint_law(target, draft, (), 3) == joint


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_one_draft_is_tokenwise(cls):
    scheme, tokenwise = cls(1), Tokenwise()
    for V in (2, 3):
        for target, draft in model_pairs(V, (20, 21)):
            for k in (0, 1, 2, 3):
                assert scheme.joint_law(target, draft, (), k) == tokenwise.joint_law(target, draft, (), k)
    # draw for draw: the N = 1 layout is the single-draft layout
    rng = random.Random(5)
    target, draft = TableLM.random(3, 30, peaked_prob=0.3), TableLM.random(3, 31, zero_prob=0.5)
    for _ in range(60):
        k = rng.randint(0, 3)
        xs = tuple(rng.randrange(-1, 3) for _ in range(k))
        t_rows = [target.probs(xs[:i]) if -1 not in xs[:i] else target.probs(()) for i in range(k + 1)]
        d_rows = [draft.probs(xs[:i]) if -1 not in xs[:i] else draft.probs(()) for i in range(k)]
        draws = [F(rng.randrange(64), 64) for _ in range(k + 1)]
        a = scheme.verify([t_rows], [d_rows], [xs], draws)
        b = tokenwise.verify(t_rows, d_rows, xs, draws)
        assert (a.tokens, a.num_accepted, a.bonus) == (b.tokens, b.num_accepted, b.bonus)
        assert a.draft_index == (0 if a.num_accepted else None)


# ------------------------------------------------------------------ published vectors (papers.md §6)


def first_accept(scheme):
    return scheme.accepted_law(P3_LM, Q3_LM, (), 1).get(1, F(0))


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_single_draft_acceptance_vector(cls):
    assert first_accept(cls(1)) == F(7, 10)  # sum_x min(p, q) = 1/5 + 3/10 + 1/5


def test_two_draft_acceptance_vectors():
    rrs, wor, kseq = first_accept(RRS(2)), first_accept(RRSWithoutReplacement(2)), first_accept(SpecTrKSeq(2))
    assert round(float(rrs), 4) == 0.76
    assert round(float(wor), 4) == 0.82
    assert round(float(kseq), 4) == 0.7914  # papers.md: ~0.79136
    # by hand, RRS with replacement: draft 1 is accepted with sum min(p, q) = 7/10; on rejection
    # P <- norm(max(p - q, 0)) = (1, 0, 0), and draft 2 is accepted with min(q(0), 1) = 1/5
    assert rrs == 1 - (1 - F(7, 10)) * (1 - F(1, 5)) == F(19, 25)
    # by hand, without replacement: only token 2 is ever rejected (mass q(2) (1 - p(2)/q(2)) = 3/10);
    # then P = (1, 0, 0), q = norm(1/5, 3/10, 0) = (2/5, 3/5, 0), and draft 2 is accepted with 2/5
    assert wor == F(7, 10) + F(3, 10) * F(2, 5) == F(41, 50)
    # K-SEQ closed form: P(accept) = 1 - (1 - beta(rho))^2
    rho = kseq_rho(P3, Q3, 2)
    assert kseq == 1 - (1 - kseq_beta(P3, Q3, rho)) ** 2


def test_kseq_rho_vector_against_the_closed_form():
    # For rho in [1, 2]: beta(rho) = 1/5 + 1/(2 rho), and the condition 2 beta - beta^2 <= rho beta
    # reads rho^2 - (9/5) rho + 1/2 >= 0, i.e. rho >= rho* = (9 + sqrt(31)) / 10 ~ 1.45678.
    rho = kseq_rho(P3, Q3, 2)
    assert round(float(rho), 5) == 1.45678
    assert kseq_beta(P3, Q3, rho) == F(1, 5) + 1 / (2 * rho)
    assert (rho - F(9, 10)) ** 2 >= F(31, 100)  # rho >= rho*
    below = rho - F(1, 2**30)  # the lower end of the last bisection interval is below rho*
    assert (below - F(9, 10)) ** 2 < F(31, 100) and not kseq_feasible(P3, Q3, 2, below)


def fraction_bisection(p, q, m, halvings=30):
    """The specification, literally: Fraction bisection of [1, m], keep the feasible upper end."""
    lo, hi = F(1), F(m)
    for _ in range(halvings):
        mid = (lo + hi) / 2
        beta = sum(min(qx, px / mid) for px, qx in zip(p, q))
        if 1 - (1 - beta) ** m <= mid * beta:
            hi = mid
        else:
            lo = mid
    return hi


def test_kseq_rho_is_feasible_and_residual_is_a_distribution():
    rng = random.Random(3)
    rows = [TableLM.random(4, s, zero_prob=0.4, peaked_prob=0.2).probs(()) for s in range(40)]
    for _ in range(80):
        p, q, m = rng.choice(rows), rng.choice(rows), rng.randint(1, 4)
        rho = kseq_rho(p, q, m)
        assert rho == fraction_bisection(p, q, m)  # the integer bisection is the spec's
        assert 1 <= rho <= m and kseq_feasible(p, q, m, rho)
        assert (rho == 1) if m == 1 else rho.denominator <= 2**30
        res = kseq_residual(p, q, m, rho)
        assert sum(res) == 1 and all(x >= 0 for x in res)
    assert kseq_rho(P3, P3, 2) == 1 + F(1, 2**30) and kseq_residual(P3, P3, 1, F(1)) == P3  # beta = 1


# ------------------------------------------------------------------ the law of verify itself


def exhaust_without_replacement(q, count):
    """Ordered draws of ``count`` tokens without replacement from ``q``; -1 once q is used up."""
    if count == 0:
        yield (), F(1)
        return
    left = sum(q)
    if left == 0:
        yield (-1,) * count, F(1)
        return
    for x, w in enumerate(q):
        if w:
            rest = tuple(F(0) if v == x else qv for v, qv in enumerate(q))
            for tail, m in exhaust_without_replacement(rest, count - 1):
                yield (x,) + tail, w / left * m


def drafting_law(draft, n, k, replacement):
    """Law of the N x K draft array, written independently of hsd_ref.multidraft."""
    if replacement:
        seqs = list(draft.sequence_law(k).items())
        out = {}
        for combo in itertools.product(seqs, repeat=n):
            out[tuple(s for s, _ in combo)] = math.prod((m for _, m in combo), start=F(1))
        return out
    arrays = {((),) * n: F(1)}
    for _ in range(k):
        nxt = {}
        for arr, mass in arrays.items():
            groups = {}
            for j, row in enumerate(arr):
                if -1 not in row:
                    groups.setdefault(row, []).append(j)
            options = [list(exhaust_without_replacement(draft.probs(pre), len(slots))) for pre, slots in groups.items()]
            for choice in itertools.product(*options):
                new = [row + (-1,) for row in arr]
                m = mass
                for (pre, slots), (toks, w) in zip(groups.items(), choice):
                    m *= w
                    for j, x in zip(slots, toks):
                        new[j] = arr[j] + (x,)
                nxt[tuple(new)] = nxt.get(tuple(new), F(0)) + m
        arrays = nxt
    return arrays


def real(prefix):
    return prefix[: prefix.index(-1)] if -1 in prefix else prefix


def cumsums(dist):
    return set(itertools.accumulate(dist))


def verify_law(scheme, target, draft, k):
    """The exact law of (num_accepted, tokens) of ``scheme.verify`` over drafting and draws: each draw
    is cut at every threshold it can be compared with, and verify runs once per cell."""
    n = scheme.n_drafts
    law = {}
    for arr, w in drafting_law(draft, n, k, scheme.replacement).items():
        t_rows = [[target.probs(real(arr[j][:t])) for t in range(k + 1)] for j in range(n)]
        d_rows = [[draft.probs(real(arr[j][:t])) for t in range(k)] for j in range(n)]
        cells, cuts = [], {F(0)}
        for t in range(k):
            for j in range(n):
                if -1 in arr[j][:t]:
                    cells.append([(F(0), F(1))])
                    continue
                cands = [l for l in range(n) if arr[l][:t] == arr[j][:t]]
                dec = scheme.node_decision(t_rows[j][t], d_rows[j][t], [arr[l][t] for l in cands])
                c = dec.chances[cands.index(j)]
                cells.append([(u, length) for u, length in ((F(0), c), (c, 1 - c)) if length])
                cuts |= cumsums(dec.residual)
        for j in range(n):
            cuts |= cumsums(t_rows[j][k])
        cuts = sorted(x for x in cuts if x < 1) + [F(1)]
        cells.append([(a, b - a) for a, b in zip(cuts, cuts[1:])])
        for choice in itertools.product(*cells):
            res = scheme.verify(t_rows, d_rows, arr, [u for u, _ in choice])
            a = res.num_accepted
            if a == 0:
                assert res.draft_index is None
            else:  # the lowest slot that drafted the accepted tokens
                assert res.draft_index == min(j for j in range(n) if arr[j][:a] == res.tokens[:a])
            assert res.bonus == (a == k)
            mass = w * math.prod((length for _, length in choice), start=F(1))
            law[(a, res.tokens)] = law.get((a, res.tokens), F(0)) + mass
    return law


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize(
    "n, V, k, seed", [(2, 2, 2, 40), (2, 3, 1, 41), (3, 2, 1, 42), (2, 2, 1, 43), (2, 3, 2, 44), (3, 3, 1, 45)]
)
def test_verify_law_equals_joint_law(cls, n, V, k, seed):
    scheme = cls(n)
    target = TableLM.random(V, seed, zero_prob=0.3, peaked_prob=0.1)
    draft = TableLM.random(V, seed + 100, zero_prob=0.3, peaked_prob=0.1)
    law = verify_law(scheme, target, draft, k)
    assert law == scheme.joint_law(target, draft, (), k)


def test_without_replacement_drafting_law():
    s = RRSWithoutReplacement(3)
    assert sorted(s.candidate_law((F(1, 4), F(3, 4)), 2)) == [((0, 1), F(1, 4)), ((1, 0), F(3, 4))]
    # support exhausted: the third draft is absent
    assert sorted(s.candidate_law((F(1, 2), F(1, 2), F(0)), 3)) == [((0, 1, -1), F(1, 2)), ((1, 0, -1), F(1, 2))]
    assert s.candidate_law((F(0), F(1)), 2) == [((1, -1), F(1))]


# ------------------------------------------------------------------ hand-built draws (N = 2, K = 2)


def rows(k=2, n=2):
    return [[P3] * (k + 1)] * n, [[Q3] * k] * n


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_reject_then_accept_the_second_slot(cls):
    t, d = rows()
    # position 0: slot 0 drafts token 2 (chance 2/5 for rrs, 2/(5 rho) ~ 0.2746 for K-SEQ): u = 1/2
    # rejects; slot 1 drafts token 0 (chance 1 after the update, and 1 for K-SEQ); position 1: only
    # slot 1 remains, token 1 has chance p(1)/q(1) = 1; bonus u = 3/5 lands on token 1 (CDF 1/2, 4/5).
    # draws[2] belongs to slot 0 at position 1, which is no longer a candidate.
    res = cls(2).verify(t, d, [[2, 0], [0, 1]], [F(1, 2), F(99, 100), F(0), F(1, 2), F(3, 5)])
    assert (res.tokens, res.num_accepted, res.bonus, res.draft_index) == ((0, 1, 1), 2, True, 1)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_all_rejected_emits_the_residual(cls):
    t, d = rows()
    # both slots draft token 2; u = 1/2 rejects both (rrs: the second has chance P'(2) = 0 after the
    # update; K-SEQ: 0.2746 < 1/2); the residual is (1, 0, 0) for rrs and ~ (1, 0, 0) for K-SEQ
    res = cls(2).verify(t, d, [[2, 0], [2, 1]], [F(1, 2), F(1, 2), F(0), F(0), F(9, 10)])
    assert (res.tokens, res.num_accepted, res.bonus, res.draft_index) == ((0,), 0, False, None)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_shared_token_then_split(cls):
    t, d = rows()
    # position 0: both slots draft token 1 (chance 1 for rrs, 1/rho ~ 0.6865 for K-SEQ): u = 1/2
    # accepts and both slots stay candidates.  Position 1: slot 0 drafts 2 (chance 2/5, or 2/(5 rho)
    # with m = 2) and draws[2] = 1/2 rejects it; slot 1 drafts 0 (chance 1) and is accepted with
    # draws[3].  draws[1] = 0 belongs to slot 1 at position 0 (slot 0 was accepted first); read as
    # slot 0 at position 1 (a transposed layout) it would accept token 2.  Bonus: u = 9/10 -> 2.
    res = cls(2).verify(t, d, [[1, 2], [1, 0]], [F(1, 2), F(0), F(1, 2), F(1, 2), F(9, 10)])
    assert (res.tokens, res.num_accepted, res.bonus, res.draft_index) == ((1, 0, 2), 2, True, 1)


def test_kseq_and_rrs_differ_draw_for_draw():
    t, d = rows()
    draws = [F(7, 10), F(7, 10), F(0), F(0), F(9, 10)]
    # token 1 at both slots: rrs accepts (chance 1); K-SEQ rejects both (7/10 >= 1/rho ~ 0.6865) and
    # emits from p_res, which is ~ (1, 0, 0) here
    assert RRS(2).verify(t, d, [[1, 0], [1, 0]], draws).tokens == (1, 0, 2)
    assert SpecTrKSeq(2).verify(t, d, [[1, 0], [1, 0]], draws).tokens == (0,)
    # without replacement, after rejecting token 2, q = (2/5, 3/5, 0): token 1 has chance 0 (P' = (1,0,0))
    assert RRSWithoutReplacement(2).verify(t, d, [[2, 0], [1, 0]], [F(1, 2), F(0), F(0), F(0), F(0)]).tokens == (0,)


def test_absent_draft_is_never_accepted():
    t, d = rows()
    res = RRSWithoutReplacement(2).verify(t, d, [[0, 1], [-1, -1]], [F(1, 2), F(0), F(0), F(0), F(0)])
    assert res.tokens == (0, 1, 0) and res.draft_index == 0
    res = RRSWithoutReplacement(2).verify(t, d, [[-1, -1], [-1, -1]], [F(0)] * 5)
    assert res.tokens == (0,) and res.num_accepted == 0


def test_k_zero_emits_one_target_token():
    res = RRS(2).verify([[P3], [P3]], [[], []], [[], []], [F(3, 5)])
    assert (res.tokens, res.num_accepted, res.bonus, res.draft_index) == ((1,), 0, True, None)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_verify_bad_inputs(cls):
    s = cls(2)
    t, d = rows()
    toks = [[0, 1], [0, 2]]
    u = [F(0)] * 5
    other = (F(1, 3), F(1, 3), F(1, 3))
    cases = [
        ((t, d, [[0, 1]], u), r"draft_tokens: has 1 drafts, expected n_drafts = 2"),
        ((t, d, [[0, 1], [0]], u), r"draft_tokens\[1\]: has length 1, expected K = 2"),
        (([[P3] * 2] * 2, d, toks, u), r"target_probs\[0\]: has 2 rows, expected K \+ 1 = 3"),
        ((t[:1], d, toks, u), r"target_probs: has 1 drafts"),
        ((t, [[Q3]] * 2, toks, u), r"draft_probs\[0\]: has 1 rows, expected K = 2"),
        ((t, [[Q3, (F(1, 2), F(1, 2))]] * 2, toks, u), r"draft_probs\[0\]\[1\]: has length 2"),
        ((t, d, [[0, 1], [0, 3]], u), r"draft_tokens\[1\]\[1\] = 3 is out of range"),
        ((t, d, [[0, -2], [0, 1]], u), r"draft_tokens\[0\]\[1\] = -2 is out of range"),
        ((t, d, [[0, 1.0], [0, 1]], u), r"draft_tokens\[0\]\[1\]: expected an int"),
        ((t, d, toks, u[:4]), r"draws: 5 uniforms needed"),
        ((t, d, toks, u + [F(0)]), r"draws: 5 uniforms needed"),
        ((t, d, toks, u[:4] + [F(1)]), r"draws\[4\] = 1 is outside"),
        (([[(0.5, 0.3, 0.2)] + [P3] * 2] * 2, d, toks, u), r"target_probs\[0\]\[0\]\[0\]: got the float"),
        ((t, [[Q3, (0.2, 0.3, 0.5)]] * 2, toks, u), r"draft_probs\[0\]\[1\]\[0\]: got the float"),
        # both drafts start with token 0, so their rows at position 1 must agree
        ((t[:1] + [[P3, other, P3]], d, toks, u), r"target_probs\[1\]\[1\]: differs from target_probs\[0\]\[1\]"),
        ((t, d[:1] + [[Q3, other]], toks, u), r"draft_probs\[1\]\[1\]: differs from draft_probs\[0\]\[1\]"),
        # every draft shares the empty prefix: rows at position 0 must agree
        ((t[:1] + [[other, P3, P3]], d, [[0, 1], [1, 2]], u), r"target_probs\[1\]\[0\]: differs"),
    ]
    for args, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            s.verify(*args)
    # rows after diverging tokens may differ
    assert s.verify(t[:1] + [[P3, P3, other]], d, [[0, 1], [0, 2]], u).tokens == (0, 1, 0)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_scheme_attributes_and_bad_arguments(cls):
    s = cls()
    assert s.n_drafts == 2 and s.lossless and "proofs/smt" in s.theorem and s.name in IDS
    assert s.draws_needed(4) == 9 and cls(3).draws_needed(2) == 7
    s3 = s.with_drafts(3)
    assert s3.n_drafts == 3 and s.n_drafts == 2 and type(s3) is cls
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="n_drafts"):
            s.with_drafts(bad)
        with pytest.raises(ValueError, match="n_drafts"):
            cls(bad)
    p2, p3 = TableLM.random(2, 1), TableLM.random(3, 1)
    with pytest.raises(ValueError, match="draft: vocab_size 3 differs"):
        s.outcome_law(p2, p3, (), 1)
    with pytest.raises(ValueError, match="k: draft length must be >= 0"):
        s.joint_law(p2, p2, (), -1)
    with pytest.raises(ValueError, match=r"prefix\[0\] = 2 is out of range"):
        s.accepted_law(p2, p2, (2,), 1)
    with pytest.raises(ValueError, match="k: expected an int"):
        s.draws_needed(1.0)


# ------------------------------------------------------------------ lossy mutations are caught


class RRSNoUpdate(RRS):
    """Mutation: P is not replaced by the residual after a rejection."""

    name, lossless = "rrs_no_update", False

    def after_rejection(self, p_row, q_row, x):
        return p_row, q_row


class WithoutReplacementRuleOnIIDDrafts(RRSWithoutReplacement):
    """Mutation: the without-replacement verification applied to i.i.d. drafts."""

    name, lossless, replacement = "rrs_wor_rule_iid_drafts", False, True


class RRSOnDistinctDrafts(RRS):
    """Mutation: the with-replacement rule applied to drafts drawn without replacement."""

    name, lossless, replacement = "rrs_rule_distinct_drafts", False, False


class KSeqTokenwiseResidual(SpecTrKSeq):
    """Mutation: K-SEQ's tests with the token-wise residual norm(max(P - q, 0)) instead of p_res."""

    name, lossless = "kseq_tokenwise_residual", False

    def prepare(self, p_row, q_row, m):
        rho, _, cache = super().prepare(p_row, q_row, m)
        return rho, rrs_residual(p_row, q_row), cache


MUTANTS = [RRSNoUpdate, WithoutReplacementRuleOnIIDDrafts, RRSOnDistinctDrafts, KSeqTokenwiseResidual]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_lossy_mutations_are_caught(mutant):
    scheme = mutant(2)
    p, q = TableLM.context_free((F(1, 2), F(1, 3), F(1, 6))), TableLM.context_free((F(1, 6), F(1, 6), F(2, 3)))
    assert iteration_law(scheme, p, q, (), 1) != p.sequence_law(2)
    target, draft = TableLM.random(3, 50), TableLM.random(3, 51)
    assert sequence_law(scheme, target, draft, (), 2, 3) != target.sequence_law(3)
    # with one draft all but the first reduce to token-wise sampling and are exact again
    if mutant is not RRSNoUpdate:
        assert iteration_law(scheme.with_drafts(1), p, q, (), 1) == p.sequence_law(2)


def test_infeasible_rho_gives_a_negative_residual():
    # rho = 1 with m = 2 violates the feasibility condition: p_res is not a distribution
    assert not kseq_feasible(P3, Q3, 2, F(1))
    assert min(kseq_residual(P3, Q3, 2, F(1))) < 0


def test_multidraft_base_is_abstract():
    with pytest.raises(NotImplementedError):
        MultiDraftScheme(2).node_decision(P3, Q3, [0])


# ------------------------------------------------------------------------------------ regressions


@pytest.mark.parametrize("kwargs, argument", [({"m": 0}, "m"), ({"m": -1}, "m"), ({"m": 2, "halvings": -1}, "halvings")])
def test_kseq_rho_refuses_negative_counts(kwargs, argument):
    # m = 0 used to return a rho below 1 (lo = 1 > hi = 0); halvings = -1 a bare "negative shift count"
    with pytest.raises(ValueError, match=rf"^{argument}: expected an int"):
        kseq_rho(P3, Q3, **kwargs)
