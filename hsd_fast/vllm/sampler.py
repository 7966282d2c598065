"""The replacement for vLLM 0.32's ``vllm.v1.sample.rejection_sampler.rejection_sample``.

``RejectionSampler.forward`` (V1 model runner) prepares everything a verifier needs, then calls the
module-level function ``rejection_sample`` with vLLM's flattened layout (:mod:`hsd_fast.vllm.layout`):
the bonus tokens are already sampled, and the target logits already carry penalties, temperature,
top-k and top-p.  :func:`make_rejection_sample` builds a function with the same signature that

1. allocates the output ``[B, max_spec_len + 1]`` int32 filled with -1, as vLLM's does;
2. verifies the greedy requests (temperature 0) with vLLM's own greedy kernel
   ``_rejection_greedy_sample`` (accept while the draft equals the target's argmax, then the argmax:
   every lossless scheme does exactly this for a one-hot target);
3. verifies the random requests with :func:`hsd_fast.vllm.layout.verify_rows` on
   ``softmax(target_logits)`` in float32 (vLLM's own precision), i.e. with
   :func:`hsd_fast.kernels.verify` and uniforms from each seeded request's own generator.

What it does not support, with a ``ValueError`` on the first step: ``rejection_sample_method=
"synthetic"`` (a benchmark mode that accepts by a fixed rate rather than verifying).

Host reads per step: the drafts (``draft_token_ids.tolist()``), the greedy mask of a mixed batch,
and the accepted counts; on a GPU each is a synchronisation vLLM's own sampler avoids.
"""

from __future__ import annotations

from typing import Any

import torch

from .layout import SCHEMES, verify_rows

__all__ = ["EXPECTED_PARAMETERS", "STATS", "expand_batch_to_tokens", "make_rejection_sample", "worker_stats"]

EXPECTED_PARAMETERS = (
    "draft_token_ids",
    "num_draft_tokens",
    "max_spec_len",
    "cu_num_draft_tokens",
    "draft_probs",
    "target_logits",
    "bonus_token_ids",
    "sampling_metadata",
    "synthetic_mode",
    "synthetic_conditional_rates",
    "use_fp64_gumbel",
)
"""The parameters of vLLM 0.32.0's ``rejection_sample``, in order; :func:`hsd_fast.vllm.register`
refuses to patch a function with any other signature."""

STATS: dict[str, Any] = {"scheme": None, "calls": 0, "greedy_rows": 0, "rows": 0, "drafted": 0, "accepted": 0}
"""Counts in this process since the plugin was registered: ``calls`` of the replacement,
``greedy_rows`` verified by vLLM's greedy kernel, and for the random rows verified by our kernels
``rows``, ``drafted`` (draft tokens) and ``accepted`` (draft tokens accepted)."""

PLACEHOLDER_TOKEN_ID = -1  # vLLM's padding of output rows (vllm.v1.sample.rejection_sampler)
GREEDY_TEMPERATURE = 0  # vLLM marks greedy requests with temperature 0 in sampling_metadata


def expand_batch_to_tokens(
    x: torch.Tensor,  # [B]
    cu_num_tokens: torch.Tensor,  # [B]
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """``x[b]`` repeated ``cu_num_tokens[b] - cu_num_tokens[b - 1]`` times, [num_tokens] in ``x``'s
    dtype, with entries equal to ``replace_from`` replaced by ``replace_to`` (vLLM's
    ``expand_batch_to_tokens``, same signature, written with ``repeat_interleave``).

    Replaces vLLM 0.32.0's on CPU, whose kernel shim (``vllm/utils/cpu_triton_utils.py``
    ``_expand_kernel_impl``) writes into an int64 copy of the output and returns the float32
    temperatures and top-p and int32 top-k uninitialised (vLLM issue #55005, fix PR #55006 open).
    """
    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))  # [B]
    src = torch.where(x == replace_from, torch.full_like(x, replace_to), x)  # [B]
    return torch.repeat_interleave(src, counts, output_size=num_tokens)


def worker_stats(worker: object = None) -> dict[str, Any]:
    """A copy of :data:`STATS`; ``LLM.collective_rpc(worker_stats)`` returns one per worker (the
    ``worker`` argument is the worker object vLLM passes to callables, unused)."""
    return dict(STATS)


def make_rejection_sample(scheme: str, *, validate: bool = True):
    """The replacement ``rejection_sample`` verifying random requests with ``scheme`` (one of
    :data:`hsd_fast.vllm.layout.SCHEMES`).  ``validate`` is passed to ``verify`` (row sums, token
    range; a ``ValueError`` instead of a wrong answer)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    from vllm.v1.sample import rejection_sampler as rs

    greedy_kernel = rs._rejection_greedy_sample

    def rejection_sample(
        draft_token_ids: torch.Tensor,  # [T]
        num_draft_tokens: list[int],  # [B]
        max_spec_len: int,
        cu_num_draft_tokens: torch.Tensor,  # [B]
        draft_probs: torch.Tensor | None,  # [T, V] or None
        target_logits: torch.Tensor,  # [T, V]
        bonus_token_ids: torch.Tensor,  # [B, 1]
        sampling_metadata: Any,
        synthetic_mode: bool = False,
        synthetic_conditional_rates: torch.Tensor | None = None,
        use_fp64_gumbel: bool = False,
    ) -> torch.Tensor:
        """``[B, max_spec_len + 1]`` int32: accepted drafts then one token per request, -1 padded."""
        if synthetic_mode:
            raise ValueError(
                "synthetic_mode: rejection_sample_method='synthetic' accepts drafts by a fixed rate; "
                f"it cannot be combined with HSD_VLLM_VERIFY={scheme}"
            )
        B = len(num_draft_tokens)
        device = target_logits.device
        output = torch.full((B, max_spec_len + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int32, device=device)
        STATS["calls"] += 1
        if sampling_metadata.all_greedy:
            is_greedy = None
        else:
            is_greedy = sampling_metadata.temperature == GREEDY_TEMPERATURE  # [B] bool
        if not sampling_metadata.all_random:
            target_argmax = target_logits.argmax(dim=-1)  # [T]
            greedy_kernel(
                output, cu_num_draft_tokens, draft_token_ids, target_argmax, bonus_token_ids,
                is_greedy, max_spec_len, None, None,
            )
            if is_greedy is None:
                STATS["greedy_rows"] += B
                return output
        if sampling_metadata.all_random:
            rows = list(range(B))
        else:
            rows = [b for b, greedy in enumerate(is_greedy.tolist()) if not greedy]
            STATS["greedy_rows"] += B - len(rows)
        target_probs = target_logits.softmax(dim=-1, dtype=torch.float32)  # [T, V]
        counts = verify_rows(
            scheme, output, draft_token_ids, num_draft_tokens, draft_probs, target_probs,
            bonus_token_ids, rows, sampling_metadata.generators, validate=validate,
        )
        for key, value in counts.items():
            STATS[key] += value
        return output

    return rejection_sample
