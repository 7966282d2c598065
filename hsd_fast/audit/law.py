"""The exact law an engine's first ``n`` tokens must follow, from the target model's own conditionals.

Setting (docs/peer-audit.md): a prompt (token ids), an allowed set ``A`` of a few ids, a temperature
and a top-p.  Every engine audited applies its warps in the same order -- the allowed-ids mask first,
then temperature, then top-p on what the mask left (our :class:`hsd_fast.warp.Warp`; transformers
runs a user ``LogitsProcessor`` before its temperature and top-p warpers; vLLM masks
``allowed_token_ids`` before ``apply_top_k_top_p``, for the target rows of its rejection sampler
too) -- so one law serves every cell:

* the conditional row at a prefix ``s`` (ids in ``A``) is the target's float32 logits at
  ``prompt + s`` restricted to ``A``, cast to float64, divided by the temperature and
  soft-maxed over ``A``; top-p keeps, in descending order of probability (ties: lower id first),
  every id whose preceding mass is ``< top_p`` and renormalises;
* that float64 row becomes an exact distribution (:func:`hsd_fast.engine.refverify.exact_row`:
  every float is a dyadic rational, renormalised exactly), and the law of a sequence is the
  product of its rows, in ``Fraction``.

The logits come from ONE batched forward of the model over all ``|A|**depth`` continuations of
length ``depth`` (every prefix of length ``< depth`` is a prefix of some of them); only the rows of
``A`` of the output head are applied, so no full-vocabulary logits are materialised.  The float
rounding of this forward differs from an engine's own forward by far less than any test here can
resolve.  The top-p *margin* (the smallest ``|preceding mass - top_p|`` over every row and id) says
how close a row is to a different keep set: an engine's top-p in other float arithmetic could cut
differently only where the margin is of the order of float32 rounding.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from ..engine.refverify import exact_row

__all__ = ["AuditLaw", "build_law", "prefix_logits", "warped_row", "encode_samples", "OFF_SUPPORT_CODE"]

OFF_SUPPORT_CODE = -1  # the code of a sample with a token outside A or fewer than n tokens


def _check_allowed(allowed: Sequence[int], vocab_size: int | None = None) -> tuple[int, ...]:
    ids = list(allowed)
    if len(ids) < 2 or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"allowed: expected at least 2 distinct ids >= 0, got {allowed!r}")
    if vocab_size is not None and max(ids) >= vocab_size:
        raise ValueError(f"allowed: id {max(ids)} is out of range for vocab size {vocab_size}")
    return tuple(sorted(ids))


def warped_row(logits: torch.Tensor, temperature: float, top_p: float | None) -> tuple[torch.Tensor, float]:
    """One float64 row over ``A`` from its float64 logits over ``A``: temperature, softmax, top-p
    (module docstring).  Returns ``(probs [|A|], margin)``; ``margin`` is ``inf`` without top-p."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    x = logits.to(torch.float64) / temperature
    probs = torch.softmax(x, -1)
    if top_p is None or top_p >= 1:
        return probs, math.inf
    order = sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))
    before, keep, margin = 0.0, torch.zeros(len(probs), dtype=torch.bool), math.inf
    for i in order:
        margin = min(margin, abs(before - top_p))
        keep[i] = before < top_p
        before += float(probs[i])
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(), margin


@torch.no_grad()
def prefix_logits(model, prompt: Sequence[int], allowed: Sequence[int], depth: int, *, chunk: int = 64) -> dict[tuple[int, ...], torch.Tensor]:
    """``{prefix: logits over A}`` (float64 cast from the model's float32 forward) for every prefix of
    ``A``-ids of length ``0 .. depth``: one forward over the ``|A|**depth`` continuations of
    ``prompt`` of length ``depth`` (in chunks of ``chunk`` rows), the output head applied to the
    rows of ``A`` only.  ``model``: a Hugging Face causal LM (``get_decoder()``, ``get_output_embeddings()``)."""
    allowed = _check_allowed(allowed)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth: expected an int >= 0, got {depth!r}")
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt: at least one token is needed")
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    weight = head.weight[list(allowed)]
    bias = None if getattr(head, "bias", None) is None else head.bias[list(allowed)]
    conts = list(itertools.product(allowed, repeat=depth))
    out: dict[tuple[int, ...], torch.Tensor] = {}
    L = len(prompt)
    for start in range(0, len(conts), chunk):
        part = conts[start : start + chunk]
        ids = torch.tensor([prompt + list(c) for c in part], dtype=torch.int64, device=weight.device)
        hidden = decoder(input_ids=ids).last_hidden_state[:, L - 1 :]  # [b, depth + 1, H]
        logits = torch.nn.functional.linear(hidden, weight, bias).to(torch.float64).cpu()  # [b, depth + 1, |A|]
        for c, rows in zip(part, logits):
            for j in range(depth + 1):
                out.setdefault(tuple(c[:j]), rows[j])
    return out


@dataclass
class AuditLaw:
    """The exact law of the first ``n`` tokens (module docstring).

    ``law`` maps each sequence of model ids to its ``Fraction``; ``codes``/``probs`` are the same
    law as base-``|A|`` codes of the ``A``-indices (increasing) and float64 probabilities, the form
    :mod:`hsd_fast.fidelity.stats` tests; ``rows`` the float64 warped rows per prefix."""

    allowed: tuple[int, ...]
    n: int
    temperature: float
    top_p: float | None
    law: dict[tuple[int, ...], Fraction]
    codes: np.ndarray
    probs: np.ndarray
    rows: dict[tuple[int, ...], torch.Tensor] = field(repr=False)
    top_p_margin: float

    def decode(self, code: int) -> tuple[int, ...]:
        """The model ids of a code of :attr:`codes`."""
        k, out = len(self.allowed), []
        for _ in range(self.n):
            code, r = divmod(int(code), k)
            out.append(self.allowed[r])
        return tuple(reversed(out))


def build_law(logits: dict[tuple[int, ...], torch.Tensor], allowed: Sequence[int], n: int, temperature: float = 1.0, top_p: float | None = None) -> AuditLaw:
    """The :class:`AuditLaw` of ``n`` tokens from :func:`prefix_logits` output (depth ``>= n - 1``)."""
    allowed = _check_allowed(allowed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    rows: dict[tuple[int, ...], torch.Tensor] = {}
    exact: dict[tuple[int, ...], tuple[Fraction, ...]] = {}
    margin = math.inf
    for j in range(n):
        for prefix in itertools.product(allowed, repeat=j):
            if prefix not in logits:
                raise ValueError(f"logits: no row for prefix {prefix} (prefix_logits depth {n - 1} or more is needed)")
            row, m = warped_row(logits[prefix], temperature, top_p)
            rows[prefix], margin = row, min(margin, m)
            exact[prefix] = exact_row(row, "logits")
    index = {a: i for i, a in enumerate(allowed)}
    law: dict[tuple[int, ...], Fraction] = {}
    for seq in itertools.product(allowed, repeat=n):
        mass = Fraction(1)
        for j, tok in enumerate(seq):
            mass *= exact[seq[:j]][index[tok]]
            if mass == 0:
                break
        if mass:
            law[seq] = mass
    keys = sorted(law, key=lambda s: _code(s, index))
    codes = np.array([_code(s, index) for s in keys], dtype=np.int64)
    probs = np.array([float(law[s]) for s in keys], dtype=np.float64)
    return AuditLaw(allowed, n, float(temperature), top_p, law, codes, probs, rows, margin)


def _code(seq: Sequence[int], index: dict[int, int]) -> int:
    code = 0
    for t in seq:
        code = code * len(index) + index[t]
    return code


def encode_samples(samples: Sequence[Sequence[int]], allowed: Sequence[int], n: int) -> np.ndarray:
    """Codes of sampled sequences (model ids): the base-``|A|`` code of the first ``n`` tokens'
    ``A``-indices, or :data:`OFF_SUPPORT_CODE` for a sample with fewer than ``n`` tokens or a token
    outside ``A`` (the G test counts it off the support: an outright rejection)."""
    index = {a: i for i, a in enumerate(sorted(allowed))}
    out = np.empty(len(samples), dtype=np.int64)
    for i, s in enumerate(samples):
        s = list(s)[:n]
        out[i] = _code(s, index) if len(s) == n and all(t in index for t in s) else OFF_SUPPORT_CODE
    return out
