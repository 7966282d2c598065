"""Exact toy models as engine levels: :class:`TableModel`, served by :class:`TableBackend`.

A :class:`TableModel` is a stack of ``hsd_ref.TableLM`` conditionals, one per "layer" depth:
``layers[d - 1]`` is the model read out after ``d`` layers and the last one is the full model.  The
engine drives it like any other model (``SpeculativeDecoder([TableModel([draft]), ...,
TableModel([exit, target])])``; ``EarlyExit(model, d)`` is its depth-``d`` view), through the same
:class:`~hsd_fast.engine.levels.ModelLevel`, warps, restricted vocabulary, verification kernels,
random streams, EOS and length cuts as a Hugging Face model.  So whatever ``SpeculativeDecoder``
decodes over these models has a law that ``hsd_ref`` computes exactly: this is the level kind of the
engine's exact and statistical checks (docs/fidelity.md).

The backend returns float64 logits ``log p`` (``-inf`` where ``p = 0``); the warp's softmax turns
them back into ``p`` up to one rounding per entry.  Conditionals are computed lazily, once per
distinct context, from the exact ``TableLM`` (a context is numbered by its length and its base-``V``
digits; contexts seen before are found with one ``searchsorted``; the rows are memoised on the
:class:`TableModel`, so every decoder built over it shares them).  No cache of keys or values is
needed: the logits of a context are a pure function of it, so rollback is free.
"""

from __future__ import annotations

from typing import Sequence

import torch

from hsd_ref.models import TableLM

__all__ = ["TableModel", "TableBackend"]

_CODE_LIMIT = 1 << 62  # context codes stay below this (int64 arithmetic never wraps)


class TableModel:
    """Exact toy "model": ``layers[d - 1]`` is the conditional law read out after ``d`` layers."""

    def __init__(self, layers: Sequence[TableLM], name: str = "table"):
        if isinstance(layers, TableLM):
            layers = [layers]
        layers = tuple(layers)
        if not layers or not all(isinstance(m, TableLM) for m in layers):
            raise ValueError(f"layers: expected a non-empty sequence of hsd_ref.TableLM, got {layers!r}")
        V = layers[-1].vocab_size
        for d, m in enumerate(layers):
            if m.vocab_size != V:
                raise ValueError(f"layers[{d}]: vocab_size {m.vocab_size} differs from the full model's {V}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty str, got {name!r}")
        self.layers = layers
        self.name = name
        self.vocab_size = V
        # per depth: (sorted context codes seen, their float64 rows); shared by every backend of it
        self.memo = {d: (torch.zeros(0, dtype=torch.int64), torch.zeros(0, V, dtype=torch.float64)) for d in range(1, len(layers) + 1)}

    def __repr__(self) -> str:
        return f"TableModel({self.name}, {len(self.layers)} layers, V={self.vocab_size})"


class TableBackend:
    """The :class:`~hsd_fast.engine.backend.Backend` of a :class:`TableModel` (module docstring)."""

    def __init__(self, model: TableModel, device: str | torch.device | None = None):
        self.model = model
        self.name = model.name
        self.vocab_size = model.vocab_size
        self.n_layers = len(model.layers)
        self.device = torch.device("cpu" if device is None else device)
        # the longest context whose code fits: offset[L + 1] < 2**62 (at most 62 steps for V >= 2;
        # with V = 1 the code of a context is its length)
        L = 0
        while self.vocab_size > 1 and self._offset(L + 2) < _CODE_LIMIT:
            L += 1
        self.max_positions = _CODE_LIMIT - 2 if self.vocab_size == 1 else L
        self.exits: set[int] = {self.n_layers}

    def _offset(self, L: int) -> int:
        """Number of contexts shorter than ``L``: ``V**0 + ... + V**(L-1)``."""
        V = self.vocab_size
        return L if V == 1 else (V**L - 1) // (V - 1)

    def add_exit(self, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.n_layers:
            raise ValueError(f"depth: expected an int in [1, {self.n_layers}], got {depth!r}")
        self.exits.add(depth)

    def reset(self) -> None:
        """Nothing to forget: logits are a pure function of the context (the rows stay memoised)."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """No per-row state."""

    def _codes(self, seq: torch.Tensor, lens: torch.Tensor, n_out: int) -> torch.Tensor:
        """Code of every scored context: row ``b``'s prefixes of lengths ``lens[b] - n_out + 1 ..
        lens[b]``.  # [B, S], [B] -> [B, n_out] int64"""
        V, B = self.vocab_size, seq.shape[0]
        width = int(lens.max())
        if width > self.max_positions:
            raise ValueError(f"seq: a context of {width} tokens exceeds {self.name}'s max_positions={self.max_positions}")
        # position-major (contiguous columns): base[L] = base-V number of each row's first L tokens
        x = seq[:, :width].clamp(0, V - 1).t().contiguous()  # [width, B]; entries past lens: never read
        base = torch.zeros(width + 1, B, dtype=torch.int64)
        for j in range(width):
            torch.add(x[j], base[j], alpha=V, out=base[j + 1])
        offsets = torch.tensor([self._offset(L) for L in range(width + 1)], dtype=torch.int64)
        L = (lens[None, :] - n_out + 1 + torch.arange(n_out)[:, None])  # [n_out, B]
        return (offsets[L] + base.gather(0, L)).t()

    def _decode(self, code: int) -> tuple[int, ...]:
        L = 0
        while self._offset(L + 1) <= code:
            L += 1
        rest, out = code - self._offset(L), []
        for _ in range(L):
            rest, v = divmod(rest, self.vocab_size)
            out.append(v)
        return tuple(reversed(out))

    def _rows(self, depth: int, codes: torch.Tensor) -> torch.Tensor:
        """The float64 conditional of every code, computing the unseen ones.  # [N] -> [N, V]"""
        known, rows = self.model.memo[depth]
        pos = torch.searchsorted(known, codes).clamp(max=max(len(known) - 1, 0))
        hit = known[pos] == codes if len(known) else torch.zeros_like(codes, dtype=torch.bool)
        if not bool(hit.all()):
            lm = self.model.layers[depth - 1]
            new = torch.unique(codes[~hit])
            new_rows = torch.tensor([[float(p) for p in lm.probs(self._decode(c))] for c in new.tolist()], dtype=torch.float64)
            known, order = torch.sort(torch.cat([known, new]))
            rows = torch.cat([rows, new_rows])[order]
            self.model.memo[depth] = (known, rows)
            pos = torch.searchsorted(known, codes)
        return rows[pos]

    @torch.no_grad()
    def logits(self, depth: int, seq: torch.Tensor, lens: torch.Tensor, n_out: int, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``log p`` of the depth-``depth`` layer at the last ``n_out`` positions of each row.

        seq [B, S] int64, lens [B] int64 >= n_out.  -> [B, n_out, V] float64 (columns ``vocab_ids``
        only, in that order, when given)."""
        if depth not in self.exits:
            raise ValueError(f"depth: {depth} is not a registered exit of {self.name} (exits {sorted(self.exits)})")
        codes = self._codes(seq.cpu(), lens.cpu(), n_out)  # [B, n_out]
        p = self._rows(depth, codes.reshape(-1)).view(*codes.shape, self.vocab_size)  # [B, n_out, V]
        if vocab_ids is not None:
            p = p[..., vocab_ids.cpu()]
        return torch.log(p).to(seq.device)
