"""hsd_fast verification kernels: hand vectors, kernel == loop twin, output invariants, the registry,
and the counter-based per-row generator.

The kernel/loop comparisons use ``torch.equal``: the twins make the same float operations in a
different order and control flow, so any disagreement is a bug, not rounding (a draw would have to
fall within one ulp of a boundary, probability ~1e-13 per decision in float64, ~1e-7 in float32;
the seeds here are fixed, so the tests are deterministic).
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

import hsd_ref
from hsd_fast.rng import reference_uniform, row_keys, seeded_uniforms, stream_bits
from hsd_fast.kernels import KERNELS, VerifyOutput, draws_needed, get_kernel, verify

SINGLE = [n for n, s in KERNELS.items() if not s.multi_draft]
MULTI = [n for n, s in KERNELS.items() if s.multi_draft]


# -- input builders shared by the hsd_fast test modules ---------------------------------------------


def random_probs(gen: torch.Generator, shape: tuple[int, ...], V: int, *, zero_frac: float = 0.3, point_frac: float = 0.1) -> torch.Tensor:
    """float64 rows [*shape, V]: softmax of N(0, 4) logits; about ``zero_frac`` of the rows have zeros
    and ``point_frac`` are point masses."""
    logits = torch.randn((*shape, V), generator=gen, dtype=torch.float64) * 2
    probs = torch.softmax(logits, dim=-1)
    if V > 1:
        zero_rows = torch.rand((*shape, 1), generator=gen) < zero_frac
        zeros = (torch.rand((*shape, V), generator=gen) < 0.5) & zero_rows
        zeros[..., 0] &= ~zeros[..., 1:].all(dim=-1)  # keep at least one token
        probs = torch.where(zeros, 0.0, probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    point = torch.rand(shape, generator=gen) < point_frac
    hot = torch.nn.functional.one_hot(torch.randint(V, shape, generator=gen), V).to(torch.float64)
    return torch.where(point.unsqueeze(-1), hot, probs)


def random_single(seed: int, B: int, K: int, V: int, dtype: torch.dtype = torch.float64):
    """Single-draft inputs with hostile cases mixed in: draft == target rows, drafted tokens of draft
    probability 0, placeholders."""
    gen = torch.Generator().manual_seed(seed)
    target = random_probs(gen, (B, K + 1), V)
    draft = random_probs(gen, (B, K), V)
    same = torch.rand(B, K, 1, generator=gen) < 0.2
    draft = torch.where(same, target[:, :K], draft)
    if K:
        tokens = torch.multinomial(draft.reshape(B * K, V), 1, generator=gen).reshape(B, K)
    else:
        tokens = torch.zeros(B, 0, dtype=torch.int64)
    wild = torch.rand(B, K, generator=gen)
    tokens = torch.where(wild < 0.1, torch.randint(V, (B, K), generator=gen), tokens)  # maybe q(x) = 0
    tokens = torch.where(wild > 0.92, torch.full_like(tokens, -1), tokens)
    return target.to(dtype), draft.to(dtype), tokens


def random_multi(seed: int, B: int, N: int, K: int, V: int, dtype: torch.dtype = torch.float64):
    """Multi-draft inputs [B, N, ...]: slots share random prefixes (with equal rows there), tokens
    are drawn from the draft rows or anywhere (maybe q(x) = 0), and some drafts end in placeholders."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    target = torch.empty(B, N, K + 1, V, dtype=torch.float64)
    draft = torch.empty(B, N, max(K, 0), V, dtype=torch.float64)
    tokens = torch.full((B, N, K), -1, dtype=torch.int64)
    for b in range(B):
        rows: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

        def node(prefix: tuple[int, ...]):
            if prefix not in rows:
                t_row = random_probs(gen, (), V)
                d_row = t_row.clone() if rng.random() < 0.15 else random_probs(gen, (), V)
                rows[prefix] = (t_row, d_row)
            return rows[prefix]

        for j in range(N):
            path: list[int] = []
            if j and rng.random() < 0.6:  # follow an earlier slot for a while
                other = tokens[b, rng.randrange(j)].tolist()
                path = other[: rng.randint(0, K)]
                if -1 in path:
                    path = path[: path.index(-1)]
            while len(path) < K:
                _, d_row = node(tuple(path))
                r = rng.random()
                if r < 0.08:
                    path += [-1] * (K - len(path))
                    break
                path.append(rng.randrange(V) if r < 0.2 else int(torch.multinomial(d_row, 1, generator=gen)))
            tokens[b, j] = torch.tensor(path, dtype=torch.int64)
            real = path[: path.index(-1)] if -1 in path else path
            for t in range(K + 1):
                prefix = tuple(real[:t]) if t <= len(real) else ("after-placeholder", j, t)
                t_row, d_row = node(prefix)
                target[b, j, t] = t_row
                if t < K:
                    draft[b, j, t] = d_row
    return target.to(dtype), draft.to(dtype), tokens


def random_draws(seed: int, B: int, D: int) -> torch.Tensor:
    """float64 uniforms; a quarter of them are multiples of 1/16 (exact CDF and chance boundaries)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(B, D, generator=gen, dtype=torch.float64)
    grid = torch.randint(16, (B, D), generator=gen).to(torch.float64) / 16
    return torch.where(torch.rand(B, D, generator=gen) < 0.25, grid, u)


def assert_same(a: VerifyOutput, b: VerifyOutput) -> None:
    assert torch.equal(a.tokens, b.tokens), (a.tokens, b.tokens)
    assert torch.equal(a.num_accepted, b.num_accepted), (a.num_accepted, b.num_accepted)
    if a.draft_index is None or b.draft_index is None:
        assert a.draft_index is None and b.draft_index is None
    else:
        assert torch.equal(a.draft_index, b.draft_index), (a.draft_index, b.draft_index)


# -- hand vectors (vLLM style: expected rows written out) -------------------------------------------


def t64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_tokenwise_hand_vectors(impl):
    target = t64([[[0.5, 0.5], [0.25, 0.75]]] * 3)  # [3, 2, 2]
    draft = t64([[[1.0, 0.0]]] * 3)  # chance of token 0 is 1/2; residual after rejection is (0, 1)
    tokens = torch.tensor([[0], [0], [1]])
    # row 0: accept (0.25 < 0.5), bonus by u = 0.5 -> cumsum (0.25, 1.0) -> token 1
    # row 1: reject (0.5 < 0.5 is false), recovered from (0, 1) -> token 1
    # row 2: drafted token 1 has draft probability 0 -> rejected; recovered token 1
    draws = t64([[0.25, 0.5], [0.5, 0.0], [0.0, 0.1]])
    out = verify("tokenwise", target, draft, tokens, draws=draws, impl=impl)
    assert out.tokens.tolist() == [[0, 1], [1, -1], [1, -1]]
    assert out.num_accepted.tolist() == [1, 0, 0]
    assert out.draft_index is None


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_greedy_hand_vectors(impl):
    V = 6
    best = [[1, 5, 3, 4], [1, 5, 3, 4], [0, 0, 0, 0], [2, 2, 2, 2]]  # target argmax per position
    target = torch.nn.functional.one_hot(torch.tensor(best), V).to(torch.float64)  # [4, 4, 6]
    tokens = torch.tensor([[1, 5, 3], [1, 2, 3], [-1, 0, 0], [2, 2, 2]])
    out = verify("greedy", target, None, tokens, impl=impl)
    assert out.tokens.tolist() == [[1, 5, 3, 4], [1, 5, -1, -1], [0, -1, -1, -1], [2, 2, 2, 2]]
    assert out.num_accepted.tolist() == [3, 1, 0, 3]


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_greedy_ties_go_to_lowest_id(impl):
    target = t64([[[0.4, 0.1, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    out = verify("greedy", target, None, torch.tensor([[2]]), impl=impl)
    assert out.tokens.tolist() == [[0, -1]]
    out = verify("greedy", target, None, torch.tensor([[0]]), impl=impl)
    assert out.tokens.tolist() == [[0, 0]]


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_block_accepts_a_block_tokenwise_rejects(impl):
    """Sun et al.'s motivating case: rho_1 < 1 < rho_1 * rho_2.  Token-wise can reject position 1
    where block verification keeps both tokens with the same draws."""
    target = t64([[[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]]])  # p_1, p_2, p_3
    draft = t64([[[0.5, 0.5], [0.25, 0.75]]])
    tokens = torch.tensor([[0, 0]])  # rho_1 = 1/2, rho_2 = 4: pi_1 = 1/2, pi_2 = 1
    draws = t64([[0.75, 0.75, 0.0]])
    tw = verify("tokenwise", target, draft, tokens, draws=draws, impl=impl)
    assert tw.num_accepted.tolist() == [0]
    for name in ("block", "hsd_capped"):  # h_2 = pi_2 = 1: the backward scan stops at 2
        out = verify(name, target, draft, tokens, draws=draws, impl=impl)
        assert out.tokens.tolist() == [[0, 0, 0]], name


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_rrs_second_candidate_sees_the_residual(impl):
    # P = (1/2, 1/2), q = (1, 0): slot 0 drafts 0 (chance 1/2), rejected by u = 0.75; P becomes (0, 1);
    # slot 1 drafts 0 again: chance P(0)/q(0) = 0 -> rejected; emitted from (0, 1) -> token 1.
    target = t64([[[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]]]])  # [1, 2, 2, 2]
    draft = t64([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # [1, 2, 1, 2]
    tokens = torch.tensor([[[0], [0]]])
    out = verify("rrs", target, draft, tokens, draws=t64([[0.75, 0.0, 0.3]]), impl=impl)
    assert out.tokens.tolist() == [[1, -1]] and out.num_accepted.tolist() == [0]
    assert out.draft_index.tolist() == [-1]
    # with u = 0.25 slot 0 is accepted; the bonus comes from the depth-1 row of slot 0's path
    out = verify("rrs", target, draft, tokens, draws=t64([[0.25, 0.0, 0.3]]), impl=impl)
    assert out.tokens.tolist() == [[0, 0]] and out.draft_index.tolist() == [0]


@pytest.mark.parametrize("impl", ["kernel", "loop"])
def test_multidraft_draft_index_is_lowest_consistent_slot(impl):
    V = 3
    target = torch.full((1, 3, 2, V), 1 / 3, dtype=torch.float64)
    draft = torch.full((1, 3, 1, V), 1 / 3, dtype=torch.float64)  # draft == target: every test passes
    tokens = torch.tensor([[[2], [1], [1]]])
    draws = t64([[0.9, 0.0, 0.0, 0.5]])  # slot 0 (token 2) is tried first and accepted (chance 1)
    for name in MULTI:
        out = verify(name, target, draft, tokens, draws=draws, impl=impl)
        assert out.tokens[0, 0].item() == 2 and out.draft_index.tolist() == [0], name
    tokens = torch.tensor([[[-1], [1], [1]]])  # slot 0 absent: slot 1 accepted, slots 1 and 2 consistent
    for name in MULTI:
        out = verify(name, target, draft, tokens, draws=draws, impl=impl)
        assert out.tokens[0, 0].item() == 1 and out.draft_index.tolist() == [1], name


# -- kernel == loop twin ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", SINGLE)
def test_single_kernel_equals_loop(name, dtype):
    for seed, (K, V) in enumerate([(0, 5), (1, 2), (3, 7), (4, 40), (6, 3)]):
        B = 24
        target, draft, tokens = random_single(100 + seed, B, K, V, dtype)
        draws = random_draws(200 + seed, B, draws_needed(name, K))
        a = verify(name, target, draft, tokens, draws=draws)
        b = verify(name, target, draft, tokens, draws=draws, impl="loop")
        assert_same(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MULTI)
def test_multi_kernel_equals_loop(name, dtype):
    for seed, (N, K, V) in enumerate([(1, 2, 4), (2, 0, 3), (2, 3, 5), (3, 2, 2), (3, 3, 30)]):
        B = 12
        target, draft, tokens = random_multi(300 + seed, B, N, K, V, dtype)
        draws = random_draws(400 + seed, B, draws_needed(name, K, N))
        a = verify(name, target, draft, tokens, draws=draws)
        b = verify(name, target, draft, tokens, draws=draws, impl="loop")
        assert_same(a, b)


# -- output invariants on random inputs -------------------------------------------------------------


def _check_rows_format(out: VerifyOutput, path: torch.Tensor, K: int, V: int) -> None:
    """accepted prefix = drafted path, then one id in [0, V), then -1."""
    for b in range(out.tokens.shape[0]):
        n = int(out.num_accepted[b])
        row = out.tokens[b].tolist()
        assert 0 <= n <= K
        assert row[:n] == path[b][:n]
        assert 0 <= row[n] < V
        assert row[n + 1 :] == [-1] * (K - n)


@pytest.mark.parametrize("name", SINGLE)
def test_single_output_format_and_positive_probability(name):
    B, K, V = 64, 4, 9
    target, draft, tokens = random_single(7, B, K, V)
    out = verify(name, target, draft, tokens, seeds=torch.arange(B))
    _check_rows_format(out, tokens.tolist(), K, V)
    for b in range(B):
        n = int(out.num_accepted[b])
        assert target[b, n, out.tokens[b, n]] > 0  # the emitted token has positive target probability
        assert all(x >= 0 for x in out.tokens[b, :n].tolist())  # placeholders are never accepted


@pytest.mark.parametrize("name", MULTI)
def test_multi_output_format_and_positive_probability(name):
    B, N, K, V = 32, 3, 3, 6
    target, draft, tokens = random_multi(8, B, N, K, V)
    out = verify(name, target, draft, tokens, seeds=torch.arange(B))
    for b in range(B):
        n = int(out.num_accepted[b])
        j = int(out.draft_index[b])
        if n == 0:
            assert j == -1
            j = 0
        else:  # draft_index: the lowest slot whose first n tokens are the accepted ones
            consistent = [s for s in range(N) if tokens[b, s, :n].tolist() == out.tokens[b, :n].tolist()]
            assert j == consistent[0]
        _check_rows_format(VerifyOutput(out.tokens[b : b + 1], out.num_accepted[b : b + 1]), [tokens[b, j].tolist()], K, V)
        assert target[b, j, n, out.tokens[b, n]] > 0


# -- registry ----------------------------------------------------------------------------------------


def _ref_multidraft_schemes():
    from hsd_ref.schemes.rrs import RRS
    from hsd_ref.schemes.rrs_without_replacement import RRSWithoutReplacement
    from hsd_ref.schemes.spectr_kseq import SpecTrKSeq

    return [RRS(), RRSWithoutReplacement(), SpecTrKSeq()]


def test_draws_needed_matches_ref():
    for name in SINGLE:
        ref = hsd_ref.SCHEMES[name]
        for k in range(6):
            assert draws_needed(name, k) == ref.draws_needed(k)
    for ref in _ref_multidraft_schemes():
        for n in (1, 2, 3):
            for k in range(5):
                assert draws_needed(ref.name, k, n) == ref.with_drafts(n).draws_needed(k)


def test_scheme_objects_and_loop_twins_share_signatures():
    import inspect

    for name, spec in KERNELS.items():
        assert get_kernel(hsd_ref.SCHEMES.get(name) or name) is spec
        assert inspect.signature(spec.kernel).parameters.keys() == inspect.signature(spec.loop).parameters.keys()


# -- counter-based per-row uniforms -----------------------------------------------------------------


def _splitmix64_python(seed: int, n: int) -> list[int]:
    """Vigna's splitmix64.c ``next()``, in Python integers mod 2^64."""
    mask = (1 << 64) - 1
    state, out = seed & mask, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_stream_is_splitmix64_from_the_row_key():
    # published first outputs for state 1234567 (Vigna's test vector)
    got = stream_bits(torch.tensor([1234567]), torch.tensor([0]), 5)[0].tolist()
    assert [x % (1 << 64) for x in got] == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]
    rng = random.Random(5)
    keys = [0, 1, -1, 2**63 - 1, -(2**63)] + [rng.randrange(-(2**63), 2**63) for _ in range(40)]
    bits = stream_bits(torch.tensor(keys, dtype=torch.int64), torch.zeros(len(keys), dtype=torch.int64), 33)
    for k, row in zip(keys, bits.tolist()):
        assert [x % (1 << 64) for x in row] == _splitmix64_python(k, 33)


def test_seeded_uniforms_are_the_engine_stream():
    """verify(seeds=) and the engine share one stream: seed s's first uniforms are the engine row's
    (the pure-Python twin), i.e. the top 53 bits of SplitMix64 from the row key."""
    seeds = torch.tensor([3, -7, 2**62], dtype=torch.int64)
    u = seeded_uniforms(seeds, 9)
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    keys = row_keys(seeds).tolist()
    for s, key, row in zip(seeds.tolist(), keys, u.tolist()):
        assert row == [reference_uniform(s, j) for j in range(9)]
        assert row == [(x >> 11) / 2**53 for x in _splitmix64_python(key, 9)]


def test_seeded_uniforms_look_uniform():
    """Kolmogorov-Smirnov on 20000 seeded uniforms (2 x 10000 consecutive seeds).  The critical value
    2.693 / sqrt(n) has false-failure probability 2 exp(-2 * 2.693^2) < 1e-6 (asymptotic Kolmogorov
    tail).  Power check: uniforms squeezed into [0, 0.97) (D = 0.03 > 0.019) must fail it."""

    def ks(x: torch.Tensor) -> float:
        x = torch.sort(x.flatten()).values
        n = x.numel()
        i = torch.arange(1, n + 1, dtype=torch.float64)
        return float(torch.maximum(i / n - x, x - (i - 1) / n).max())

    u = seeded_uniforms(torch.arange(10000, dtype=torch.int64), 2)
    crit = 2.693 / u.numel() ** 0.5
    assert ks(u) < crit
    assert ks(u * 0.97) > crit  # power check: the planted defect is detected


# -- CUDA (same code path; skipped without a GPU) ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(KERNELS))
def test_cuda_equals_cpu(name, dtype):
    """The kernels on CUDA give the CPU's tokens for the same draws (reductions may round
    differently, which matters only within an ulp of a boundary), and the per-row seeded uniforms
    have the same bits on both devices."""
    B, K, V, N = 32, 4, 1000, 2
    if name in MULTI:
        target, draft, tokens = random_multi(31, B, N, K, V, dtype)
    else:
        target, draft, tokens = random_single(31, B, K, V, dtype)
    draws = random_draws(32, B, draws_needed(name, K, N if name in MULTI else 1))
    cpu = verify(name, target, draft, tokens, draws=draws)
    dev = verify(name, target.cuda(), draft.cuda(), tokens.cuda(), draws=draws.cuda())
    assert dev.tokens.device.type == "cuda"
    assert_same(cpu, VerifyOutput(*(None if x is None else x.cpu() for x in dev)))
    seeds = torch.arange(-B, B, dtype=torch.int64)
    assert torch.equal(seeded_uniforms(seeds, 9), seeded_uniforms(seeds.cuda(), 9).cpu())


# -- SpecTr K-SEQ bisection -------------------------------------------------------------------------


def test_kseq_rho_matches_exact_bisection():
    """The bucketed bisection of the kernel and the plain one of the loop twin both give hsd_ref's
    exact ``rho`` bit for bit (it is dyadic, so float64 holds it exactly), on small-denominator rows
    (ties galore) and on random float rows compared with each other."""
    from hsd_ref.schemes.spectr_kseq import kseq_rho as exact_rho

    from hsd_fast.schemes.spectr_kseq import kseq_rho, kseq_rho_loop

    rng = random.Random(9)
    rows_p, rows_q, ms, want = [], [], [], []
    for _ in range(60):
        V = rng.choice([2, 3, 5, 8])
        ws = [[rng.randint(0, 6) for _ in range(V)] for _ in range(2)]
        for w in ws:
            w[rng.randrange(V)] += 1
        p, q = ([Fraction(x, sum(w)) for x in w] for w in ws)
        if rng.random() < 0.2:
            q = p
        m = rng.randint(1, 4)
        rows_p.append([float(x) for x in p] + [0.0] * (8 - V))
        rows_q.append([float(x) for x in q] + [0.0] * (8 - V))
        ms.append(m)
        want.append(float(exact_rho(tuple(p), tuple(q), m)))
    P = torch.tensor(rows_p, dtype=torch.float64)
    Q = torch.tensor(rows_q, dtype=torch.float64)
    got = kseq_rho(P, Q, torch.tensor(ms))
    assert got.tolist() == want
    assert [kseq_rho_loop(P[i], Q[i], ms[i]) for i in range(len(ms))] == want
    gen = torch.Generator().manual_seed(10)
    P = torch.softmax(torch.randn(16, 5000, generator=gen, dtype=torch.float64) * 3, dim=-1)
    Q = torch.softmax(torch.log(P) + 0.5 * torch.randn(16, 5000, generator=gen, dtype=torch.float64), dim=-1)
    m = torch.randint(1, 5, (16,), generator=gen)
    assert kseq_rho(P, Q, m).tolist() == [kseq_rho_loop(P[i], Q[i], int(m[i])) for i in range(16)]
