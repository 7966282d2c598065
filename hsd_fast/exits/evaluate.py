"""How well an exit stands in for its full model: full-vocabulary agreement measures, teacher-forced.

For each position of each token row, ``p`` is the full model's next-token law and ``q`` the exit's
(both at temperature ``T``, no other warp).  Reported means over all positions:

* ``e_min``: ``E[sum_v min(p_v, q_v)]``, the chance that token-wise speculative sampling accepts a
  token drafted by the exit (Leviathan et al.'s alpha), the target of issue 16;
* ``top1``: the share of positions where the two arg-maxes agree (greedy acceptance);
* ``kl``: ``E[KL(p || q)]`` in nats (the training loss without its top-k coarsening).

Every number comes from plain HF forwards (a forward hook reads the layer-``d`` hidden state), not
from the engine, so they are an independent check of what the engine decodes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .heads import ExitHead, apply_head

__all__ = ["layer_hidden", "exit_logits", "exit_agreement"]

_CHUNK = 128  # positions per float32 comparison


def layer_hidden(model, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h_d [B, S, hidden], full logits [B, S, V])`` of one forward over ``ids`` [B, S]
    (``h_d``: the output of decoder layer ``layer - 1``, read by a forward hook)."""
    store = {}

    def hook(_module, _inputs, output):
        store["h"] = output[0] if isinstance(output, tuple) else output

    handle = model.model.layers[layer - 1].register_forward_hook(hook)
    try:
        logits = model(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()
    return store["h"], logits


def exit_logits(model, head: ExitHead | None, h: torch.Tensor) -> torch.Tensor:
    """``lm_head(norm(head(h)))`` for whole sequences ``h`` [B, S, hidden] (``head=None``: the untrained exit)."""
    return model.lm_head(model.model.norm(apply_head(model, head, h)))


@torch.no_grad()
def exit_agreement(model, layer: int, rows: Iterable[Sequence[int]], heads: dict[str, ExitHead | None],
                   *, temperature: float = 1.0, max_positions: int = 512) -> dict[str, dict]:
    """Per named head (``None``: the untrained exit), ``{"e_min", "top1", "kl", "positions"}`` over
    the token ``rows`` (each row truncated to its first ``max_positions`` tokens; the laws after every
    prefix of a row, from its first token on, are compared in float32 with float64 sums).  One forward of the full model per row serves all heads."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    dev = next(model.parameters()).device
    sums = {name: torch.zeros(3, dtype=torch.float64) for name in heads}
    n = 0
    for row in rows:
        ids = torch.tensor([list(row)[:max_positions]], dtype=torch.int64, device=dev)
        if ids.shape[1] == 0:
            continue
        h, full = layer_hidden(model, layer, ids)
        exits = {name: exit_logits(model, head, h)[0] for name, head in heads.items()}
        for lo in range(0, ids.shape[1], _CHUNK):  # float32 rows of a 152k vocabulary: 0.6 MB each
            logp = (full[0, lo : lo + _CHUNK].float() / temperature).log_softmax(-1)
            p = logp.exp()
            for name, logits in exits.items():
                logq = (logits[lo : lo + _CHUNK].float() / temperature).log_softmax(-1)
                e_min = torch.minimum(p, logq.exp()).sum(-1, dtype=torch.float64)
                top1 = (logp.argmax(-1) == logq.argmax(-1)).double()
                kl = torch.where(p > 0, p * (logp - logq), 0.0).sum(-1, dtype=torch.float64)
                sums[name] += torch.stack([e_min.sum(), top1.sum(), kl.sum()]).cpu()
        n += ids.shape[1]
    if n == 0:
        raise ValueError("rows: no tokens to score")
    return {name: {"e_min": float(s[0] / n), "top1": float(s[1] / n), "kl": float(s[2] / n), "positions": n}
            for name, s in sums.items()}
