"""Exact multi-level hierarchy (model cascade) of speculative decoding.

Globerson, Kaplan, Mansour, Mohri, Schuster, "Fast Inference via Hierarchical Speculative Decoding"
(arXiv 2510.19705; papers.md §4), with the stochastic three-level reading of HiSpec (Kumar, Sanghavi,
Das, arXiv 2510.01336; papers.md §5) and TriForce's middle-level resampling as the lossy control
(peers.md §2.6).

Models ``M_0 < M_1 < ... < M_n``: level 0 is the draft, levels ``1..n-1`` are the middles, level
``n`` is the target.  Thresholds ``T_0..T_{n-1}``; ``T_{n-1} = k``, the batch length the target
verifies.

* Level 0 produces a batch of exactly ``T_0`` tokens sampled autoregressively from ``M_0``
  (``T_0`` forward calls, each scoring 1 position).
* Level ``i`` (``1 <= i < n``) keeps a buffer.  While it holds fewer than ``T_i`` tokens it requests a
  batch from level ``i - 1`` (continuing from the context prefix + buffer), verifies it with its own
  single-draft verifier -- target rows ``M_i``, draft rows ``M_{i-1}`` along the batch -- in ONE
  forward call scoring ``len(batch) + 1`` positions, and appends the accepted prefix plus one
  recovered/bonus token.  It then passes up exactly the first ``T_i`` tokens
  (``surplus="truncate"``, the default; the rest is discarded) or the whole buffer
  (``surplus="pass"``, variable length ``>= T_i``).
* The target (level ``n``) runs one iteration: one batch from level ``n - 1``, one verification,
  accepted + 1 tokens emitted.  :meth:`Hierarchy.outcome_law` is the exact law of those tokens.

Why truncation is lossless (the argument the tests check by enumeration): if every verifier is
lossless, each verify round of level ``i`` appends a chunk whose extension by ``M_i`` is
``M_i``-distributed; concatenating such chunks gives a stream whose every prefix is
``M_i``-distributed, so the first ``T_i`` tokens are an exact fixed-length ``M_i`` sample -- exactly
the draft a lossless verifier one level up requires.  By induction the target's output is exact.

``surplus="pass"`` passes up a batch whose length depends on its tokens.  It is lossless too, for
every per-level choice of token-wise/block verification (exact enumeration in
tests/ref/test_hierarchy.py; no counterexample in 2- to 4-level stacks).  The reason: a verifier
that is lossless at every horizon emits a chunk whose next token, given the chunk so far AND that
the chunk continues, has the model's conditional law (``P(chunk starts with y) / M(y) = 1 - sum over
chunk lengths m < |y| of P(chunk = y_{1:m}) / M(y_{1:m})`` follows from losslessness), block
verification included.  So a passed buffer is an exact ``M_i`` stream stopped at a (randomised)
stopping time; a token-wise verifier above only looks at the next token, and block verification
above was found exact for stopping-time draft lengths by enumeration (not proved here).

Lossless (lossless per-level verifiers): with truncation, proofs/coq/Compose.v
``hierarchy_tokenwise_block_lossless`` (composition of the token-wise and block theorems); both surplus
modes are checked exactly by tests/ref/test_hierarchy.py (``pass`` by enumeration only).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence

from ..exact import HSDInputError, as_fraction, sample_index
from ..models import TableLM, check_context, check_pair
from ..scheme import JointLawMixin, SingleDraftScheme, check_k, law_add
from .block import Block
from .resample_from_target import ResampleFromTarget
from .tokenwise import Tokenwise

__all__ = [
    "Middle",
    "Hierarchy",
    "IterationSample",
    "CostReport",
    "mix_middle",
    "random_middle",
    "fixed_middle",
    "hierarchy",
    "hierarchy_variants",
    "hierarchy_resample_middle",
    "hierarchy_pass_variants",
]

F = Fraction
Law = dict[tuple[int, ...], Fraction]
Profile = dict[tuple[int, int], Fraction]  # (level, positions scored) -> expected number of calls

VERIFIERS: dict[str, SingleDraftScheme] = {s.name: s for s in (Tokenwise(), Block(), ResampleFromTarget())}
SURPLUS = ("truncate", "pass")


# ---------------------------------------------------------------------------------------- middles


@dataclass(frozen=True)
class Middle:
    """How a middle model is built from the ``(target, draft)`` pair (so that one scheme works for
    every pair ``check_lossless`` draws)."""

    label: str
    build: Callable[[TableLM, TableLM], TableLM]


def mix_middle(weight: object = F(1, 2)) -> Middle:
    """``M(ctx) = weight * target(ctx) + (1 - weight) * draft(ctx)``, exactly."""
    w = as_fraction(weight, "weight")
    if not 0 <= w <= 1:
        raise HSDInputError(f"weight: must lie in [0, 1], got {w}")

    def build(target: TableLM, draft: TableLM) -> TableLM:
        def fn(ctx):
            return tuple(w * a + (1 - w) * b for a, b in zip(target.probs(ctx), draft.probs(ctx)))

        return TableLM(target.vocab_size, fn, f"mix {w} target + {1 - w} draft")

    return Middle("mix" if w == F(1, 2) else f"mix({w})", build)


def random_middle(seed: int, **kwargs) -> Middle:
    """A seeded random context-dependent model (:meth:`TableLM.random`, zeros and point masses
    included) of the pair's vocabulary size, unrelated to target and draft."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    TableLM.random(2, seed, **kwargs)  # validate the keyword arguments now

    def build(target: TableLM, draft: TableLM) -> TableLM:
        return TableLM.random(target.vocab_size, seed, **kwargs)

    return Middle(f"random({seed})", build)


def fixed_middle(model: TableLM) -> Middle:
    """An explicit model (its vocabulary must match the pair's)."""
    if not isinstance(model, TableLM):
        raise HSDInputError(f"middles: expected a TableLM, got {type(model).__name__}")
    return Middle(f"fixed {model.description}", lambda target, draft: model)


def _as_middle(spec: object, name: str) -> Middle:
    if isinstance(spec, Middle):
        return spec
    if spec == "mix":
        return mix_middle()
    if isinstance(spec, TableLM):
        return fixed_middle(spec)
    if callable(spec) and not isinstance(spec, str):
        return Middle(getattr(spec, "__name__", "custom"), spec)
    raise HSDInputError(f"{name}: expected 'mix', a Middle, a TableLM or a callable (target, draft) -> TableLM, got {spec!r}")


def _as_verifier(spec: object, name: str) -> SingleDraftScheme:
    if isinstance(spec, str):
        try:
            return VERIFIERS[spec]
        except KeyError:
            raise HSDInputError(f"{name}: unknown verifier {spec!r}; known: {', '.join(VERIFIERS)}") from None
    if isinstance(spec, SingleDraftScheme):
        cls = type(spec)
        if cls.reference is not SingleDraftScheme.reference or cls.proposal is not SingleDraftScheme.proposal:
            raise HSDInputError(f"{name}: {spec.name!r} changes the reference or proposal model (greedy?); not usable inside a hierarchy")
        if spec.n_drafts != 1:
            raise HSDInputError(f"{name}: {spec.name!r} is not a single-draft verifier")
        return spec
    raise HSDInputError(f"{name}: expected a verifier name or a SingleDraftScheme, got {spec!r}")


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class IterationSample:
    """One sampled target iteration.  ``calls[l]`` = forward calls of level ``l`` (0 = draft,
    ``n`` = target); ``scored[l]`` = positions scored by each of those calls, in call order."""

    tokens: tuple[int, ...]
    num_accepted: int
    batch: tuple[int, ...]  # the batch the target verified
    calls: tuple[int, ...]
    scored: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class CostReport:
    """Exact expected cost of one target iteration (see :meth:`Hierarchy.expected_cost`)."""

    expected_cost: Fraction
    expected_tokens: Fraction
    cost_per_token: Fraction  # expected_cost / expected_tokens
    expected_calls: tuple[Fraction, ...]  # per level, 0 = draft
    call_profile: tuple[dict[int, Fraction], ...]  # per level: positions scored -> expected calls


# ---------------------------------------------------------------------------------------- scheme


class Hierarchy(JointLawMixin):
    """An exact multi-level hierarchy (module docstring).

    ``middles``: ``"mix"`` (one middle, ``(target + draft) / 2``), or a sequence of middle specs from
    bottom (level 1) to top (level ``n - 1``): ``"mix"``, a :class:`Middle` (:func:`mix_middle`,
    :func:`random_middle`), a :class:`TableLM`, or a callable ``(target, draft) -> TableLM``.  An empty
    sequence gives the two-level stack (plain speculative decoding).

    ``verifiers``: one per level ``1..n`` (the last is the target's): ``"tokenwise"``, ``"block"``,
    ``"resample_from_target"`` (lossy) or a :class:`SingleDraftScheme`.  Default: all token-wise.

    ``thresholds``: the lower thresholds ``T_0..T_{n-2}`` (``T_{n-1} = k`` comes from the call):
    ``"half"`` (default; ``T_{i-1} = max(1, ceil(T_i / 2))``, the doubling of Globerson et al.'s
    Figure 1, ``T_0 = 3, T_1 = 6, T_2 = 12``), ``"equal"`` (every ``T_i = max(1, k)``), a tuple of
    ``len(middles)`` ints ``>= 1``, or a callable ``k -> tuple``.

    ``surplus``: ``"truncate"`` (default: pass up exactly ``T_i`` tokens) or ``"pass"`` (the whole
    buffer; lossless as well, see the module docstring).

    ``lossless``: the claim; default: every per-level verifier is lossless.

    The single-draft coupling bound does not apply: the target's draft is a sample of the top middle
    model, not of ``draft`` (so ``coupling_bound_applies`` is False).
    """

    coupling_bound_applies = False

    def __init__(
        self,
        middles: object = "mix",
        verifiers: Sequence[object] | None = None,
        thresholds: object = "half",
        surplus: str = "truncate",
        name: str | None = None,
        lossless: bool | None = None,
    ):
        if isinstance(middles, (str, Middle, TableLM)) or (callable(middles) and not isinstance(middles, Sequence)):
            middles = (middles,)
        try:
            mids = tuple(middles)  # type: ignore[arg-type]
        except TypeError:
            raise HSDInputError(f"middles: expected 'mix' or a sequence of middle specs, got {middles!r}") from None
        self.middles = tuple(_as_middle(m, f"middles[{i}]") for i, m in enumerate(mids))
        self.n_levels = len(self.middles) + 2  # draft + middles + target
        n = self.n_levels - 1
        if verifiers is None:
            verifiers = ("tokenwise",) * n
        if isinstance(verifiers, (str, SingleDraftScheme)):
            raise HSDInputError(f"verifiers: expected a sequence of {n} verifiers (one per level above the draft), got {verifiers!r}")
        vers = tuple(verifiers)
        if len(vers) != n:
            raise HSDInputError(f"verifiers: expected {n} entries (levels 1..{n}, the last is the target's), got {len(vers)}")
        self.verifiers = tuple(_as_verifier(v, f"verifiers[{i}]") for i, v in enumerate(vers))
        if surplus not in SURPLUS:
            raise HSDInputError(f"surplus: expected one of {SURPLUS}, got {surplus!r}")
        self.surplus = surplus
        self._thresholds = self._check_threshold_rule(thresholds)
        if lossless is None:
            lossless = all(v.lossless for v in self.verifiers)
        elif not isinstance(lossless, bool):
            raise HSDInputError(f"lossless: expected a bool or None, got {lossless!r}")
        self.lossless = lossless
        if name is None:
            name = "hierarchy[" + ",".join([m.label for m in self.middles]) + "|" + ",".join(v.name for v in self.verifiers) + f"|{surplus}]"
        if not isinstance(name, str) or not name:
            raise HSDInputError(f"name: expected a non-empty str, got {name!r}")
        self.name = name
        self.theorem = (
            "proofs/coq/Compose.v: hierarchy_tokenwise_block_lossless (truncate); exact enumeration in tests/ref/test_hierarchy.py"
            if self.lossless
            else "counterexample by exact enumeration (tests/ref/test_hierarchy.py)"
        )
        self._engines: OrderedDict = OrderedDict()

    def __repr__(self) -> str:
        return f"<scheme {self.name}>"

    # -- configuration -------------------------------------------------------------------------

    def _check_threshold_rule(self, rule: object):
        if rule in ("half", "equal") or callable(rule):
            return rule
        if isinstance(rule, str):
            raise HSDInputError(f"thresholds: unknown rule {rule!r}; expected 'half', 'equal', a tuple or a callable")
        return self._check_lower(rule, "thresholds")

    def _check_lower(self, values: object, name: str) -> tuple[int, ...]:
        m = len(self.middles)
        try:
            vals = tuple(values)  # type: ignore[arg-type]
        except TypeError:
            raise HSDInputError(f"{name}: expected a tuple of {m} ints >= 1 (T_0..T_{m - 1}), got {values!r}") from None
        if len(vals) != m:
            raise HSDInputError(f"{name}: expected {m} lower thresholds (T_0..T_{m - 1}; T_{m} = k), got {len(vals)}")
        for i, t in enumerate(vals):
            if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                raise HSDInputError(f"{name}[{i}]: expected an int >= 1, got {t!r}")
        return vals

    def thresholds_for(self, k: int) -> tuple[int, ...]:
        """The full threshold tuple ``(T_0, ..., T_{n-1})`` used when the target verifies ``k`` tokens."""
        k = check_k(k)
        rule, m = self._thresholds, len(self.middles)
        if rule == "half":
            out = [k]
            for _ in range(m):
                out.append(max(1, math.ceil(out[-1] / 2)))
            return tuple(reversed(out))
        if rule == "equal":
            return (max(1, k),) * m + (k,)
        if callable(rule):
            return self._check_lower(rule(k), "thresholds(k)") + (k,)
        return rule + (k,)

    def models(self, target: TableLM, draft: TableLM) -> tuple[TableLM, ...]:
        """``(M_0, M_1, ..., M_n)``: the draft, the middles built for this pair, the target."""
        return self._engine(target, draft).models

    def _engine(self, target: TableLM, draft: TableLM) -> "_Engine":
        check_pair(target, draft)
        key = (id(target), id(draft))
        hit = self._engines.get(key)
        if hit is not None and hit.models[-1] is target and hit.models[0] is draft:
            self._engines.move_to_end(key)
            return hit
        eng = _Engine(self, target, draft)
        self._engines[key] = eng
        while len(self._engines) > 8:
            self._engines.popitem(last=False)
        return eng

    def _prepare(self, target, draft, prefix, k):
        eng = self._engine(target, draft)
        prefix = check_context(prefix, target.vocab_size)
        return eng, prefix, self.thresholds_for(k)

    # -- exact laws ----------------------------------------------------------------------------

    def joint_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[tuple[int, tuple[int, ...]], Fraction]:
        """Exact law of ``(tokens of the batch accepted by the target, emitted tokens)``; its marginals
        are ``outcome_law`` and ``accepted_law`` (:class:`JointLawMixin`)."""
        eng, prefix, th = self._prepare(target, draft, prefix, k)
        return dict(eng.top(prefix, th)[0])

    def batch_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int, level: int) -> Law:
        """Exact law of one batch passed up by ``level`` (``0 <= level < n``) from ``prefix``."""
        eng, prefix, th = self._prepare(target, draft, prefix, k)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.n_levels - 1:
            raise HSDInputError(f"level: expected an int in [0, {self.n_levels - 2}], got {level!r}")
        return dict(eng.batch(level, prefix, th)[0])

    def call_profile(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> tuple[dict[int, Fraction], ...]:
        """Per level ``0..n``: ``{positions scored: expected number of such calls}`` in one iteration."""
        eng, prefix, th = self._prepare(target, draft, prefix, k)
        prof = eng.top(prefix, th)[1]
        out: list[dict[int, Fraction]] = [{} for _ in range(self.n_levels)]
        for (lvl, m), c in sorted(prof.items()):
            if c:
                out[lvl][m] = c
        return tuple(out)

    def expected_cost(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int, costs: Sequence[object]) -> CostReport:
        """Exact ``E[sum over levels of calls x per-call cost]`` for one target iteration, ``E[tokens
        emitted]`` and their ratio.  ``costs[l]`` (``l = 0..n``, 0 = draft) is a Fraction/int or a
        callable ``m -> Fraction`` of the number ``m`` of positions the call scores (a level-0 step
        scores 1, a verification of a ``b``-token batch ``b + 1``)."""
        try:
            cs = tuple(costs)
        except TypeError:
            raise HSDInputError(f"costs: expected {self.n_levels} per-level costs, got {costs!r}") from None
        if len(cs) != self.n_levels:
            raise HSDInputError(f"costs: expected {self.n_levels} entries (levels 0..{self.n_levels - 1}), got {len(cs)}")

        def cost_of(lvl: int, m: int) -> Fraction:
            c = cs[lvl]
            val = as_fraction(c(m) if callable(c) else c, f"costs[{lvl}]" + (f"({m})" if callable(c) else ""))
            if val < 0:
                raise HSDInputError(f"costs[{lvl}]: negative cost {val}")
            return val

        profile = self.call_profile(target, draft, prefix, k)
        total = sum((c * cost_of(lvl, m) for lvl, prof in enumerate(profile) for m, c in prof.items()), F(0))
        tokens = sum((len(seq) * m for seq, m in self.outcome_law(target, draft, prefix, k).items()), F(0))
        calls = tuple(sum(prof.values(), F(0)) for prof in profile)
        return CostReport(total, tokens, total / tokens, calls, profile)

    # -- sampling ------------------------------------------------------------------------------

    def sample_iteration(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int, rng: random.Random | int) -> IterationSample:
        """Run one target iteration of the actual process with ``rng`` (a ``random.Random`` or an int
        seed).  Draws follow the single-draft convention of each verifier: ``len(batch) + 1``
        uniforms per verification, the last one samples the emitted token by inverse CDF; every
        level-0 token takes one uniform."""
        if isinstance(rng, int) and not isinstance(rng, bool):
            rng = random.Random(rng)
        if not isinstance(rng, random.Random):
            raise HSDInputError(f"rng: expected a random.Random or an int seed, got {type(rng).__name__}")
        eng, prefix, th = self._prepare(target, draft, prefix, k)
        return eng.sample(prefix, th, rng)


# ---------------------------------------------------------------------------------------- engine


def _add_profile(into: Profile, prof: Mapping[tuple[int, int], Fraction], scale: Fraction) -> None:
    for key, c in prof.items():
        into[key] = into.get(key, F(0)) + scale * c


class _Engine:
    """Memoised exact enumeration for one (scheme, target, draft): laws and call profiles per
    ``(level, context, tokens still needed, lower thresholds)``."""

    def __init__(self, scheme: Hierarchy, target: TableLM, draft: TableLM):
        vocab = target.vocab_size
        mids = []
        for i, mid in enumerate(scheme.middles):
            model = mid.build(target, draft)
            if not isinstance(model, TableLM):
                raise HSDInputError(f"middles[{i}]: built {type(model).__name__}, expected a TableLM")
            if model.vocab_size != vocab:
                raise HSDInputError(f"middles[{i}]: vocab_size {model.vocab_size} differs from target vocab_size {vocab}")
            mids.append(model)
        self.models = (draft, *mids, target)
        self.verifiers = (None,) + scheme.verifiers
        self.truncate = scheme.surplus == "truncate"
        self.memo: dict = {}
        self.plans: dict = {}  # (level, context, batch) -> (plan, tau law); shared by every k

    def _plan(self, level: int, ctx: tuple[int, ...], batch: tuple[int, ...]):
        key = (level, ctx, batch)
        hit = self.plans.get(key)
        if hit is None:
            upper, lower = self.models[level], self.models[level - 1]
            t_rows = [upper.probs(ctx + batch[:j]) for j in range(len(batch) + 1)]
            d_rows = [lower.probs(ctx + batch[:j]) for j in range(len(batch))]
            plan = self.verifiers[level].plan(t_rows, d_rows, batch)
            hit = self.plans[key] = (plan, plan.tau_law())
        return hit

    def batch(self, level: int, ctx: tuple[int, ...], th: tuple[int, ...]) -> tuple[Law, Profile]:
        if level == 0:
            key = (0, ctx, th[0])
            hit = self.memo.get(key)
            if hit is None:
                hit = (self.models[0].sequence_law(th[0], ctx), {(0, 1): F(th[0])} if th[0] else {})
                self.memo[key] = hit
            return hit
        return self.rest(level, ctx, th[level], th)

    def chunk_law(self, level: int, ctx: tuple[int, ...], th: tuple[int, ...]) -> tuple[Law, Profile]:
        """Law (and call profile) of the chunk that one verify round of level ``level`` appends at
        ``ctx``: a batch from level ``level - 1``, verified in one call."""
        key = ("chunk", level, ctx, th[:level])
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        blaw, bprof = self.batch(level - 1, ctx, th)
        prof: Profile = dict(bprof)
        chunks: Law = {}  # appended chunk -> mass
        for batch, pb in blaw.items():
            _add_profile(prof, {(level, len(batch) + 1): F(1)}, pb)
            plan, tau_law = self._plan(level, ctx, batch)
            for tau, pt in enumerate(tau_law):
                if pt:
                    for v, pv in enumerate(plan.emit[tau]):
                        law_add(chunks, batch[:tau] + (v,), pb * pt * pv)
        hit = (chunks, prof)
        self.memo[key] = hit
        return hit

    def rest(self, level: int, ctx: tuple[int, ...], need: int, th: tuple[int, ...]) -> tuple[Law, Profile]:
        """Law (and call profile) of the tokens level ``level`` still appends from ``ctx`` when its
        buffer lacks ``need`` tokens.  The buffer grows forward one verify round at a time over the
        partial buffers (no recursion, so ``need`` is not bounded by the recursion limit)."""
        key = (level, ctx, need, th[:level])
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        law: Law = {(): F(1)} if need <= 0 else {}
        prof: Profile = {}
        frontier: Law = {} if need <= 0 else {(): F(1)}  # partial buffer (shorter than need) -> mass
        while frontier:
            nxt: Law = {}
            for buf, mass in frontier.items():
                chunks, rprof = self.chunk_law(level, ctx + buf, th)
                _add_profile(prof, rprof, mass)
                for chunk, m in chunks.items():
                    grown = buf + chunk
                    if len(grown) >= need:
                        law_add(law, grown[:need] if self.truncate else grown, mass * m)
                    else:
                        law_add(nxt, grown, mass * m)
            frontier = nxt
        hit = (law, prof)
        self.memo[key] = hit
        return hit

    def top(self, prefix: tuple[int, ...], th: tuple[int, ...]):
        key = ("top", prefix, th)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        n = len(self.models) - 1
        blaw, bprof = self.batch(n - 1, prefix, th)
        prof: Profile = dict(bprof)
        joint: dict[tuple[int, tuple[int, ...]], Fraction] = {}
        for batch, pb in blaw.items():
            _add_profile(prof, {(n, len(batch) + 1): F(1)}, pb)
            plan, tau_law = self._plan(n, prefix, batch)
            for tau, pt in enumerate(tau_law):
                if pt:
                    for v, pv in enumerate(plan.emit[tau]):
                        law_add(joint, (tau, batch[:tau] + (v,)), pb * pt * pv)
        hit = (joint, prof)
        self.memo[key] = hit
        return hit

    # -- the actual process, driven by uniforms ------------------------------------------------

    def _sample_batch(self, level: int, ctx: tuple[int, ...], th: tuple[int, ...], rng: random.Random, log: list[list[int]]) -> tuple[int, ...]:
        if level == 0:
            out: tuple[int, ...] = ()
            for _ in range(th[0]):
                out += (sample_index(self.models[0].probs(ctx + out), F(rng.random())),)
                log[0].append(1)
            return out
        buf: tuple[int, ...] = ()
        while len(buf) < th[level]:
            buf += self._verify(level, ctx + buf, self._sample_batch(level - 1, ctx + buf, th, rng, log), rng, log)[0]
        return buf[: th[level]] if self.truncate else buf

    def _verify(self, level: int, ctx, batch, rng, log) -> tuple[tuple[int, ...], int]:
        plan = self._plan(level, ctx, batch)[0]
        draws = [F(rng.random()) for _ in range(len(batch) + 1)]
        tau = plan.tau_from_draws(draws)
        log[level].append(len(batch) + 1)
        return batch[:tau] + (sample_index(plan.emit[tau], draws[len(batch)]),), tau

    def sample(self, prefix: tuple[int, ...], th: tuple[int, ...], rng: random.Random) -> IterationSample:
        n = len(self.models) - 1
        log: list[list[int]] = [[] for _ in range(n + 1)]
        batch = self._sample_batch(n - 1, prefix, th, rng, log)
        tokens, tau = self._verify(n, prefix, batch, rng, log)
        return IterationSample(tokens, tau, batch, tuple(len(x) for x in log), tuple(tuple(x) for x in log))


# ---------------------------------------------------------------------------------------- factories


def hierarchy() -> Hierarchy:
    """The registered ``hierarchy``: draft -> mix -> target, token-wise at both levels, truncation."""
    return Hierarchy(middles="mix", verifiers=("tokenwise", "tokenwise"), name="hierarchy")


def hierarchy_variants() -> list[Hierarchy]:
    """``hierarchy`` and the three-level stacks for every other per-level verifier choice (all
    lossless with truncation): ``hierarchy_<middle verifier>_<target verifier>``."""
    out = [hierarchy()]
    for mid in ("tokenwise", "block"):
        for top in ("tokenwise", "block"):
            if (mid, top) != ("tokenwise", "tokenwise"):
                out.append(Hierarchy(middles="mix", verifiers=(mid, top), name=f"hierarchy_{mid}_{top}"))
    return out


def hierarchy_resample_middle() -> Hierarchy:
    """LOSSY CONTROL: the middle level resamples from the middle model's full distribution on
    rejection (TriForce ``Middle_Spec``, peers.md §2.6) instead of the residual."""
    return Hierarchy(middles="mix", verifiers=("resample_from_target", "tokenwise"), name="hierarchy_resample_middle", lossless=False)


def hierarchy_pass_variants() -> list[Hierarchy]:
    """Three-level ``surplus="pass"`` stacks for every per-level verifier choice (all lossless):
    ``hierarchy_pass`` (token-wise at both levels) and ``hierarchy_pass_<middle>_<target>``."""
    out = [Hierarchy(middles="mix", verifiers=("tokenwise", "tokenwise"), surplus="pass", name="hierarchy_pass")]
    for mid, top in (("block", "tokenwise"), ("tokenwise", "block"), ("block", "block")):
        out.append(Hierarchy(middles="mix", verifiers=(mid, top), surplus="pass", name=f"hierarchy_pass_{mid}_{top}"))
    return out
