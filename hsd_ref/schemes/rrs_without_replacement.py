"""Recursive rejection sampling without replacement (RSD, Jeon et al. 2024; Sequoia); papers.md §7.3.

Drafting: at every node the group of ``m`` drafts that share the prefix draws its ``m`` next tokens
sequentially without replacement from ``q(.|node)`` (renormalising after each draw); if q's support is
exhausted first, the rest of the group is absent from this position on (id -1, never accepted).

Verification: RRS (:mod:`hsd_ref.schemes.rrs`), except that after rejecting ``x`` also
``q <- norm(q with q(x) = 0)``, so the next candidate is checked against the law it was drawn from
(once q's support is exhausted ``q`` is the zero vector: chance 0, ``P`` unchanged).  Tree walk, draw
layout and exact law: :mod:`hsd_ref.multidraft`.

Lossless: covered by the z3 fixed-vocabulary proof ``proofs/smt`` (``rrs_without_replacement``) and by
exact enumeration in ``tests/ref/test_multidraft.py``.
"""

from __future__ import annotations

from .rrs import _WithoutReplacementRule


class RRSWithoutReplacement(_WithoutReplacementRule):
    name = "rrs_without_replacement"
    lossless = True
    theorem = (
        "proofs/coq/RRS.v: rrs_without_replacement_lossless (every k, every number of drafts) + proofs/smt: "
        "rrs_without_replacement (z3, fixed vocabulary) + exact enumeration (tests/ref/test_multidraft.py)"
    )
    replacement = False
