"""Draw-for-draw parity: hsd_fast kernel == loop twin == hsd_ref ``verify`` on exact inputs.

Inputs are exact ``Fraction`` distributions with small denominators (so ties, zeros and point masses
are common), converted to float64 tensors (``float(Fraction)`` rounds correctly).  Draws are float64;
hsd_ref converts each float exactly (``Fraction(float)``), so both sides see the same uniforms.

Skip rule (the only one).  Float and exact arithmetic may legitimately disagree when a draw lies
within rounding distance of a CDF or chance boundary.  When a row disagrees, the test re-runs hsd_ref
with each draw moved by ``+-DELTA`` (1e-9: far above the ~1e-15 relative float64 error of the kernels
on these inputs, and small enough that a draw not aimed at a boundary falls that close to one with
probability ~1e-8); if some move changes hsd_ref's output, that draw is within ``DELTA`` of a
boundary and the row is counted as skipped; otherwise the test fails.  Rows that agree are never
skipped, so draws exactly on dyadic boundaries (multiples of 1/16, exact in float64) are checked too.
Each seeded test asserts that at most 5% of its rows are skipped (0 to 1 of 150-180 in practice: the
draws ``float(a/d)`` that sit one rounding away from a rational boundary).

A consequence: errors below ``DELTA`` in a chance (e.g. SpecTr's ``rho`` off by one halving, 1e-9)
are invisible here; ``test_kernels.py::test_kseq_rho_matches_exact_bisection`` checks ``rho`` bit for
bit.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hsd_ref
from hsd_ref.exact import sample_index
from hsd_ref.strategies import distributions as exact_distributions
from hsd_ref.strategies import draws as exact_draws
from hsd_fast.kernels import KERNELS, draws_needed, verify

DELTA = 1e-9
MAX_SKIP_FRACTION = 0.05
SINGLE = [n for n, s in KERNELS.items() if not s.multi_draft]
MULTI = [n for n, s in KERNELS.items() if s.multi_draft]
hypothesis_settings = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def tree_rows(tokens, node, K):
    """Per-draft target rows [N][K+1] and draft rows [N][K] read off the tree: drafts sharing a prefix
    share its node's rows; positions after a draft's -1 get rows of their own ("absent")."""
    target, draft = [], []
    for j, path in enumerate(tokens):
        real = path[: path.index(-1)] if -1 in path else path
        keys = [tuple(real[:t]) if t <= len(real) else ("absent", j, t) for t in range(K + 1)]
        target.append([node(k)[0] for k in keys])
        draft.append([node(k)[1] for k in keys[:K]])
    return target, draft


def ref_scheme(name: str, n_drafts: int = 1):
    """The exact twin (multi-draft schemes with ``n_drafts`` drafts)."""
    if name in MULTI:
        from hsd_ref.schemes.rrs import RRS
        from hsd_ref.schemes.rrs_without_replacement import RRSWithoutReplacement
        from hsd_ref.schemes.spectr_kseq import SpecTrKSeq

        base = hsd_ref.SCHEMES.get(name) or {"rrs": RRS, "rrs_without_replacement": RRSWithoutReplacement, "spectr_kseq": SpecTrKSeq}[name]()
        return base.with_drafts(n_drafts)
    return hsd_ref.SCHEMES[name]


def ref_outcome(scheme, case, u: list[float]) -> tuple[list[int], int, int]:
    """hsd_ref's (row, num_accepted, draft_index or -1) for one case with float draws ``u``."""
    target, draft, tokens, K = case
    r = scheme.verify(target, draft, tokens, u)
    return list(r.to_row(K)), r.num_accepted, -1 if r.draft_index is None else r.draft_index


def near_boundary(scheme, case, u: list[float], expected) -> bool:
    """Does moving one draw by +-DELTA change hsd_ref's output?"""
    for i in range(len(u)):
        for step in (DELTA, -DELTA):
            moved = u[i] + step
            if 0 <= moved < 1 and ref_outcome(scheme, case, u[:i] + [moved] + u[i + 1 :]) != expected:
                return True
    return False


def as_tensor(rows) -> torch.Tensor:
    return torch.tensor([[float(x) for x in row] for row in rows], dtype=torch.float64)


def run_batch(name: str, cases: list, draws: list[list[float]], n_drafts: int = 1) -> tuple[int, int]:
    """Compare kernel, loop twin and hsd_ref on a batch of cases of equal K, V (and N).  Returns
    (rows checked, rows skipped)."""
    scheme = ref_scheme(name, n_drafts)
    K = cases[0][3]
    V = len(cases[0][0][0][0]) if name in MULTI else len(cases[0][0][0])
    if name in MULTI:
        target = torch.stack([torch.stack([as_tensor(c[0][j]) for j in range(n_drafts)]) for c in cases])
        draft = torch.stack([torch.stack([as_tensor(c[1][j]).reshape(K, V) for j in range(n_drafts)]) for c in cases])
    else:
        target = torch.stack([as_tensor(c[0]) for c in cases])
        draft = torch.stack([as_tensor(c[1]).reshape(K, V) for c in cases])
    tokens = torch.tensor([c[2] for c in cases], dtype=torch.int64).reshape(target.shape[:-2] + (K,))
    u = torch.tensor(draws, dtype=torch.float64).reshape(len(cases), draws_needed(name, K, n_drafts))
    outs = [verify(name, target, draft, tokens, draws=u, impl=impl) for impl in ("kernel", "loop")]
    skipped = 0
    for b, case in enumerate(cases):
        expected = ref_outcome(scheme, case, draws[b])
        for out in outs:
            got = (out.tokens[b].tolist(), int(out.num_accepted[b]), -1 if out.draft_index is None else int(out.draft_index[b]))
            if got != expected:
                if near_boundary(scheme, case, draws[b], expected):
                    skipped += 1
                    break
                raise AssertionError(f"{name}: fast {got} != hsd_ref {expected} for case {case} and draws {draws[b]}")
    return len(cases), skipped


# -- seeded random exact cases ----------------------------------------------------------------------


def random_dist(rng: random.Random, V: int) -> tuple[Fraction, ...]:
    r = rng.random()
    if r < 0.15:
        hot = rng.randrange(V)
        return tuple(Fraction(int(v == hot)) for v in range(V))
    w = [rng.randint(0 if r < 0.45 else 1, 6) for _ in range(V)]
    if sum(w) == 0:
        w[rng.randrange(V)] = 1
    return tuple(Fraction(x, sum(w)) for x in w)


def random_draw(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.25:
        return rng.randrange(16) / 16  # exactly on dyadic boundaries
    if r < 0.4:
        d = rng.randint(2, 12)
        return float(Fraction(rng.randrange(d), d))  # within one rounding of a rational boundary
    return rng.random()


def draft_token(rng: random.Random, q_row, V: int) -> int:
    r = rng.random()
    if r < 0.08:
        return -1
    if r < 0.2:
        return rng.randrange(V)  # maybe of draft probability 0
    return sample_index(q_row, Fraction(rng.random()))


def single_case(rng: random.Random, K: int, V: int):
    target = [random_dist(rng, V) for _ in range(K + 1)]
    draft = [target[i] if rng.random() < 0.2 else random_dist(rng, V) for i in range(K)]
    return target, draft, [draft_token(rng, draft[i], V) for i in range(K)], K


def multi_case(rng: random.Random, N: int, K: int, V: int):
    """Rows keyed by the real prefix, so drafts that share a prefix share its rows."""
    nodes: dict = {}

    def node(prefix):
        if prefix not in nodes:
            t_row = random_dist(rng, V)
            nodes[prefix] = (t_row, t_row if rng.random() < 0.2 else random_dist(rng, V))
        return nodes[prefix]

    tokens = []
    for j in range(N):
        path = []
        if j and rng.random() < 0.6:
            other = tokens[rng.randrange(j)]
            path = other[: rng.randint(0, K)]
            path = path[: path.index(-1)] if -1 in path else path
        while len(path) < K:
            x = draft_token(rng, node(tuple(path))[1], V)
            path += [-1] * (K - len(path)) if x == -1 else [x]
        tokens.append(path)
    target, draft = tree_rows(tokens, node, K)
    return target, draft, tokens, K


@pytest.mark.parametrize("name", SINGLE)
def test_single_draft_parity_seeded(name):
    rng = random.Random(f"parity/{name}")
    checked = skipped = 0
    for V in (2, 3, 5):
        for K in range(5):
            cases = [single_case(rng, K, V) for _ in range(10)]
            draws = [[random_draw(rng) for _ in range(draws_needed(name, K))] for _ in cases]
            c, s = run_batch(name, cases, draws)
            checked, skipped = checked + c, skipped + s
    assert skipped <= MAX_SKIP_FRACTION * checked, (skipped, checked)


@pytest.mark.parametrize("name", MULTI)
def test_multi_draft_parity_seeded(name):
    rng = random.Random(f"parity/{name}")
    checked = skipped = 0
    for V in (2, 3, 5):
        for K in range(5):
            for N in (1, 2, 3):
                cases = [multi_case(rng, N, K, V) for _ in range(4)]
                draws = [[random_draw(rng) for _ in range(draws_needed(name, K, N))] for _ in cases]
                c, s = run_batch(name, cases, draws, N)
                checked, skipped = checked + c, skipped + s
    assert skipped <= MAX_SKIP_FRACTION * checked, (skipped, checked)


# -- hypothesis (hsd_ref.strategies: exact distributions and exact draws that hit boundaries) -------

dims = st.tuples(st.sampled_from([2, 3, 5]), st.integers(0, 4))


@pytest.mark.parametrize("name", SINGLE)
@hypothesis_settings
@given(data=st.data(), dims=dims)
def test_single_draft_parity_hypothesis(name, data, dims):
    V, K = dims
    target = [data.draw(exact_distributions(V)) for _ in range(K + 1)]
    draft = [data.draw(st.one_of(st.just(target[i]), exact_distributions(V))) for i in range(K)]
    tokens = [data.draw(st.integers(-1, V - 1)) for _ in range(K)]
    u = [float(x) for x in data.draw(exact_draws(draws_needed(name, K), max_denominator=16))]
    checked, skipped = run_batch(name, [(target, draft, tokens, K)], [u])
    assert checked == 1 and skipped <= 1


@pytest.mark.parametrize("name", MULTI)
@hypothesis_settings
@given(data=st.data(), dims=dims, n=st.integers(1, 3))
def test_multi_draft_parity_hypothesis(name, data, dims, n):
    V, K = dims
    tokens = []
    for j in range(n):
        share = data.draw(st.integers(0, K)) if j else 0
        other = tokens[data.draw(st.integers(0, j - 1))] if j else []
        path = [x for x in other[:share]]
        path = path[: path.index(-1)] if -1 in path else path
        while len(path) < K:
            path.append(data.draw(st.integers(-1, V - 1)))
        tokens.append(path)
    nodes: dict = {}

    def node(key):
        if key not in nodes:
            t_row = data.draw(exact_distributions(V))
            nodes[key] = (t_row, data.draw(st.one_of(st.just(t_row), exact_distributions(V))))
        return nodes[key]

    target, draft = tree_rows(tokens, node, K)
    u = [float(x) for x in data.draw(exact_draws(draws_needed(name, K, n), max_denominator=16))]
    checked, skipped = run_batch(name, [(target, draft, tokens, K)], [u], n)
    assert checked == 1 and skipped <= 1


def test_skip_rule_detects_boundaries():
    """The skip rule is not vacuous: a draw exactly at a chance boundary of 1/3 (float(1/3) differs
    from 1/3 by ~1e-17) is near a boundary; a draw far from every boundary is not."""
    scheme = ref_scheme("tokenwise")
    third = Fraction(1, 3)
    case = ([(third, 1 - third), (Fraction(1, 2), Fraction(1, 2))], [(Fraction(1), Fraction(0))], [0], 1)
    on = [float(third), 0.5]
    assert near_boundary(scheme, case, on, ref_outcome(scheme, case, on))
    off = [0.1, 0.7]
    assert not near_boundary(scheme, case, off, ref_outcome(scheme, case, off))


# -- exact ties that one float rounding breaks (found by search; regression vectors) ----------------


def rows(*specs: str) -> list[tuple[Fraction, ...]]:
    """``rows("1/3 2/3", "1 0")`` -> exact rows."""
    return [tuple(Fraction(x) for x in spec.split()) for spec in specs]


ONE_MINUS = 1 - 2.0**-53  # the largest float64 below 1
TIE_CASES = [
    # block: pi_1 p_2(1) == q_2(1) (4/5 * 5/12 == 1/3), so the recovered token's residual is (1/5, 0, 0)
    # exactly; float leaves ~1e-17 at token 1, which u = 1 - 2^-53 would pick
    (
        "block",
        1,
        (
            rows("2/5 1/2 1/10", "1/4 5/12 1/3", "10/27 10/27 7/27", "0 4/7 3/7", "1/18 1/2 4/9"),
            rows("1/2 0 1/2", "0 1/3 2/3", "10/27 10/27 7/27", "0 4/7 3/7"),
            [0, 2, -1, -1],
            4,
        ),
        [0.0, 0.0, 0.0, 0.0, ONE_MINUS],
    ),
    # hsd_capped: s_1 == 1 makes D*(p,q) == D*(q,p), h_1 == 1 exactly; float gives 1 - ulp < u
    ("hsd_capped", 1, (rows("9/19 6/19 4/19", "1/2 0 1/2", "5/16 3/8 5/16"), rows("1/7 2/7 4/7", "1/5 2/5 2/5"), [1, 1], 2), [ONE_MINUS, ONE_MINUS, 0.31119706494488253]),
    # rrs: after rejecting token 1, P = norm(max(P - q, 0)) has an exact zero that float misses
    ("rrs", 2, ([rows("1/4 1/3 5/12", "1/4 5/8 1/8")] * 2, [rows("1/6 5/6 0")] * 2, [[1], [1]], 1), [ONE_MINUS, 0.0, 0.0]),
    # rrs without replacement: the second candidate's chance P(1) / q(1) is (1/2) / (1/2) == 1 exactly
    (
        "rrs_without_replacement",
        2,
        (
            [rows("3/10 3/5 1/10", "3/8 3/8 1/4", "3/11 7/11 1/11"), rows("3/10 3/5 1/10", "1/3 7/15 1/5", "3/16 7/16 3/8")],
            [rows("1/2 1/2 0", "3/16 1/4 9/16"), rows("1/2 1/2 0", "1/2 0 1/2")],
            [[2, 2], [1, 2]],
            2,
        ),
        [0.07901397577108171, ONE_MINUS, 0.0, 0.7009358999908364, 0.0],
    ),
    # spectr_kseq (m = 1, rho = 1): keep = (1 - (1 - beta)) / beta == 1 exactly, so p_res(1) = P(1) - q(1)
    # * 1 == 0; float leaves +-1e-17 there, which u = 0 would pick
    ("spectr_kseq", 1, ([rows("0 1/6 5/6", "1/9 2/9 2/3", "0 0 1")], [rows("1/3 2/3 0", "1/9 2/9 2/3")], [[1, 1]], 2), [0.2598608699257078, 0.14285714285714285, 0.0]),
]
OTHER_CASES = [
    # a chance that is exactly 1 stays 1: block's h_i = S_i / (S_i + (1 - pi_i)) with pi_i == 1
    ("block", 1, (rows("4/5 1/5", "1 0", "1/3 2/3"), rows("4/5 1/5", "10/19 9/19"), [0, 1], 2), [ONE_MINUS, 0.0, 0.0]),
    # spectr_kseq with q == P and m = 2: p_res == P exactly, but (1 - beta)^m ~ 1e-18 is below float
    # resolution; every entry snaps to 0 and the fallback is P
    ("spectr_kseq", 2, ([rows("4/9 5/9", "0 1"), rows("4/9 5/9", "1 0")], [rows("4/9 5/9")] * 2, [[1], [-1]], 1), [ONE_MINUS, 0.0, 0.0]),
]


@pytest.mark.parametrize("name, n, case, draws", TIE_CASES + OTHER_CASES, ids=[c[0] for c in TIE_CASES + OTHER_CASES])
def test_exact_ties_match_reference(name, n, case, draws):
    assert run_batch(name, [case], [draws], n) == (1, 0)


def test_tie_cases_need_tie_snapping(monkeypatch):
    """Power check for the tie vectors: with the tie tolerance set to 0 (plain float comparisons)
    the kernels disagree with hsd_ref on every one of them."""
    import hsd_fast.schemes.block as block_mod
    import hsd_fast.schemes.hsd_capped as capped_mod
    import hsd_fast.schemes.rrs as rrs_mod
    import hsd_fast.schemes.spectr_kseq as spectr_mod

    for mod in (block_mod, capped_mod, rrs_mod):
        monkeypatch.setattr(mod, "tie_tolerance", lambda dtype, roundings: 0.0)
    monkeypatch.setattr(spectr_mod, "TOL", 0.0)
    for name, n, case, draws in TIE_CASES:
        with pytest.raises(AssertionError):
            run_batch(name, [case], [draws], n)
