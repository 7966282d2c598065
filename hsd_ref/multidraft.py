"""Multi-draft verification: N drafts of length K from one prefix, verified as a token tree.

Sources (papers.md §6, §7): SpecInfer (Miao et al., ASPLOS 2024, Thm 4.2, multi-step speculative
sampling); recursive rejection sampling with replacement (Yang et al. 2024, "Multi-candidate
speculative decoding"); without replacement (Jeon et al. 2024 RSD; Sequoia); SpecTr K-SEQ (Sun et
al., NeurIPS 2023, arXiv 2310.15141).

Convention (written once here; ``hsd_fast`` kernels match it draw for draw):

* ``verify(target_probs, draft_probs, draft_tokens, draws)`` takes ``target_probs[N][K+1][V]`` (the
  target rows along each draft's own path), ``draft_probs[N][K][V]`` and ``draft_tokens[N][K]``.
  Rows of two drafts at a position where their tokens so far agree must be equal.  An id of ``-1``
  marks an absent draft: it is never accepted, and rows after it are not compared.
* ``draws_needed(K) == K * N + 1``: ``draws[t * N + j]`` is the uniform for the test of draft slot
  ``j`` at position ``t`` (0-based); ``draws[K * N]`` samples the emitted token (recovered or bonus)
  by inverse CDF in token-id order.  Accept iff ``u < chance``.
* Tree walk: at position ``t`` the candidates are the slots whose first ``t`` tokens equal the
  accepted prefix, in increasing slot order.  The scheme's node rule (:meth:`MultiDraftScheme.decide`)
  turns the node's target row ``P``, draft row ``q`` and the candidates' tokens into one chance per
  candidate (conditional on every earlier candidate being rejected) and the residual emitted when all
  are rejected.  The first accepted candidate's token extends the prefix and the walk continues with
  the slots that drafted it; if all are rejected the residual token is emitted and the walk stops.
  After ``K`` acceptances the bonus token comes from the target row at depth ``K`` of the followed
  path.  ``draft_index`` is the lowest slot consistent with the accepted prefix (``None`` when
  nothing was accepted).

The exact law (:meth:`MultiDraftScheme.joint_law`) calls the same node rule: it never enumerates the
``V ** (N * K)`` joint drafts, but walks the tree.  At a node with ``m`` consistent drafts it
enumerates only their ``m`` next tokens under the drafting law (i.i.d., or sequentially without
replacement) to get the node law: P(accept token ``x`` with ``m'`` drafts continuing) and P(emit
``v``) (:meth:`MultiDraftScheme.node_law`, memoised on ``(context, m)``).  The walk goes forward one
position at a time over the states ``(accepted path, m)``, so each state is expanded once.  This is
exact because, given the node, the continuing drafts' later tokens are fresh draws from the draft
model (i.i.d., or a fresh without-replacement group), independent of the tests made at the node.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from .exact import Dist, HSDInputError, as_dist, as_list, normalize, positive_part, sample_index
from .models import TableLM, check_context, check_pair
from .scheme import PLACEHOLDER, JointLawMixin, VerifyResult, check_draws, check_k, law_add

__all__ = [
    "MultiDraftScheme",
    "NodeDecision",
    "check_multi_inputs",
    "check_n_drafts",
    "drop_token",
    "ratio_chance",
    "rrs_residual",
]

Law = dict[tuple[int, ...], Fraction]
ZERO = Fraction(0)
ONE = Fraction(1)


@dataclass(frozen=True)
class NodeDecision:
    """The verification rule at one tree node for a given list of candidate tokens.

    ``chances[i]`` is candidate ``i``'s acceptance chance given that candidates ``0..i-1`` were all
    rejected; ``residual`` is the law of the token emitted when every candidate is rejected.
    """

    chances: tuple[Fraction, ...]
    residual: Dist


def check_n_drafts(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise HSDInputError(f"n_drafts: expected an int number of drafts, got {n!r}")
    if n < 1:
        raise HSDInputError(f"n_drafts: must be >= 1, got {n}")
    return n


def ratio_chance(p_row: Dist, q_row: Sequence[Fraction], x: int, scale: Fraction = ONE) -> Fraction:
    """``min(1, P(x) / (scale * q(x)))``; 0 for the placeholder id and for ``q(x) == 0``."""
    if x == PLACEHOLDER or q_row[x] == 0:
        return ZERO
    return min(ONE, p_row[x] / (scale * q_row[x]))


def rrs_residual(p_row: Dist, q_row: Sequence[Fraction]) -> Dist:
    """``norm(max(P - q, 0))``; ``P`` itself when that is all zero (reached with probability 0)."""
    res = normalize(positive_part(p_row, q_row))
    return res if res is not None else p_row


def drop_token(q_row: Sequence[Fraction], x: int) -> tuple[Fraction, ...]:
    """``norm(q with q(x) = 0)``; the zero vector once q's support is exhausted (then every later
    candidate has chance 0 and leaves ``P`` unchanged).  The placeholder id drops nothing."""
    if x == PLACEHOLDER:
        return tuple(q_row)
    weights = tuple(ZERO if v == x else w for v, w in enumerate(q_row))
    res = normalize(weights)
    return res if res is not None else weights


class MultiDraftScheme(JointLawMixin):
    """Base class of the multi-draft schemes.

    A subclass sets ``name``, ``theorem`` and ``replacement`` (the drafting law: ``True`` for ``N``
    i.i.d. drafts, ``False`` for drafting without replacement at every node) and implements
    :meth:`decide` (and optionally :meth:`prepare`, the token-independent part of the node rule).
    The capability flags of :class:`hsd_ref.scheme.SingleDraftScheme` are fixed here: every
    multi-draft scheme needs draws and draft probabilities.
    """

    name: str = ""
    lossless: bool = True
    theorem: str = ""
    replacement: bool = True
    multi_draft: bool = True
    needs_draws: bool = True
    needs_draft_probs: bool = True

    def __init__(self, n_drafts: int = 2):
        self.n_drafts = check_n_drafts(n_drafts)

    def __repr__(self) -> str:
        return f"<scheme {self.name} n_drafts={self.n_drafts}>"

    def with_drafts(self, n_drafts: int) -> "MultiDraftScheme":
        """A copy of this scheme that verifies ``n_drafts`` drafts."""
        other = copy.copy(self)
        other.__dict__.pop("_nodes", None)
        other.n_drafts = check_n_drafts(n_drafts)
        return other

    def draws_needed(self, k: int) -> int:
        return check_k(k) * self.n_drafts + 1

    def reference(self, target: TableLM) -> TableLM:
        return target

    def proposal(self, draft: TableLM) -> TableLM:
        return draft

    # -- the node rule (shared by verify and the exact law) --------------------------------------

    def prepare(self, p_row: Dist, q_row: Dist, m: int) -> object:
        """The part of the node rule that does not depend on the candidates' tokens (K-SEQ's rho
        and residual), plus any cache :meth:`decide` keeps for one node; passed to :meth:`decide`."""
        return None

    def decide(self, state: object, p_row: Dist, q_row: Dist, tokens: tuple[int, ...]) -> NodeDecision:
        raise NotImplementedError

    def node_decision(self, p_row: Dist, q_row: Dist, tokens: Sequence[int]) -> NodeDecision:
        """The node rule for the candidates' ``tokens`` (slot order)."""
        tokens = tuple(tokens)
        return self.decide(self.prepare(p_row, q_row, len(tokens)), p_row, q_row, tokens)

    # -- the drafting law at one node -------------------------------------------------------------

    def candidate_law(self, q_row: Dist, m: int) -> list[tuple[tuple[int, ...], Fraction]]:
        """The law of the next tokens of ``m`` drafts that share a node, as ``(tokens, mass)``."""
        support = [v for v, w in enumerate(q_row) if w]
        if self.replacement:
            out = []
            for tokens in itertools.product(support, repeat=m):
                mass = ONE
                for x in tokens:
                    mass *= q_row[x]
                out.append((tokens, mass))
            return out
        out = []

        def draw(prefix: tuple[int, ...], mass: Fraction, left: Fraction) -> None:
            if len(prefix) == m:
                out.append((prefix, mass))
                return
            if left == 0:  # support exhausted: the rest of the group is absent
                out.append((prefix + (PLACEHOLDER,) * (m - len(prefix)), mass))
                return
            for x in support:
                if x not in prefix:
                    draw(prefix + (x,), mass * q_row[x] / left, left - q_row[x])

        draw((), ONE, ONE)
        return out

    def node_law(self, p_row: Dist, q_row: Dist, m: int) -> tuple[dict[tuple[int, int], Fraction], list[Fraction]]:
        """At a node with ``m`` drafts: ``({(token, drafts continuing): P(accept it)}, emitted masses)``
        over the drafting of the ``m`` next tokens and the node's tests."""
        state = self.prepare(p_row, q_row, m)
        accept: dict[tuple[int, int], Fraction] = {}
        rejected: dict[int, list] = {}  # id(residual) -> [residual, P(every candidate rejected)]
        for tokens, mass in self.candidate_law(q_row, m):
            dec = self.decide(state, p_row, q_row, tokens)
            reach = mass
            for x, c in zip(tokens, dec.chances):
                if c:
                    law_add(accept, (x, tokens.count(x)), reach * c)
                    reach *= 1 - c
                    if not reach:
                        break
            if reach:
                slot = rejected.setdefault(id(dec.residual), [dec.residual, ZERO])
                slot[1] += reach
        emit = [ZERO] * len(p_row)
        for residual, reach in rejected.values():
            for v, r in enumerate(residual):
                if r:
                    emit[v] += reach * r
        return accept, emit

    # -- exact laws -----------------------------------------------------------------------------

    def _node_cache(self, target: TableLM, draft: TableLM) -> dict:
        """Node laws keyed by ``(context, m)``, kept for the most recent ``(target, draft)`` pair (by
        identity; a model's rows never change once queried), so that the many ``outcome_law`` calls of
        :func:`hsd_ref.sequence_law` share them."""
        cached = self.__dict__.get("_nodes")
        if cached is None or cached[0] is not target or cached[1] is not draft:
            cached = (target, draft, {})
            self._nodes = cached
        return cached[2]

    def joint_law(
        self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int
    ) -> dict[tuple[int, tuple[int, ...]], Fraction]:
        """Exact law of ``(num_accepted, emitted tokens)`` over one iteration, the drafting of all
        ``N`` drafts included."""
        vocab = check_pair(target, draft)
        prefix = check_context(prefix, vocab)
        k = check_k(k)
        nodes = self._node_cache(target, draft)
        law: Law = {}
        # forward over the tree: (accepted path, drafts still consistent with it) -> probability
        frontier: dict[tuple[tuple[int, ...], int], Fraction] = {((), self.n_drafts): ONE}
        for _ in range(k):
            nxt: dict[tuple[tuple[int, ...], int], Fraction] = {}
            for (path, m), mass in frontier.items():
                ctx = prefix + path
                node = nodes.get((ctx, m))
                if node is None:
                    node = nodes[(ctx, m)] = self.node_law(target.probs(ctx), draft.probs(ctx), m)
                accept, emit = node
                for v, e in enumerate(emit):
                    if e:
                        law_add(law, path + (v,), mass * e)
                for (x, m_next), a in accept.items():
                    law_add(nxt, (path + (x,), m_next), mass * a)
            frontier = nxt
        for (path, _), mass in frontier.items():  # every position accepted: the bonus token
            for v, pv in enumerate(target.probs(prefix + path)):
                if pv:
                    law_add(law, path + (v,), mass * pv)
        return {(len(seq) - 1, seq): mass for seq, mass in law.items()}

    # -- draw-for-draw verification ------------------------------------------------------------

    def verify(
        self,
        target_probs: Sequence[Sequence[Sequence[Fraction]]],
        draft_probs: Sequence[Sequence[Sequence[Fraction]]],
        draft_tokens: Sequence[Sequence[int]],
        draws: Sequence[Fraction],
    ) -> VerifyResult:
        """Verify ``N`` drafts with explicit uniforms (layout in the module docstring)."""
        t_rows, d_rows, tokens = check_multi_inputs(target_probs, draft_probs, draft_tokens, self.n_drafts)
        n, k = len(tokens), len(tokens[0])
        u = check_draws(draws, self.draws_needed(k))
        if len(u) != self.draws_needed(k):
            raise HSDInputError(f"draws: {self.draws_needed(k)} uniforms needed (K * N + 1), got {len(u)}")
        accepted: list[int] = []
        cands = list(range(n))
        for t in range(k):
            lead = cands[0]
            cand_tokens = tuple(tokens[j][t] for j in cands)
            dec = self.node_decision(t_rows[lead][t], d_rows[lead][t], cand_tokens)
            hit = None
            for i, j in enumerate(cands):
                if u[t * n + j] < dec.chances[i]:
                    hit = cand_tokens[i]
                    break
            if hit is None:
                v = sample_index(dec.residual, u[k * n])
                return VerifyResult(tuple(accepted) + (v,), t, False, cands[0] if t else None)
            accepted.append(hit)
            cands = [j for j in cands if tokens[j][t] == hit]
        v = sample_index(t_rows[cands[0]][k], u[k * n])
        return VerifyResult(tuple(accepted) + (v,), k, True, cands[0] if k else None)


def check_multi_inputs(target_probs, draft_probs, draft_tokens, n_drafts: int):
    """Validate multi-draft verify inputs; return (target rows [N][K+1], draft rows [N][K], tokens [N][K])."""
    slots = as_list(draft_tokens, "draft_tokens", "N sequences of draft token ids")
    if len(slots) != n_drafts:
        raise HSDInputError(f"draft_tokens: has {len(slots)} drafts, expected n_drafts = {n_drafts}")
    tokens = [tuple(as_list(s, f"draft_tokens[{j}]", "a sequence of token ids")) for j, s in enumerate(slots)]
    k = len(tokens[0])
    for j, row in enumerate(tokens):
        if len(row) != k:
            raise HSDInputError(
                f"draft_tokens[{j}]: has length {len(row)}, expected K = {k} (the length of draft_tokens[0])"
            )
        for t, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, int):
                raise HSDInputError(f"draft_tokens[{j}][{t}]: expected an int id, got {x!r}")
    t_list = as_list(target_probs, "target_probs", "N x (K + 1) rows")
    if len(t_list) != n_drafts:
        raise HSDInputError(f"target_probs: has {len(t_list)} drafts, expected n_drafts = {n_drafts}")
    d_list = as_list(draft_probs, "draft_probs", "N x K rows")
    if len(d_list) != n_drafts:
        raise HSDInputError(f"draft_probs: has {len(d_list)} drafts, expected n_drafts = {n_drafts}")
    vocab = None
    t_rows, d_rows = [], []
    for j in range(n_drafts):
        rows = as_list(t_list[j], f"target_probs[{j}]", "K + 1 rows")
        if len(rows) != k + 1:
            raise HSDInputError(
                f"target_probs[{j}]: has {len(rows)} rows, expected K + 1 = {k + 1} for {k} draft tokens"
            )
        out = []
        for t, r in enumerate(rows):
            out.append(as_dist(r, f"target_probs[{j}][{t}]", vocab))
            vocab = len(out[-1])
        t_rows.append(out)
    for j in range(n_drafts):
        rows = as_list(d_list[j], f"draft_probs[{j}]", "K rows")
        if len(rows) != k:
            raise HSDInputError(f"draft_probs[{j}]: has {len(rows)} rows, expected K = {k}")
        d_rows.append([as_dist(r, f"draft_probs[{j}][{t}]", vocab) for t, r in enumerate(rows)])
    for j, row in enumerate(tokens):
        for t, x in enumerate(row):
            if not (x == PLACEHOLDER or 0 <= x < vocab):  # type: ignore[operator]
                raise HSDInputError(f"draft_tokens[{j}][{t}] = {x} is out of range for vocab size {vocab}")
    # drafts that share their first t real tokens sit at the same node at position t
    for j in range(n_drafts):
        for l in range(j + 1, n_drafts):
            shared = 0
            while shared < k and tokens[j][shared] == tokens[l][shared] and tokens[j][shared] != PLACEHOLDER:
                shared += 1
            for t in range(shared + 1):
                if t_rows[l][t] != t_rows[j][t]:
                    raise HSDInputError(
                        f"target_probs[{l}][{t}]: differs from target_probs[{j}][{t}] although drafts {j} and {l} "
                        f"share their first {t} tokens"
                    )
                if t < k and d_rows[l][t] != d_rows[j][t]:
                    raise HSDInputError(
                        f"draft_probs[{l}][{t}]: differs from draft_probs[{j}][{t}] although drafts {j} and {l} "
                        f"share their first {t} tokens"
                    )
    return t_rows, d_rows, tokens
