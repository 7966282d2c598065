"""Oracles shared by the engine tests (tests/fast and tests/gpu)."""

from __future__ import annotations

import torch


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
