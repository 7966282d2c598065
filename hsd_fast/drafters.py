"""Model-free drafters: deterministic proposals (prompt lookup / n-gram copying).

A drafter proposes tokens as a deterministic function of the context.  Its draft distribution at
every position is therefore the point mass on the proposed token, and token-wise (or block)
verification against it is exact: the acceptance chance of a proposal ``x`` is ``p(x)`` and the
recovered token is drawn from ``norm(p - delta_x)^+``, i.e. from ``p`` conditioned on ``!= x``
(Leviathan et al. 2023, §2.3, with ``q`` a point mass).  A drafter may answer ``-1`` (no proposal)
at a position; :func:`fill_placeholders` then repeats the previous token (the context's last token at
the first position).  The proposal stays a deterministic function of the context, so the draft law
is still a point mass and every lossless scheme (token-wise, block, ...) stays exact; no verifier
ever sees a placeholder or an all-zero draft row.

Prompt lookup decoding (Saxena 2023; Hugging Face ``PromptLookupCandidateGenerator``): find the most
recent earlier occurrence of the context's last ``n`` tokens (``n`` from ``max_ngram`` down to
``min_ngram``) and propose the tokens that followed it.

A drafter is only usable as level 0 of a hierarchy (it has no distribution to verify with).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Drafter", "NGramDrafter", "fill_placeholders", "point_mass_rows"]

PLACEHOLDER = -1


@runtime_checkable
class Drafter(Protocol):
    """``propose(seq, lens, n) -> [B, n] int64``: ``seq`` is ``[B, S]`` (row ``b``'s context is
    ``seq[b, :lens[b]]``; entries past ``lens[b]`` are garbage); ``-1`` = no proposal.  The
    proposal of a row must depend on that row's context only."""

    name: str

    def propose(self, seq: torch.Tensor, lens: torch.Tensor, n: int) -> torch.Tensor: ...


class NGramDrafter:
    """Prompt lookup: copy the continuation of the most recent earlier match of the last n-gram.

    Vectorised over rows (``unfold`` + a masked arg-max over match positions); no per-row loop.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        for name, v in (("max_ngram", max_ngram), ("min_ngram", min_ngram)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if min_ngram > max_ngram:
            raise ValueError(f"min_ngram: {min_ngram} exceeds max_ngram {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.name = f"ngram({min_ngram}..{max_ngram})" if min_ngram != max_ngram else f"ngram({max_ngram})"

    def __repr__(self) -> str:
        return f"NGramDrafter(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"

    def propose(self, seq: torch.Tensor, lens: torch.Tensor, n: int) -> torch.Tensor:
        B, S = seq.shape
        dev = seq.device
        out = torch.full((B, n), PLACEHOLDER, dtype=torch.int64, device=dev)
        if n <= 0:
            return out
        cont = torch.full((B,), -1, dtype=torch.int64, device=dev)  # start of the copied continuation
        for g in range(self.max_ngram, self.min_ngram - 1, -1):
            if S < g + 1:
                continue
            # suffix [B, g]: the last g tokens of each row (rows shorter than g + 1 cannot match)
            idx = (lens[:, None] - g + torch.arange(g, device=dev)).clamp(min=0)
            suffix = seq.gather(1, idx)
            windows = seq.unfold(1, g, 1)  # [B, S - g + 1, g]
            starts = torch.arange(windows.shape[1], device=dev)
            hit = (windows == suffix[:, None, :]).all(-1)
            # an earlier occurrence must end before the last token: start + g <= lens - 1
            hit &= starts[None, :] <= (lens[:, None] - g - 1)
            best = torch.where(hit, starts[None, :], torch.full_like(hit, -1, dtype=torch.int64)).max(-1).values
            found = (best >= 0) & (cont < 0)
            cont = torch.where(found, best + g, cont)
        pos = cont[:, None] + torch.arange(n, device=dev)  # [B, n]
        ok = (cont[:, None] >= 0) & (pos < lens[:, None])
        vals = seq.gather(1, pos.clamp(min=0, max=S - 1))
        out = torch.where(ok, vals, out)
        return out


def fill_placeholders(tokens: torch.Tensor, last_token: torch.Tensor) -> torch.Tensor:
    """Replace every ``-1`` by the nearest valid token to its left (``last_token[b]`` before the first).

    tokens [B, n] int64, last_token [B] int64 -> [B, n] int64 without ``-1``.
    """
    chain = torch.cat([last_token[:, None], tokens], 1)  # [B, n + 1]
    idx = torch.arange(chain.shape[1], device=tokens.device).expand_as(chain)
    src = torch.where(chain >= 0, idx, torch.zeros_like(idx)).cummax(1).values
    return chain.gather(1, src)[:, 1:]


def point_mass_rows(tokens: torch.Tensor, vocab_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Draft probabilities of deterministic proposals: one-hot rows; an all-zero row for ``-1`` (a
    proposal outside a restricted vocabulary).  # [B, n] -> [B, n, V] of ``dtype``"""
    rows = torch.zeros((*tokens.shape, vocab_size), dtype=dtype, device=tokens.device)
    return rows.scatter_(-1, tokens.clamp(min=0)[..., None], (tokens >= 0).to(dtype)[..., None])
