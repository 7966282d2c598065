"""Degenerate and hostile inputs to ``hsd_fast.verify``: each behaviour documented in the scheme
modules has a test here (STYLE.md "What to absorb" 15; peers.md §4 bug classes 3-5).

Expected tokens are computed in the test from exact ``Fraction`` rows (inverse CDF written out
below), never by the code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from hsd_fast.kernels import KERNELS, ROW_SUM_TOL, draws_needed, verify
from tests.fast.test_kernels import assert_same, random_draws, random_multi, random_single

ALL = list(KERNELS)
SINGLE = [n for n, s in KERNELS.items() if not s.multi_draft]
MULTI = [n for n, s in KERNELS.items() if s.multi_draft]
RANDOM = [n for n in ALL if n != "greedy"]
IMPLS = ["kernel", "loop"]
ONE_MINUS = 1 - 2.0**-53


def exact_inverse_cdf(row: list[Fraction], u: float) -> int:
    """Smallest v with u < row[0] + ... + row[v] (the convention), in exact arithmetic."""
    acc, ux = Fraction(0), Fraction(u)
    for v, x in enumerate(row):
        acc += x
        if ux < acc:
            return v
    raise AssertionError("u outside [0, 1)")


def single_inputs(target_rows, draft_rows, tokens, dtype=torch.float64):
    """One batch row from lists of float rows."""
    K = len(tokens)
    V = len(target_rows[0])
    target = torch.tensor([target_rows], dtype=dtype)
    draft = torch.tensor([draft_rows], dtype=dtype).reshape(1, K, V)
    return target, draft, torch.tensor([tokens], dtype=torch.int64).reshape(1, K)


def multi_inputs(target_rows, draft_rows, tokens, N, dtype=torch.float64):
    """N identical-prefix-free drafts built by repeating one path's rows (drafts share rows)."""
    target, draft, tok = single_inputs(target_rows, draft_rows, tokens, dtype)
    return target.unsqueeze(1).repeat(1, N, 1, 1), draft.unsqueeze(1).repeat(1, N, 1, 1), tok.unsqueeze(1).repeat(1, N, 1)


def run(name, target, draft, tokens, draws, impl="kernel"):
    return verify(name, target, draft, tokens, draws=torch.tensor([draws], dtype=torch.float64), impl=impl)


# -- degenerate inputs with defined behaviour -------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", RANDOM)
def test_zero_draft_probability_is_rejected(name, impl):
    p = [0.5, 0.25, 0.25]
    q = [0.5, 0.5, 0.0]  # token 2 has draft probability 0 but target probability 1/4
    for u in (0.0, 0.5, ONE_MINUS):
        if name in SINGLE:
            out = run(name, *single_inputs([p, p], [q], [2]), [0.0, u], impl)
        else:
            out = run(name, *multi_inputs([p, p], [q], [2], 2), [0.0, 0.0, u], impl)
        assert out.num_accepted.tolist() == [0]
        # recovered from norm(max(p - q, 0)) = (0, 0, 1) for every scheme here except spectr_kseq,
        # whose residual (m = 2, rho = 2) is (0, 1/5, 4/5); either way a valid id with p > 0
        v = int(out.tokens[0, 0])
        assert 0 <= v < 3 and p[v] > 0 and out.tokens[0, 1] == -1


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", RANDOM)
def test_placeholder_drafts_are_rejected(name, impl):
    p = [0.25, 0.25, 0.5]
    for u in (0.0, 0.7):
        if name in SINGLE:
            out = run(name, *single_inputs([p, p], [p], [-1]), [0.0, u], impl)
        else:
            out = run(name, *multi_inputs([p, p], [p], [-1], 3), [0.0] * 3 + [u], impl)
        assert out.num_accepted.tolist() == [0]
        # draft == target: the residual is empty and the token comes from the target row itself
        assert out.tokens.tolist() == [[exact_inverse_cdf([Fraction(1, 4), Fraction(1, 4), Fraction(1, 2)], u), -1]]


@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_placeholder_never_matches(impl):
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    out = verify("greedy", target, None, torch.tensor([[-1]]), impl=impl)
    assert out.tokens.tolist() == [[1, -1]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", RANDOM)
def test_draft_equals_target_accepts_everything(name, impl):
    """With draft == target every single-draft test passes and RRS accepts its first candidate;
    SpecTr's chance is 1/rho < 1 for m >= 2, so it is checked with one draft."""
    B, K, V = 16, 4, 7
    target, _, _ = random_single(11, B, K, V)
    draft = target[:, :K].clone()
    tokens = torch.multinomial(draft.reshape(B * K, V), 1, generator=torch.Generator().manual_seed(1)).reshape(B, K)
    if name in SINGLE:
        out = verify(name, target, draft, tokens, seeds=torch.arange(B), impl=impl)
    else:
        N = 1 if name == "spectr_kseq" else 2
        out = verify(name, target.unsqueeze(1).repeat(1, N, 1, 1), draft.unsqueeze(1).repeat(1, N, 1, 1), tokens.unsqueeze(1).repeat(1, N, 1), seeds=torch.arange(B), impl=impl)
    assert out.num_accepted.tolist() == [K] * B
    assert torch.equal(out.tokens[:, :K], tokens)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ALL)
def test_k_zero_samples_the_target_row(name, impl):
    row = [Fraction(1, 8), Fraction(0), Fraction(3, 8), Fraction(1, 2)]
    p = [float(x) for x in row]
    for u in (0.0, 0.124, 0.125, 0.5, ONE_MINUS):
        if name in SINGLE:
            target, draft, tokens = single_inputs([p], [], [])
        else:
            target, draft, tokens = multi_inputs([p], [], [], 2)
        out = verify(name, target, draft, tokens, draws=torch.tensor([[u]] if name != "greedy" else [[]], dtype=torch.float64), impl=impl)
        expected = 3 if name == "greedy" else exact_inverse_cdf(row, u)
        assert out.tokens.tolist() == [[expected]] and out.num_accepted.tolist() == [0]
        if name in MULTI:
            assert out.draft_index.tolist() == [-1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ALL)
def test_single_token_vocabulary(name, impl):
    K = 3
    ones = [[1.0]] * (K + 1)
    for u in (0.0, ONE_MINUS):
        if name in SINGLE:
            target, draft, tokens = single_inputs(ones, ones[:K], [0] * K)
        else:
            target, draft, tokens = multi_inputs(ones, ones[:K], [0] * K, 2)
        D = draws_needed(name, K, 2 if name in MULTI else 1)
        out = verify(name, target, draft, tokens, draws=torch.full((1, D), u, dtype=torch.float64), impl=impl)
        if name == "spectr_kseq" and u == ONE_MINUS:
            # m = 2: the bisection's upper end never reaches 1 (rho = 1 + 2^-30), so the chance is
            # 1 / rho < 1 - 2^-53 and the first candidate is rejected; p_res = P emits token 0
            assert out.tokens.tolist() == [[0] + [-1] * K] and out.num_accepted.tolist() == [0]
        else:
            assert out.tokens.tolist() == [[0] * (K + 1)] and out.num_accepted.tolist() == [K]


@pytest.fixture
def one_thread():
    """Correctness tests on large rows: one intra-op thread (on 2 shared cores, 2 OpenMP threads
    mostly wait for each other); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("V", [8193, 151936])
@pytest.mark.parametrize("name", RANDOM)
def test_large_vocabulary_recovered_token_is_in_range(name, V, dtype, one_thread):
    """GHSA-8wr5-jm2h-8r4f: rows whose tail (the last 4096 ids, a whole "tile") is zero, and a row
    whose mass sits on the very last id; u = 1 - 2^-53 must still give an id < V of positive
    probability, for the recovered and for the bonus token."""
    gen = torch.Generator().manual_seed(V)
    head = torch.softmax(torch.randn(V - 4096, generator=gen, dtype=torch.float64), dim=0)
    p = torch.cat([head, torch.zeros(4096, dtype=torch.float64)])
    q = torch.roll(p, 1)  # shifted: the residual is non-empty and also has a zero tail
    last = torch.zeros(V, dtype=torch.float64)
    last[-1] = 1.0
    cases = [([p, p], [q], int(torch.argmax(q))), ([last, p], [q], int(torch.argmax(q))), ([p, last], [p], 0)]
    for t_rows, d_rows, x in cases:
        target = torch.stack(t_rows).unsqueeze(0).to(dtype)  # [1, 2, V]
        draft = torch.stack(d_rows).unsqueeze(0).to(dtype)  # [1, 1, V]
        tokens = torch.tensor([[x]])
        if name in MULTI:
            target, draft, tokens = target.unsqueeze(1).repeat(1, 2, 1, 1), draft.unsqueeze(1).repeat(1, 2, 1, 1), tokens.unsqueeze(1).repeat(1, 2, 1)
        for u_test in (0.0, ONE_MINUS):
            D = draws_needed(name, 1, 2 if name in MULTI else 1)
            draws = torch.full((1, D), u_test, dtype=torch.float64)
            draws[0, -1] = ONE_MINUS
            out = verify(name, target, draft, tokens, draws=draws)
            n = int(out.num_accepted[0])
            v = int(out.tokens[0, n])
            assert 0 <= v < V
            row = target[0, 0, n] if name in MULTI else target[0, n]
            assert row[v] > 0


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name):
    V, K = 3, 2
    shape = (0, 2) if name in MULTI else (0,)
    target = torch.full((*shape, K + 1, V), 1 / 3, dtype=torch.float64)
    draft = torch.full((*shape, K, V), 1 / 3, dtype=torch.float64)
    tokens = torch.zeros((*shape, K), dtype=torch.int64)
    out = verify(name, target, draft, tokens, seeds=torch.zeros(0, dtype=torch.int64))
    assert out.tokens.shape == (0, K + 1) and out.num_accepted.shape == (0,)


# -- bad input raises ValueError naming the argument ------------------------------------------------


def good_single(dtype=torch.float64):
    target, draft, tokens = random_single(3, 2, 2, 4, dtype)
    return target, draft, tokens.clamp(min=0)


def good_multi(dtype=torch.float64):
    return random_multi(4, 2, 2, 2, 4, dtype)


@pytest.mark.parametrize("name", ["tokenwise", "rrs"])
@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "unnormalised"])
@pytest.mark.parametrize("which", ["target_probs", "draft_probs"])
def test_bad_rows_raise(name, bad, which):
    target, draft, tokens = good_multi() if name in MULTI else good_single()
    x = (target if which == "target_probs" else draft).clone()
    row = x.reshape(-1, x.shape[-1])
    if bad == "nan":
        row[1, 0] = float("nan")
    elif bad == "inf":
        row[1, 0] = float("inf")
    elif bad == "negative":
        shift = float(row[1, 0]) + 0.25  # row[1, 0] becomes -1/4, the sum stays 1
        row[1, 0] -= shift
        row[1, 1] += shift
    else:
        row[1] *= 1.01
    args = (x, draft) if which == "target_probs" else (target, x)
    with pytest.raises(ValueError, match=rf"^{which}\["):
        verify(name, *args, tokens, seeds=torch.arange(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_sum_tolerance_is_documented_value(dtype):
    """Rows may be off by ROW_SUM_TOL[dtype] = sqrt(eps): half of it passes, twice it raises."""
    tol = ROW_SUM_TOL[dtype]
    assert tol == pytest.approx(math.sqrt(torch.finfo(dtype).eps))
    V = 4
    for factor, ok in ((0.5, True), (2.0, False)):
        target = torch.full((1, 2, V), 1 / V, dtype=torch.float64)
        target[0, 1, 0] += factor * tol
        draft = torch.full((1, 1, V), 1 / V, dtype=torch.float64)
        call = lambda: verify("tokenwise", target.to(dtype), draft.to(dtype), torch.tensor([[0]]), seeds=torch.arange(1))
        if ok:
            call()
        else:
            with pytest.raises(ValueError, match=r"^target_probs\[0, 1\]: row sums to"):
                call()


def test_bad_tokens_raise():
    target, draft, tokens = good_single()
    for value in (-2, 4, 10**6):
        bad = tokens.clone()
        bad[1, 0] = value
        with pytest.raises(ValueError, match=r"^draft_tokens\[1, 0\]"):
            verify("tokenwise", target, draft, bad, seeds=torch.arange(2))
    with pytest.raises(ValueError, match=r"^draft_tokens: dtype"):
        verify("tokenwise", target, draft, tokens.to(torch.float64), seeds=torch.arange(2))
    with pytest.raises(ValueError, match=r"^draft_tokens: expected shape"):
        verify("tokenwise", target, draft, tokens[:, :1], seeds=torch.arange(2))
    with pytest.raises(ValueError, match=r"^draft_tokens: expected a torch.Tensor"):
        verify("tokenwise", target, draft, tokens.tolist(), seeds=torch.arange(2))


def test_shape_dtype_device_mismatches_raise():
    target, draft, tokens = good_single()
    seeds = torch.arange(2)
    cases = [
        ("target_probs", lambda: verify("tokenwise", target.tolist(), draft, tokens, seeds=seeds)),
        ("target_probs", lambda: verify("tokenwise", target.to(torch.float16), draft.to(torch.float16), tokens, seeds=seeds)),
        ("target_probs", lambda: verify("tokenwise", target[0], draft, tokens, seeds=seeds)),
        ("target_probs", lambda: verify("rrs", target, draft, tokens, seeds=seeds)),  # single-draft shape for a multi-draft scheme
        ("target_probs", lambda: verify("tokenwise", target[:, :, :0], draft[:, :, :0], tokens, seeds=seeds)),  # V = 0
        ("draft_probs", lambda: verify("tokenwise", target, draft.to(torch.float32), tokens, seeds=seeds)),
        ("draft_probs", lambda: verify("tokenwise", target, draft[:, :1], tokens, seeds=seeds)),
        ("draft_probs", lambda: verify("tokenwise", target, draft[..., :3], tokens, seeds=seeds)),
        ("draft_probs", lambda: verify("tokenwise", target, None, tokens, seeds=seeds)),
        ("draft_probs", lambda: verify("tokenwise", target, draft.to("meta"), tokens, seeds=seeds)),
        ("draft_tokens", lambda: verify("tokenwise", target, draft, tokens.to("meta"), seeds=seeds)),
        ("draws", lambda: verify("tokenwise", target, draft, tokens, draws=torch.zeros(2, 3, device="meta"))),
        ("seeds", lambda: verify("tokenwise", target, draft, tokens, seeds=seeds.to(torch.int32))),
        ("seeds", lambda: verify("tokenwise", target, draft, tokens, seeds=seeds[:1])),
        ("seeds", lambda: verify("tokenwise", target, draft, tokens, seeds=seeds.to("meta"))),
        ("generator", lambda: verify("tokenwise", target, draft, tokens, generator=1234)),
        ("scheme", lambda: verify("no_such_scheme", target, draft, tokens, seeds=seeds)),
        ("scheme", lambda: verify("hsd_naive", target, draft, tokens, seeds=seeds)),
        ("impl", lambda: verify("tokenwise", target, draft, tokens, seeds=seeds, impl="fast")),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{name}"):
            call()


def test_bad_draws_raise():
    target, draft, tokens = good_single()
    D = draws_needed("tokenwise", 2)
    for value in (1.0, -0.25, float("nan"), float("inf")):
        draws = torch.full((2, D), 0.5, dtype=torch.float64)
        draws[1, 2] = value
        with pytest.raises(ValueError, match=r"^draws\[1, 2\]"):
            verify("tokenwise", target, draft, tokens, draws=draws)
    with pytest.raises(ValueError, match=r"^draws: expected shape"):
        verify("tokenwise", target, draft, tokens, draws=torch.zeros(2, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^draws: dtype"):
        verify("tokenwise", target, draft, tokens, draws=torch.zeros(2, D, dtype=torch.int64))


def test_randomness_is_required_and_unique():
    target, draft, tokens = good_single()
    with pytest.raises(ValueError, match=r"^draws: scheme 'tokenwise' needs randomness"):
        verify("tokenwise", target, draft, tokens)
    with pytest.raises(ValueError, match=r"^draws: pass exactly one"):
        verify("tokenwise", target, draft, tokens, seeds=torch.arange(2), draws=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^seeds: pass exactly one"):
        verify("tokenwise", target, draft, tokens, generator=torch.Generator(), seeds=torch.arange(2))
    out = verify("greedy", target, None, tokens)  # greedy needs no randomness
    assert out.tokens.shape == (2, 3)


def test_inconsistent_shared_prefix_rows_raise():
    target, draft, tokens = good_multi()
    tokens = tokens.clamp(min=0)
    tokens[:, 1] = tokens[:, 0]  # both drafts share the whole path...
    target = target.clone()
    target[:, 1] = target[:, 0]
    draft = draft.clone()
    draft[:, 1] = draft[:, 0]
    verify("rrs", target, draft, tokens, seeds=torch.arange(2))  # consistent: fine
    bad = target.clone()
    bad[0, 1, 1] = torch.roll(bad[0, 1, 1], 1)  # ...but slot 1's row at position 1 differs
    if torch.equal(bad[0, 1, 1], target[0, 0, 1]):
        pytest.fail("test setup: the rolled row must differ")
    with pytest.raises(ValueError, match=r"^target_probs\[0, 1, 1\]: differs from target_probs\[0, 0, 1\]"):
        verify("rrs", bad, draft, tokens, seeds=torch.arange(2))
    bad = draft.clone()
    bad[1, 1, 0] = torch.roll(bad[1, 1, 0], 1)  # position 0 is shared by every pair of drafts
    with pytest.raises(ValueError, match=r"^draft_probs\[1, 1, 0\]"):
        verify("rrs", target, bad, tokens, seeds=torch.arange(2))


# -- no in-place modification, determinism, per-row seeds -------------------------------------------


def inputs_for(name, seed, B, K=3, V=6, N=2, dtype=torch.float64):
    if name in MULTI:
        return random_multi(seed, B, N, K, V, dtype)
    return random_single(seed, B, K, V, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ALL)
def test_inputs_are_not_modified(name, impl):
    target, draft, tokens = inputs_for(name, 21, 6)
    N = target.shape[1] if name in MULTI else 1
    draws = random_draws(22, 6, draws_needed(name, 3, N))
    seeds = torch.arange(6)
    saved = [x.clone() for x in (target, draft, tokens, draws, seeds)]
    verify(name, target, draft, tokens, draws=draws, impl=impl)
    verify(name, target, draft, tokens, seeds=seeds, impl=impl)
    for before, after in zip(saved, (target, draft, tokens, draws, seeds)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("name", RANDOM)
def test_same_generator_seed_same_output(name):
    target, draft, tokens = inputs_for(name, 23, 16)
    a = verify(name, target, draft, tokens, generator=torch.Generator().manual_seed(7))
    b = verify(name, target, draft, tokens, generator=torch.Generator().manual_seed(7))
    assert_same(a, b)
    gen = torch.Generator().manual_seed(7)  # and the generator path equals explicit draws from it
    N = target.shape[1] if name in MULTI else 1
    draws = torch.rand((16, draws_needed(name, 3, N)), generator=gen, dtype=torch.float64)
    assert_same(a, verify(name, target, draft, tokens, draws=draws))


@pytest.mark.parametrize("name", RANDOM)
def test_seeded_row_is_independent_of_the_batch(name):
    """A row's output with ``seeds`` is the same alone, in a batch of 64 other random rows, and at
    another position in that batch."""
    target, draft, tokens = inputs_for(name, 24, 64)
    seeds = torch.randint(-(2**62), 2**62, (64,), generator=torch.Generator().manual_seed(25))
    full = verify(name, target, draft, tokens, seeds=seeds)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(26))
    shuffled = verify(name, target[perm], draft[perm], tokens[perm], seeds=seeds[perm])
    for b in range(0, 64, 9):
        alone = verify(name, target[b : b + 1], draft[b : b + 1], tokens[b : b + 1], seeds=seeds[b : b + 1])
        assert torch.equal(alone.tokens[0], full.tokens[b])
        at = int((perm == b).nonzero()[0, 0])
        assert torch.equal(shuffled.tokens[at], full.tokens[b])
        if name in MULTI:
            assert alone.draft_index[0] == full.draft_index[b] == shuffled.draft_index[at]


@pytest.mark.parametrize("name", ALL)
def test_validate_false_gives_the_same_output(name):
    target, draft, tokens = inputs_for(name, 27, 8)
    a = verify(name, target, draft, tokens, seeds=torch.arange(8))
    b = verify(name, target, draft, tokens, seeds=torch.arange(8), validate=False)
    assert_same(a, b)
