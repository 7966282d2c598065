"""hsd_ref: the exact reference for speculative-decoding verification schemes.

Pure Python, no torch: toy autoregressive models over small vocabularies (:class:`TableLM`), every
verification scheme as an exact kernel in ``fractions.Fraction`` (:data:`SCHEMES`), an exact
enumerator of output laws (:func:`iteration_law`, :func:`sequence_law`) and the losslessness checker
(:func:`check_lossless`) that is the oracle for everything else in the project.
"""

from .exact import Dist, HSDInputError, as_dist, from_floats, tv_distance
from .models import TableLM
from .scheme import PLACEHOLDER, Plan, Scheme, SingleDraftScheme, VerifyResult
from .enumerate import iteration_law, sequence_law
from .registry import SCHEMES, get_scheme
from .check import Counterexample, Instance, LosslessReport, check_lossless
from .stats import coupling_check, expected_accepted, tokens_per_target_call

__all__ = [
    "Counterexample",
    "Dist",
    "Instance",
    "LosslessReport",
    "check_lossless",
    "coupling_check",
    "expected_accepted",
    "tokens_per_target_call",
    "HSDInputError",
    "PLACEHOLDER",
    "Plan",
    "SCHEMES",
    "Scheme",
    "SingleDraftScheme",
    "TableLM",
    "VerifyResult",
    "as_dist",
    "from_floats",
    "get_scheme",
    "iteration_law",
    "sequence_law",
    "tv_distance",
]
