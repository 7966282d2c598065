"""hsd_fast: the batched PyTorch engine (verification kernels, decoding engine, fidelity reports).

Every scheme here has the same name as its exact twin in :mod:`hsd_ref`, which is its oracle.
``hsd_fast.verify(scheme, target_probs, draft_probs, draft_tokens, *, generator=None, seeds=None,
draws=None)`` is the batched verification entry point; it and its helpers (``KERNELS``,
``KernelSpec``, ``ROW_SUM_TOL``, ``draws_needed``, ``get_kernel``) live in :mod:`hsd_fast.kernels`.
"""

from .rng import seeded_uniforms
from .kernels import KERNELS, VerifyOutput, draws_needed, verify
from .drafters import NGramDrafter
from .engine import EarlyExit, GenerationResult, SpeculativeDecoder, generate

__all__ = [
    "KERNELS",
    "EarlyExit",
    "GenerationResult",
    "NGramDrafter",
    "SpeculativeDecoder",
    "VerifyOutput",
    "draws_needed",
    "generate",
    "seeded_uniforms",
    "verify",
]
