"""Batched speculative and hierarchical decoding: the rows around the step.

:class:`SpeculativeDecoder` decodes a batch of prompts with levels ``M_0 < ... < M_n`` (bottom-up,
``M_n`` the target), thresholds ``T_0 .. T_{n-1}`` and one lossless single-draft scheme per verifying
level.  One target iteration is :func:`hsd_fast.engine.step.iteration` (the step semantics of
``hsd_ref.schemes.hierarchy``: Globerson et al., arXiv 2510.19705, papers.md §4; HiSpec's
three-level reading, arXiv 2510.01336, papers.md §5).  This module owns what lies around it: the
rows (their contexts and outputs), the EOS and length cuts, streaming, and retiring finished rows.

Batching: every row runs the same fixed-shape steps; a row that needs nothing more at some level is
*inactive* there (it rides along, its results are discarded, it consumes no random numbers).
Randomness: row ``b``'s uniforms are ``u(seed_b, c)`` for its own counter ``c`` (:mod:`hsd_fast.rng`),
consumed in the order of ``hsd_ref.Hierarchy.sample_iteration``: one per level-0 token (drafters and
greedy included, so the layout never depends on the levels' kinds), then ``T + 1`` per
verification.  A row's output therefore depends only on its prompt and seed, never on its batch
neighbours (up to floating-point differences of batched kernels, see docs/engine.md).

EOS / length: tokens after the first EOS are dropped and at most ``max_new_tokens`` are emitted;
both cuts are applied to the target's output stream, whose law is exact, so they keep it exact.

Host reads per iteration: one (whether every row is still running, with the row-check verdict),
plus one per middle-level round (whether a row still needs tokens) and one per model forward (the
cache's lengths, :mod:`hsd_fast.engine.backend`); retiring rows and streaming read more, only when
they happen.  tests/fast/test_syncs.py holds the engine to that budget.

Lossless: per level, the scheme's proof (proofs/coq/SpecLossless.v ``spec_decoding_lossless``,
proofs/coq/Block.v ``block_lossless``) composed by hsd_ref.schemes.hierarchy's stream argument.
"""

from __future__ import annotations

import inspect

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..warp import Warp
from . import multidraft, step
from .stopping import check_stop_rule
from .config import ENGINE_SCHEMES, as_int, as_int_list, as_prompt_list, default_thresholds, is_int_like, parse_device, parse_dtype, parse_probs_dtype, parse_schemes, parse_seeds, parse_thresholds
from .levels import ModelLevel, level_name
from .metrics import LevelMetrics, Metrics
from .plan import AutoPlanner, Plan, probe
from .replan import Replanner
from .specs import resolve_levels
from .state import CallState
from ..rng import MAX_SEED
from .vocab import VocabMap

__all__ = ["SpeculativeDecoder", "GenerationResult", "generate", "ENGINE_SCHEMES", "default_thresholds"]


def _default_verify():
    """``hsd_fast.verify`` (the batched kernels) with data validation off: the engine checks every
    probability row itself, once per forward (:meth:`CallState.probs`), so the per-call row checks
    would only add a device synchronisation."""
    from ..kernels import verify

    def run(scheme, target_probs, draft_probs, draft_tokens, *, draws, draft_lens=None):
        return verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws, validate=False, draft_lens=draft_lens)

    return run


def _takes_draft_lens(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # a builtin or C callable: let the call decide
    return any(p.name == "draft_lens" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` [B, W] zero-padded to ``width`` columns when that is wider, else ``x`` itself."""
    if width <= x.shape[1]:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], 1)


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per prompt (EOS included when hit)
    finish_reasons: list[str]  # "eos" or "length"
    metrics: Metrics
    texts: list[str] | None = None
    plan: Plan | None = None  # the levels (decoder indices) and thresholds this call ran


class _Rows:
    """The live rows of one call: contexts ``ctx`` [B, W] (model ids) of lengths ``lens``, generated
    tokens ``gen`` of lengths ``gen_len``, and each row's index in the caller's batch.  Buffers grow
    with the tokens generated; the host keeps an upper bound of the longest row, so growing needs no
    device read."""

    def __init__(self, ids: list[list[int]], K1: int, device: torch.device):
        B = len(ids)
        self.K1, self.longest, self.emitted = K1, max(map(len, ids)), 0  # emitted: bound of every gen_len
        width = self.longest + 4 * K1
        self.ctx = torch.tensor([x + [0] * (width - len(x)) for x in ids], dtype=torch.int64, device=device)
        self.lens = torch.tensor([len(x) for x in ids], dtype=torch.int64, device=device)
        self.gen = torch.zeros(B, 4 * K1, dtype=torch.int64, device=device)
        self.gen_len = torch.zeros(B, dtype=torch.int64, device=device)
        self.active = torch.ones(B, dtype=torch.bool, device=device)
        self.hit_eos = torch.zeros(B, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(B, dtype=torch.bool, device=device)  # cut by the caller's stop rule
        self.harvested = torch.zeros(B, dtype=torch.bool, device=device)  # finished, outputs on the host
        self.index = torch.arange(B, device=device)  # each row's index in the caller's batch
        self.n_live = B  # rows not harvested (host count)
        self.cols = torch.arange(K1, device=device)
        self.tokens: list = [None] * B
        self.reasons: list = [None] * B

    def emit(self, out: torch.Tensor, num_accepted: torch.Tensor, max_new: int, eos: torch.Tensor | None) -> torch.Tensor:
        """Append each active row's ``num_accepted + 1`` tokens of ``out`` [B, K1] (model ids), cut at
        the first EOS and at ``max_new`` tokens.  -> the count kept per row [B]"""
        cols = self.cols
        count = torch.where(self.active, num_accepted + 1, 0)
        count = torch.minimum(count, max_new - self.gen_len)
        if eos is not None:
            is_eos = torch.isin(out, eos) & (cols[None, :] < count[:, None])
            any_eos = is_eos.any(1)
            count = torch.where(any_eos, is_eos.to(torch.int64).argmax(1) + 1, count)
            self.hit_eos |= any_eos
        if self.emitted + 2 * self.K1 > min(self.gen.shape[1], self.ctx.shape[1] - self.longest):
            # the bound ran out: read the real lengths and make room for twice that, so the buffers
            # stay within 2x the tokens generated and this read happens O(K1 log(tokens)) times
            self.emitted = int(self.gen_len.max())
            need = 2 * (self.emitted + 2 * self.K1)
            self.gen, self.ctx = _widen(self.gen, need), _widen(self.ctx, self.longest + need)
        self.emitted += self.K1
        keep = cols[None, :] < count[:, None]
        for buf, start in ((self.gen, self.gen_len), (self.ctx, self.lens)):  # unique destinations: no write conflicts
            dst = start[:, None] + cols
            buf.scatter_(1, dst, torch.where(keep, out, buf.gather(1, dst)))
        self.gen_len += count
        self.lens += count
        self.active &= ~self.hit_eos & (self.gen_len < max_new)
        return count

    def new_tokens(self, out: torch.Tensor, count: torch.Tensor) -> list[tuple[int, list[int]]]:
        """Each live row's tokens kept this iteration, on the host: ``(caller's row index, tokens)``."""
        return [(r, row[:c]) for r, row, c in zip(self.index.tolist(), out.tolist(), count.tolist())]

    def cut(self, cuts: dict[int, int]) -> None:
        """Drop the last ``cuts[i]`` tokens of batch row ``i`` (all from this iteration) and finish it:
        a stop rule fired inside this iteration's tokens.  An EOS can only be the last kept token, so a
        cut removes it."""
        rows = torch.tensor(list(cuts), dtype=torch.int64, device=self.lens.device)
        drop = torch.tensor(list(cuts.values()), dtype=torch.int64, device=self.lens.device)
        self.gen_len[rows] -= drop
        self.lens[rows] -= drop
        self.hit_eos[rows] &= drop == 0
        self.stopped[rows] = True
        self.active[rows] = False

    def harvest(self) -> None:
        """Move the newly finished rows' outputs to the host (they stay in the batch, inactive)."""
        newly = ~self.active & ~self.harvested
        done = torch.nonzero(newly)[:, 0]
        for r, row, n, eos_hit, stop_hit in zip(*(x[done].tolist() for x in (self.index, self.gen, self.gen_len, self.hit_eos, self.stopped))):
            self.tokens[r] = row[:n]
            self.reasons[r] = "eos" if eos_hit else "stop" if stop_hit else "length"
        self.harvested |= newly
        self.n_live -= int(done.numel())

    def compact(self) -> torch.Tensor:
        """Drop the harvested rows.  -> the rows kept [B'] (indices into the current batch)"""
        live = torch.nonzero(~self.harvested)[:, 0]
        for name in ("ctx", "lens", "gen", "gen_len", "active", "hit_eos", "stopped", "harvested", "index"):
            setattr(self, name, getattr(self, name)[live])
        return live


def _apply_stop(stop, rows: _Rows, new: list[tuple[int, list[int]]], history: list[list[int]]) -> bool:
    """Run the caller's stop rule over each row's new tokens (``new`` from :meth:`_Rows.new_tokens`,
    cut in place to what is kept), cut the rows it stops, and say whether any was cut."""
    cuts: dict[int, int] = {}
    for i, (r, toks) in enumerate(new):
        if not toks:
            continue
        hist = history[r]
        hist.extend(toks)
        m = stop(r, list(hist), len(toks))
        if m is None:
            continue
        if isinstance(m, bool) or not isinstance(m, int) or not len(hist) - len(toks) < m <= len(hist):
            raise ValueError(f"stop: returned {m!r} for row {r}; expected None or a cut length in ({len(hist) - len(toks)}, {len(hist)}]")
        drop = len(hist) - m
        del hist[m:]
        new[i] = (r, toks[: len(toks) - drop])
        cuts[i] = drop
    if cuts:
        rows.cut(cuts)
    return bool(cuts)


def _compact_due(n_live: int, n_rows: int, device: torch.device) -> bool:
    """Whether to drop finished rows now.  Dropping copies every live row's cache state; keeping a
    finished row costs its share of every later forward.  On a CPU (compute-bound) rows are dropped
    as soon as they finish; elsewhere (a GPU decode step is bound by memory traffic, so an idle row
    is nearly free while a copy of the cache is not) only once at most half of the rows are live,
    so each call copies the cache O(log B) times."""
    return device.type == "cpu" or 2 * n_live <= n_rows


class SpeculativeDecoder:
    """Batched speculative / hierarchical decoder (module docstring).

    ``levels``: bottom-up level specs, target last (see :mod:`hsd_fast.engine.specs`).
    ``scheme``: one scheme name for every verifying level, or one per level ``1..n``.
    ``thresholds``: ``T_0..T_{n-1}`` (a tuple), or an int ``k`` = ``T_{n-1}`` with the halving rule
    below it (default ``k = 4``), or ``"auto"``: each call runs the levels and thresholds that the
    latency model finds fastest for its batch size, from this decoder's own measurements
    (:mod:`hsd_fast.engine.plan`; implies ``timing``).  ``temperature`` 0 (or ``scheme="greedy"``) = greedy decoding.
    ``allowed_ids`` / ``logits_processor`` / ``context_processor``: applied identically at every level
    (:class:`Warp`; ``context_processor(input_ids, scores) -> scores`` has transformers'
    ``LogitsProcessor`` signature and is called with each position's own context, model ids).
    ``vocab_size``: the shared vocabulary of levels whose vocabularies differ only by padding rows
    (ids ``>= vocab_size`` get probability 0 at every level; :func:`resolve_levels`).
    ``verify_fn``: the verification kernel (default ``hsd_fast.verify``), signature
    ``verify(scheme, target_probs, draft_probs, draft_tokens, *, draws=...)``.
    ``timing``: measure each level call and verification (``Metrics`` seconds; on CUDA with a device
    synchronisation around each, so only when asked for).  Call counts are always recorded.
    ``compile``: run the cached models' layers through ``torch.compile`` (docs/engine.md, "Compiled
    layers"; the first calls compile).
    ``draft_stop``: adaptive draft length at levels[0] (:mod:`hsd_fast.engine.stopping`): a
    ``StopRule`` (``ConfidenceStop``, ``RandomisedStop``, ``LearnedConfidenceStop``) or a float, the
    threshold of a ``ConfidenceStop``; ``T_0`` is then the maximum length.  Lossless for every scheme
    (a stopping time; proofs/coq/Adaptive.v); verified with ragged drafts.
    ``replan_every``: with ``thresholds="auto"``, re-fit the call's thresholds every ``N`` target
    iterations from everything measured so far, earlier calls and this one (:mod:`hsd_fast.engine.replan`;
    the chain stays the call's; lossless: a plan depends on past iterations only).  ``None``: once per call.
    ``probs_dtype``: the dtype of every probability row (``"float32"``, the default, or ``"float64"``);
    the kernels accumulate cumulative sums and residual masses in float64 either way (docs/engine.md).
    ``n_drafts``: drafts per row for a multi-draft scheme (``rrs``, ``rrs_without_replacement``,
    ``spectr_kseq``; required with them) on a two-level stack with a draft model at levels[0]; ``thresholds``
    is then each draft's length ``K`` (:mod:`hsd_fast.engine.multidraft`).  ``None`` or 1 otherwise.
    """

    def __init__(
        self,
        levels: Sequence[object],
        scheme: str | Sequence[str] = "tokenwise",
        thresholds: int | Sequence[int] | str | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        *,
        allowed_ids: Sequence[int] | None = None,
        logits_processor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        context_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        vocab_size: int | None = None,
        tokenizer=None,
        eos_token_id: int | Sequence[int] | None | str = "auto",
        cache: str = "auto",
        verify_fn: Callable | None = None,
        loader: Callable | None = None,
        timing: bool = False,
        probs_dtype: str | torch.dtype = "float32",
        compile: bool = False,
        draft_stop: object = None,
        replan_every: int | None = None,
        n_drafts: int | None = None,
    ):
        dtype, device, probs_dtype = parse_dtype(dtype), parse_device(device), parse_probs_dtype(probs_dtype)
        if not isinstance(compile, bool):
            raise ValueError(f"compile: expected True or False, got {compile!r}")
        self.levels, found_tok = resolve_levels(levels, device=device, dtype=dtype, loader=loader, cache=cache, compile=compile, vocab_size=vocab_size)
        self.tokenizer = tokenizer if tokenizer is not None else found_tok
        n = len(self.levels) - 1
        self.n = n
        self.vocab_size = self.levels[-1].vocab_size
        self.device = getattr(self.levels[-1], "device", torch.device("cpu"))
        for i, lvl in enumerate(self.levels):
            dev = getattr(lvl, "device", None)
            if dev is not None and torch.device(dev) != self.device:
                raise ValueError(f"levels[{i}]: {level_name(lvl)} is on {dev}, the target on {self.device}; pass device= to place every level together")

        md = multidraft.parse_multidraft(scheme, n_drafts, self.levels, temperature, thresholds, draft_stop, replan_every)
        self.multi_draft, self.n_drafts = md is not None, md[1] if md else 1
        self.schemes, temperature = ((md[0],), temperature) if md else parse_schemes(scheme, n, temperature)
        self.warp = Warp(temperature, top_k, top_p, allowed_ids=allowed_ids, logits_processor=logits_processor, dtype=probs_dtype, context_processor=context_processor)
        self.warp.check_vocab(self.vocab_size)
        # Restricted vocabulary (hsd_fast.engine.vocab): with allowed_ids, no processor (they need
        # the full logits) and no custom level, the engine works on |A| + 1 columns.
        compressible = all(getattr(lvl, "kind", None) in ("model", "drafter") for lvl in self.levels)
        restrict = allowed_ids is not None and logits_processor is None and context_processor is None and compressible
        self.vocab = VocabMap(self.vocab_size, self.warp.allowed_ids if restrict else None, self.device)
        if self.vocab.restricted:
            for lvl in self.levels:
                if isinstance(lvl, ModelLevel):
                    lvl.vocab_ids = self.vocab.model_ids
            self.warp = Warp(temperature, top_k, top_p, dtype=probs_dtype)
        self.V = self.vocab.V
        self.auto = isinstance(thresholds, str) and thresholds == "auto"
        self.thresholds = parse_thresholds(None if self.auto else thresholds, n)  # auto: the stack's default, for its first call
        self.eos_ids = self._eos(eos_token_id)
        if verify_fn is not None and not callable(verify_fn):
            raise ValueError(f"verify_fn: expected a callable like hsd_fast.verify, got {verify_fn!r}")
        self.verify_fn = verify_fn if verify_fn is not None else _default_verify()
        if not isinstance(timing, bool):
            raise ValueError(f"timing: expected True or False, got {timing!r}")
        self.timing = timing or self.auto
        self._names = [f"L{i}:{level_name(lvl)}" for i, lvl in enumerate(self.levels)]  # plans and metrics name levels so
        self.planner = AutoPlanner(self._names, [getattr(lvl, "kind", None) == "drafter" for lvl in self.levels], self.thresholds) if self.auto else None
        self.draft_stop = check_stop_rule(draft_stop)
        if self.draft_stop is not None:
            if n == 0 or getattr(self.levels[0], "kind", None) == "drafter":
                raise ValueError("draft_stop: needs a draft model at levels[0] (a model-free drafter proposes its block at once, and the target alone drafts nothing)")
            if self.auto:
                raise ValueError("draft_stop: not combined with thresholds='auto' (a plan may drop levels[0]); pass thresholds")
            if verify_fn is not None and not _takes_draft_lens(verify_fn):
                raise ValueError("verify_fn: with draft_stop it is called with draft_lens= (ragged drafts, like hsd_fast.verify); this one does not take it")
        self.replan_every = None if replan_every is None else as_int(replan_every, "replan_every", 1)
        if self.replan_every is not None and not self.auto:
            raise ValueError("replan_every: re-plans the thresholds of thresholds='auto'; pass thresholds='auto' or leave replan_every=None")
        self._running = False

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
                s += " (T=auto)" if self.auto else f" (T={self.thresholds[i]})"
            if i > 0:
                s += f" <{self.schemes[i - 1]}{f', {self.n_drafts} drafts' if self.multi_draft else ''}>"
            parts.append(s)
        plan = "; levels and thresholds chosen per call for its batch size" if self.auto else ""
        return " -> ".join(parts) + plan + f"; {self.warp!r}"

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

    def _backends(self, levels=None) -> list:
        seen: dict = {}
        for lvl in self.levels if levels is None else levels:
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

    def _metrics(self, run: CallState) -> Metrics:
        return Metrics(
            [
                LevelMetrics(
                    level_name(lvl),
                    "target" if i == run.n else getattr(lvl, "kind", "model"),
                    None if i == 0 else run.schemes[i - 1],
                    None if i == run.n else run.thresholds[i],
                )
                for i, lvl in enumerate(run.levels)
            ]
        )

    def _plan(self, ids: list[list[int]]) -> tuple[Plan, float]:
        """The call's plan and the seconds spent choosing it (cost probes; 0 for a fixed stack)."""
        if not self.auto:
            return Plan(tuple(range(self.n + 1)), self.thresholds), 0.0
        B, missing = len(ids), self.planner.missing(len(ids))
        if not missing or self.planner.exploring():
            return self.planner.plan(B), 0.0
        t0 = time.perf_counter()  # probe the missing cost points over the prompts, after their prefill
        backends = self._backends()
        for be in backends:
            be.reset()
        self._prefill(ids, backends)
        seq, lens = _Rows(ids, 1, self.device).ctx, torch.tensor([len(x) for x in ids], device=self.device)
        for k, (i, m) in enumerate(missing):
            filler = (3 * k) % max(self.vocab_size - 3, 1)  # distinct tokens per probe call: no call reuses another's positions
            self.planner.add_cost(i, B * m, probe(self.levels[i], seq, lens, m, self.warp, filler, self.device))
        return self.planner.plan(B), time.perf_counter() - t0

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int = 64,
        seeds: Sequence[int] | None = None,
        seed: int = 0,
        on_tokens: Callable[[list[list[int]]], None] | None = None,
        stop: Callable[[int, list[int], int], int | None] | None = None,
    ) -> GenerationResult:
        """Generate for a batch of prompts (strings or token-id lists of any lengths).

        ``seeds[b]`` seeds row ``b`` (default ``seed + b``); ``on_tokens(new)`` is called after every
        target iteration with each row's newly emitted tokens (streaming).
        ``stop(b, tokens, n_new)``: a stop rule, called after every iteration that gave row ``b`` new
        tokens, with all its tokens so far (the last ``n_new`` are new); it returns ``None`` to go on or
        the length ``m`` (``len(tokens) - n_new < m <= len(tokens)``) to cut the row's output at, which
        finishes the row (finish reason ``"stop"``; ``on_tokens`` sees only the kept tokens).  A rule
        that decides from ``tokens[:m]`` alone (a stopping time of the output stream, like EOS or a
        stop string) keeps the output law exact: the target's law, stopped.  Memory and per-step cost
        grow with the tokens actually generated, not with ``max_new_tokens`` (docs/engine.md).
        Every per-call state lives in the call; one decoder runs one call at a time (its levels'
        caches are in use), and a second call while one runs (from ``on_tokens``, another thread)
        is refused with a ``RuntimeError``.
        """
        max_new_tokens = as_int(max_new_tokens, "max_new_tokens", 1)
        if on_tokens is not None and not callable(on_tokens):
            raise ValueError(f"on_tokens: expected a callable taking each row's new tokens, got {on_tokens!r}")
        if stop is not None and not callable(stop):
            raise ValueError(f"stop: expected a callable (row, tokens, n_new) -> cut length or None, got {stop!r}")
        ids = self.encode(prompts)
        seeds = parse_seeds(seeds, seed, len(ids), MAX_SEED)
        self._check_context_length(ids, max_new_tokens)
        if self._running:
            raise RuntimeError("generate: this decoder is already generating (its levels' caches are in use); build a second SpeculativeDecoder for concurrent calls")
        self._running = True
        try:
            return self._generate(ids, max_new_tokens, seeds, on_tokens, stop)
        finally:
            self._running = False

    def _generate(self, ids, max_new_tokens: int, seeds: list[int], on_tokens, stop) -> GenerationResult:
        dev, B = self.device, len(ids)
        t0 = time.perf_counter()
        plan, probe_s = self._plan(ids)
        if self.draft_stop is not None:
            self.draft_stop.reset()  # a learned rule starts afresh: a call's output depends on its own past only
        run = CallState(self, torch.tensor(seeds, dtype=torch.int64, device=dev), self.timing, plan)
        for be in self._backends():  # every level's: frees the caches of levels this plan leaves out
            be.reset()
        backends = self._backends(run.levels)
        rows = _Rows(ids, (plan.thresholds[-1] if run.n else 0) + 1, dev)
        eos = torch.tensor(self.eos_ids, dtype=torch.int64, device=dev) if self.eos_ids else None
        metrics = self._metrics(run)
        metrics.timed, metrics.plan, metrics.probe_s = self.timing, plan.describe(self._names), probe_s
        metrics.plans = [(0, plan.chain, plan.thresholds)]
        replan = Replanner(self, run, rows, B, self.replan_every, metrics.plans) if self.replan_every else None
        self._prefill(multidraft.expand_ids(ids, self.n_drafts), backends)  # every draft row's own cache row
        md = self.multi_draft
        history: list[list[int]] = [[] for _ in range(B)]  # each row's tokens on the host (stop rules only)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        metrics.prefill_s = time.perf_counter() - t0 - probe_s
        while rows.n_live:
            out, num_accepted = (multidraft.iteration if md else step.iteration)(run, rows.ctx, rows.lens, rows.active)
            out = self.vocab.to_model(out)
            count = rows.emit(out, num_accepted, max_new_tokens, eos)
            finished, bad = torch.stack([(~rows.active & ~rows.harvested).any(), run.bad.any()]).tolist()  # the iteration's one host read
            run.raise_if_bad(bad)
            if on_tokens is not None or stop is not None:
                new = rows.new_tokens(out, count)
                if stop is not None and _apply_stop(stop, rows, new, history):
                    finished = True
                if on_tokens is not None:
                    streamed: list = [[] for _ in range(B)]
                    for r, toks in new:
                        streamed[r] = toks
                    on_tokens(streamed)
            if finished:
                rows.harvest()
                if _compact_due(rows.n_live, rows.index.numel(), dev):  # retire: no forward runs for them again
                    live = rows.compact()
                    run.keep(live)
                    for be in backends:
                        be.select_rows(multidraft.cache_rows(live, self.n_drafts) if md else live)
            if replan is not None:  # between iterations, from past iterations only
                replan.after_iteration()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        metrics.wall_time_s = time.perf_counter() - t0
        run.tally.into(metrics.levels)
        metrics.new_tokens = sum(len(t) for t in rows.tokens)
        metrics.target_calls = metrics.levels[-1].calls
        metrics.target_rounds = metrics.levels[-1].rounds
        if self.auto:
            self.planner.record(plan, metrics, B)
        texts = [self.tokenizer.decode(t) for t in rows.tokens] if self.tokenizer is not None else None
        return GenerationResult(rows.tokens, rows.reasons, metrics, texts, plan)


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
