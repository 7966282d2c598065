"""Adaptive (stopping-time) draft length: the draft stops when a stopping rule says so.

Peers: transformers' dynamic speculation (``ConfidenceCriteria``: stop once the assistant's
probability of the token it just drafted is below ``assistant_confidence_threshold = 0.4``, at most
``num_assistant_tokens = 20`` tokens), SpecDec++ (arXiv 2405.19715: stop when a head predicts a
rejection), DISCO (arXiv 2405.04304), AdaEDL (arXiv 2410.18351: stop when the entropy of the next
draft row is high).  The math is peers-2026.md §5.

One iteration with maximum length ``k`` (the draft is cut at ``k`` in any case):

* after ``t`` drafted tokens (``t = 0 .. k-1``) the rule is asked whether to stop; it sees the
  context, the drafted ``x_1..x_t``, the draft rows ``q_1..q_{t+1}`` and the target rows
  ``p_1..p_{t+1}`` (all functions of the context and ``x_1..x_t``), and stops with its own chance
  ``s`` using its OWN uniform;
* otherwise ``x_{t+1} ~ q_{t+1}`` is drafted and the rule is asked again;
* the realised draft ``x_1..x_T`` (the token that triggered the stop kept) is verified by an
  unchanged single-draft verifier (token-wise, block, HSD capped) with ``k = T``.

**Why it is lossless** (proofs/coq/Adaptive.v).  Let ``O(x_{1:t})`` be the verifier's law for the
draft ``x_{1:t}``, extended with target sampling.  A verifier is *prefix-consistent* if
``sum_x q_{t+1}(x) O(x_{1:t} x) = O(x_{1:t})``.  Token-wise verification is (``tw_prefix_consistent``);
block verification is too (``blk_prefix_consistent``): given ``x_{1:t}`` the scan reaches level
``t`` with chance ``pi_t``, and the next token then has mass
``min(q(b), pi_t p(b)) + max(pi_t p(b) - q(b), 0) = pi_t p(b)``.  For any stop chance ``s``,
``s O(x_{1:t}) + (1 - s) sum_x q(x) O(x_{1:t} x) = O(x_{1:t})``, so backward induction from ``k``
(optional stopping for a bounded stopping time) gives ``O(empty draft)`` = target sampling
(``adaptive_lossless``).

Two lossy variants are registered as controls (the hypotheses of the theorem, each broken once):

* :class:`DropTrigger` drafts ``x_{t+1}``, asks the rule about it and on a stop DISCARDS it
  (post-hoc truncation): the length then depends on the discarded token, which is not a stopping
  time of the verified draft.  Exact when the draft is deterministic (greedy drafts).
* :class:`SharedCoin` decides the stop after ``x_t`` (``t >= 1``) with the verifier's own uniform
  for position ``t``: the stop is then correlated with the test it is about.

Draw layout of :meth:`AdaptiveLength.sample_iteration` (``iteration_draws(k) = 3k + 1``):
``draws[2t]`` is the rule's coin at length ``t`` and ``draws[2t + 1]`` drafts ``x_{t+1}`` by inverse
CDF (``t = 0 .. k-1``); ``draws[2k : 2k + T + 1]`` are the verifier's ``T + 1`` uniforms (layout of
:mod:`hsd_ref.scheme`).  :class:`SharedCoin` uses ``draws[2k + t - 1]`` as its coin at length
``t >= 1`` instead of ``draws[2t]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

from ..exact import Dist, HSDInputError, as_fraction, sample_index
from ..models import TableLM, check_context, check_pair
from ..scheme import JointLawMixin, Plan, SingleDraftScheme, VerifyResult, check_draws, check_k, law_add
from .block import Block
from .hsd_capped import HSDCapped
from .tokenwise import Tokenwise

__all__ = [
    "StopRule",
    "ConfidenceStop",
    "RandomisedStop",
    "GeometricStop",
    "TargetAwareStop",
    "NextRowStop",
    "FunctionStop",
    "AdaptiveLength",
    "DropTrigger",
    "SharedCoin",
    "AdaptiveSample",
]

ZERO, ONE = Fraction(0), Fraction(1)
HF_THRESHOLD = Fraction(2, 5)  # transformers' assistant_confidence_threshold = 0.4


# ------------------------------------------------------------------------------------ stopping rules


class StopRule:
    """A stopping rule: after ``t`` drafted tokens, stop with chance :meth:`stop_chance`.

    ``stop_chance(context, drafted, draft_rows, target_rows)`` is a ``Fraction`` in ``[0, 1]``;
    ``drafted`` is ``x_1..x_t``, ``draft_rows`` the ``t + 1`` rows ``q_1..q_{t+1}`` (the last one is
    the row ``x_{t+1}`` would be drafted from) and ``target_rows`` the ``t + 1`` rows ``p_1..p_{t+1}``.
    Every argument is a function of the context and ``x_1..x_t``, so the length is a stopping time.
    ``rule(context, drafted, draft_rows, u, target_rows)`` is the sampled decision ``u < chance``
    with the rule's own uniform ``u`` (the draw convention of :mod:`hsd_ref.exact`)."""

    name = "rule"
    needs_target_rows = False

    def __repr__(self) -> str:
        return f"<stop rule {self.name}>"

    def stop_chance(self, context: tuple[int, ...], drafted: tuple[int, ...], draft_rows: Sequence[Dist], target_rows: Sequence[Dist] | None) -> Fraction:
        raise NotImplementedError

    def chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        """:meth:`stop_chance`, checked: an exact number in ``[0, 1]`` (a bool counts as 0 or 1)."""
        if target_rows is None and self.needs_target_rows:
            raise HSDInputError(f"target_rows: the stop rule {self.name!r} reads the target's rows, got None")
        s = self.stop_chance(context, drafted, draft_rows, target_rows)
        s = Fraction(int(s)) if isinstance(s, bool) else as_fraction(s, f"stop rule {self.name!r}: stop chance")
        if not 0 <= s <= 1:
            raise HSDInputError(f"stop rule {self.name!r}: stop chance {s} is outside [0, 1]")
        return s

    def __call__(self, context, drafted, draft_rows, u, target_rows=None) -> bool:
        u = check_draws((u,), 1)[0]
        return u < self.chance(context, drafted, draft_rows, target_rows)


def _last_draft_prob(drafted: Sequence[int], draft_rows: Sequence[Dist]) -> Fraction:
    """``q_t(x_t)``: the draft's probability of the token just drafted."""
    t = len(drafted)
    return draft_rows[t - 1][drafted[t - 1]]


class ConfidenceStop(StopRule):
    """transformers' ``ConfidenceCriteria``: stop once ``q_t(x_t) < threshold`` (the token kept).
    With ``chance < 1`` the stop is randomised: stop with that chance when the test holds.  Never
    stops before the first token."""

    def __init__(self, threshold: Fraction = HF_THRESHOLD, chance: Fraction = ONE):
        self.threshold, self.fixed = as_fraction(threshold, "threshold"), as_fraction(chance, "chance")
        for nm, val in (("threshold", self.threshold), ("chance", self.fixed)):
            if not 0 <= val <= 1:
                raise HSDInputError(f"{nm}: must lie in [0, 1], got {val}")
        self.name = f"confidence<{self.threshold}" + ("" if self.fixed == 1 else f" w.p. {self.fixed}")

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        return self.fixed if drafted and _last_draft_prob(drafted, draft_rows) < self.threshold else ZERO


class RandomisedStop(StopRule):
    """A randomised rule (SpecDec++-like, with ``1 - q_t(x_t)`` as the rejection proxy): stop with
    chance ``scale * (1 - q_t(x_t))`` after a token, and with chance ``at_start`` before any."""

    def __init__(self, scale: Fraction = ONE, at_start: Fraction = ZERO):
        self.scale, self.at_start = as_fraction(scale, "scale"), as_fraction(at_start, "at_start")
        for nm, val in (("scale", self.scale), ("at_start", self.at_start)):
            if not 0 <= val <= 1:
                raise HSDInputError(f"{nm}: must lie in [0, 1], got {val}")
        self.name = f"randomised(scale={self.scale}, at_start={self.at_start})"

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        if not drafted:
            return self.at_start
        return self.scale * (1 - _last_draft_prob(drafted, draft_rows))


class GeometricStop(StopRule):
    """Stop with a fixed chance after every drafted token (a geometric draft length, cut at ``k``);
    never before the first token."""

    def __init__(self, chance: Fraction = Fraction(1, 2)):
        self.fixed = as_fraction(chance, "chance")
        if not 0 <= self.fixed <= 1:
            raise HSDInputError(f"chance: must lie in [0, 1], got {self.fixed}")
        self.name = f"geometric({self.fixed})"

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        return self.fixed if drafted else ZERO


class TargetAwareStop(StopRule):
    """An oracle SpecDec++ head: stop with the token-wise rejection chance of the token just drafted,
    ``1 - min(1, p_t(x_t) / q_t(x_t))`` (1 when ``q_t(x_t) = 0``).  Reads the target's rows."""

    name = "target-aware"
    needs_target_rows = True

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        if not drafted:
            return ZERO
        t, x = len(drafted), drafted[-1]
        q_x, p_x = draft_rows[t - 1][x], target_rows[t - 1][x]
        return ONE if q_x == 0 else 1 - min(ONE, p_x / q_x)


class NextRowStop(StopRule):
    """AdaEDL-like: stop BEFORE drafting ``x_{t+1}`` when the next draft row is flat, i.e.
    ``max_v q_{t+1}(v) < threshold`` (may stop at length 0)."""

    def __init__(self, threshold: Fraction = Fraction(1, 2)):
        self.threshold = as_fraction(threshold, "threshold")
        self.name = f"next-max<{self.threshold}"

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        return ONE if max(draft_rows[len(drafted)]) < self.threshold else ZERO


class FunctionStop(StopRule):
    """A user rule: ``fn(context, drafted, draft_rows, target_rows)`` returns the stop chance (a
    ``Fraction`` in ``[0, 1]`` or a bool)."""

    def __init__(self, fn: Callable, name: str = "function", needs_target_rows: bool = True):
        if not callable(fn):
            raise HSDInputError(f"fn: expected a callable, got {fn!r}")
        self.fn, self.name, self.needs_target_rows = fn, name, needs_target_rows

    def stop_chance(self, context, drafted, draft_rows, target_rows) -> Fraction:
        return self.fn(context, drafted, draft_rows, target_rows)


# --------------------------------------------------------------------------------------- the scheme


@dataclass(frozen=True)
class AdaptiveSample:
    """One sampled iteration: the realised draft and the verifier's result on it."""

    draft_tokens: tuple[int, ...]
    result: VerifyResult

    @property
    def draft_length(self) -> int:
        return len(self.draft_tokens)


def conditional_chance(c: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    """``P(u < c | u in [lo, hi))`` for ``u`` uniform on ``[0, 1)`` and ``lo < hi``."""
    return max(ZERO, min(c, hi) - lo) / (hi - lo)


class AdaptiveLength(JointLawMixin):
    """A single-draft ``verifier`` run on a draft whose length is the stopping time of ``rule``
    (capped at ``k``).  ``outcome_law`` / ``joint_law`` are exact (drafts, the rule's branches and the
    verifier's plan enumerated in Fractions); ``sample_iteration`` runs the same process on explicit
    uniforms; ``verify`` is the verifier itself on a realised draft."""

    multi_draft = False
    needs_draws = True
    needs_draft_probs = True
    n_drafts = 1

    def __init__(self, verifier: SingleDraftScheme, rule: StopRule, *, name: str | None = None, lossless: bool = True, theorem: str = ""):
        if not isinstance(verifier, SingleDraftScheme):
            raise HSDInputError(f"verifier: expected a single-draft scheme (hsd_ref.SingleDraftScheme), got {verifier!r}")
        if not isinstance(rule, StopRule):
            raise HSDInputError(f"rule: expected an hsd_ref StopRule, got {rule!r}")
        self.verifier, self.rule = verifier, rule
        self.name = name or f"adaptive_{verifier.name}"
        self.lossless, self.theorem = bool(lossless), theorem

    def __repr__(self) -> str:
        return f"<scheme {self.name}: {self.verifier.name} with {self.rule.name}>"

    def reference(self, target: TableLM) -> TableLM:
        return self.verifier.reference(target)

    def proposal(self, draft: TableLM) -> TableLM:
        return self.verifier.proposal(draft)

    def draws_needed(self, k: int) -> int:
        """Uniforms of :meth:`verify` on a realised ``k``-token draft (the verifier's)."""
        return self.verifier.draws_needed(k)

    def iteration_draws(self, k: int) -> int:
        """Uniforms of :meth:`sample_iteration` with maximum length ``k``."""
        return 3 * check_k(k) + 1

    # -- the verifier on the realised draft --------------------------------------------------

    def verify(self, target_probs, draft_probs, draft_tokens, draws) -> VerifyResult:
        return self.verifier.verify(target_probs, draft_probs, draft_tokens, draws)

    def settle_plan(self, t_rows, d_rows, xs, coins) -> Plan:
        """The verifier's plan for the realised draft ``xs``.  ``coins`` are the stop chances met on
        the way (``coins[j]`` at length ``j``; the last one is the stop's, ``None`` for a cut at
        ``k``); the rule's coin is its own, so they do not touch the plan."""
        return self.verifier.plan(t_rows, d_rows, xs)

    # -- exact law ---------------------------------------------------------------------------

    def joint_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[tuple[int, tuple[int, ...]], Fraction]:
        """Exact law of ``(num_accepted, emitted tokens)``, drafting and the rule's coins included
        (:meth:`_leaves`: every realised draft with its mass, settled by the verifier's plan)."""
        law: dict[tuple[int, tuple[int, ...]], Fraction] = {}
        for mass, xs, t_rows, d_rows, coins in self._leaves(target, draft, prefix, k):
            plan = self.settle_plan(t_rows, d_rows, xs, coins)
            for tau, pt in enumerate(plan.tau_law()):
                if pt:
                    for v, pv in enumerate(plan.emit[tau]):
                        law_add(law, (tau, xs[:tau] + (v,)), mass * pt * pv)
        return law

    def length_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[int, Fraction]:
        """Exact law of the draft length ``T`` (the stopping time) of one iteration."""
        law: dict[int, Fraction] = {}
        for mass, xs, *_ in self._leaves(target, draft, prefix, k):
            law_add(law, len(xs), mass)
        return law

    def _leaves(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int):
        """Every realised draft ``(mass, xs, target rows p_1..p_{t+1}, draft rows q_1..q_t, stop
        chances met)``.  Depth-first over the draft tree (explicit stack, any ``k``): at a node of
        length ``t`` the branch "stop" (mass ``s``) ends the draft at ``x_1..x_t``, the branch "go on"
        (mass ``1 - s``) drafts every ``x_{t+1}`` of positive draft probability."""
        vocab = check_pair(target, draft)
        prefix = check_context(prefix, vocab)
        k = check_k(k)
        tgt, prop = self.reference(target), self.proposal(draft)
        stack = [((), ONE, [tgt.probs(prefix)], [], ())]
        while stack:
            xs, mass, t_rows, d_rows, coins = stack.pop()
            if len(xs) == k:
                yield mass, xs, t_rows, d_rows, coins + (None,)
                continue
            q_next = prop.probs(prefix + xs)
            for s, ys, q_y in reversed(list(self._branches(prefix, xs, d_rows, t_rows, q_next, tgt, prop))):
                if ys is None:  # stop here, verify xs
                    yield mass * s, xs, t_rows, d_rows, coins + (s,)
                else:  # go on with ys = xs + (v,), drafted with probability q_y
                    stack.append((ys, mass * q_y * (1 - s), t_rows + [tgt.probs(prefix + ys)], d_rows + [q_next], coins + (s,)))

    def _branches(self, prefix, xs, d_rows, t_rows, q_next, tgt, prop):
        """``(stop chance, None, None)`` for the stop branch, then ``(stop chance, xs + (v,), q(v))``
        for every drafted continuation (only branches of positive mass)."""
        s = self.rule.chance(prefix, xs, d_rows + [q_next], t_rows)
        if s:
            yield s, None, None
        if s != 1:
            for v, qv in enumerate(q_next):
                if qv:
                    yield s, xs + (v,), qv

    # -- the process on explicit uniforms ----------------------------------------------------

    def sample_iteration(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int, draws: Sequence[Fraction]) -> AdaptiveSample:
        """Run one iteration on explicit uniforms (layout in the module docstring)."""
        vocab = check_pair(target, draft)
        prefix = check_context(prefix, vocab)
        k = check_k(k)
        u = check_draws(draws, self.iteration_draws(k))
        tgt, prop = self.reference(target), self.proposal(draft)
        xs, t_rows, d_rows = (), [tgt.probs(prefix)], []
        while len(xs) < k:
            t = len(xs)
            q_next = prop.probs(prefix + xs)
            stop, ys = self._step(prefix, xs, d_rows, t_rows, q_next, u, k, tgt, prop)
            if stop:
                break
            xs = ys
            d_rows.append(q_next)
            t_rows.append(tgt.probs(prefix + xs))
        result = self.verifier.verify(t_rows, d_rows, xs, u[2 * k : 2 * k + len(xs) + 1])
        return AdaptiveSample(xs, result)

    def coin(self, u: Sequence[Fraction], t: int, k: int) -> Fraction:
        """The uniform of the stop decision at length ``t``: the rule's own."""
        return u[2 * t]

    def _step(self, prefix, xs, d_rows, t_rows, q_next, u, k, tgt, prop):
        """One drafting step at length ``t = len(xs)``: (stop?, the draft if not)."""
        t = len(xs)
        if self.rule(prefix, xs, d_rows + [q_next], self.coin(u, t, k), t_rows):
            return True, xs
        return False, xs + (sample_index(q_next, u[2 * t + 1]),)


class DropTrigger(AdaptiveLength):
    """LOSSY control: draft ``x_{t+1}``, ask the rule about ``x_1..x_{t+1}`` and on a stop DISCARD
    ``x_{t+1}`` (verify ``x_1..x_t``); the post-hoc truncation of peers-2026.md §5.  The length is
    then a function of a token that is not verified.  With deterministic (greedy) drafts ``x_{t+1}``
    is a function of ``x_1..x_t`` and the variant is exact again."""

    def _branches(self, prefix, xs, d_rows, t_rows, q_next, tgt, prop):
        for v, qv in enumerate(q_next):
            if not qv:
                continue
            ys = xs + (v,)
            s = self.rule.chance(prefix, ys, d_rows + [q_next, prop.probs(prefix + ys)], t_rows + [tgt.probs(prefix + ys)])
            if s:  # x_{t+1} = v drafted, then dropped: verify xs
                yield qv * s, None, None
            if s != 1:
                yield s, ys, qv

    def _step(self, prefix, xs, d_rows, t_rows, q_next, u, k, tgt, prop):
        t = len(xs)
        ys = xs + (sample_index(q_next, u[2 * t + 1]),)
        rows_d, rows_t = d_rows + [q_next, prop.probs(prefix + ys)], t_rows + [tgt.probs(prefix + ys)]
        if self.rule(prefix, ys, rows_d, u[2 * t], rows_t):
            return True, xs
        return False, ys


class SharedCoin(AdaptiveLength):
    """LOSSY control: the stop decision at length ``t >= 1`` uses the verifier's own uniform for
    position ``t`` (``u_t``) instead of a coin of its own (length 0 keeps its own coin).

    Exact law: on the path that went on at lengths ``1..T-1`` and stopped at ``T``, ``u_j`` is
    uniform on ``[s_j, 1)`` for ``j < T`` and on ``[0, s_T)`` for ``j = T`` (on ``[0, 1)`` after a cut
    at ``k``); the verifier's tests stay independent across positions, so each test chance ``c_j``
    becomes ``P(u_j < c_j | u_j in that interval)`` and the scan law follows from the plan."""

    def settle_plan(self, t_rows, d_rows, xs, coins) -> Plan:
        plan = self.verifier.plan(t_rows, d_rows, xs)
        T = len(xs)
        chances = list(plan.chances)
        for j in range(1, T + 1):
            s = coins[j]
            if s is None:  # cut at k: u_k is free
                continue
            lo, hi = (ZERO, s) if j == T else (s, ONE)
            chances[j - 1] = conditional_chance(chances[j - 1], lo, hi)
        return Plan(plan.order, tuple(chances), plan.emit)

    def coin(self, u: Sequence[Fraction], t: int, k: int) -> Fraction:
        return u[2 * k + t - 1] if t >= 1 else u[0]


# --------------------------------------------------------------------------------- the registered ones

_PROOF = "proofs/coq/Adaptive.v: "
_COUNTER = "counterexample from hsd_ref.check_lossless; "

ADAPTIVE_SCHEMES = (
    AdaptiveLength(Tokenwise(), ConfidenceStop(), name="adaptive_tokenwise",
                   theorem=_PROOF + "adaptive_tokenwise_lossless (every k, any stopping rule)"),
    AdaptiveLength(Block(), ConfidenceStop(), name="adaptive_block",
                   theorem=_PROOF + "adaptive_block_lossless (every k, any stopping rule)"),
    AdaptiveLength(HSDCapped(), ConfidenceStop(), name="adaptive_hsd_capped",
                   theorem=_PROOF + "adaptive_hsd_capped_lossless (every k, any stopping rule)"),
    DropTrigger(Tokenwise(), ConfidenceStop(), name="adaptive_tokenwise_drop_trigger", lossless=False,
                theorem=_COUNTER + "toy pair, k=1: first token A with probability 4/9, not 1/3"),
    DropTrigger(Block(), ConfidenceStop(), name="adaptive_block_drop_trigger", lossless=False,
                theorem=_COUNTER + "toy pair, k=1: first token A with probability 4/9, not 1/3"),
    SharedCoin(Block(), ConfidenceStop(ONE, Fraction(1, 2)), name="adaptive_block_shared_coin", lossless=False,
               theorem=_COUNTER + "toy pair, k=2: first token A with probability 1/2, not 1/3"),
)
