"""One map between model token ids and the engine's ids (restricted vocabulary).

With ``allowed_ids`` ``A`` (and no logits processor, which needs full rows) every probability row
is zero outside ``A``, so the engine works in a compressed vocabulary: engine id ``i < |A|`` is model
id ``A[i]`` (LM heads compute only ``A``'s rows), and ONE more engine id, the *sink* ``|A|``, stands
for every model id outside ``A``.  Every level's probability row gets a zero sink column; a
model-free drafter's proposal outside ``A`` becomes the sink, with a point-mass draft row on it.

Why this is exact for every verification scheme: lumping ids whose target probability is 0 at every
level into one column changes no quantity a scheme computes.  Each scheme reads a column ``v``
through ``p(v)``, ``q(v)``, ``min(p(v), q(v))``, ``max(p(v) - q(v), 0)`` and the negative parts
``max(c q(v) - c' p(v), 0)`` of its joint masses (``hsd_capped``); with ``p(v) = 0`` these are ``0``,
``q(v)``, ``0``, ``0`` and ``c q(v)``: additive in ``q``, so the sums over the lumped ids equal the
sink column's value.  (The earlier convention, a ``-1`` token with an ALL-ZERO draft row, dropped the
drafted token's mass ``q(x) = 1`` from those sums: ``hsd_capped``'s minus side at the cut became 0
and the prefix before it was always accepted; issue 12.)  The sink is never emitted (probability
0 at every level), and in a context it is written as the smallest model id outside ``A``: only rows
after the rejected sink position see it, and no scheme's law depends on them.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["VocabMap"]


class VocabMap:
    """Model ids <-> engine ids (module docstring); the identity when ``allowed_ids`` is None."""

    def __init__(self, vocab_size: int, allowed_ids: Sequence[int] | None, device: torch.device):
        self.vocab_size = vocab_size
        self.restricted = allowed_ids is not None and len(set(allowed_ids)) < vocab_size
        if not self.restricted:
            self.model_ids = None
            self.V = vocab_size  # engine vocabulary
            return
        ids = sorted(set(allowed_ids))
        A = len(ids)
        self.model_ids = torch.tensor(ids, dtype=torch.int64, device=device)  # [A]: what the LM heads compute
        self.sink = A
        self.V = A + 1
        outside = next(v for v in range(vocab_size) if v not in set(ids))
        self._to_model = torch.cat([self.model_ids, torch.tensor([outside], dtype=torch.int64, device=device)])  # [A + 1]
        self._to_engine = torch.full((vocab_size,), A, dtype=torch.int64, device=device)
        self._to_engine[self.model_ids] = torch.arange(A, device=device)

    @property
    def level_width(self) -> int:
        """Columns of a level's probability rows before :meth:`pad` (``|A|``, or the vocabulary)."""
        return self.V - 1 if self.restricted else self.V

    def to_engine(self, model_ids: torch.Tensor) -> torch.Tensor:
        return self._to_engine[model_ids] if self.restricted else model_ids

    def to_model(self, engine_ids: torch.Tensor) -> torch.Tensor:
        """Engine ids -> model ids (a ``-1`` pad maps to the sink's model id: it is never kept)."""
        return self._to_model[engine_ids.clamp(min=0)] if self.restricted else engine_ids

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """Append the zero sink column.  # [..., |A|] -> [..., |A| + 1]"""
        return torch.nn.functional.pad(rows, (0, 1)) if self.restricted else rows
