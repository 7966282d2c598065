"""The multi-draft sampler: what the multi-draft schemes need until the engine has multi-draft levels.

``rrs``, ``rrs_without_replacement`` and ``spectr_kseq`` verify ``N`` drafts per position, which
:class:`hsd_fast.engine.SpeculativeDecoder`'s levels do not produce yet (issue 15).  Until they do,
their fidelity rows come from this small loop over an exact toy pair (``hsd_ref.TableLM``): draft
``N`` drafts of ``K`` tokens per row (the draft convention of ``hsd_ref.multidraft``), score them,
verify with the kernels of ``hsd_fast.kernels``, append the accepted tokens and the recovered/bonus
token, repeat.  It is vectorised over samples through :class:`ToyTables` (every conditional of the
pair precomputed per context, indexed by a state number).  Single-draft schemes are never sampled
here: they go through the engine (:mod:`hsd_fast.fidelity.cells`).

Randomness: every uniform comes from one explicit ``torch.Generator``, in a fixed order (the drafts
of one iteration, then ``K N + 1`` verification draws per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import torch

from hsd_ref.exact import HSDInputError, from_floats
from hsd_ref.models import TableLM, check_context, check_pair

from ..schemes import sample_inverse_cdf

__all__ = ["PLACEHOLDER", "ToyTables", "KernelOutputError", "multidraft_sample", "fast_verify", "ref_verify"]

PLACEHOLDER = -1


class KernelOutputError(RuntimeError):
    """A verification kernel returned a malformed result (bad shape, ids, padding, or accepted tokens
    that are not a draft's prefix)."""


@dataclass(frozen=True)
class ToyTables:
    """Every conditional of a (target, draft) pair for contexts of length ``<= max_len``.

    State numbering: the context ``c`` of length ``L`` is state ``offset[L] + code(c)`` with
    ``offset[L] = V**0 + ... + V**(L-1)`` and ``code(c)`` its base-``V`` number.  ``child[s, v]`` is
    the state of ``c + (v,)``; for ``L == max_len`` it is the sentinel state ``n_states`` whose rows
    are NaN (the loop refuses to read it).
    """

    vocab_size: int
    max_len: int
    child: torch.Tensor  # [S+1, V] int64
    target_rows: torch.Tensor  # [S+1, V] float64
    draft_rows: torch.Tensor  # [S+1, V] float64

    @property
    def n_states(self) -> int:
        return self.child.shape[0] - 1

    @property
    def sentinel(self) -> int:
        return self.n_states

    @classmethod
    def build(cls, target: TableLM, draft: TableLM, max_len: int) -> "ToyTables":
        """Tables of ``target`` and ``draft`` for every context of length ``<= max_len``."""
        V = check_pair(target, draft)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
            raise HSDInputError(f"max_len: expected an int >= 0, got {max_len!r}")
        n_states = sum(V**L for L in range(max_len + 1))
        if n_states > 2_000_000:
            raise HSDInputError(f"max_len: {n_states} contexts for vocab_size={V}, max_len={max_len} is too many")
        t_rows = torch.full((n_states + 1, V), float("nan"), dtype=torch.float64)
        d_rows = torch.full((n_states + 1, V), float("nan"), dtype=torch.float64)
        child = torch.full((n_states + 1, V), n_states, dtype=torch.int64)
        level: list[tuple[int, ...]] = [()]
        offset = 0
        for L in range(max_len + 1):
            t_rows[offset : offset + len(level)] = torch.tensor([[float(x) for x in target.probs(c)] for c in level], dtype=torch.float64)
            d_rows[offset : offset + len(level)] = torch.tensor([[float(x) for x in draft.probs(c)] for c in level], dtype=torch.float64)
            nxt_offset = offset + len(level)
            if L < max_len:
                # child of the context with code i is the context with code i * V + v one level down
                child[offset:nxt_offset] = nxt_offset + torch.arange(len(level) * V, dtype=torch.int64).view(len(level), V)
                level = [c + (v,) for c in level for v in range(V)]
            offset = nxt_offset
        return cls(V, max_len, child, t_rows, d_rows)

    def state_of(self, context: Sequence[int]) -> int:
        ctx = check_context(tuple(context), self.vocab_size, "prefix")
        if len(ctx) > self.max_len:
            raise HSDInputError(f"prefix: length {len(ctx)} exceeds the tables' max_len={self.max_len}")
        state = 0
        for t in ctx:
            state = int(self.child[state, t])
        return state



def _draft_multi(tables: ToyTables, states: torch.Tensor, k: int, n: int, replacement: bool, gen: torch.Generator):
    """Draft ``n`` drafts of ``k`` tokens per row (multi-draft convention of ``hsd_ref.multidraft``).

    With replacement: ``n`` i.i.d. draft sequences.  Without replacement: at every node the drafts
    that share the prefix draw their next tokens sequentially (slot order) without replacement from
    the node's draft row; once its support is exhausted the remaining drafts are absent (-1) from that
    position on.  Returns tokens [A, N, K], draft rows [A, N, K, V], states [A, N, K+1] (an absent
    draft stays at the node where it stopped, so its later rows are that node's rows).
    """
    A, V = states.shape[0], tables.vocab_size
    tokens = torch.full((A, n, k), PLACEHOLDER, dtype=torch.int64)
    rows = torch.empty((A, n, k, V), dtype=torch.float64)
    path = torch.empty((A, n, k + 1), dtype=torch.int64)
    s = states.unsqueeze(1).expand(A, n).clone()  # [A, N]
    absent = torch.zeros((A, n), dtype=torch.bool)
    for t in range(k):
        path[:, :, t] = s
        q = tables.draft_rows[s]  # [A, N, V]
        rows[:, :, t] = q
        u = torch.rand((A, n), dtype=torch.float64, generator=gen)
        if replacement:
            x = sample_inverse_cdf(q, u)
        else:
            x = torch.full((A, n), PLACEHOLDER, dtype=torch.int64)
            for j in range(n):
                # tokens already drawn at this node by earlier slots of the same group
                q_j = q[:, j].clone()  # [A, V]
                for i in range(j):
                    same = ~absent[:, i] & (tokens[:, i, :t] == tokens[:, j, :t]).all(-1)
                    drawn = x[:, i].clamp(min=0)
                    hit = same & (x[:, i] >= 0)
                    q_j[hit, drawn[hit]] = 0.0
                total = q_j.sum(-1)
                exhausted = total <= 0
                q_j = q_j / torch.where(exhausted, torch.ones_like(total), total).unsqueeze(-1)
                x_j = sample_inverse_cdf(q_j, u[:, j])
                x_j = torch.where(exhausted | absent[:, j], torch.full_like(x_j, PLACEHOLDER), x_j)
                x[:, j] = x_j
            absent = absent | (x == PLACEHOLDER)
        tokens[:, :, t] = x
        s = torch.where(x == PLACEHOLDER, s, tables.child[s, x.clamp(min=0)])
    path[:, :, k] = s
    return tokens, rows, path


def multidraft_sample(
    tables: ToyTables,
    scheme: str,
    k: int,
    n_drafts: int,
    n_tokens: int,
    n_samples: int,
    *,
    generator: torch.Generator,
    verify_fn: Callable | None = None,
    prefix: Sequence[int] = (),
    replacement: bool = True,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``n_samples`` runs of multi-draft speculative decoding.

    Shapes per iteration: target rows [B, N, K+1, V], draft rows [B, N, K, V], tokens [B, N, K].
    ``verify_fn(scheme, target_probs, draft_probs, draft_tokens, draws) -> (tokens, num_accepted)``
    (default :func:`fast_verify`).  Returns ``[n_samples, n_tokens]`` int64; raises
    :class:`KernelOutputError` on malformed kernel output.
    """
    for name, val, lo in (("k", k, 0), ("n_drafts", n_drafts, 1), ("n_tokens", n_tokens, 1), ("n_samples", n_samples, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise HSDInputError(f"{name}: expected an int >= {lo}, got {val!r}")
    verify_fn = fast_verify if verify_fn is None else verify_fn
    prefix = check_context(tuple(prefix), tables.vocab_size, "prefix")
    need = len(prefix) + n_tokens - 1 + k
    if need > tables.max_len:
        raise HSDInputError(f"tables: max_len={tables.max_len} is too short; the loop needs contexts of length {need}")
    V = tables.vocab_size
    out = torch.full((n_samples, n_tokens + k + 1), PLACEHOLDER, dtype=torch.int64)
    pos = torch.zeros(n_samples, dtype=torch.int64)
    states = torch.full((n_samples,), tables.state_of(prefix), dtype=torch.int64)
    active = torch.arange(n_samples)
    cols = torch.arange(k + 1)
    while active.numel():
        A = active.numel()
        s = states[active]
        d_tok, d_rows, path = _draft_multi(tables, s, k, n_drafts, replacement, generator)
        t_rows = tables.target_rows[path]  # [A, N, K+1, V]
        draws = torch.rand((A, k * n_drafts + 1), dtype=torch.float64, generator=generator)
        tok, n_acc = verify_fn(scheme, t_rows, d_rows, d_tok, draws)
        _check_output(tok, n_acc, d_tok, A, k, V)
        tok, emitted = tok.to(torch.int64), n_acc.to(torch.int64) + 1  # [A, K+1], [A]
        p = pos[active]
        keep = cols.unsqueeze(0) < emitted.unsqueeze(1)  # [A, K+1]
        rows_idx = active.unsqueeze(1).expand(A, k + 1)[keep]
        out[rows_idx, (p.unsqueeze(1) + cols)[keep]] = tok[keep]
        for j in range(k + 1):  # advance the context through the emitted tokens
            s = torch.where(j < emitted, tables.child[s, tok[:, j].clamp(min=0)], s)
        p = p + emitted
        pos[active] = p
        states[active] = s
        done = p >= n_tokens
        if progress is not None:
            progress(int(done.sum()))
        active = active[~done]
    return out[:, :n_tokens]


def _check_output(tok: torch.Tensor, n_acc: torch.Tensor, d_tok: torch.Tensor, A: int, k: int, V: int) -> None:
    if tuple(tok.shape) != (A, k + 1) or tuple(n_acc.shape) != (A,):
        raise KernelOutputError(f"kernel returned tokens {tuple(tok.shape)} / num_accepted {tuple(n_acc.shape)}, expected ({A}, {k + 1}) / ({A},)")
    n_acc = n_acc.to(torch.int64)
    if bool(((n_acc < 0) | (n_acc > k)).any()):
        raise KernelOutputError("kernel returned num_accepted outside [0, K]")
    cols = torch.arange(k + 1).unsqueeze(0)
    used = cols <= n_acc.unsqueeze(1)
    if bool(((tok < 0) | (tok >= V))[used].any()):
        raise KernelOutputError("kernel emitted a token id outside [0, V)")
    if bool((tok[~used] != PLACEHOLDER).any()):
        raise KernelOutputError("kernel output is not padded with -1 after the emitted tokens")
    acc = cols[:, :k] < n_acc.unsqueeze(1)  # [A, K]
    match = ((d_tok == tok[:, None, :k]) | ~acc[:, None, :]).all(-1).any(-1)  # a prefix of some draft
    if not bool(match.all()):
        raise KernelOutputError("kernel accepted tokens that are not a draft's prefix")


def fast_verify(scheme: str, target_probs, draft_probs, draft_tokens, draws):
    """``hsd_fast.verify`` with explicit draws (imported lazily from :mod:`hsd_fast.kernels`)."""
    from hsd_fast.kernels import verify

    out = verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws)
    return out.tokens, out.num_accepted


def ref_verify(scheme: str, target_probs, draft_probs, draft_tokens, draws, *, n_drafts: int | None = None):
    """``hsd_ref``'s exact ``verify``, one row at a time, on the same uniforms (slow: a cross-check).

    Float rows are turned back into the exact toy rationals with ``from_floats(max_denominator=1e6)``
    (exact for the toy models, whose denominators are small); float uniforms are exact dyadic
    rationals.  Multi-draft inputs are recognised by their 4-D ``target_probs``.  The row loop is
    :func:`hsd_fast.engine.refverify.exact_verify`'s.
    """
    from ..engine.refverify import exact_verify

    cache: dict = {}

    def toy_row(row: torch.Tensor, name: str = "target_probs") -> tuple[Fraction, ...]:
        key = row.numpy().tobytes()
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = from_floats(row.tolist(), max_denominator=10**6)
        return hit

    return exact_verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws, row=toy_row)

