"""Exact row-by-row verification through ``hsd_ref`` (the oracle), with ``hsd_fast.verify``'s signature.

Each float64 probability is converted to a ``Fraction`` exactly (every float is a dyadic rational)
and each row is renormalised exactly, so the only difference from the float kernel is the
renormalisation of rows whose float sum is not exactly 1.  Uniforms are converted exactly as well.
Slow (pure Python, O(B * K * V) Fractions): for tests on small vocabularies, and as the engine's
fallback until the batched kernels are importable.
"""

from __future__ import annotations

from fractions import Fraction

import torch

__all__ = ["exact_verify", "exact_row"]


def exact_row(row, name: str = "target_probs") -> tuple[Fraction, ...]:
    """A float64 probability row as an exact distribution (exact conversion, exact renormalisation)."""
    vals = [Fraction(float(x)) for x in row]
    total = sum(vals, Fraction(0))
    if total <= 0:
        raise ValueError(f"{name}: a row has no positive mass")
    return tuple(v / total for v in vals)


def exact_verify(scheme, target_probs, draft_probs, draft_tokens, *, generator=None, seeds=None, draws=None):
    """target_probs [B, K+1, V], draft_probs [B, K, V], draft_tokens [B, K], draws [B, >=K+1] float64.

    Returns (tokens [B, K+1] int64 padded with -1, num_accepted [B] int64)."""
    from hsd_ref.registry import get_scheme
    from hsd_ref.scheme import SingleDraftScheme

    sch = get_scheme(scheme) if isinstance(scheme, str) else scheme
    B, K1, _ = target_probs.shape
    K = K1 - 1
    out = torch.full((B, K1), -1, dtype=torch.int64)
    nacc = torch.zeros(B, dtype=torch.int64)
    tp, dp, dt = target_probs.detach().cpu(), draft_probs.detach().cpu(), draft_tokens.detach().cpu()
    du = None if draws is None else draws.detach().cpu()
    for b in range(B):
        t_rows = [exact_row(tp[b, j]) for j in range(K1)]
        d_rows = [exact_row(dp[b, j], "draft_probs") for j in range(K)]
        toks = [int(x) for x in dt[b]]
        need = sch.draws_needed(K)
        u = None if need == 0 else [float(x) for x in du[b, :need]]
        if need and du.shape[1] < need:
            raise ValueError(f"draws: {need} uniforms per row needed, got {du.shape[1]}")
        if isinstance(sch, SingleDraftScheme):
            res = sch.verify(t_rows, d_rows, toks, u)
        else:
            raise ValueError(f"scheme: {getattr(sch, 'name', sch)!r} is not a single-draft scheme")
        row = res.to_row(K)
        out[b] = torch.tensor(row, dtype=torch.int64)
        nacc[b] = res.num_accepted
    return out.to(target_probs.device), nacc.to(target_probs.device)
