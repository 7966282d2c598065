"""LOSSY CONTROL: token-wise acceptance, but a rejection resamples from the target row ``p``
instead of the residual ``norm(max(p - q, 0))`` -- the middle-level bug of papers.md §4 and peers.md
§4 (bug class 6).
"""

from __future__ import annotations

from ..scheme import Plan, SingleDraftScheme
from .tokenwise import tokenwise_chances


class ResampleFromTarget(SingleDraftScheme):
    name = "resample_from_target"
    lossless = False
    theorem = "counterexample from hsd_ref.check_lossless; z3 model p=(1/2,1/2), q=(1,0)"

    def plan(self, target_probs, draft_probs, draft_tokens) -> Plan:
        return Plan(
            "forward",
            tokenwise_chances(target_probs, draft_probs, draft_tokens),
            tuple(target_probs),
        )
