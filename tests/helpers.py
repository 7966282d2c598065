"""Oracles shared by the engine tests (tests/fast and tests/gpu)."""

from __future__ import annotations

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
