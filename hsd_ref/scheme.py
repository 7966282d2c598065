"""The scheme protocol and the shared machinery of single-draft verification schemes.

Vocabulary (after vLLM): one *iteration* drafts ``k`` tokens, the target scores them in one forward
pass, the scheme *accepts* a prefix of ``num_accepted`` drafts and emits one more token: a
*recovered* token (sampled from a residual) when a draft was rejected, or the *bonus* token (sampled
from the target's last row) when every draft was accepted.

Every single-draft scheme in ``hsd_ref`` is written as a :class:`Plan`: per-position chances plus the
distribution of the emitted token for each possible number of accepted drafts.  Two scan orders
cover every scheme we know of:

* ``forward`` (token-wise): position ``i`` is accepted with chance ``chances[i-1]`` given that every
  earlier position was; the first rejection stops the scan.  ``P(tau = j) = a_1 ... a_j (1 - a_{j+1})``.
* ``backward`` (block / HSD): ``tau`` is the largest ``i`` whose test succeeds, 0 if none does.
  ``P(tau = j) = h_j (1 - h_{j+1}) ... (1 - h_k)``.  (Scanning from ``k`` down and stopping at the
  first success has the same law.)

The exact law (:meth:`SingleDraftScheme.joint_law`) and the draw-driven :meth:`SingleDraftScheme.verify`
are both computed from the same plan, so they cannot drift apart.

Draw layout for single-draft schemes (``draws_needed(k) == k + 1``): ``draws[i - 1]`` decides the
test at draft position ``i`` (1-based) and ``draws[k]`` samples the emitted token by inverse CDF.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Protocol, Sequence, runtime_checkable

from .exact import Dist, HSDInputError, as_dist, as_fraction, normalize, sample_index
from .models import TableLM, check_context, check_pair

__all__ = [
    "PLACEHOLDER",
    "Scheme",
    "VerifyResult",
    "Plan",
    "SingleDraftScheme",
    "JointLawMixin",
    "check_k",
    "check_draws",
    "law_add",
]

PLACEHOLDER = -1  # padding id in fixed-width output rows, and an "absent draft" id in inputs

Law = dict[tuple[int, ...], Fraction]


@runtime_checkable
class Scheme(Protocol):
    """What :func:`hsd_ref.check_lossless` needs from a verification scheme.

    ``outcome_law`` is the exact law of the tokens ONE iteration emits (accepted drafts plus the one
    recovered/bonus token), the draft's own sampling included.  A scheme may also define
    ``reference(target) -> TableLM``: the model whose law it claims to reproduce (greedy claims the
    argmax model); without it the target itself is the reference.
    """

    name: str
    lossless: bool

    def outcome_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Mapping[tuple[int, ...], Fraction]: ...


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of one verification: ``tokens`` = accepted drafts + one recovered/bonus token."""

    tokens: tuple[int, ...]
    num_accepted: int
    bonus: bool
    draft_index: int | None = None  # multi-draft: the draft whose path the accepted tokens follow

    def to_row(self, k: int) -> tuple[int, ...]:
        """The fixed-width ``[k + 1]`` row used by ``hsd_fast``, padded with ``PLACEHOLDER``."""
        if len(self.tokens) > k + 1:
            raise HSDInputError(f"k: {len(self.tokens)} tokens do not fit a row of width k + 1 = {k + 1}")
        return self.tokens + (PLACEHOLDER,) * (k + 1 - len(self.tokens))


@dataclass(frozen=True)
class Plan:
    """Per-draft verification plan of a single-draft scheme (see the module docstring)."""

    order: str  # "forward" or "backward"
    chances: tuple[Fraction, ...]  # length k
    emit: tuple[Dist, ...]  # length k + 1: emitted-token law when tau = j (emit[k] is the bonus law)

    def tau_law(self) -> tuple[Fraction, ...]:
        """``P(tau = j)`` for ``j = 0..k``."""
        k = len(self.chances)
        out = []
        if self.order == "forward":
            reach = Fraction(1)
            for j in range(k):
                out.append(reach * (1 - self.chances[j]))
                reach *= self.chances[j]
            out.append(reach)
        elif self.order == "backward":
            none_above = Fraction(1)  # P(every test above j fails)
            rev = []
            for j in range(k, 0, -1):
                rev.append(self.chances[j - 1] * none_above)
                none_above *= 1 - self.chances[j - 1]
            out = [none_above] + rev[::-1]
        else:
            raise ValueError(f"order: unknown scan order {self.order!r}")
        return tuple(out)

    def tau_from_draws(self, draws: Sequence[Fraction]) -> int:
        k = len(self.chances)

        def passes(i: int) -> bool:  # u < chance; chances 0 and 1 need no draw (greedy passes none)
            c = self.chances[i]
            return c == 1 or (c != 0 and draws[i] < c)

        if self.order == "forward":
            for i in range(k):
                if not passes(i):
                    return i
            return k
        for i in range(k, 0, -1):
            if passes(i - 1):
                return i
        return 0


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise HSDInputError(f"k: expected an int draft length, got {k!r}")
    if k < 0:
        raise HSDInputError(f"k: draft length must be >= 0, got {k}")
    return k


def check_draws(draws: object, needed: int) -> tuple[Fraction, ...]:
    """Uniforms in [0, 1).  Floats are accepted here and converted exactly (``Fraction(float)``),
    because draws come from float generators in ``hsd_fast``; every float is an exact dyadic rational."""
    if draws is None:
        if needed:
            raise HSDInputError(f"draws: {needed} uniforms needed, got None")
        return ()
    out = []
    for i, u in enumerate(draws):  # type: ignore[union-attr]
        if isinstance(u, float):
            if u != u:
                raise HSDInputError(f"draws[{i}] is NaN")
            u = Fraction(u)
        else:
            u = as_fraction(u, f"draws[{i}]")
        if not 0 <= u < 1:
            raise HSDInputError(f"draws[{i}] = {u} is outside [0, 1)")
        out.append(u)
    if len(out) < needed:
        raise HSDInputError(f"draws: {needed} uniforms needed, got {len(out)}")
    return tuple(out)


def law_add(law: dict, key: object, mass: Fraction) -> None:
    if mass:
        law[key] = law.get(key, Fraction(0)) + mass


class JointLawMixin:
    """``outcome_law`` and ``accepted_law`` as the two marginals of ``joint_law``, the exact law of
    ``(num_accepted, emitted tokens)`` that every hsd_ref scheme class computes."""

    def joint_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[tuple[int, tuple[int, ...]], Fraction]:
        raise NotImplementedError

    def outcome_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Law:
        law: Law = {}
        for (_, tokens), m in self.joint_law(target, draft, prefix, k).items():
            law_add(law, tokens, m)
        return law

    def accepted_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[int, Fraction]:
        law: dict[int, Fraction] = {}
        for (tau, _), m in self.joint_law(target, draft, prefix, k).items():
            law_add(law, tau, m)
        return law


class SingleDraftScheme(JointLawMixin):
    """Base class: a scheme defined by :meth:`plan`.  Subclasses set ``name``, ``lossless``,
    ``theorem`` (the proof that covers it, or the counterexample) and implement ``plan``.

    Capability flags (read by :mod:`hsd_fast.kernels` for the fast twin, so they are defined only
    here): ``multi_draft`` (False: one draft, see :class:`hsd_ref.multidraft.MultiDraftScheme`),
    ``needs_draws`` (False: deterministic, no uniforms, ``draws_needed(k) == 0``) and
    ``needs_draft_probs`` (False: ``draft_probs`` may be ``None``)."""

    name: str = ""
    lossless: bool = True
    theorem: str = ""
    n_drafts: int = 1
    multi_draft: bool = False
    needs_draws: bool = True
    needs_draft_probs: bool = True

    def __repr__(self) -> str:
        return f"<scheme {self.name}>"

    # -- the one thing a subclass writes -------------------------------------------------------

    def plan(self, target_probs: Sequence[Dist], draft_probs: Sequence[Dist] | None, draft_tokens: Sequence[int]) -> Plan:
        raise NotImplementedError

    # -- model-level hooks ---------------------------------------------------------------------

    def reference(self, target: TableLM) -> TableLM:
        """The model whose law the scheme reproduces (the target itself, except for greedy)."""
        return target

    def proposal(self, draft: TableLM) -> TableLM:
        """The model the drafts are sampled from (the draft itself, except for greedy)."""
        return draft

    def draws_needed(self, k: int) -> int:
        return k + 1 if self.needs_draws else 0

    # -- exact laws ----------------------------------------------------------------------------

    def joint_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> dict[tuple[int, tuple[int, ...]], Fraction]:
        """Exact law of ``(num_accepted, emitted tokens)`` over one iteration, drafting included.

        The draft tree is walked depth-first with an explicit stack (no recursion, so any ``k`` works;
        the cost is the number of positive-probability drafts, up to ``V ** k``)."""
        vocab = check_pair(target, draft)
        prefix = check_context(prefix, vocab)
        k = check_k(k)
        tgt, prop = self.reference(target), self.proposal(draft)
        law: dict[tuple[int, tuple[int, ...]], Fraction] = {}
        # (drafted tokens, their draft probability, target rows along them, draft rows along them)
        stack: list[tuple[tuple[int, ...], Fraction, list[Dist], list[Dist]]] = [((), Fraction(1), [tgt.probs(prefix)], [])]
        while stack:
            xs, mass, t_rows, d_rows = stack.pop()
            if len(xs) == k:
                plan = self.plan(t_rows, d_rows, xs)
                for tau, pt in enumerate(plan.tau_law()):
                    if pt:
                        for v, pv in enumerate(plan.emit[tau]):
                            law_add(law, (tau, xs[:tau] + (v,)), mass * pt * pv)
                continue
            q = prop.probs(prefix + xs)
            for v in reversed(range(len(q))):  # pushed in reverse: children are visited in id order
                if q[v]:
                    ys = xs + (v,)
                    stack.append((ys, mass * q[v], t_rows + [tgt.probs(prefix + ys)], d_rows + [q]))
        return law

    # -- draw-for-draw verification ------------------------------------------------------------

    def verify(
        self,
        target_probs: Sequence[Sequence[Fraction]],
        draft_probs: Sequence[Sequence[Fraction]] | None,
        draft_tokens: Sequence[int],
        draws: Sequence[Fraction] | None,
    ) -> VerifyResult:
        """Verify one draft with explicit uniforms (layout in the module docstring).

        ``target_probs`` has ``k + 1`` rows, ``draft_probs`` ``k`` rows, ``draft_tokens`` ``k`` ids; an
        id of ``-1`` marks an absent draft and is rejected, as is a drafted token of draft
        probability 0.
        """
        t_rows, d_rows, tokens = check_single_inputs(target_probs, draft_probs, draft_tokens, self.needs_draft_probs)
        k = len(tokens)
        u = check_draws(draws, self.draws_needed(k))
        plan = self.plan(t_rows, d_rows, tokens)
        tau = plan.tau_from_draws(u)
        v = sample_index(plan.emit[tau], u[k]) if len(u) > k else argmax_of(plan.emit[tau])
        return VerifyResult(tuple(tokens[:tau]) + (v,), tau, tau == k)


def argmax_of(dist: Dist) -> int:
    """The id of a point mass (used by schemes that need no draws, i.e. greedy)."""
    for v, x in enumerate(dist):
        if x == 1:
            return v
    raise HSDInputError("draws: this scheme's emitted-token law is not a point mass, so draws are needed")


def check_single_inputs(target_probs, draft_probs, draft_tokens, needs_draft_probs: bool = True):
    """Validate single-draft verify inputs; return (target rows, draft rows, tokens)."""
    try:
        tokens = tuple(draft_tokens)
    except TypeError:
        raise HSDInputError(f"draft_tokens: expected a sequence of ids, got {draft_tokens!r}") from None
    k = len(tokens)
    try:
        t_list = list(target_probs)
    except TypeError:
        raise HSDInputError("target_probs: expected k + 1 rows") from None
    if len(t_list) != k + 1:
        raise HSDInputError(f"target_probs: has {len(t_list)} rows, expected k + 1 = {k + 1} for {k} draft tokens")
    t_rows = [as_dist(r, f"target_probs[{i}]") for i, r in enumerate(t_list)]
    vocab = len(t_rows[0])
    for i, r in enumerate(t_rows):
        if len(r) != vocab:
            raise HSDInputError(f"target_probs[{i}]: has length {len(r)}, expected {vocab}")
    if draft_probs is None:
        if needs_draft_probs:
            raise HSDInputError("draft_probs: required by this scheme, got None")
        d_rows = None
    else:
        d_list = list(draft_probs)
        if len(d_list) != k:
            raise HSDInputError(f"draft_probs: has {len(d_list)} rows, expected k = {k}")
        d_rows = [as_dist(r, f"draft_probs[{i}]", vocab) for i, r in enumerate(d_list)]
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, int):
            raise HSDInputError(f"draft_tokens[{i}]: expected an int id, got {t!r}")
        if not (t == PLACEHOLDER or 0 <= t < vocab):
            raise HSDInputError(f"draft_tokens[{i}] = {t} is out of range for vocab size {vocab}")
    return t_rows, d_rows, tokens


def residual_or_target(weights: Sequence[Fraction], target_row: Dist) -> Dist:
    """Normalised residual; when it is empty (draft == target on this row) the target row itself.

    An empty residual is only ever reached with probability 0 by a lossless scheme, so the fallback
    does not change any law; it makes ``verify`` total on hostile inputs.
    """
    res = normalize(weights)
    return res if res is not None else target_row
