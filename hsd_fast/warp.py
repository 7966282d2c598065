"""Sampling warps: context processor, logits processor hook, allowed-id mask, temperature, top-k, top-p.

Speculative decoding reproduces whatever law the target's *warped* distribution defines, provided
the draft probabilities ``q`` fed to verification are exactly the distributions the drafts were
sampled from (peers.md §4, bug classes 1 and 2: HF #32867, #47932, vLLM #9834).  The engine
therefore builds ``p`` and ``q`` with ONE :class:`Warp` object applied identically at every level:
the reference law is the warped target, and every level samples from (and reports) its warped law.

Order of operations (the order of Hugging Face's logits warpers): ``context_processor`` (a hook
``(input_ids, scores) -> scores`` with the signature of transformers' ``LogitsProcessor``, called with
each position's own context: see :meth:`Warp.logits`), ``logits_processor`` (a user hook
``logits -> logits``), the allowed-id mask (every other id gets probability 0), temperature,
top-k (ties with the k-th value are kept), top-p (nucleus: the smallest set of most likely tokens,
ties in id order, whose mass reaches ``top_p``), softmax.  Rows come out in the warp's ``dtype``,
float64 or float32; the engine builds its warp with its ``probs_dtype``, float32 by default, which its
kernels and samplers make exact enough (their cumulative sums and residual masses accumulate in
float64; docs/engine.md, "Probability rows").

``temperature == 0`` is greedy decoding: the "distribution" is the point mass on the argmax (ties
to the lowest id), and the engine verifies with the ``greedy`` scheme.  A positive temperature, however
small, is sampled exactly: logits are shifted by their maximum before the division, so nothing
overflows (a temperature below the smallest normal float32 is divided in float64, where it is
representable); at ``1e-308`` the law is uniform on the ids tied at the maximum, which is the
``T -> 0`` limit (greedy's lowest-id tie-break is a choice made only at ``T = 0``).
NaN or infinite logits make NaN rows, which the engine refuses (``SpeculativeDecoder``: a
``ValueError`` naming the level, nothing emitted).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

__all__ = ["Warp"]


class Warp:
    """One sampling configuration, applied identically to every level.

    ``probs(logits)`` maps ``[..., V]`` logits to ``[..., V]`` probabilities of ``dtype`` (float32 or
    float64).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        allowed_ids: Sequence[int] | None = None,
        logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dtype: torch.dtype = torch.float64,
        context_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
        if allowed_ids is not None:
            ids = list(allowed_ids)
            if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
                raise ValueError(f"allowed_ids: expected a non-empty sequence of ids >= 0, got {allowed_ids!r}")
            allowed_ids = tuple(sorted(set(ids)))
        if logits_processor is not None and not callable(logits_processor):
            raise ValueError(f"logits_processor: expected a callable logits -> logits, got {logits_processor!r}")
        if context_processor is not None and not callable(context_processor):
            raise ValueError(f"context_processor: expected a callable (input_ids, scores) -> scores, got {context_processor!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = None if top_p is None or top_p == 1 else float(top_p)
        self.allowed_ids = allowed_ids
        self.logits_processor = logits_processor
        self.context_processor = context_processor
        self.dtype = dtype
        self._mask_cache: dict = {}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __repr__(self) -> str:
        parts = [f"temperature={self.temperature}"]
        if self.top_k is not None:
            parts.append(f"top_k={self.top_k}")
        if self.top_p is not None:
            parts.append(f"top_p={self.top_p}")
        if self.allowed_ids is not None:
            parts.append(f"allowed_ids={len(self.allowed_ids)} ids")
        if self.context_processor is not None:
            parts.append("context_processor")
        if self.logits_processor is not None:
            parts.append("logits_processor")
        if self.dtype != torch.float64:
            parts.append(f"dtype={self.dtype}")
        return "Warp(" + ", ".join(parts) + ")"

    def check_vocab(self, vocab_size: int) -> None:
        if self.allowed_ids is not None and self.allowed_ids[-1] >= vocab_size:
            raise ValueError(f"allowed_ids: id {self.allowed_ids[-1]} is out of range for vocab size {vocab_size}")

    def _allowed_mask(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        key = (vocab_size, str(device))
        mask = self._mask_cache.get(key)
        if mask is None:
            self.check_vocab(vocab_size)
            mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            mask[list(self.allowed_ids)] = True
            self._mask_cache[key] = mask
        return mask

    def logits(self, logits: torch.Tensor, seq: torch.Tensor | None = None, lens: torch.Tensor | None = None) -> torch.Tensor:
        """Processed logits of the warp's dtype (``-inf`` for excluded ids) before temperature.  # [..., V]

        With a ``context_processor``, ``logits`` is [B, n, V] and the contexts are needed: ``seq`` [B, S]
        int64 with row ``b``'s context ``seq[b, :lens[b]]`` (``lens`` [B]), and ``logits[b, j]`` is the
        next-token row after the prefix of length ``lens[b] - n + 1 + j`` (the layout of
        :meth:`hsd_fast.engine.levels.Level.probs`).  The processor is called once per distinct prefix
        length with ``input_ids`` [g, L] (the rows' own prefixes, no padding) and ``scores`` [g, V],
        so a processor that reads ``input_ids`` (repetition penalty, no-repeat-n-gram, bad words) sees
        exactly the tokens before the position it warps.  The lengths are read on the host (one
        device synchronisation per call)."""
        x = logits.to(self.dtype)
        if self.context_processor is not None:
            x = self._apply_context(x, seq, lens)
        if self.logits_processor is not None:
            x = self.logits_processor(x).to(self.dtype)
        if self.allowed_ids is not None:
            x = x.masked_fill(~self._allowed_mask(x.shape[-1], x.device), float("-inf"))
        return x

    def _apply_context(self, x: torch.Tensor, seq: torch.Tensor | None, lens: torch.Tensor | None) -> torch.Tensor:
        """``x`` [B, n, V] with the context processor applied at every position (:meth:`logits`)."""
        if seq is None or lens is None or x.dim() != 3:
            raise ValueError(
                "context_processor: this warp needs each row's context; call warp.probs(logits [B, n, V], seq, lens) "
                "(a custom level must pass the seq and lens it was given)"
            )
        B, n, V = x.shape
        out = x.clone()
        starts = [L - n + 1 for L in lens.tolist()]  # prefix length of column 0, per row
        groups: dict[int, list[tuple[int, int]]] = {}
        for b, s0 in enumerate(starts):
            for j in range(n):
                groups.setdefault(s0 + j, []).append((b, j))
        for L, cells in groups.items():
            rows = torch.tensor([b for b, _ in cells], device=x.device)
            cols = torch.tensor([j for _, j in cells], device=x.device)
            scores = self.context_processor(seq[rows, :L], x[rows, cols])  # [g, L], [g, V] -> [g, V]
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(cells), V):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(f"context_processor: returned {got}, expected scores of shape {(len(cells), V)}")
            out[rows, cols] = scores.to(self.dtype)
        return out

    def probs(self, logits: torch.Tensor, seq: torch.Tensor | None = None, lens: torch.Tensor | None = None) -> torch.Tensor:
        """Warped probabilities of the warp's dtype (``seq``, ``lens``: :meth:`logits`).  # [..., V] -> [..., V]"""
        x = self.logits(logits, seq, lens)
        if self.greedy:
            return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)  # one_hot would read its max on the host
        if self.temperature != 1:
            # subtract the row maximum BEFORE dividing: (x - max) / T <= 0 never overflows, so any
            # T > 0, however small (1e-308, subnormals), gives the exactly rounded softmax; as T -> 0
            # that is the uniform law on the tied maxima (greedy, T = 0, takes the lowest id instead).
            # A T below float32's normal range would round to a subnormal or to 0 (0 / 0 = NaN at the
            # maximum), so it divides in float64; quotients below float32's range become -inf: prob 0.
            shifted = x - x.amax(-1, keepdim=True)
            if self.temperature < torch.finfo(x.dtype).tiny:
                shifted = shifted.to(torch.float64)
            x = (shifted / self.temperature).to(self.dtype)
        if self.top_k is not None and self.top_k < x.shape[-1]:
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if self.top_p is not None:
            # descending by probability, ties in id order (stable sort); keep a token while the mass
            # of the tokens strictly before it is < top_p (so the most likely token is always kept)
            sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
            before = torch.cumsum(sorted_p, dim=-1, dtype=torch.float64) - sorted_p  # float64: a float32 running sum drifts
            keep_sorted = before < self.top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            probs = probs * keep
            probs = probs / probs.sum(-1, keepdim=True)
        return probs
