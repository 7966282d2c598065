"""Ragged drafts (``verify(..., draft_lens=)``): each padded row is verified as its shorter draft.

The oracle is hsd_ref's verifier at ``k = L_b`` on the unpadded row and the first ``L_b + 1``
uniforms (the layout of hsd_ref.schemes.adaptive, whose draft length is a stopping time), with the
skip rule of test_parity.py (a row is skipped only when a draw lies within 1e-9 of a boundary).
The padded positions are filled with garbage (random rows, NaN, all-zero rows) that must not matter.
"""

from __future__ import annotations

import random

import pytest
import torch

from hsd_fast.kernels import KERNELS, draws_needed, verify
from tests.fast.test_parity import as_tensor, near_boundary, random_draw, ref_outcome, ref_scheme, single_case

SINGLE = [n for n, s in KERNELS.items() if not s.multi_draft]


def padded_batch(rng: random.Random, name: str, K: int, V: int, B: int):
    """B exact cases of random lengths 0..K padded to K with garbage; -> tensors, lens, cases, draws."""
    lens = [rng.randint(0, K) for _ in range(B)]
    cases = [single_case(rng, n, V) for n in lens]
    target = torch.full((B, K + 1, V), float("nan"), dtype=torch.float64)
    draft = torch.zeros((B, K, V), dtype=torch.float64)
    tokens = torch.full((B, K), -1, dtype=torch.int64)
    D = draws_needed(name, K)
    draws = [[random_draw(rng) for _ in range(D)] for _ in range(B)]
    for b, (t_rows, d_rows, xs, n) in enumerate(cases):
        target[b, : n + 1] = as_tensor(t_rows)
        if n:
            draft[b, :n] = as_tensor(d_rows)
            tokens[b, :n] = torch.tensor(xs)
        if rng.random() < 0.5:  # past the length: a valid-looking row instead of NaN
            target[b, n + 1 :] = torch.softmax(torch.randn(K - n, V, dtype=torch.float64), -1)
    return target, draft, tokens, torch.tensor(lens), cases, draws


@pytest.mark.parametrize("name", SINGLE)
def test_ragged_rows_equal_hsd_ref_at_their_own_length(name):
    rng = random.Random(f"ragged/{name}")
    torch.manual_seed(0)
    checked = skipped = 0
    scheme = ref_scheme(name)
    for V in (2, 3, 5):
        for K in (1, 2, 4):
            target, draft, tokens, lens, cases, draws = padded_batch(rng, name, K, V, 12)
            u = torch.tensor(draws, dtype=torch.float64).reshape(len(cases), draws_needed(name, K))
            outs = [verify(name, target, draft, tokens, draws=u, draft_lens=lens, impl=impl) for impl in ("kernel", "loop")]
            for b, case in enumerate(cases):
                n = case[3]
                mine = draws[b][: draws_needed(name, n)]
                expected = ref_outcome(scheme, case, mine)
                expected = (expected[0] + [-1] * (K - n), expected[1], expected[2])
                checked += 1
                for out in outs:
                    got = (out.tokens[b].tolist(), int(out.num_accepted[b]), -1)
                    if got != expected:
                        assert near_boundary(scheme, case, mine, ref_outcome(scheme, case, mine)), (name, got, expected, case, mine)
                        skipped += 1
                        break
    assert checked >= 100 and skipped <= 0.05 * checked, (skipped, checked)


@pytest.mark.parametrize("name", ["tokenwise", "block", "hsd_capped"])
def test_ragged_call_equals_one_unpadded_call_per_row_with_seeds(name):
    """With per-row seeds a padded row's output is the unpadded call's (seeds are per row)."""
    rng = random.Random(f"ragged-seeds/{name}")
    target, draft, tokens, lens, cases, _ = padded_batch(rng, name, 4, 5, 16)
    seeds = torch.arange(100, 116, dtype=torch.int64)
    out = verify(name, target, draft, tokens, seeds=seeds, draft_lens=lens)
    for b, n in enumerate(lens.tolist()):
        one = verify(name, target[b : b + 1, : n + 1], draft[b : b + 1, :n], tokens[b : b + 1, :n], seeds=seeds[b : b + 1])
        assert out.tokens[b, : n + 1].tolist() == one.tokens[0].tolist()
        assert out.tokens[b, n + 1 :].tolist() == [-1] * (4 - n)
        assert int(out.num_accepted[b]) == int(one.num_accepted[0])


def test_full_lengths_are_the_plain_call():
    torch.manual_seed(1)
    target = torch.softmax(torch.randn(6, 4, 7, dtype=torch.float64), -1)
    draft = torch.softmax(torch.randn(6, 3, 7, dtype=torch.float64), -1)
    tokens = torch.randint(0, 7, (6, 3))
    u = torch.rand(6, 4, dtype=torch.float64)
    a = verify("block", target, draft, tokens, draws=u)
    b = verify("block", target, draft, tokens, draws=u, draft_lens=torch.full((6,), 3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.num_accepted, b.num_accepted)


def _inputs():
    target = torch.softmax(torch.randn(2, 4, 5, dtype=torch.float64), -1)
    draft = torch.softmax(torch.randn(2, 3, 5, dtype=torch.float64), -1)
    tokens = torch.tensor([[1, -1, -1], [0, 2, 3]])
    return target, draft, tokens


@pytest.mark.parametrize(
    "lens, message",
    [
        (torch.tensor([1, 4]), r"draft_lens\[1\] = 4 is outside \[0, K = 3\]"),
        (torch.tensor([-1, 3]), r"draft_lens\[0\] = -1 is outside"),
        (torch.tensor([0, 3]), r"draft_tokens\[0, 0\] = 1: past draft_lens\[0\] = 0, expected the padding -1"),
        (torch.tensor([1]), r"draft_lens: expected shape \(2,\)"),
        (torch.tensor([1.0, 3.0]), r"draft_lens: expected a 1-D int64 tensor"),
        ([1, 3], r"draft_lens: expected a torch.Tensor"),
    ],
)
def test_bad_draft_lens_name_the_argument(lens, message):
    target, draft, tokens = _inputs()
    with pytest.raises(ValueError, match=message):
        verify("tokenwise", target, draft, tokens, seeds=torch.tensor([1, 2]), draft_lens=lens)


def test_a_bad_row_inside_the_length_is_still_caught():
    target, draft, tokens = _inputs()
    draft[0, 0, 0] += 0.5
    with pytest.raises(ValueError, match=r"draft_probs\[0, 0\]: row sums to"):
        verify("tokenwise", target, draft, tokens, seeds=torch.tensor([1, 2]), draft_lens=torch.tensor([1, 3]))
    target, draft, tokens = _inputs()
    draft[0, 1] = float("nan")  # past row 0's length: ignored
    out = verify("tokenwise", target, draft, tokens, seeds=torch.tensor([1, 2]), draft_lens=torch.tensor([1, 3]))
    assert out.tokens[0, 2:].tolist() == [-1, -1]


def test_multi_draft_schemes_refuse_draft_lens():
    target = torch.softmax(torch.randn(1, 2, 2, 3, dtype=torch.float64), -1)
    draft = torch.softmax(torch.randn(1, 2, 1, 3, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="draft_lens: per-row draft lengths are for single-draft schemes"):
        verify("rrs", target, draft, torch.tensor([[[0], [1]]]), seeds=torch.tensor([0]), draft_lens=torch.tensor([1]))
