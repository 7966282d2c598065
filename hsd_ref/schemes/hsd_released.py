"""LOSSY CONTROL: HSD as in the authors' released code and the paper's Listing 2 (papers.md §3.5).

Identical to :mod:`.hsd_capped` (capped intermediate acceptances and residuals) except that the whole
draft is accepted with the *uncapped* joint ratio ``min(1, P(X_{1:k}) / Q(X_{1:k}))``.  It
over-accepts: with ``p = (1/3, 2/3)``, ``q = (2/3, 1/3)`` context-free and ``k = 2`` the first two
tokens are ``BA`` = (1, 0) with probability 1/3 instead of 2/9.

Not lossless: counterexample produced by ``hsd_ref.check_lossless`` and by z3 (proofs/).
"""

from __future__ import annotations

from fractions import Fraction

from .hsd_capped import HSDCapped


class HSDReleased(HSDCapped):
    name = "hsd_released"
    lossless = False
    theorem = "counterexample: p=(1/3,2/3), q=(2/3,1/3), k=2, P(BA)=1/3 != 2/9"

    def final_acceptance(self, r_k: Fraction, running_max: Fraction) -> Fraction:
        return min(r_k, Fraction(1))  # the released rule: no cap
