"""Trained early-exit heads: a cheap map on the layer-``d`` hidden state, read out by the model's own
frozen final norm and LM head (LayerSkip / HiSpec style self-distillation; docs/early-exit.md).

An exit at layer ``d`` with head ``f`` computes ``lm_head(norm(f(h_d)))`` where ``h_d`` is the hidden
state after the first ``d`` decoder layers.  Two kinds:

``linear``  ``f(h) = h + h W`` with ``W`` a ``[hidden, hidden]`` matrix, zero at initialisation, so an
            untrained head IS the untrained exit.  A function of each position's hidden state alone:
            the engine applies it to the hidden states its cache already holds (no new cache state).
``block``   ``f = `` one extra decoder block, a copy of the model's LAST layer (initialised from its
            weights), run on ``h_d`` with causal attention over the sequence.  It does not start at
            the untrained exit.  It needs key/value cache positions of its own, like one more layer.

Heads keep their trainable weights in float32; a linear head computes in the wider of that and the
hidden state's dtype, a block head in float32.  Their output has the hidden state's dtype, so the frozen norm and LM head run exactly
as in the model (training and decoding do the same arithmetic).
"""

from __future__ import annotations

import copy

import torch

__all__ = ["HEAD_KINDS", "ExitHead", "LinearHead", "BlockHead", "make_head", "apply_head"]

HEAD_KINDS = ("linear", "block")


class ExitHead(torch.nn.Module):
    """Base of the heads: ``kind`` (one of :data:`HEAD_KINDS`), ``layer`` (the exit depth ``d``),
    ``hidden`` (the model's hidden size).  ``forward(h)`` maps ``[..., hidden]`` hidden states to
    hidden states of the same shape and dtype."""

    kind: str = ""

    def __init__(self, layer: int, hidden: int):
        super().__init__()
        self.layer = layer
        self.hidden = hidden

    def extra_repr(self) -> str:
        return f"kind={self.kind}, layer={self.layer}, hidden={self.hidden}"


class LinearHead(ExitHead):
    """``h + h W`` (``W`` float32 ``[hidden, hidden]``, zero-initialised: the untrained exit)."""

    kind = "linear"

    def __init__(self, layer: int, hidden: int):
        super().__init__(layer, hidden)
        self.weight = torch.nn.Parameter(torch.zeros(hidden, hidden, dtype=torch.float32))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., hidden] in ``h``'s dtype, computed in the wider of it and float32."""
        dt = torch.promote_types(h.dtype, self.weight.dtype)
        x = h.to(dt)
        return (x + x @ self.weight.to(dt)).to(h.dtype)


class BlockHead(ExitHead):
    """One decoder block initialised from the model's last layer (module docstring).

    ``forward(h, position_embeddings, attention_mask)`` runs the block over whole sequences (training and
    evaluation; ``h`` [B, S, hidden]).  The engine does not run block heads yet (they need their own cache
    positions), so :func:`hsd_fast.engine.specs.resolve_levels` refuses them."""

    kind = "block"

    def __init__(self, layer: int, hidden: int, block: torch.nn.Module):
        super().__init__(layer, hidden)
        self.block = block

    @classmethod
    def from_model(cls, model, layer: int) -> "BlockHead":
        """A float32 copy of ``model``'s last decoder layer, as the head of the exit at ``layer``."""
        last = model.model.layers[-1]
        block = copy.deepcopy(last).to(torch.float32)
        for p in block.parameters():
            p.requires_grad_(True)
        return cls(layer, int(model.config.hidden_size), block)

    def forward(self, h: torch.Tensor, position_embeddings=None, attention_mask=None) -> torch.Tensor:
        """[B, S, hidden] -> [B, S, hidden] in ``h``'s dtype, computed in the block's dtype (float32);
        ``position_embeddings``: the model's rotary ``(cos, sin)`` at the positions; causal without a mask."""
        dt = self.block.input_layernorm.weight.dtype
        cos, sin = position_embeddings
        out = self.block(h.to(dt), attention_mask=attention_mask, position_embeddings=(cos.to(dt), sin.to(dt)))
        if isinstance(out, tuple):
            out = out[0]
        return out.to(h.dtype)


def make_head(kind: str, model, layer: int) -> ExitHead:
    """A fresh head of ``kind`` for the exit at ``layer`` of ``model`` (an HF Llama-style causal LM)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head: expected one of {HEAD_KINDS}, got {kind!r}")
    n_layers = int(model.config.num_hidden_layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < n_layers:
        raise ValueError(f"layer: expected an int in [1, {n_layers - 1}] (an exit below the full depth {n_layers}), got {layer!r}")
    if kind == "linear":
        return LinearHead(layer, int(model.config.hidden_size))
    return BlockHead.from_model(model, layer)


def apply_head(model, head: ExitHead | None, h: torch.Tensor) -> torch.Tensor:
    """The exit's hidden state before the final norm for whole sequences ``h`` [B, S, hidden] at
    positions ``0 .. S-1``: ``h`` itself without a head (the untrained exit), else the head's output
    (a block head attends causally, with ``model``'s rotary embedding)."""
    if head is None:
        return h
    if isinstance(head, BlockHead):
        pos = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
        return head(h, model.model.rotary_emb(h, pos))
    return head(h)
