"""Torch view of ``hsd_ref`` toy models, and the full speculative decoding loop on them, batched.

:class:`ToyTables` precomputes every conditional of an exact :class:`hsd_ref.TableLM` pair (target,
draft) for every context up to a fixed length, as float64 rows indexed by a *state* (the context's
number), plus a child table ``child[state, token]``.  Sampling ``B`` decoding runs then needs only
gathers: no Python per sample.

:func:`speculative_sample` runs the whole decoding loop of a verification scheme (draft ``K``
tokens, score them, verify, append the accepted drafts and the recovered/bonus token, restart from
the new context) for ``B`` independent samples until each has ``n_tokens`` tokens.  It is the
sampler behind :mod:`hsd_fast.fidelity`, which compares its output law with ``hsd_ref``'s exact
``sequence_law``.  Verification is pluggable (``verify_fn``):

* :func:`fast_verify`: the engine's kernels ``hsd_fast.verify`` (what the fidelity test checks);
* :func:`ref_verify`: ``hsd_ref``'s exact ``verify``, row by row, on the same uniforms (a slow
  draw-for-draw cross-check of the loop itself);
* :func:`control_verify`: torch versions of the LOSSY CONTROLS (``hsd_released``, ``lenience``,
  ``resample_from_target``), which the fidelity test must reject (its power check).

Randomness: every uniform comes from one explicit ``torch.Generator``, in a fixed order (the drafts
of one iteration, then the verification draws of that iteration).  Verification uses the project's
draw convention (``hsd_ref.scheme``, ``hsd_ref.multidraft``): ``draws_needed(K)`` uniforms per row.
Tokens are drawn by inverse CDF in token-id order (the smallest ``v`` with ``u < cdf[v]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import torch

from hsd_ref.exact import HSDInputError, from_floats
from hsd_ref.models import TableLM, check_context, check_pair

__all__ = [
    "PLACEHOLDER",
    "ToyTables",
    "KernelOutputError",
    "VerifyFn",
    "sample_inverse_cdf",
    "sample_model",
    "speculative_sample",
    "fast_verify",
    "ref_verify",
    "control_verify",
    "plan_verify",
    "CONTROLS",
]

PLACEHOLDER = -1

# verify_fn(scheme_name, target_probs, draft_probs, draft_tokens, draws) -> (tokens [B, K+1], num_accepted [B])
VerifyFn = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class KernelOutputError(RuntimeError):
    """A verification kernel returned a malformed result (bad shape, ids, padding, or accepted tokens
    that are not the drafts)."""


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


# ---------------------------------------------------------------------------------------- sampling


def sample_inverse_cdf(rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row: the smallest ``v`` with ``u < rows[0] + ... + rows[v]``.

    ``rows`` [..., V] (non-negative, summing to 1 up to rounding), ``u`` [...] in [0, 1).  A uniform
    at or above the float total (possible only through rounding, probability about 1e-16) gives the
    last token of positive probability, so a zero-probability token is never returned.
    """
    cdf = rows.cumsum(-1)  # [..., V]
    idx = (cdf <= u.unsqueeze(-1)).sum(-1)  # the number of v with cdf[v] <= u
    positive = rows > 0
    V = rows.shape[-1]
    last_positive = V - 1 - positive.flip(-1).to(torch.int64).argmax(-1)
    return torch.minimum(idx, last_positive)


def sample_model(rows: torch.Tensor, child: torch.Tensor, state: int, n_tokens: int, n_samples: int, *, generator: torch.Generator) -> torch.Tensor:
    """``n_samples`` plain autoregressive samples of ``n_tokens`` tokens from a table of rows.

    Returns ``[n_samples, n_tokens]`` int64.  (The direct sampler: a baseline the fidelity test must
    pass, independent of any verification scheme.)
    """
    states = torch.full((n_samples,), state, dtype=torch.int64)
    out = torch.empty((n_samples, n_tokens), dtype=torch.int64)
    for i in range(n_tokens):
        u = torch.rand(n_samples, dtype=torch.float64, generator=generator)
        tok = sample_inverse_cdf(rows[states], u)
        out[:, i] = tok
        states = child[states, tok]
    return out


# ------------------------------------------------------------------------------- decoding loop


def _draft_single(tables: ToyTables, states: torch.Tensor, k: int, greedy: bool, gen: torch.Generator):
    """Draft ``k`` tokens per row from the draft rows (argmax when ``greedy``); return the draft tokens
    [A, K], draft rows [A, K, V] and the states along the path [A, K+1]."""
    A, V = states.shape[0], tables.vocab_size
    path = torch.empty((A, k + 1), dtype=torch.int64)
    tokens = torch.empty((A, k), dtype=torch.int64)
    rows = torch.empty((A, k, V), dtype=torch.float64)
    s = states
    for t in range(k):
        path[:, t] = s
        q = tables.draft_rows[s]
        rows[:, t] = q
        if greedy:
            x = q.argmax(-1)  # ties go to the lowest id
        else:
            x = sample_inverse_cdf(q, torch.rand(A, dtype=torch.float64, generator=gen))
        tokens[:, t] = x
        s = tables.child[s, x]
    path[:, k] = s
    return tokens, rows, path


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


def speculative_sample(
    tables: ToyTables,
    scheme: str,
    k: int,
    n_tokens: int,
    n_samples: int,
    *,
    generator: torch.Generator,
    verify_fn: VerifyFn,
    n_draws: int,
    prefix: Sequence[int] = (),
    n_drafts: int | None = None,
    replacement: bool = True,
    greedy_draft: bool = False,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``n_samples`` independent runs of the decoding loop.

    ``n_drafts=None`` runs a single-draft scheme (shapes [B, K+1, V], [B, K, V], [B, K]); an int
    ``N`` runs a multi-draft one (shapes [B, N, K+1, V], [B, N, K, V], [B, N, K]).  ``n_draws`` is
    the scheme's ``draws_needed(K)``; ``greedy_draft`` drafts the draft model's argmax (greedy's
    proposal).  ``progress(n)`` is called with the number of samples finished in each iteration.
    Returns ``[n_samples, n_tokens]`` int64.  Raises :class:`KernelOutputError` on malformed kernel
    output.
    """
    for name, val, lo in (("k", k, 0), ("n_tokens", n_tokens, 1), ("n_samples", n_samples, 1), ("n_draws", n_draws, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise HSDInputError(f"{name}: expected an int >= {lo}, got {val!r}")
    if n_drafts is not None and (isinstance(n_drafts, bool) or not isinstance(n_drafts, int) or n_drafts < 1):
        raise HSDInputError(f"n_drafts: expected None or an int >= 1, got {n_drafts!r}")
    prefix = check_context(tuple(prefix), tables.vocab_size, "prefix")
    need = len(prefix) + n_tokens - 1 + k
    if need > tables.max_len:
        raise HSDInputError(f"tables: max_len={tables.max_len} is too short; the loop needs contexts of length {need}")
    V = tables.vocab_size
    root = tables.state_of(prefix)
    out = torch.full((n_samples, n_tokens + k + 1), PLACEHOLDER, dtype=torch.int64)
    pos = torch.zeros(n_samples, dtype=torch.int64)
    states = torch.full((n_samples,), root, dtype=torch.int64)
    active = torch.arange(n_samples)
    while active.numel():
        A = active.numel()
        s = states[active]
        if n_drafts is None:
            d_tok, d_rows, path = _draft_single(tables, s, k, greedy_draft, generator)
            t_rows = tables.target_rows[path]  # [A, K+1, V]
        else:
            d_tok, d_rows, path = _draft_multi(tables, s, k, n_drafts, replacement, generator)
            t_rows = tables.target_rows[path]  # [A, N, K+1, V]
        if bool((path == tables.sentinel).any()):
            raise HSDInputError("tables: a context longer than max_len was reached")
        draws = torch.rand((A, n_draws), dtype=torch.float64, generator=generator)
        tok, n_acc = verify_fn(scheme, t_rows, d_rows, d_tok, draws)
        _check_output(tok, n_acc, d_tok, A, k, V, multi=n_drafts is not None)
        tok, emitted = tok.to(torch.int64), n_acc.to(torch.int64) + 1  # [A, K+1], [A]
        p = pos[active]
        cols = torch.arange(k + 1)
        keep = cols.unsqueeze(0) < emitted.unsqueeze(1)  # [A, K+1]
        rows_idx = active.unsqueeze(1).expand(A, k + 1)[keep]
        out[rows_idx, (p.unsqueeze(1) + cols)[keep]] = tok[keep]
        for j in range(k + 1):  # advance the context through the emitted tokens
            step = j < emitted
            s = torch.where(step, tables.child[s, tok[:, j].clamp(min=0)], s)
        p = p + emitted
        pos[active] = p
        states[active] = s
        done = p >= n_tokens
        if progress is not None:
            progress(int(done.sum()))
        active = active[~done]
    return out[:, :n_tokens]


def _check_output(tok: torch.Tensor, n_acc: torch.Tensor, d_tok: torch.Tensor, A: int, k: int, V: int, multi: bool) -> None:
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
    if multi:  # the accepted tokens must be a prefix of some draft
        match = ((d_tok == tok[:, None, :k]) | ~acc[:, None, :]).all(-1).any(-1)
    else:
        match = ((d_tok == tok[:, :k]) | ~acc).all(-1)
    if not bool(match.all()):
        raise KernelOutputError("kernel accepted tokens that are not a draft's prefix")


# ------------------------------------------------------------------------------- verify functions


def fast_verify(scheme: str, target_probs, draft_probs, draft_tokens, draws):
    """``hsd_fast.verify`` with explicit draws (imported lazily: the kernels live in hsd_fast.verify)."""
    from hsd_fast.verify import verify

    out = verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws)
    return out.tokens, out.num_accepted


def ref_verify(scheme: str, target_probs, draft_probs, draft_tokens, draws, *, n_drafts: int | None = None):
    """``hsd_ref``'s exact ``verify``, one row at a time, on the same uniforms (slow: a cross-check).

    Float rows are turned back into the exact toy rationals with ``from_floats(max_denominator=1e6)``
    (exact for the toy models, whose denominators are small); float uniforms are exact dyadic
    rationals.  Multi-draft inputs are recognised by their 4-D ``target_probs``.  The row loop is
    :func:`hsd_fast.engine.refverify.exact_verify`'s.
    """
    from .engine.refverify import exact_verify

    cache: dict = {}

    def toy_row(row: torch.Tensor, name: str = "target_probs") -> tuple[Fraction, ...]:
        key = row.numpy().tobytes()
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = from_floats(row.tolist(), max_denominator=10**6)
        return hit

    return exact_verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws, row=toy_row)


# ------------------------------------------------------------------------- lossy controls, torch


def plan_verify(order: str, chances: torch.Tensor, emit: torch.Tensor, draft_tokens: torch.Tensor, draws: torch.Tensor):
    """Execute a single-draft plan (``hsd_ref.scheme.Plan``) with the draw convention.

    ``chances`` [B, K], ``emit`` [B, K+1, V] (row ``j``: the emitted-token law when ``j`` drafts are
    accepted), ``draft_tokens`` [B, K], ``draws`` [B, K+1].  Test ``i`` passes iff
    ``draws[:, i] < chances[:, i]``; ``forward``: ``tau`` = the first failing test, ``backward``:
    ``tau`` = the last passing test (0 if none).  The emitted token is drawn from ``emit[tau]`` with
    ``draws[:, K]``.  Returns tokens [B, K+1] (padded with -1) and num_accepted [B].
    """
    B, k = draft_tokens.shape
    passes = draws[:, :k] < chances  # [B, K]
    idx = torch.arange(1, k + 1).unsqueeze(0)  # [1, K]
    if order == "forward":
        tau = torch.where(~passes, idx - 1, torch.full_like(idx, k)).min(-1).values if k else torch.zeros(B, dtype=torch.int64)
    elif order == "backward":
        tau = torch.where(passes, idx, torch.zeros_like(idx)).max(-1).values if k else torch.zeros(B, dtype=torch.int64)
    else:
        raise HSDInputError(f"order: unknown scan order {order!r}")
    rows = emit[torch.arange(B), tau]  # [B, V]
    v = sample_inverse_cdf(rows, draws[:, k])
    out = torch.full((B, k + 1), PLACEHOLDER, dtype=torch.int64)
    cols = torch.arange(k + 1).unsqueeze(0)
    out[:, :k] = torch.where(cols[:, :k] < tau.unsqueeze(1), draft_tokens, out[:, :k])
    out[torch.arange(B), tau] = v
    return out, tau


def _drafted_probs(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``probs[b, i, tokens[b, i]]`` with 0 for the placeholder id.  probs [B, K(+1), V], tokens [B, K]."""
    k = tokens.shape[1]
    got = probs[:, :k].gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(tokens == PLACEHOLDER, torch.zeros_like(got), got)


def _normalised_or(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``weights / sum`` per row; ``fallback`` where the sum is 0 (``residual_or_target``)."""
    total = weights.sum(-1, keepdim=True)
    empty = total <= 0
    return torch.where(empty, fallback, weights / torch.where(empty, torch.ones_like(total), total))


def _tokenwise_chances(target_probs, draft_probs, draft_tokens, lenience: float = 1.0) -> torch.Tensor:
    p_x = _drafted_probs(target_probs, draft_tokens)
    q_x = _drafted_probs(draft_probs, draft_tokens)
    ratio = p_x / (lenience * torch.where(q_x > 0, q_x, torch.ones_like(q_x)))
    return torch.where(q_x > 0, ratio.clamp(max=1.0), torch.zeros_like(q_x))


def _tokenwise_residuals(target_probs, draft_probs) -> torch.Tensor:
    k = draft_probs.shape[1]
    res = _normalised_or((target_probs[:, :k] - draft_probs).clamp(min=0.0), target_probs[:, :k])
    return torch.cat([res, target_probs[:, k:]], dim=1)


def _lenience_plan(target_probs, draft_probs, draft_tokens):
    # hsd_ref.schemes.lenience with its default lenience 1/2
    return "forward", _tokenwise_chances(target_probs, draft_probs, draft_tokens, 0.5), _tokenwise_residuals(target_probs, draft_probs)


def _resample_from_target_plan(target_probs, draft_probs, draft_tokens):
    # hsd_ref.schemes.resample_from_target: token-wise tests, a rejection resamples from the target row
    return "forward", _tokenwise_chances(target_probs, draft_probs, draft_tokens), target_probs


def _hsd_released_plan(target_probs, draft_probs, draft_tokens):
    """hsd_ref.schemes.hsd_released: ``hsd_capped``'s capped intermediate acceptances and residuals,
    with the final acceptance ``min(1, P_k / Q_k)`` uncapped (papers.md §3.5)."""
    B, k = draft_tokens.shape
    p_x = _drafted_probs(target_probs, draft_tokens)  # [B, K]
    q_x = _drafted_probs(draft_probs, draft_tokens)
    usable = (q_x > 0).to(torch.int64).cumprod(-1).bool()  # the draft is cut at its first q(x) == 0
    m = usable.sum(-1)  # [B] usable draft tokens
    ones = torch.ones((B, 1), dtype=torch.float64)
    P = torch.cat([ones, torch.where(usable, p_x, torch.ones_like(p_x)).cumprod(-1)], -1)  # [B, K+1]
    Q = torch.cat([ones, torch.where(usable, q_x, torch.ones_like(q_x)).cumprod(-1)], -1)
    caps = torch.cat([ones, (P[:, 1:] / Q[:, 1:]).clamp(min=1.0).cummax(-1).values], -1)  # M_t = max(1, r_1..r_t)
    chances = torch.zeros((B, k), dtype=torch.float64)
    emit = target_probs.clone()
    for t in range(k):
        capped_p = P[:, t : t + 1] * target_probs[:, t] / caps[:, t : t + 1]  # [B, V]
        diff = capped_p - Q[:, t : t + 1] * draft_probs[:, t]
        plus, minus = diff.clamp(min=0.0), (-diff).clamp(min=0.0).sum(-1)
        reach = t <= m  # branch t exists (t <= m): residual and (for t >= 1) the test at t
        emit[:, t] = torch.where(reach.unsqueeze(-1), _normalised_or(plus, target_probs[:, t]), target_probs[:, t])
        if t >= 1:
            h = torch.where(minus > 0, plus.sum(-1) / torch.where(minus > 0, minus, torch.ones_like(minus)), torch.ones_like(minus))
            chances[:, t - 1] = torch.where(reach, h, torch.zeros_like(h))
    if k:
        final = (P[:, k] / Q[:, k]).clamp(max=1.0)  # the released rule: no cap
        chances[:, k - 1] = torch.where(m == k, final, torch.zeros_like(final))
    return "backward", chances, emit


CONTROLS = {
    "hsd_released": _hsd_released_plan,
    "lenience": _lenience_plan,
    "resample_from_target": _resample_from_target_plan,
}


def control_verify(scheme: str, target_probs, draft_probs, draft_tokens, draws):
    """Torch versions of the single-draft LOSSY CONTROLS, per position, with the draw convention.

    Each follows its ``hsd_ref.schemes`` module formula for formula (``lenience`` with its default
    lenience 1/2).  They exist so that the fidelity test can show it rejects lossy schemes.
    """
    try:
        plan = CONTROLS[scheme]
    except KeyError:
        raise HSDInputError(f"scheme: {scheme!r} is not a lossy control; known: {', '.join(CONTROLS)}") from None
    order, chances, emit = plan(target_probs, draft_probs, draft_tokens)
    return plan_verify(order, chances, emit, draft_tokens, draws)
