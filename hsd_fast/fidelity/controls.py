"""Lossy verification kernels (torch): the planted failures the fidelity test must catch.

Each follows its ``hsd_ref.schemes`` module formula for formula and has ``hsd_fast.verify``'s
engine signature, so :class:`hsd_fast.engine.SpeculativeDecoder` runs them as its ``verify_fn``:

* ``hsd_released`` (Zhou et al.'s released HSD rule: ``hsd_capped`` with the final acceptance
  uncapped), ``resample_from_target`` (a rejection resamples from the target row);
* ``lenience``: token-wise acceptance ``min(1, p / (l q))`` with ``l = 50/51``, i.e. acceptance 2%
  too lenient (``hsd_ref.schemes.lenience.Lenience(Fraction(50, 51))`` is its exact law).

:func:`plan_verify` executes a single-draft plan (``hsd_ref.scheme.Plan``) with the project's draw
convention: ``K + 1`` uniforms per row, tests on the first ``K``, the emitted token by inverse CDF
with the last.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from hsd_ref.exact import HSDInputError
from hsd_ref.schemes.lenience import Lenience

from ..schemes import sample_inverse_cdf

__all__ = ["CONTROLS", "LENIENCE", "control_scheme", "control_verify", "plan_verify"]

PLACEHOLDER = -1
LENIENCE = Fraction(50, 51)  # acceptance min(1, 1.02 p / q): 2% too lenient


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
    idx = torch.arange(1, k + 1, device=draft_tokens.device).unsqueeze(0)  # [1, K]
    if order == "forward":
        tau = torch.where(~passes, idx - 1, torch.full_like(idx, k)).min(-1).values if k else torch.zeros(B, dtype=torch.int64, device=draft_tokens.device)
    elif order == "backward":
        tau = torch.where(passes, idx, torch.zeros_like(idx)).max(-1).values if k else torch.zeros(B, dtype=torch.int64, device=draft_tokens.device)
    else:
        raise HSDInputError(f"order: unknown scan order {order!r}")
    rows = emit[torch.arange(B, device=tau.device), tau]  # [B, V]
    v = sample_inverse_cdf(rows, draws[:, k])
    out = torch.full((B, k + 1), PLACEHOLDER, dtype=torch.int64, device=draft_tokens.device)
    cols = torch.arange(k + 1, device=draft_tokens.device).unsqueeze(0)
    out[:, :k] = torch.where(cols[:, :k] < tau.unsqueeze(1), draft_tokens, out[:, :k])
    out[torch.arange(B, device=tau.device), tau] = v
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
    # hsd_ref.schemes.lenience with lenience LENIENCE (50/51)
    return "forward", _tokenwise_chances(target_probs, draft_probs, draft_tokens, float(LENIENCE)), _tokenwise_residuals(target_probs, draft_probs)


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


def control_scheme(name: str):
    """The exact ``hsd_ref`` scheme of a control (its law is the alternative the test must reject)."""
    from hsd_ref.registry import get_scheme

    if name not in CONTROLS:
        raise HSDInputError(f"scheme: {name!r} is not a lossy control; known: {', '.join(CONTROLS)}")
    return Lenience(LENIENCE) if name == "lenience" else get_scheme(name)


def control_verify(scheme: str, target_probs, draft_probs, draft_tokens, *, draws):
    """A lossy control with the engine's ``verify_fn`` signature; returns (tokens, num_accepted)."""
    try:
        plan = CONTROLS[scheme]
    except KeyError:
        raise HSDInputError(f"scheme: {scheme!r} is not a lossy control; known: {', '.join(CONTROLS)}") from None
    order, chances, emit = plan(target_probs, draft_probs, draft_tokens)
    return plan_verify(order, chances, emit, draft_tokens, draws)
