"""Naive HSD with recursive resampling (Zhou et al. 2025, arXiv 2601.05724, Alg. 1, §5.1).

Uncapped joint masses ``P_t``, ``Q_t`` along the draft.  For ``t < k``::

    D(p, q | X_{1:t}) = sum_x max(P_t p_{t+1}(x) - Q_t q_{t+1}(x), 0)     # branch deficit
    D(q, p | X_{1:t}) = sum_x max(Q_t q_{t+1}(x) - P_t p_{t+1}(x), 0)     # branch excess
    h_t = D(p, q) / max(D(p, q), D(q, p))

and ``h_k = min(1, P_k / Q_k)``.  The backward scan picks ``tau``.  When ``tau < k`` the scheme then
resamples *every* remaining position ``t = tau+1..k`` from the branch residual
``max(p(X~_{1:t}) - q(X~_{1:t}), 0) / D(p, q | X~_{1:t-1})`` along the resampled path ``X~`` (joint
masses include the resampled tokens), so one iteration emits ``k`` tokens, or ``k + 1`` with the bonus
when everything is accepted.

The resampled path leaves the draft, so the scheme needs the target's AND the draft's conditionals
off the draft path: ``k - tau - 1`` extra sequential target (and draft) calls, which is why the
paper treats it as a stepping stone.  :meth:`HSDNaive.verify` therefore takes the two models.

Draw layout (``draws_needed(k) = max(2k, k + 1)``): ``draws[i-1]`` tests position ``i``;
``draws[k]`` draws the bonus; ``draws[k + j]`` draws the ``j``-th resampled token (``j >= 0``).

Lossless: exact enumeration (``hsd_ref.check_lossless``) and the fixed-vocabulary z3 proof in proofs/.
"""

from __future__ import annotations

from fractions import Fraction

from ..exact import HSDInputError, sample_index
from ..models import TableLM, check_context, check_pair
from ..scheme import Plan, SingleDraftScheme, VerifyResult, check_draws, check_k, check_single_inputs, law_add, residual_or_target
from .hsd_capped import joint_masses


def branch_excess(P_t: Fraction, Q_t: Fraction, p_row, q_row) -> tuple[tuple[Fraction, ...], Fraction]:
    """Per-child deficit ``max(P_t p - Q_t q, 0)`` and the total excess ``sum max(Q_t q - P_t p, 0)``."""
    plus = tuple(max(P_t * a - Q_t * b, Fraction(0)) for a, b in zip(p_row, q_row))
    minus = sum(max(Q_t * b - P_t * a, Fraction(0)) for a, b in zip(p_row, q_row))
    return plus, minus


class HSDNaive(SingleDraftScheme):
    name = "hsd_naive"
    lossless = True
    theorem = "proofs/smt: hsd_naive (z3, fixed vocabulary) + exact enumeration (hsd_ref.check_lossless)"

    def draws_needed(self, k: int) -> int:
        return max(2 * k, k + 1)

    def target_calls(self, tau: int, k: int) -> int:
        """Target forward passes of one iteration: the scoring pass plus one per resampled position
        after the first."""
        return 1 + max(0, k - tau - 1)

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        """The scan part of the scheme (``emit`` holds the first resampled token's law)."""
        k = len(draft_tokens)
        P, Q, m = joint_masses(target_probs, draft_probs, draft_tokens)
        chances, emit = [], []
        for t in range(k):
            if t > m:
                emit.append(target_probs[t])
                chances.append(Fraction(0))
                continue
            plus, minus = branch_excess(P[t], Q[t], target_probs[t], draft_probs[t])
            emit.append(residual_or_target(plus, target_probs[t]))
            if t >= 1:
                denom = max(sum(plus), minus)
                chances.append(sum(plus) / denom if denom else Fraction(1))
        if k:
            chances.append(min(Fraction(1), P[k] / Q[k]) if m == k else Fraction(0))
        return Plan("backward", tuple(chances), tuple(emit) + (target_probs[k],))

    def _resample_law(self, target, draft, context, P_t, Q_t, first_law, n_left):
        """Law of the ``n_left`` resampled tokens, the first drawn from ``first_law`` (a depth-first
        walk with an explicit stack, so ``n_left`` is not bounded by the recursion limit)."""
        law: dict[tuple[int, ...], Fraction] = {}
        stack = [((), Fraction(1), P_t, Q_t, first_law)]  # (path, mass, P, Q, law of the next token or None)
        while stack:
            path, mass, P, Q, row_law = stack.pop()
            if len(path) == n_left:
                law_add(law, path, mass)
                continue
            p_row, q_row = target.probs(context + path), draft.probs(context + path)
            if row_law is None:
                row_law = residual_or_target(branch_excess(P, Q, p_row, q_row)[0], p_row)
            for v in reversed(range(len(row_law))):  # pushed in reverse: visited in id order
                if row_law[v]:
                    stack.append((path + (v,), mass * row_law[v], P * p_row[v], Q * q_row[v], None))
        return law

    def joint_law(self, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int):
        vocab = check_pair(target, draft)
        prefix = check_context(prefix, vocab)
        k = check_k(k)
        law: dict[tuple[int, tuple[int, ...]], Fraction] = {}
        for xs, q_mass in draft.sequence_law(k, prefix).items():
            t_rows = [target.probs(prefix + xs[:i]) for i in range(k + 1)]
            d_rows = [draft.probs(prefix + xs[:i]) for i in range(k)]
            plan = self.plan(t_rows, d_rows, xs)
            P, Q, _ = joint_masses(t_rows, d_rows, xs)
            for tau, pt in enumerate(plan.tau_law()):
                if not pt:
                    continue
                n_left = 1 if tau == k else k - tau
                tail = self._resample_law(target, draft, prefix + xs[:tau], P[tau], Q[tau], plan.emit[tau], n_left)
                for seq, m in tail.items():
                    law_add(law, (tau, xs[:tau] + seq), q_mass * pt * m)
        return law

    def verify(self, target_probs, draft_probs, draft_tokens, draws, *, target: TableLM | None = None,
               draft: TableLM | None = None, prefix: tuple[int, ...] = ()) -> VerifyResult:
        """As the base ``verify``; ``target``, ``draft`` and ``prefix`` supply the conditionals off the
        draft path when more than one position must be resampled."""
        t_rows, d_rows, tokens = check_single_inputs(target_probs, draft_probs, draft_tokens)
        k = len(tokens)
        u = check_draws(draws, self.draws_needed(k))
        plan = self.plan(t_rows, d_rows, tokens)
        tau = plan.tau_from_draws(u)
        if tau == k:
            return VerifyResult(tuple(tokens) + (sample_index(plan.emit[k], u[k]),), k, True)
        P, Q, _ = joint_masses(t_rows, d_rows, tokens)
        path = list(tokens[:tau])
        P_t, Q_t = P[tau], Q[tau]
        v = sample_index(plan.emit[tau], u[k])
        for j in range(k - tau):
            if j:
                if target is None or draft is None:
                    raise HSDInputError("target: hsd_naive needs the target and draft models to resample off the draft path")
                check_pair(target, draft)
                ctx = check_context(tuple(prefix) + tuple(path), target.vocab_size)
                p_row, q_row = target.probs(ctx), draft.probs(ctx)
                v = sample_index(residual_or_target(branch_excess(P_t, Q_t, p_row, q_row)[0], p_row), u[k + j])
            else:
                p_row, q_row = t_rows[tau], d_rows[tau]
            P_t, Q_t = P_t * p_row[v], Q_t * q_row[v]
            path.append(v)
        return VerifyResult(tuple(path), tau, False)
