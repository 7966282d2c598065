"""LOSSY CONTROL: lenient acceptance (Leviathan et al. 2023, App. A.5).

Accept with ``min(1, p / (l * q))`` for a lenience ``l`` in (0, 1]; recover from the token-wise
residual.  For ``l < 1`` this only bounds each token's probability by ``p / l``; it is not lossless
(``l = 1`` is token-wise sampling).
"""

from __future__ import annotations

from fractions import Fraction

from ..exact import HSDInputError, as_fraction
from ..scheme import Plan, SingleDraftScheme
from .tokenwise import tokenwise_chances, tokenwise_residuals


class Lenience(SingleDraftScheme):
    name = "lenience"
    lossless = False
    theorem = "counterexample from hsd_ref.check_lossless (Leviathan et al. App. A.5 say it is lossy)"

    def __init__(self, lenience: Fraction = Fraction(1, 2)):
        lenience = as_fraction(lenience, "lenience")
        if not 0 < lenience <= 1:
            raise HSDInputError(f"lenience: must lie in (0, 1], got {lenience}")
        self.lenience = lenience

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        return Plan(
            "forward",
            tokenwise_chances(target_probs, draft_probs, draft_tokens, self.lenience),
            tokenwise_residuals(target_probs, draft_probs, len(draft_tokens)),
        )
