"""The verification kernels: ``verify``, batched, draw-for-draw verification with every lossless
scheme of :mod:`hsd_ref`, and the registry ``KERNELS`` of the kernels behind it.

>>> import torch
>>> from hsd_fast.kernels import verify
>>> target = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]], dtype=torch.float64)  # [B=1, K+1=2, V=2]
>>> draft = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)                   # [B=1, K=1, V=2]
>>> out = verify("tokenwise", target, draft, torch.tensor([[0]]), draws=torch.tensor([[0.25, 0.5]]))
>>> out.tokens.tolist(), out.num_accepted.tolist()
([[0, 1]], [1])

Shapes (B batch rows, N drafts, K draft length, V vocabulary):

* single-draft schemes (``tokenwise``, ``greedy``, ``block``, ``hsd_capped``): target_probs
  [B, K+1, V], draft_probs [B, K, V] (``None`` allowed for greedy), draft_tokens [B, K];
* multi-draft schemes (``rrs``, ``rrs_without_replacement``, ``spectr_kseq``): target_probs
  [B, N, K+1, V], draft_probs [B, N, K, V], draft_tokens [B, N, K].

Returns :class:`VerifyOutput` ``(tokens [B, K+1] int64 padded with -1, num_accepted [B] int64,
draft_index)``, ``draft_index`` [B] int64 for multi-draft schemes (-1 when nothing was accepted) and
``None`` for single-draft ones.  Float32 and float64, CPU and CUDA: the device follows the inputs.

Randomness is data (vLLM's lesson, STYLE.md): pass exactly one of

* ``draws`` [B, D]: uniforms in [0, 1) laid out as in :mod:`hsd_ref.scheme` /
  :mod:`hsd_ref.multidraft`, ``D = draws_needed(scheme, K, N)`` (K + 1, or K N + 1; 0 for greedy);
  converted to float64;
* ``generator``: a ``torch.Generator``; ``torch.rand((B, D), generator=..., dtype=float64)`` on the
  generator's device, then moved to the inputs' device.  Same generator state, same output;
* ``seeds`` [B] int64: per-row counter-based streams (:func:`hsd_fast.rng.seeded_uniforms`, the
  engine's stream): row ``b`` uses the first ``D`` uniforms of seed ``seeds[b]``'s stream, so its
  output depends only on its own inputs and seed, not on the batch size, its position or the other
  rows, and a row seeded ``s`` starts with the same uniforms as the engine's row seeded ``s``.

Greedy needs no randomness; any other scheme without one of them raises ``ValueError``.

Validation (``validate=True``, the default; it synchronises with the device): shapes, dtypes and
devices; draft ids in ``[-1, V)``; every probability row finite, non-negative and summing to 1
within :data:`ROW_SUM_TOL` (``sqrt(eps)`` of the dtype: 3.5e-4 for float32, 1.5e-8 for float64); for
multi-draft inputs, rows of drafts that share their first ``t`` real tokens equal within the same
tolerance at position ``t`` (the kernels use the rows of the lowest such slot).  Every error is a
``ValueError`` whose message starts with the offending argument.  Inputs are never modified.

Performance (docs/kernels.md): the kernels are written for a GPU (whole-batch tensor ops).  The
single-draft kernels never read anything on the host (block and hsd_capped compute their backward
scan for every row and mask it), so they queue on a CUDA stream without waiting; the multi-draft
walk gathers the rows still in play with one ``nonzero`` per position, a host sync.  On a CPU
whose last-level cache is smaller than a [B, V] tensor, ``impl="loop"`` (row by row, in cache) is
faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from hsd_ref.registry import SCHEMES as REF_SCHEMES

from .rng import seeded_uniforms
from .schemes import PLACEHOLDER, VerifyOutput
from .schemes import block as _block
from .schemes import greedy as _greedy
from .schemes import hsd_capped as _hsd_capped
from .schemes import rrs as _rrs
from .schemes import rrs_without_replacement as _rrs_wor
from .schemes import spectr_kseq as _spectr
from .schemes import tokenwise as _tokenwise

__all__ = [
    "KERNELS",
    "KernelSpec",
    "ROW_SUM_TOL",
    "VerifyOutput",
    "draws_needed",
    "get_kernel",
    "seeded_uniforms",
    "verify",
]

ROW_SUM_TOL = {torch.float32: math.sqrt(torch.finfo(torch.float32).eps), torch.float64: math.sqrt(torch.finfo(torch.float64).eps)}


@dataclass(frozen=True)
class KernelSpec:
    """One scheme of the fast engine: its vectorised kernel and loop twin (same signature), and the
    capability flags of its exact twin ``hsd_ref.registry.SCHEMES[name]``: ``multi_draft`` (inputs
    carry an N axis), ``needs_draws`` (False: no uniforms) and ``needs_draft_probs`` (False:
    ``draft_probs`` may be ``None``)."""

    name: str
    kernel: Callable[..., VerifyOutput]
    loop: Callable[..., VerifyOutput]
    multi_draft: bool
    needs_draws: bool
    needs_draft_probs: bool


def _spec(module) -> KernelSpec:
    """The kernel pair of a :mod:`hsd_fast.schemes` module; its flags are read from the hsd_ref scheme
    of the same name, the one place they are defined."""
    ref = REF_SCHEMES[module.NAME]
    kernel, loop = getattr(module, module.NAME), getattr(module, module.NAME + "_loop")
    return KernelSpec(module.NAME, kernel, loop, ref.multi_draft, ref.needs_draws, ref.needs_draft_probs)


KERNELS: dict[str, KernelSpec] = {
    s.name: s
    for s in (
        _spec(_tokenwise),
        _spec(_greedy),
        _spec(_block),
        _spec(_hsd_capped),
        _spec(_rrs),
        _spec(_rrs_wor),
        _spec(_spectr),
    )
}


def get_kernel(scheme: object) -> KernelSpec:
    """The :class:`KernelSpec` for a scheme name or an object with ``.name`` (e.g. an hsd_ref scheme)."""
    name = scheme if isinstance(scheme, str) else getattr(scheme, "name", None)
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(f"scheme: no fast kernel for {scheme!r}; known: {', '.join(KERNELS)}")
    return KERNELS[name]


def draws_needed(scheme: object, k: int, n_drafts: int = 1) -> int:
    """Uniforms per row: ``K + 1`` (single draft), ``K N + 1`` (multi-draft), 0 (greedy)."""
    spec = get_kernel(scheme)
    if not spec.needs_draws:
        return 0
    return k * n_drafts + 1 if spec.multi_draft else k + 1


# -- validation -------------------------------------------------------------------------------------


def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _index_str(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]"


def _check_rows(x: torch.Tensor, name: str) -> None:
    """Every row [..., V] finite, non-negative, summing to 1 within ``ROW_SUM_TOL[dtype]``."""
    if x.numel() == 0:
        return
    tol = ROW_SUM_TOL[x.dtype]
    total = x.sum(dim=-1)
    bad = ~torch.isfinite(total)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name}{_index_str(idx)}: row contains NaN or inf")
    neg = x.amin(dim=-1) < 0
    if bool(neg.any()):
        idx = tuple(int(i) for i in torch.nonzero(neg)[0])
        raise ValueError(f"{name}{_index_str(idx)}: row has a negative entry")
    off = (total - 1).abs() > tol
    if bool(off.any()):
        idx = tuple(int(i) for i in torch.nonzero(off)[0])
        raise ValueError(
            f"{name}{_index_str(idx)}: row sums to {float(total[idx]):.10g}, not 1 "
            f"(tolerance {tol:.2g} for {x.dtype})"
        )


def _check_shared_rows(target: torch.Tensor, draft: torch.Tensor, tokens: torch.Tensor) -> None:
    """Drafts that share their first ``t`` real tokens must have equal rows at position ``t``."""
    B, N, K1, V = target.shape
    K = K1 - 1
    if N == 1 or B == 0:
        return
    tol = ROW_SUM_TOL[target.dtype]
    same = (tokens.unsqueeze(2) == tokens.unsqueeze(1)) & (tokens.unsqueeze(2) >= 0)  # [B, N, N, K]
    shared = same.to(torch.int64).cumprod(dim=-1).sum(dim=-1)  # [B, N, N]: leading shared tokens
    rows = torch.arange(B, device=target.device)
    itself = torch.eye(N, dtype=torch.bool, device=target.device)
    for t in range(K + 1):
        # [B, N]: for each slot, the lowest slot sharing its first t real tokens (itself if none)
        rep = ((shared >= t) | itself).to(torch.int32).argmax(dim=1).to(torch.int64)
        for name, x in (("target_probs", target), ("draft_probs", draft)):
            if t == K and name == "draft_probs":
                continue
            for l in range(1, N):
                diff = (x[:, l, t] - x[rows, rep[:, l], t]).abs().amax(dim=-1)  # [B]
                bad = diff > tol
                if bool(bad.any()):
                    b = int(torch.nonzero(bad)[0, 0])
                    j = int(rep[b, l])
                    raise ValueError(
                        f"{name}[{b}, {l}, {t}]: differs from {name}[{b}, {j}, {t}] by {float(diff[b]):.3g} "
                        f"although drafts {j} and {l} share their first {t} tokens"
                    )


def _validate(spec: KernelSpec, target_probs, draft_probs, draft_tokens, validate: bool):
    target_probs = _check_tensor(target_probs, "target_probs")
    if target_probs.dtype not in ROW_SUM_TOL:
        raise ValueError(f"target_probs: dtype must be float32 or float64, got {target_probs.dtype}")
    device, dtype = target_probs.device, target_probs.dtype
    lead = 2 if spec.multi_draft else 1  # batch dims: (B, N) or (B,)
    want = "[B, N, K+1, V]" if spec.multi_draft else "[B, K+1, V]"
    if target_probs.dim() != lead + 2:
        raise ValueError(f"target_probs: expected shape {want} for scheme {spec.name!r}, got {tuple(target_probs.shape)}")
    *batch, K1, V = target_probs.shape
    if K1 < 1:
        raise ValueError("target_probs: needs K + 1 >= 1 rows per draft")
    if V < 1:
        raise ValueError("target_probs: the vocabulary must have at least one token (V >= 1)")
    if spec.multi_draft and batch[1] < 1:
        raise ValueError("target_probs: needs N >= 1 drafts")
    K = K1 - 1

    draft_tokens = _check_tensor(draft_tokens, "draft_tokens")
    if draft_tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"draft_tokens: dtype must be int64 (or int32), got {draft_tokens.dtype}")
    if draft_tokens.device != device:
        raise ValueError(f"draft_tokens: on {draft_tokens.device}, but target_probs is on {device}")
    if tuple(draft_tokens.shape) != (*batch, K):
        raise ValueError(f"draft_tokens: expected shape {(*batch, K)} to match target_probs {tuple(target_probs.shape)}, got {tuple(draft_tokens.shape)}")
    draft_tokens = draft_tokens.to(torch.int64)

    if draft_probs is None:
        if spec.needs_draft_probs:
            raise ValueError(f"draft_probs: required by scheme {spec.name!r}, got None")
    else:
        draft_probs = _check_tensor(draft_probs, "draft_probs")
        if draft_probs.dtype != dtype:
            raise ValueError(f"draft_probs: dtype {draft_probs.dtype} differs from target_probs dtype {dtype}")
        if draft_probs.device != device:
            raise ValueError(f"draft_probs: on {draft_probs.device}, but target_probs is on {device}")
        if tuple(draft_probs.shape) != (*batch, K, V):
            raise ValueError(f"draft_probs: expected shape {(*batch, K, V)} to match target_probs {tuple(target_probs.shape)}, got {tuple(draft_probs.shape)}")

    if validate:
        bad = (draft_tokens < PLACEHOLDER) | (draft_tokens >= V)
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"draft_tokens{_index_str(idx)} = {int(draft_tokens[idx])} is out of range [-1, {V}) for vocab size {V}")
        _check_rows(target_probs, "target_probs")
        if draft_probs is not None:
            _check_rows(draft_probs, "draft_probs")
        if spec.multi_draft:
            _check_shared_rows(target_probs, draft_probs, draft_tokens)
    return target_probs, draft_probs, draft_tokens


def _make_draws(spec: KernelSpec, B: int, D: int, device: torch.device, generator, seeds, draws, validate: bool) -> torch.Tensor:
    given = [n for n, v in (("generator", generator), ("seeds", seeds), ("draws", draws)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: pass exactly one of generator, seeds, draws (got {', '.join(given)})")
    if not given:
        if D:
            raise ValueError(f"draws: scheme {spec.name!r} needs randomness: pass one of generator, seeds, draws (no hidden default generator)")
        return torch.zeros(B, 0, dtype=torch.float64, device=device)
    if draws is not None:
        draws = _check_tensor(draws, "draws")
        if not draws.is_floating_point():
            raise ValueError(f"draws: dtype must be floating point, got {draws.dtype}")
        if draws.device != device:
            raise ValueError(f"draws: on {draws.device}, but target_probs is on {device}")
        if tuple(draws.shape) != (B, D):
            raise ValueError(f"draws: expected shape {(B, D)} (D = draws needed by {spec.name!r}), got {tuple(draws.shape)}")
        draws = draws.to(torch.float64)
        if validate and draws.numel():
            bad = ~((draws >= 0) & (draws < 1))  # also catches NaN
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0])
                raise ValueError(f"draws{_index_str(idx)} = {float(draws[idx])!r} is outside [0, 1)")
        return draws
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        return torch.rand((B, D), generator=generator, dtype=torch.float64, device=generator.device).to(device)
    seeds = _check_tensor(seeds, "seeds")
    if seeds.dtype != torch.int64:
        raise ValueError(f"seeds: dtype must be int64, got {seeds.dtype}")
    if tuple(seeds.shape) != (B,):
        raise ValueError(f"seeds: expected shape {(B,)}, got {tuple(seeds.shape)}")
    if seeds.device != device and seeds.device.type != "cpu":
        raise ValueError(f"seeds: on {seeds.device}, expected the CPU or {device}")
    return seeded_uniforms(seeds.to(device), D)


def verify(
    scheme: object,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    draws: torch.Tensor | None = None,
    impl: str = "kernel",
    validate: bool = True,
    draft_lens: torch.Tensor | None = None,
) -> VerifyOutput:
    """Verify a batch of drafts with the fast kernel of ``scheme`` (module docstring).

    ``impl="loop"`` runs the loop twin instead (same validation and draws).  ``validate=False`` skips
    the data checks (token range, row sums, shared rows), which read every input once and synchronise
    with the device; shape, dtype and device checks always run.

    ``draft_lens`` [B] (single-draft schemes): ragged drafts in vLLM's layout.  Row ``b`` drafted
    ``L_b <= K`` tokens; ``draft_tokens[b, L_b:]`` must be -1 and the rows past them (target rows
    after ``L_b + 1``, draft rows after ``L_b``) are ignored and may hold anything.  Row ``b`` is then
    verified exactly as the length-``L_b`` draft it is, with its first ``draws_needed(scheme, L_b)``
    uniforms (``draws[b, :L_b + 1]``: the layout of :mod:`hsd_ref.scheme` at ``k = L_b``), so its
    output equals the unpadded call's, draw for draw; ``tokens[b, L_b + 1:]`` are -1.  The rows of
    each length go through the kernel together (one call per distinct length; the lengths are read
    on the host).  This is the fast half of the adaptive schemes (hsd_ref.schemes.adaptive), whose
    draft length is a stopping time.
    """
    spec = get_kernel(scheme)
    if impl not in ("kernel", "loop"):
        raise ValueError(f"impl: expected 'kernel' or 'loop', got {impl!r}")
    lens = None if draft_lens is None else _check_lens(spec, draft_lens, target_probs, draft_tokens)
    if lens is not None and validate:  # padded rows may hold anything: check a valid stand-in
        target_probs, draft_probs = _fill_padding(target_probs, lens, 1), _fill_padding(draft_probs, lens, 0)
    target_probs, draft_probs, draft_tokens = _validate(spec, target_probs, draft_probs, draft_tokens, validate)
    B = target_probs.shape[0]
    K = target_probs.shape[-2] - 1
    N = target_probs.shape[1] if spec.multi_draft else 1
    D = draws_needed(spec.name, K, N)
    u = _make_draws(spec, B, D, target_probs.device, generator, seeds, draws, validate)
    fn = spec.kernel if impl == "kernel" else spec.loop
    if lens is None or all(n == K for n in lens):
        return fn(target_probs, draft_probs, draft_tokens, u)
    return _ragged(spec, fn, target_probs, draft_probs, draft_tokens, u, lens)


def _check_lens(spec: KernelSpec, draft_lens, target_probs, draft_tokens) -> list[int]:
    """``draft_lens`` validated against the shapes and the -1 padding; returned on the host."""
    draft_lens = _check_tensor(draft_lens, "draft_lens")
    if spec.multi_draft:
        raise ValueError(f"draft_lens: per-row draft lengths are for single-draft schemes, not {spec.name!r}")
    if draft_lens.dtype not in (torch.int64, torch.int32) or draft_lens.dim() != 1:
        raise ValueError(f"draft_lens: expected a 1-D int64 tensor [B], got {draft_lens.dtype} of shape {tuple(draft_lens.shape)}")
    if not isinstance(target_probs, torch.Tensor) or not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dim() != 2:
        return []  # _validate names the bad argument
    B, K = draft_tokens.shape
    if tuple(draft_lens.shape) != (B,):
        raise ValueError(f"draft_lens: expected shape {(B,)} to match draft_tokens {tuple(draft_tokens.shape)}, got {tuple(draft_lens.shape)}")
    lens = [int(n) for n in draft_lens.tolist()]  # the one host read: the lengths group the rows
    bad = [b for b, n in enumerate(lens) if not 0 <= n <= K]
    if bad:
        raise ValueError(f"draft_lens[{bad[0]}] = {lens[bad[0]]} is outside [0, K = {K}]")
    past = torch.arange(K, device=draft_tokens.device)[None, :] >= draft_lens.to(draft_tokens.device)[:, None]  # [B, K]
    wrong = past & (draft_tokens != PLACEHOLDER)
    if bool(wrong.any()):
        b, j = (int(i) for i in torch.nonzero(wrong)[0])
        raise ValueError(f"draft_tokens[{b}, {j}] = {int(draft_tokens[b, j])}: past draft_lens[{b}] = {lens[b]}, expected the padding -1")
    return lens


def _fill_padding(x, lens: list[int], extra: int):
    """``x`` [B, K + extra, V] with the rows at and after ``lens[b] + extra`` replaced by a valid row
    (a point mass on id 0), so validation reads only real rows and its messages keep their indices."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or len(lens) != x.shape[0]:
        return x
    cols = torch.arange(x.shape[1], device=x.device)
    pad = cols[None, :] >= torch.tensor(lens, device=x.device)[:, None] + extra  # [B, K + extra]
    stand_in = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
    stand_in[0] = 1
    return torch.where(pad[..., None], stand_in, x)


def _ragged(spec: KernelSpec, fn, target_probs, draft_probs, draft_tokens, u, lens: list[int]) -> VerifyOutput:
    """Rows grouped by draft length, each group verified at its own ``K = L``, scattered back."""
    B, K1, _ = target_probs.shape
    device = target_probs.device
    tokens = torch.full((B, K1), PLACEHOLDER, dtype=torch.int64, device=device)
    num_accepted = torch.zeros(B, dtype=torch.int64, device=device)
    for n in sorted(set(lens)):
        idx = torch.tensor([b for b, m in enumerate(lens) if m == n], dtype=torch.int64, device=device)
        q = None if draft_probs is None else draft_probs[idx, :n]
        out = fn(target_probs[idx, : n + 1], q, draft_tokens[idx, :n], u[idx, : draws_needed(spec.name, n)])
        tokens[idx, : n + 1] = out.tokens.to(torch.int64)
        num_accepted[idx] = out.num_accepted.to(torch.int64)
    return VerifyOutput(tokens, num_accepted, None)
