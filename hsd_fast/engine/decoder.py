"""Batched speculative and hierarchical decoding on Hugging Face causal LMs.

Levels ``M_0 < M_1 < ... < M_n`` (bottom-up, ``M_n`` = target), thresholds ``T_0 .. T_{n-1}``, one
lossless single-draft scheme per verifying level.  The step semantics are exactly those of
``hsd_ref.schemes.hierarchy`` (Globerson et al., arXiv 2510.19705, papers.md §4; HiSpec's
three-level reading, arXiv 2510.01336, papers.md §5):

* level 0 drafts ``T_0`` tokens (a model samples them autoregressively from its warped law; a
  model-free drafter proposes them deterministically: point-mass draft laws);
* a middle level ``i`` repeatedly requests a batch from level ``i - 1`` (continuing from context +
  its buffer), verifies it with ONE forward scoring ``T_{i-1} + 1`` positions, appends accepted + 1
  tokens, until it holds ``>= T_i`` tokens, and passes up exactly the first ``T_i`` (the surplus is
  discarded); the draft laws it passes up are its own rows along those tokens;
* the target verifies the batch of ``T_{n-1}`` tokens and emits accepted + 1 tokens.

With the target alone (``n = 0``) this is plain autoregressive decoding on the same backends, warps
and random streams: one target call and one uniform per token (the baseline of the benchmarks).

Batching: every row runs the same fixed-shape steps; a row that needs nothing more at some level
(its buffer is full, or it has finished) is *inactive* there: it still rides along in the batched
forwards but its results are discarded and it consumes no random numbers.  Randomness: row ``b``'s
uniforms are ``u(seed_b, c)`` for its own counter ``c`` (:mod:`hsd_fast.rng`), consumed in
the order of ``hsd_ref.Hierarchy.sample_iteration``: one per level-0 token (drafters and greedy
included, so the layout never depends on the levels' kinds), then ``T + 1`` per verification.  A
row's output therefore depends only on its prompt and seed, never on its batch neighbours (up to
floating-point differences of batched kernels, see docs/engine.md).

EOS / length: tokens after the first EOS are dropped and at most ``max_new_tokens`` are emitted;
both cuts are applied to the target's output stream, whose law is exact, so they keep it exact.

Lossless: per level, the scheme's proof (proofs/coq/SpecLossless.v ``spec_decoding_lossless``,
proofs/coq/Block.v ``block_lossless``) composed by hsd_ref.schemes.hierarchy's stream argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..drafters import point_mass_rows
from ..verify import ROW_SUM_TOL, draws_needed
from ..schemes import sample_inverse_cdf
from ..warp import Warp
from .config import ENGINE_SCHEMES, is_int_like, parse_schemes, parse_thresholds, as_int, as_int_list, as_prompt_list, default_thresholds
from .levels import DrafterLevel, ModelLevel, level_name, resolve_levels
from .metrics import LevelMetrics, Metrics
from ..rng import MAX_SEED, row_keys, uniforms
from .vocab import VocabMap

__all__ = ["SpeculativeDecoder", "GenerationResult", "generate", "ENGINE_SCHEMES", "default_thresholds"]

_ROW_TOL = ROW_SUM_TOL[torch.float64]  # a probability row must sum to 1 within this


def _default_verify():
    """``hsd_fast.verify.verify`` (the batched kernels) with data validation off: the engine checks
    every probability row itself, once per forward (``SpeculativeDecoder._probs``), so the per-call
    row checks would only add a device synchronisation."""
    from ..verify import verify

    def run(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        return verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws, validate=False)

    return run


def _grow(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` [B, W] with at least ``width`` columns (doubling, zero-filled), else ``x`` itself."""
    if width <= x.shape[1]:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], max(width, 2 * x.shape[1]) - x.shape[1])], 1)


def _append(seq: torch.Tensor, lens: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """A copy of ``seq`` [B, W] widened to ``W + n`` with ``new[b, :]`` [B, n] written at
    ``seq[b, lens[b]:]`` (``lens <= W``; no device sync).  Entries past a row's length are garbage
    by convention, so all ``n`` columns are written."""
    B, n = new.shape
    seq = torch.cat([seq, seq.new_zeros(B, n)], 1)
    if n:
        seq.scatter_(1, lens[:, None] + torch.arange(n, device=seq.device), new)
    return seq


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per prompt (EOS included when hit)
    finish_reasons: list[str]  # "eos" or "length"
    metrics: Metrics
    texts: list[str] | None = None


class SpeculativeDecoder:
    """Batched speculative / hierarchical decoder (module docstring).

    ``levels``: bottom-up level specs, target last (see :mod:`hsd_fast.engine.levels`).
    ``scheme``: one scheme name for every verifying level, or one per level ``1..n``.
    ``thresholds``: ``T_0..T_{n-1}`` (a tuple), or an int ``k`` = ``T_{n-1}`` with the halving rule
    below it (default ``k = 4``).  ``temperature`` 0 (or ``scheme="greedy"``) = greedy decoding.
    ``allowed_ids`` / ``logits_processor``: applied identically at every level (:class:`Warp`).
    ``verify_fn``: the verification kernel (default ``hsd_fast.verify``), signature
    ``verify(scheme, target_probs, draft_probs, draft_tokens, *, draws=...)``.
    """

    def __init__(
        self,
        levels: Sequence[object],
        scheme: str | Sequence[str] = "tokenwise",
        thresholds: int | Sequence[int] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        allowed_ids: Sequence[int] | None = None,
        logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tokenizer=None,
        eos_token_id: int | Sequence[int] | None | str = "auto",
        cache: str = "auto",
        verify_fn: Callable | None = None,
        loader: Callable | None = None,
    ):
        if isinstance(dtype, str):
            try:
                dtype = getattr(torch, dtype)
            except AttributeError:
                raise ValueError(f"dtype: unknown torch dtype {dtype!r}") from None
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"dtype: {dtype!r} is not a torch dtype")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device: cannot interpret {device!r} as a torch device") from None
        self.levels, found_tok = resolve_levels(levels, device=device, dtype=dtype, loader=loader, cache=cache)
        self.tokenizer = tokenizer if tokenizer is not None else found_tok
        n = len(self.levels) - 1
        if isinstance(self.levels[-1], DrafterLevel):
            raise ValueError("levels: a model-free drafter cannot be the target")
        self.n = n
        self.vocab_size = self.levels[-1].vocab_size
        self.device = getattr(self.levels[-1], "device", torch.device("cpu"))
        for i, lvl in enumerate(self.levels):
            dev = getattr(lvl, "device", None)
            if dev is not None and torch.device(dev) != self.device:
                raise ValueError(f"levels[{i}]: {level_name(lvl)} is on {dev}, the target on {self.device}; pass device= to place every level together")

        self.schemes, temperature = parse_schemes(scheme, n, temperature)
        self.warp = Warp(temperature, top_k, top_p, allowed_ids=allowed_ids, logits_processor=logits_processor)
        self.warp.check_vocab(self.vocab_size)
        # Restricted vocabulary (hsd_fast.engine.vocab): with allowed_ids, no logits processor (it
        # needs the full logits) and no custom level, the engine works on |A| + 1 columns.
        compressible = all(isinstance(lvl, (ModelLevel, DrafterLevel)) for lvl in self.levels)
        restrict = allowed_ids is not None and logits_processor is None and compressible
        self.vocab = VocabMap(self.vocab_size, self.warp.allowed_ids if restrict else None, self.device)
        if self.vocab.restricted:
            for lvl in self.levels:
                if isinstance(lvl, ModelLevel):
                    lvl.vocab_ids = self.vocab.model_ids
            self.warp = Warp(temperature, top_k, top_p)
        self.V = self.vocab.V
        self.thresholds = parse_thresholds(thresholds, n)
        self.eos_ids = self._eos(eos_token_id)
        if verify_fn is not None and not callable(verify_fn):
            raise ValueError(f"verify_fn: expected a callable like hsd_fast.verify, got {verify_fn!r}")
        self.verify_fn = verify_fn if verify_fn is not None else _default_verify()

    # ------------------------------------------------------------------ configuration helpers

    def _eos(self, eos_token_id) -> tuple[int, ...]:
        if eos_token_id is None:
            return ()
        if isinstance(eos_token_id, str):
            if eos_token_id != "auto":
                raise ValueError(f"eos_token_id: expected an id, a sequence of ids, None or 'auto', got {eos_token_id!r}")
            ids = getattr(self.tokenizer, "eos_token_id", None)
            if ids is None:
                top = self.levels[-1]
                cfg = getattr(getattr(getattr(top, "backend", None), "model", None), "generation_config", None)
                ids = getattr(cfg, "eos_token_id", None)
            if ids is None:
                return ()
            eos_token_id = ids
        if is_int_like(eos_token_id):
            eos_token_id = [eos_token_id]
        return tuple(as_int_list(eos_token_id, "eos_token_id", 0, self.vocab_size - 1))

    def describe(self) -> str:
        parts = []
        for i, lvl in enumerate(self.levels):
            s = level_name(lvl)
            if i < self.n:
                s += f" (T={self.thresholds[i]})"
            if i > 0:
                s += f" <{self.schemes[i - 1]}>"
            parts.append(s)
        return " -> ".join(parts) + f"; {self.warp!r}"

    def encode(self, prompts) -> list[list[int]]:
        out = []
        for i, p in enumerate(as_prompt_list(prompts)):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError(f"prompts[{i}]: a text prompt needs a tokenizer (pass tokenizer= or token ids)")
                ids = list(self.tokenizer(p, add_special_tokens=False)["input_ids"]) if p else []
            else:
                ids = as_int_list(p, f"prompts[{i}]")
            if not ids:
                raise ValueError(f"prompts[{i}]: empty prompt (at least one token is needed to condition on)")
            bad = [x for x in ids if not 0 <= x < self.vocab_size]
            if bad:
                raise ValueError(f"prompts[{i}]: token id {bad[0]} is out of range for vocab size {self.vocab_size}")
            out.append(ids)
        return out

    def _check_context_length(self, ids: list[list[int]], max_new_tokens: int) -> None:
        need = max(map(len, ids)) + max_new_tokens
        for i, lvl in enumerate(self.levels):
            limit = getattr(lvl, "max_positions", None)
            if limit is not None and need > limit:
                raise ValueError(
                    f"max_new_tokens: the longest prompt ({need - max_new_tokens} tokens) + max_new_tokens "
                    f"({max_new_tokens}) = {need} exceeds the context length {limit} of levels[{i}] ({level_name(lvl)})"
                )

    # ------------------------------------------------------------------ the step loop

    def _probs(self, level: int, seq, lens, n_out: int, active):
        """Level ``level``'s warped rows, on the engine's vocabulary, checked.  -> [B, n_out, V]"""
        lvl = self.levels[level]
        p = lvl.probs(seq, lens, n_out, self.warp)
        want = (seq.shape[0], n_out, self.vocab.level_width)
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != want or p.dtype != torch.float64:
            got = f"{tuple(p.shape)} {p.dtype}" if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"levels[{level}]: {level_name(lvl)}.probs returned {got}, expected a float64 tensor of shape {want}")
        p = self.vocab.pad(p)
        # finite, non-negative rows summing to 1 (one reduction; read at the iteration's sync)
        bad = ~((p.sum(-1) - 1).abs() <= _ROW_TOL) | (p.amin(-1) < 0)  # [B, n_out]; NaN counts as bad
        self._bad[level] |= (bad.any(-1) & active).any()
        return p

    def _raise_bad_rows(self) -> None:
        level = int(torch.nonzero(self._bad)[0, 0])
        raise ValueError(
            f"levels[{level}]: {level_name(self.levels[level])} produced a probability row that is not finite, "
            "non-negative and normalised (NaN or inf logits, e.g. an fp16 overflow or a logits_processor "
            "returning NaN, or a custom level's bad rows); nothing from this iteration was emitted"
        )

    def _draws(self, n: int, active: torch.Tensor) -> torch.Tensor:
        """``n`` uniforms per row from each row's own stream; only active rows advance.  # [B, n]"""
        u = uniforms(self._keys, self._counters, n)
        self._counters += n * active.to(torch.int64)
        return u

    def _draft(self, seq, lens, active):
        """Level 0: ``T_0`` tokens per row and their draft laws.  -> [B, T_0], [B, T_0, V]"""
        T = self.thresholds[0]
        lvl = self.levels[0]
        if isinstance(lvl, DrafterLevel):
            self._draws(T, active)  # keep hsd_ref's draw layout: one uniform per level-0 token
            toks = self.vocab.to_engine(lvl.propose(seq, lens, T))
            return toks, point_mass_rows(toks, self.V)
        toks, rows = [], []
        for _ in range(T):
            q = self._probs(0, seq, lens, 1, active)[:, 0]  # [B, V]
            x = sample_inverse_cdf(q, self._draws(1, active)[:, 0])
            seq = _append(seq, lens, self.vocab.to_model(x)[:, None])
            lens = lens + 1
            toks.append(x)
            rows.append(q)
        return torch.stack(toks, 1), torch.stack(rows, 1)

    def _verify(self, level, seq, lens, d_tok, d_prob, active):
        """Level ``level`` scores ``d_tok`` after each row's context in ONE forward and verifies it."""
        T = d_tok.shape[1]
        x = _append(seq, lens, self.vocab.to_model(d_tok))
        p = self._probs(level, x, lens + T, T + 1, active)  # [B, T + 1, V]
        u = self._draws(T + 1, active)  # the layout is scheme-independent; greedy uses none of them
        scheme = self.schemes[level - 1]
        t0 = time.perf_counter()
        res = self.verify_fn(scheme, p, d_prob, d_tok, draws=u[:, : draws_needed(scheme, T)])
        out, nacc = res[0], res[1]
        if self.device.type == "cuda":  # _record synchronises next anyway; this puts the time here
            torch.cuda.synchronize(self.device)
        self.metrics.levels[level].verify_s += time.perf_counter() - t0
        self._record(level, p, d_prob, d_tok, nacc, active)
        return out.to(torch.int64), nacc.to(torch.int64), p

    def _batch(self, level, seq, lens, active):
        """The ``T_level`` tokens (and their laws) that ``level`` passes up; hsd_ref ``_sample_batch``."""
        if level == 0:
            return self._draft(seq, lens, active)
        T, T_low = self.thresholds[level], self.thresholds[level - 1]
        B, dev = seq.shape[0], seq.device
        cap = T + 2 * (T_low + 1)  # filled <= T + T_low, so filled + T_low + 1 columns always fit
        buf = torch.zeros(B, cap, dtype=torch.int64, device=dev)
        buf_p = torch.zeros(B, cap, self.V, dtype=torch.float64, device=dev)
        filled = torch.zeros(B, dtype=torch.int64, device=dev)
        cols = torch.arange(T_low + 1, device=dev)
        while True:
            need = active & (filled < T)
            more, bad = torch.stack([need.any(), self._bad.any()]).tolist()  # one sync per round
            if bad:
                self._raise_bad_rows()
            if not more:
                break
            ctx = _append(seq, lens, self.vocab.to_model(buf))  # context + buffer (garbage past lens + filled)
            d_tok, d_prob = self._batch(level - 1, ctx, lens + filled, need)
            out, nacc, p = self._verify(level, ctx, lens + filled, d_tok, d_prob, need)
            count = torch.where(need, nacc + 1, torch.zeros_like(nacc))
            # all T_low + 1 columns are written at filled..: those past filled + count are overwritten by
            # the next call (or lie past T), so nothing needs masking (cap leaves room for them)
            dst = filled[:, None] + cols
            buf.scatter_(1, dst, out.clamp(min=0))
            buf_p.scatter_(1, dst[..., None].expand(-1, -1, self.V), p)
            filled = filled + count
        return buf[:, :T], buf_p[:, :T]

    def _record(self, level, p, d_prob, d_tok, nacc, active):
        m = self.metrics.levels[level]
        T = d_prob.shape[1]
        a = active.to(torch.int64)
        rounds = int(a.sum())
        if rounds == 0:
            return
        m.rounds += rounds
        m.drafted += rounds * T
        m.accepted += int((nacc * a).sum())
        m.rejections += int(((nacc < T).to(torch.int64) * a).sum())
        tested = (torch.arange(T, device=p.device)[None, :] <= nacc[:, None]) & active[:, None]  # [B, T]
        if isinstance(self.levels[level - 1], DrafterLevel):  # point masses: sum_v min(p, q) = p(proposal)
            overlap = p[:, :T].gather(-1, d_tok[..., None])[..., 0]  # [B, T]
        else:
            overlap = torch.minimum(p[:, :T], d_prob).sum(-1)  # [B, T]
        m.minpq_sum += float((overlap * tested).sum())
        m.tested += int(tested.sum())
        hist = torch.bincount(nacc[active], minlength=T + 1).tolist()
        if len(m.accept_counts) < len(hist):
            m.accept_counts.extend([0] * (len(hist) - len(m.accept_counts)))
        for j, c in enumerate(hist):
            m.accept_counts[j] += c

    def _backends(self) -> list:
        seen: dict = {}
        for lvl in self.levels:
            be = getattr(lvl, "backend", None)
            if be is not None:
                seen.setdefault(id(be), be)
        return list(seen.values())

    def _prefill(self, ids: list[list[int]], backends: list) -> None:
        """Run every caching backend over the prompts before the first iteration, so that no level's
        first call pays for the prompt (the cost curves of the metrics are decode costs).  Rows with
        identical prompts (e.g. many samples of one prompt) share one prefill: each distinct prompt
        runs once per backend and its cached state is copied to its rows."""
        backends = [be for be in backends if hasattr(be, "prefill")]
        if not backends:
            return
        uniq: dict = {}
        inverse = [uniq.setdefault(tuple(x), len(uniq)) for x in ids]
        dev = self.device
        useq = torch.zeros(len(uniq), max(map(len, uniq)), dtype=torch.int64, device=dev)
        for u, x in enumerate(uniq):
            useq[u, : len(x)] = torch.tensor(x, dtype=torch.int64)
        ulens = torch.tensor([len(x) for x in uniq], dtype=torch.int64, device=dev)
        index = torch.tensor(inverse, dtype=torch.int64, device=dev)
        for be in backends:
            be.prefill(useq, ulens)
            if len(uniq) != len(ids):
                be.select_rows(index)

    def _iteration(self, ctx, lens, active):
        """One target iteration: a batch from level n-1, one target verification (or, with the
        target alone, one autoregressive token from one uniform)."""
        if self.n == 0:
            q = self._probs(0, ctx, lens, 1, active)[:, 0]  # [B, V]
            x = sample_inverse_cdf(q, self._draws(1, active)[:, 0])
            self.metrics.levels[0].rounds += int(active.sum())
            return x[:, None], torch.zeros_like(x)
        d_tok, d_prob = self._batch(self.n - 1, ctx, lens, active)
        out, nacc, _ = self._verify(self.n, ctx, lens, d_tok, d_prob, active)
        return out, nacc

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int = 64,
        seeds: Sequence[int] | None = None,
        seed: int = 0,
        on_tokens: Callable[[list[list[int]]], None] | None = None,
    ) -> GenerationResult:
        """Generate for a batch of prompts (strings or token-id lists of any lengths).

        ``seeds[b]`` seeds row ``b`` (default ``seed + b``); ``on_tokens(new)`` is called after every
        target iteration with each row's newly emitted tokens (streaming).  Memory and per-step cost
        grow with the tokens actually generated, not with ``max_new_tokens`` (docs/engine.md).
        """
        max_new_tokens = as_int(max_new_tokens, "max_new_tokens", 1)
        if on_tokens is not None and not callable(on_tokens):
            raise ValueError(f"on_tokens: expected a callable taking each row's new tokens, got {on_tokens!r}")
        ids = self.encode(prompts)
        B = len(ids)
        if seeds is None:
            seed = as_int(seed, "seed", 0, MAX_SEED - B + 1)
            seeds = [seed + b for b in range(B)]
        elif is_int_like(seeds):
            raise ValueError(f"seeds: expected one seed per prompt (a sequence of {B} ints), got {seeds!r}; use seed= for one base seed")
        seeds = as_int_list(seeds, "seeds", 0, MAX_SEED)
        if len(seeds) != B:
            raise ValueError(f"seeds: expected {B} seeds (one per prompt), got {len(seeds)}")
        self._check_context_length(ids, max_new_tokens)
        dev = self.device
        for lvl in self.levels:
            be = getattr(lvl, "backend", None)
            if be is not None:
                be.reset()
        self._keys = row_keys(torch.tensor(seeds, dtype=torch.int64, device=dev))
        self._counters = torch.zeros(B, dtype=torch.int64, device=dev)
        self._bad = torch.zeros(len(self.levels), dtype=torch.bool, device=dev)
        self.metrics = Metrics(
            [
                LevelMetrics(
                    level_name(lvl),
                    "target" if i == self.n else getattr(lvl, "kind", "model"),
                    None if i == 0 else self.schemes[i - 1],
                    None if i == self.n else self.thresholds[i],
                )
                for i, lvl in enumerate(self.levels)
            ]
        )
        for lvl in self.levels:
            lvl.calls, lvl.time_s = 0, 0.0
            if hasattr(lvl, "by_positions"):
                lvl.by_positions = {}

        lens = torch.tensor([len(x) for x in ids], dtype=torch.int64, device=dev)
        K1 = (self.thresholds[-1] if self.n else 0) + 1
        # ctx and gen grow with the tokens generated (never sized by max_new_tokens up front); the
        # host tracks an upper bound of the longest row, so growing needs no device sync
        longest = max(map(len, ids))
        width = longest + 4 * K1
        ctx = torch.tensor([x + [0] * (width - len(x)) for x in ids], dtype=torch.int64, device=dev)
        gen = torch.zeros(B, 4 * K1, dtype=torch.int64, device=dev)
        gen_len = torch.zeros(B, dtype=torch.int64, device=dev)
        active = torch.ones(B, dtype=torch.bool, device=dev)
        hit_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        eos = torch.tensor(self.eos_ids, dtype=torch.int64, device=dev) if self.eos_ids else None
        cols = torch.arange(K1, device=dev)
        rows = torch.arange(B, device=dev)  # original index of each live row
        tokens: list = [None] * B
        reasons: list = [None] * B

        t0 = time.perf_counter()
        backends = self._backends()
        self._prefill(ids, backends)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.metrics.prefill_s = time.perf_counter() - t0
        emitted = 0  # upper bound of every live row's gen_len
        while rows.numel():
            out, nacc = self._iteration(ctx, lens, active)
            out = self.vocab.to_model(out)
            count = torch.where(active, nacc + 1, torch.zeros_like(nacc))
            count = torch.minimum(count, max_new_tokens - gen_len)
            if eos is not None:
                is_eos = torch.isin(out, eos) & (cols[None, :] < count[:, None])
                any_eos = is_eos.any(1)
                first = is_eos.to(torch.int64).argmax(1)
                count = torch.where(any_eos, first + 1, count)
                hit_eos |= any_eos
            if emitted + 2 * K1 > min(gen.shape[1], ctx.shape[1] - longest):  # the bound ran out: read the real lengths (rare)
                emitted = int(gen_len.max())
                gen, ctx = _grow(gen, emitted + 2 * K1), _grow(ctx, longest + emitted + 2 * K1)
            emitted += K1
            keep = cols[None, :] < count[:, None]
            # unique destinations per row (no clamping), so the scatter has no write conflicts
            dst = gen_len[:, None] + cols
            gen.scatter_(1, dst, torch.where(keep, out, gen.gather(1, dst)))
            cdst = lens[:, None] + cols
            ctx.scatter_(1, cdst, torch.where(keep, out, ctx.gather(1, cdst)))
            gen_len += count
            lens += count
            active &= ~hit_eos & (gen_len < max_new_tokens)
            all_active, *bad = torch.cat([active.all()[None], self._bad]).tolist()  # the iteration's one sync
            if any(bad):
                self._raise_bad_rows()
            if on_tokens is not None:
                new: list = [[] for _ in range(B)]
                for j, r in enumerate(rows.tolist()):
                    new[r] = out[j, : int(count[j])].tolist()
                on_tokens(new)
            if not all_active:  # retire finished rows: no forward runs for them again
                done = torch.nonzero(~active)[:, 0]
                for r, row, n_gen, eos_hit in zip(*(x[done].tolist() for x in (rows, gen, gen_len, hit_eos))):
                    tokens[r] = row[:n_gen]
                    reasons[r] = "eos" if eos_hit else "length"
                live = torch.nonzero(active)[:, 0]
                ctx, lens, gen, gen_len, active, hit_eos, rows = (x[live] for x in (ctx, lens, gen, gen_len, active, hit_eos, rows))
                self._keys, self._counters = self._keys[live], self._counters[live]
                for be in backends:
                    be.select_rows(live)
        wall = time.perf_counter() - t0

        m = self.metrics
        m.wall_time_s = wall
        m.new_tokens = sum(len(t) for t in tokens)
        for lm, lvl in zip(m.levels, self.levels):
            lm.calls, lm.time_s = getattr(lvl, "calls", 0), getattr(lvl, "time_s", 0.0)
            lm.by_positions = {k: list(v) for k, v in getattr(lvl, "by_positions", {}).items()}
        m.target_calls = m.levels[-1].calls
        m.target_rounds = m.levels[-1].rounds
        texts = None
        if self.tokenizer is not None:
            texts = [self.tokenizer.decode(t) for t in tokens]
        return GenerationResult(tokens, reasons, m, texts)


def generate(
    prompts,
    *,
    target,
    drafts: Sequence[object] = ("ngram",),
    scheme: str | Sequence[str] = "tokenwise",
    max_new_tokens: int = 64,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    thresholds: int | Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    device=None,
    dtype=None,
    **kwargs,
) -> GenerationResult:
    """One call: build a :class:`SpeculativeDecoder` over ``[*drafts, target]`` and generate."""
    if isinstance(drafts, (str, bytes)) or not isinstance(drafts, Sequence):
        drafts = [drafts]
    dec = SpeculativeDecoder(
        [*drafts, target],
        scheme=scheme,
        thresholds=thresholds,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        device=device,
        dtype=dtype,
        **kwargs,
    )
    return dec.generate(prompts, max_new_tokens=max_new_tokens, seeds=seeds, seed=seed)
