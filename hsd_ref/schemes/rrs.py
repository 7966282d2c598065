"""Recursive rejection sampling (RRS) with replacement over N i.i.d. drafts.

SpecInfer's multi-step speculative sampling (Miao et al., ASPLOS 2024, Thm 4.2) with the children of a
node drawn i.i.d. from the draft model (Yang et al. 2024, "Multi-candidate speculative decoding");
papers.md §7.1-7.2.  At a node with target row ``P`` and draft row ``q`` the candidates are tried in
slot order: candidate ``x`` is accepted with chance ``min(1, P(x) / q(x))`` (0 for ``q(x) == 0`` or the
placeholder -1); on any rejection, the placeholder's included, ``P <- norm(max(P - q, 0))`` (``P``
kept when that is all zero, which a lossless run reaches with probability 0) and ``q`` stays.  If
every candidate is rejected the emitted token is drawn from the final ``P``.  The tree walk, draw
layout and exact law are in :mod:`hsd_ref.multidraft`.

Lossless (SpecInfer Thm 4.2): after each rejection the updated ``P`` is the law the output must have
given that rejection, and the next candidate is a fresh draw from the same ``q``.  Covered by the z3
fixed-vocabulary proof ``proofs/smt`` (``rrs``) and by exact enumeration in
``tests/ref/test_multidraft.py``.
"""

from __future__ import annotations

from ..multidraft import MultiDraftScheme, NodeDecision, drop_token, ratio_chance, rrs_residual


class RRS(MultiDraftScheme):
    name = "rrs"
    lossless = True
    theorem = "proofs/coq/RRS.v: rrs_lossless (every k, every number of drafts) + proofs/smt: rrs (z3, fixed vocabulary) + exact enumeration (tests/ref/test_multidraft.py)"
    replacement = True

    def prepare(self, p_row, q_row, m):
        # cache shared by the decisions at one node: the rejected tokens so far -> (P, q, {x: chance})
        return {(): (p_row, q_row, {})}

    def after_rejection(self, p_row, q_row, x):
        """The node's ``(P, q)`` after candidate ``x`` was rejected."""
        return rrs_residual(p_row, q_row), q_row

    def decide(self, state, p_row, q_row, tokens) -> NodeDecision:
        if state is None:
            state = self.prepare(p_row, q_row, len(tokens))
        chances = []
        p_now, q_now, chance = state[()]
        for i, x in enumerate(tokens):
            c = chance.get(x)
            if c is None:
                c = chance[x] = ratio_chance(p_now, q_now, x)
            chances.append(c)
            key = tokens[: i + 1]
            hit = state.get(key)
            if hit is None:
                hit = state[key] = self.after_rejection(p_now, q_now, x) + ({},)
            p_now, q_now, chance = hit
        return NodeDecision(tuple(chances), p_now)


class _WithoutReplacementRule(RRS):
    """The without-replacement node rule (``q`` loses each rejected token); drafting set by subclasses."""

    def after_rejection(self, p_row, q_row, x):
        return rrs_residual(p_row, q_row), drop_token(q_row, x)
