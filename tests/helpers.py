"""Oracles shared by the engine tests (tests/fast and tests/gpu)."""

from __future__ import annotations

import math
import random

import torch

from hsd_fast.rng import reference_uniform


@torch.no_grad()
def plain_greedy(model, ids, n):
    """``n`` greedy tokens of the HF ``model`` after ``ids``: one full forward per token, no cache."""
    ids = list(ids)
    out = []
    dev = next(model.parameters()).device
    for _ in range(n):
        x = int(model(torch.tensor([ids], device=dev)).logits[0, -1].argmax())
        out.append(x)
        ids.append(x)
    return out


class Replay(random.Random):
    """``random.Random`` whose ``random()`` replays a row's engine stream (seed ``seed``, counters from
    0) via the pure-Python twin ``reference_uniform``: hsd_ref driven by the engine's uniforms."""

    def __init__(self, seed):
        super().__init__(0)
        self.row_seed, self.counter = seed, 0

    def random(self):
        u = reference_uniform(self.row_seed, self.counter)
        self.counter += 1
        return u


# ------------------------------------------------------- the law of the first tokens, statistically

LAW_ALPHA = 1e-6  # false-failure probability of each G test below


def g_test(counts: dict, law: dict, n: int) -> float:
    """The p-value of the G test of ``counts`` against ``law`` (cells of expected count < 5 pooled)."""
    from scipy.stats import chi2

    pooled, obs, exp = [], 0, 0.0
    for s in sorted(law, key=lambda s: law[s]):
        e = float(law[s]) * n
        if e < 5:
            obs, exp = obs + counts.get(s, 0), exp + e
        else:
            pooled.append((counts.get(s, 0), e))
    if exp:
        pooled.append((obs, exp))
    stat = 2 * sum(o * math.log(o / e) for o, e in pooled if o)
    return float(chi2.sf(stat, len(pooled) - 1))


def sample_counts(dec, prompt, n_tokens, n, seed0):
    """``n`` rows of ``dec`` from ``prompt`` (row ``b`` seeded ``seed0 + b``), counted by their tokens."""
    res = dec.generate([list(prompt)] * n, max_new_tokens=n_tokens, seeds=list(range(seed0, seed0 + n)))
    counts: dict = {}
    for row in res.tokens:
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


def assert_target_law_with_power(dec, target, draft, prompt, n_tokens: int = 3, n_samples: int = 6000) -> None:
    """The first ``n_tokens`` of ``n_samples`` rows of ``dec`` pass the G test against ``target``'s exact
    law at :data:`LAW_ALPHA`; power check: the DRAFT's law (what a verifier accepting everything emits;
    TV to the target's >= 0.15, checked) sampled by the plain draft fails the same test."""
    from fractions import Fraction

    from hsd_fast.engine import SpeculativeDecoder
    from hsd_fast.engine.tables import TableModel

    counts = sample_counts(dec, prompt, n_tokens, n_samples, 0)
    law = target.sequence_law(n_tokens, tuple(prompt))
    assert g_test(counts, law, n_samples) > LAW_ALPHA, counts
    draft_law = draft.sequence_law(n_tokens, tuple(prompt))
    tv = sum(abs(law.get(s, 0) - draft_law.get(s, 0)) for s in set(law) | set(draft_law)) / 2
    assert tv >= Fraction(15, 100), float(tv)
    plain = SpeculativeDecoder([TableModel([draft], "d")], eos_token_id=None)
    assert g_test(sample_counts(plain, prompt, n_tokens, n_samples, 0), law, n_samples) < LAW_ALPHA
