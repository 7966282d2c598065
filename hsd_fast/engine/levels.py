"""The levels of a speculative hierarchy: what the engine asks of each kind.

A level is either a *model view* (:class:`ModelLevel`: a full causal LM, an early-exit view of one,
or a :class:`~hsd_fast.engine.tables.TableModel`), a *model-free drafter* (:class:`DrafterLevel`,
only as level 0), or a custom object meeting :class:`Level`.  Every level has ``vocab_size``,
``name`` (or :func:`level_name` supplies one) and ``kind`` (``"model"``, ``"drafter"``; a custom level
has none and is treated as a model whose rows the engine cannot restrict); levels with a distribution answer
:meth:`Level.probs`, a drafter answers :meth:`DrafterLevel.propose`.  Level specifications (what a
user passes) are turned into levels by :func:`hsd_fast.engine.specs.resolve_levels`.

A custom level always sees the full vocabulary (``allowed_ids`` is applied by ``warp``, which it
should call on its logits); the engine checks the shape and dtype of every answer and that every
row of an active batch row is finite, non-negative and sums to 1 (docs/engine.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..drafters import Drafter, fill_placeholders
from ..warp import Warp

__all__ = ["EarlyExit", "Level", "ModelLevel", "DrafterLevel", "level_name"]


def level_name(level) -> str:
    """A level's name for messages and metrics (a custom level need not have one)."""
    return getattr(level, "name", None) or type(level).__name__


@runtime_checkable
class Level(Protocol):
    """What the engine asks of a level that has a distribution (every level but a drafter).

    ``probs(seq, lens, n_out, warp)``: ``seq`` [B, S] int64 (row ``b``'s context is
    ``seq[b, :lens[b]]``, entries past it are garbage), ``lens`` [B] int64 ``>= n_out``; returns
    [B, n_out, V] float32 or float64 (cast to the decoder's ``probs_dtype``), the warped next-token laws after the prefixes of lengths
    ``lens[b] - n_out + 1 .. lens[b]``.  A row's answer must depend on its own context only."""

    vocab_size: int

    def probs(self, seq: torch.Tensor, lens: torch.Tensor, n_out: int, warp: Warp) -> torch.Tensor: ...


@dataclass(frozen=True)
class EarlyExit:
    """The first ``layers`` decoder layers of ``model`` + its final norm + its LM head.

    ``head``: ``None`` (the untrained exit: the layer-``layers`` hidden state read out directly),
    ``"trained"`` (the newest cached head trained for this model and layer by ``hsd-fast train-exit``,
    verified against its manifest; ``ValueError`` naming the command when there is none), the path of
    a head folder (:func:`hsd_fast.exits.load_head`), or an :class:`hsd_fast.exits.ExitHead` object.
    A head maps the hidden state before the final norm (docs/early-exit.md)."""

    model: Any
    layers: int
    head: Any = None


class ModelLevel:
    """A view (``depth`` layers, then ``head`` when given) of a backend; ``probs`` returns warped
    distributions (the warp's dtype)."""

    kind = "model"

    def __init__(self, backend, depth: int, name: str, head=None):
        backend.add_exit(depth)
        self.backend = backend
        self.depth = depth
        self.head = head  # a trained exit head applied before the final norm (None: none)
        self.name = name
        self.vocab_size = backend.vocab_size  # the engine's vocabulary: ids >= it get probability 0 (``shrink``)
        self.device = backend.device
        self.vocab_ids: torch.Tensor | None = None  # a restricted vocabulary's model ids (set by the decoder)
        self.max_positions = getattr(backend, "max_positions", None)

    def __repr__(self) -> str:
        return f"<level {self.name}>"

    def shrink(self, vocab_size: int) -> None:
        """Work on the first ``vocab_size`` ids only: the model's ids ``>= vocab_size`` (padding rows of
        its embedding, which no tokenizer produces) get probability 0, i.e. the law is the model's
        conditioned on ids ``< vocab_size``.  Applied to every level, it is the shared vocabulary of
        models whose vocabularies differ only by padding (``SpeculativeDecoder(vocab_size=...)``)."""
        if not 1 <= vocab_size <= self.backend.vocab_size:
            raise ValueError(f"vocab_size: {vocab_size} is not in [1, {self.backend.vocab_size}] for {self.name}")
        self.vocab_size = vocab_size

    def probs(self, seq: torch.Tensor, lens: torch.Tensor, n_out: int, warp: Warp) -> torch.Tensor:
        """[B, S], [B] -> [B, n_out, V] of the warp's dtype: the warped next-token laws at the last n_out positions
        (over ``self.vocab_ids`` only, in that order, when the decoder restricted the vocabulary; over
        the first ``vocab_size`` ids after :meth:`shrink`)."""
        extra = {} if self.head is None else {"head": self.head}  # only CachedLM takes a head
        logits = self.backend.logits(self.depth, seq, lens, n_out, vocab_ids=self.vocab_ids, **extra)
        if self.vocab_ids is None and logits.shape[-1] > self.vocab_size:
            logits = logits[..., : self.vocab_size]
        return warp.probs(logits, seq, lens)


class DrafterLevel:
    """A model-free drafter as level 0 (point-mass draft laws)."""

    kind = "drafter"

    def __init__(self, drafter: Drafter, vocab_size: int):
        self.drafter = drafter
        self.name = getattr(drafter, "name", type(drafter).__name__)
        self.vocab_size = vocab_size

    def __repr__(self) -> str:
        return f"<level {self.name}>"

    def propose(self, seq: torch.Tensor, lens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` proposals per row, placeholders filled, and whether a row proposed an id outside the
        vocabulary (checked by the caller at its next host read).  -> [B, n] int64, [B] bool"""
        out = self.drafter.propose(seq, lens, n)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (seq.shape[0], n):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"drafter {self.name}: proposed shape {got}, expected {(seq.shape[0], n)}")
        out = fill_placeholders(out.to(torch.int64), seq.gather(1, (lens - 1)[:, None])[:, 0])
        return out, ((out >= self.vocab_size) | (out < 0)).any(-1)
