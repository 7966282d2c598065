"""Greedy verification: accept drafts while they equal the target's argmax.

The recovered (or bonus) token is the target's argmax at the first mismatch (ties go to the lowest
id).  The scheme reproduces the greedy decode of the target, i.e. the law of the *argmax model*
(:meth:`TableLM.argmax_model`), and drafts are the draft model's own argmaxes.  It needs no draws
and no draft probabilities.

>>> from fractions import Fraction as F
>>> rows = [[F(int(v == a)) for v in range(6)] for a in (1, 5, 3, 4)]
>>> Greedy().verify(rows, None, [1, 2, 3], None).tokens
(1, 5)

Lossless (with respect to the argmax model): it is token-wise speculative sampling applied to point
masses, proofs/coq/SpecLossless.v ``spec_decoding_lossless``.
"""

from __future__ import annotations

from fractions import Fraction

from ..exact import argmax, one_hot
from ..models import TableLM
from ..scheme import Plan, SingleDraftScheme


class Greedy(SingleDraftScheme):
    name = "greedy"
    lossless = True
    theorem = "proofs/coq/SpecLossless.v: spec_decoding_lossless (on point masses); proofs/smt: greedy"
    needs_draws = False
    needs_draft_probs = False

    def reference(self, target: TableLM) -> TableLM:
        return target.argmax_model()

    def proposal(self, draft: TableLM) -> TableLM:
        return draft.argmax_model()

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        k = len(draft_tokens)
        best = [argmax(row) for row in target_probs]
        vocab = len(target_probs[0])
        chances = tuple(Fraction(int(draft_tokens[i] == best[i])) for i in range(k))
        return Plan("forward", chances, tuple(one_hot(b, vocab) for b in best))
