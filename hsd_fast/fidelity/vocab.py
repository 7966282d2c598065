"""The fidelity cell at a real vocabulary size: V = 151936 (Qwen2.5's), the engine's float32 rows.

The engine's probability rows are float32 by default (``SpeculativeDecoder(probs_dtype="float32")``);
its samplers and kernels accumulate cumulative sums and residual masses in float64.  The toy cells of
:mod:`hsd_fast.fidelity.cells` have V = 3, where float32 cannot go wrong in the ways a real vocabulary
invites: a running sum over 150k tiny tail entries that drifts, a tail that underflows, a residual
``max(p - q, 0)`` made of rounding noise, a block-verification excess sum that loses its tail.  This
cell decodes with every sampling scheme of the engine over two models of that size and G-tests what
it emits against the exact law, with the report's standard (false failure 1e-6, power 0.99 against
a planted transfer of TV 0.005).

**The models** (:class:`ClassLM`, a custom level: its rows are ``warp.probs`` of its float64 logits
``log p``, the warp a Hugging Face model's level calls; as they depend on the context only through
its class, it warps its two rows once per warp and gathers them per call).  Each
row is peaked with a long tail: four *head* ids, scattered over the id range so the inverse CDF
crosses long stretches of tail before each, carry 5% to 30% each; the other 151932 ids form six
*segments* of consecutive ids, each spreading its mass evenly (2e-7 to 7e-6 per id).  A row depends
on the class of the last token (head or tail), so drafts inside a block see different rows.  The
draft puts more on the head and less on the tail than the target, so recovered tokens come mostly
from tail residuals.

**The law tested** is that of the first ``n_tokens`` emitted tokens (``N_TOKENS = 3`` in the report),
each read as its *bin* (which head id, or which tail segment): ``10 ** n_tokens`` outcomes, exactly computable in ``Fraction``
from the rows (a segment's mass is exact; the law of a lossless engine is the target's).  Binning can
hide a bias inside a segment but not one that moves mass between segments or between head and tail,
which is where float32 accumulation errors go (a float32 running sum over these rows biases the
sampled law by TV 0.0011 to 0.0017, computed exactly by :func:`float32_cumsum_tv`: below the cell's
resolution, so the float64 accumulation is a rule of the code; a sum that loses the tail moves up to
its whole mass).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from ..engine import SpeculativeDecoder

__all__ = ["VOCAB_SIZE", "HEAD_IDS", "N_SEGMENTS", "N_TOKENS", "Row", "ClassLM", "VocabCell", "encode", "float32_cumsum_tv"]

VOCAB_SIZE = 151936
HEAD_IDS = (17, 40_000, 75_011, 151_935)
N_SEGMENTS = 6
N_TOKENS = 3
N_BINS = len(HEAD_IDS) + N_SEGMENTS
_EDGES = np.linspace(0, VOCAB_SIZE, N_SEGMENTS + 1).astype(np.int64)  # segment s: tail ids in [edges[s], edges[s + 1])


@functools.lru_cache(maxsize=1)
def _bin_of_id() -> np.ndarray:
    """The bin of every id: ``i < 4`` for head id ``HEAD_IDS[i]``, ``4 + s`` for tail segment ``s``.  # [V]"""
    bins = len(HEAD_IDS) + np.searchsorted(_EDGES, np.arange(VOCAB_SIZE), side="right") - 1
    bins[list(HEAD_IDS)] = np.arange(len(HEAD_IDS))
    return bins


@dataclass(frozen=True)
class Row:
    """One exact conditional: ``head[i]`` on ``HEAD_IDS[i]``, ``segments[s]`` spread evenly over the
    tail ids of segment ``s``."""

    head: tuple[Fraction, ...]
    segments: tuple[Fraction, ...]

    def __post_init__(self):
        if len(self.head) != len(HEAD_IDS) or len(self.segments) != N_SEGMENTS or sum(self.head) + sum(self.segments) != 1:
            raise ValueError(f"Row: expected {len(HEAD_IDS)} head and {N_SEGMENTS} segment masses summing to 1, got {self}")

    def bins(self) -> tuple[Fraction, ...]:
        """The exact mass of each bin."""
        return self.head + self.segments

    def probs(self) -> np.ndarray:
        """Every id's probability as the nearest float64.  # [V]"""
        b = _bin_of_id()
        size = np.bincount(b, minlength=N_BINS)
        per_id = np.array([float(m / int(n)) for m, n in zip(self.bins(), size)])
        return per_id[b]


def _geometric(total: Fraction, ratio: Fraction) -> tuple[Fraction, ...]:
    """``total`` split over the segments in proportion ``1, ratio, ratio**2, ...``."""
    w = [ratio**s for s in range(N_SEGMENTS)]
    return tuple(total * x / sum(w) for x in w)


def _row(head: Sequence[str], ratio: str) -> Row:
    h = tuple(Fraction(x) for x in head)
    return Row(h, _geometric(1 - sum(h), Fraction(ratio)))


# (after a head token, after a tail token)
TARGET = (_row(["1/5", "1/10", "2/25", "1/20"], "4/5"), _row(["3/20", "1/10", "1/10", "1/20"], "17/20"))
DRAFT = (_row(["3/10", "3/20", "1/10", "1/10"], "1/2"), _row(["1/4", "3/20", "3/20", "1/10"], "3/5"))


class ClassLM:
    """A custom level over ``VOCAB_SIZE`` ids whose next-token law depends on whether the last token
    is a head id: ``rows[0]`` after a head id, ``rows[1]`` after a tail id."""

    vocab_size = VOCAB_SIZE

    def __init__(self, rows: tuple[Row, Row], name: str):
        self.rows, self.name = rows, name
        self.logits = torch.log(torch.tensor(np.stack([r.probs() for r in rows])))  # [2, V] float64
        self.head = torch.tensor(HEAD_IDS)
        self._warped: tuple = (None, None)  # (the warp, its rows [2, V])

    def probs(self, seq: torch.Tensor, lens: torch.Tensor, n_out: int, warp) -> torch.Tensor:
        """seq [B, S], lens [B] -> [B, n_out, V]: the prefix ending at position ``lens - n_out + j``."""
        if self._warped[0] is not warp:
            self._warped = (warp, warp.probs(self.logits))
        last = seq.gather(1, lens[:, None] - n_out + torch.arange(n_out, device=lens.device))  # [B, n_out]
        tail = (~torch.isin(last, self.head.to(last.device))).to(torch.int64)
        return self._warped[1].to(last.device)[tail]


@dataclass
class VocabCell:
    """One scheme's cell: ``decoder()`` over ``[draft, target]`` with draft length ``threshold``; the
    law of the first ``n_tokens`` tokens' bins."""

    scheme: str
    n_tokens: int = N_TOKENS
    threshold: int = 3
    probs_dtype: str = "float32"
    prompt: tuple[int, ...] = (HEAD_IDS[0],)

    def decoder(self, **override) -> SpeculativeDecoder:
        kw = dict(scheme=self.scheme, thresholds=self.threshold, eos_token_id=None, probs_dtype=self.probs_dtype)
        return SpeculativeDecoder([_model("draft"), _model("target")], **{**kw, **override})

    def exact_law(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, probs)`` of the first ``n_tokens`` bins: code ``sum_i bin_i * 10 ** (n - 1 - i)``."""
        law = {(): Fraction(1)}
        for _ in range(self.n_tokens):
            law = {seq + (b,): p * m for seq, p in law.items() for b, m in enumerate(TARGET[_tail(seq, self.prompt)].bins())}
        items = sorted((_code(seq), float(p)) for seq, p in law.items())
        return np.array([c for c, _ in items], dtype=np.int64), np.array([p for _, p in items])

    def sample(self, n_samples: int, seed: int, chunk: int = 512, progress=None) -> np.ndarray:
        """Codes of ``n_samples`` engine rows (row ``b`` seeded ``seed + b``), decoded ``chunk`` rows
        per ``generate`` call (a row's tokens depend only on its seed)."""
        dec, out = self.decoder(), []
        for start in range(0, n_samples, chunk):
            n = min(chunk, n_samples - start)
            res = dec.generate([list(self.prompt)] * n, max_new_tokens=self.n_tokens, seeds=list(range(seed + start, seed + start + n)))
            out.append(encode(res.tokens))
            if progress is not None:
                progress(start + n)
        return np.concatenate(out)


def _tail(seq: tuple[int, ...], prompt: tuple[int, ...]) -> int:
    """Which row follows: 0 after a head token (bin < 4), 1 after a tail token."""
    if seq:
        return int(seq[-1] >= len(HEAD_IDS))
    return int(prompt[-1] not in HEAD_IDS)


def _code(bins: Sequence[int]) -> int:
    return int(sum(b * N_BINS ** (len(bins) - 1 - i) for i, b in enumerate(bins)))


def encode(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Codes of engine outputs (``n`` ids per row, every row alike) in :meth:`VocabCell.exact_law`'s code."""
    ids = np.array([list(r) for r in rows], dtype=np.int64)  # [rows, n]
    return _bin_of_id()[ids] @ (N_BINS ** np.arange(ids.shape[1] - 1, -1, -1, dtype=np.int64))


@functools.lru_cache(maxsize=2)
def _model(which: str) -> ClassLM:
    return ClassLM(TARGET if which == "target" else DRAFT, which)


def float32_cumsum_tv(row: Row) -> float:
    """Total variation between ``row`` and the law an inverse-CDF sampler with a float32 running sum
    draws from it (``u * total`` against ``cumsum`` in float32): what accumulating in float64 avoids."""
    p = torch.tensor(row.probs(), dtype=torch.float32)
    cdf = torch.cumsum(p, 0).to(torch.float64)
    drawn = torch.diff(cdf, prepend=cdf.new_zeros(1)) / cdf[-1]
    return 0.5 * float((drawn - torch.tensor(row.probs())).abs().sum())
