"""Exact row-by-row verification through ``hsd_ref`` (the oracle), with ``hsd_fast.verify``'s signature.

Each float32 or float64 probability is converted to a ``Fraction`` exactly (every float is a dyadic rational)
and each row is renormalised exactly, so the only difference from the float kernel is the
renormalisation of rows whose float sum is not exactly 1.  Uniforms are converted exactly as well.
Slow (pure Python, O(B * K * V) Fractions): a cross-check for tests on small vocabularies (pass it as
``SpeculativeDecoder(..., verify_fn=exact_verify)``, or :func:`hsd_fast.fidelity.multidraft.ref_verify` for toy models).
"""

from __future__ import annotations

from fractions import Fraction

import torch

__all__ = ["exact_verify", "exact_row"]


def exact_row(row, name: str = "target_probs") -> tuple[Fraction, ...]:
    """A float probability row as an exact distribution (exact conversion, exact renormalisation)."""
    vals = [Fraction(float(x)) for x in row]
    total = sum(vals, Fraction(0))
    if total <= 0:
        raise ValueError(f"{name}: a row has no positive mass")
    return tuple(v / total for v in vals)


def exact_verify(scheme, target_probs, draft_probs, draft_tokens, *, generator=None, seeds=None, draws=None, row=exact_row):
    """hsd_ref's ``verify`` row by row, with ``hsd_fast.verify``'s shapes: single-draft
    target_probs [B, K+1, V], draft_probs [B, K, V], draft_tokens [B, K]; multi-draft (recognised by a
    4-D ``target_probs``) [B, N, K+1, V], [B, N, K, V], [B, N, K]; draws [B, >= D] float64.
    ``row(tensor, name)`` turns one probability row into an exact distribution (default
    :func:`exact_row`).  Only explicit ``draws`` are supported (``generator``/``seeds`` are accepted for
    signature compatibility and refused when draws are needed).

    Returns (tokens [B, K+1] int64 padded with -1, num_accepted [B] int64)."""
    from hsd_ref.registry import get_scheme

    sch = get_scheme(scheme) if isinstance(scheme, str) else scheme
    multi = target_probs.dim() == 4
    if multi:
        sch = sch.with_drafts(target_probs.shape[1])
    elif not hasattr(sch, "plan"):
        raise ValueError(f"scheme: {getattr(sch, 'name', sch)!r} is not a single-draft scheme")
    B, K = draft_tokens.shape[0], draft_tokens.shape[-1]
    need = sch.draws_needed(K)
    if need and (draws is None or draws.shape[1] < need):
        raise ValueError(f"draws: {need} uniforms per row needed, got {None if draws is None else draws.shape[1]}")
    out = torch.full((B, K + 1), -1, dtype=torch.int64)
    nacc = torch.zeros(B, dtype=torch.int64)
    tp, dp, dt = target_probs.detach().cpu(), draft_probs.detach().cpu(), draft_tokens.detach().cpu()
    du = None if draws is None else draws.detach().cpu()
    for b in range(B):
        if multi:
            t_rows = [[row(r) for r in slot] for slot in tp[b]]
            d_rows = [[row(r, "draft_probs") for r in slot] for slot in dp[b]]
        else:
            t_rows = [row(r) for r in tp[b]]
            d_rows = [row(r, "draft_probs") for r in dp[b]]
        u = None if need == 0 else [float(x) for x in du[b, :need]]
        res = sch.verify(t_rows, d_rows, dt[b].tolist(), u)
        out[b, : len(res.tokens)] = torch.tensor(res.tokens, dtype=torch.int64)
        nacc[b] = res.num_accepted
    return out.to(target_probs.device), nacc.to(target_probs.device)
