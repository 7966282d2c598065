"""Latency model of speculative decoding: one draft (closed forms) and any hierarchy (exact recursion).

:mod:`.leviathan`: one draft, Leviathan, Kalman, Matias (arXiv 2211.17192) §3.  :mod:`.formula`: the
hierarchy of Globerson et al. (arXiv 2510.19705; papers.md §4), our own derivation (docs/latency.md).
:mod:`.costs`: cost curves and HiSpec's shared computation.  :mod:`.adaptive`: one draft level whose
length is a stopping time.  :mod:`.laws`: acceptance laws and a
level's buffer chain.  :mod:`.simulate`: Monte Carlo of the same process.  :mod:`.numeric`: inputs.
``batch=B`` (``B`` rows in lockstep) evaluates every cost curve at the total positions of a call,
``c(B m)``; latencies stay per token of one row (docs/latency.md, "Batch-aware costs").

Exact/fast pairs, after ``statistics.mean``/``fmean``: the exact functions take ints, Fractions or
sympy expressions (never floats) and return a ``Fraction`` when every input is rational, a sympy
expression otherwise; the ``f``-prefixed twins take and return floats (``lambdify``'d closed forms for
the single-draft formulas; the same recursion in float arithmetic for hierarchies).
"""

from .adaptive import AdaptiveRound, adaptive_latency, adaptive_round, token_classes
from .costs import CostCurve, as_cost_curve, verify_cost
from .formula import fhierarchy_latency, fhierarchy_speedup, hierarchy_latency, hierarchy_speedup
from .laws import AcceptanceLaw, as_acceptance_law, level_tables
from .leviathan import expected_tokens, expected_tokens_from_prefix_probs, fexpected_tokens, fops_factor, fwalltime_factor
from .leviathan import ops_factor, optimal_draft_length, walltime_factor
from .numeric import FloatRefused
from .simulate import BernoulliProcess, HierarchyProcess, SimulationResult, simulate_hierarchy
from .costs import _shares  # noqa: F401  (private, kept importable from here for older callers and tests)
from .numeric import _check_int, _exact, _float, _is_number  # noqa: F401  (same)

__all__ = [
    "AcceptanceLaw", "AdaptiveRound", "BernoulliProcess", "CostCurve", "FloatRefused", "HierarchyProcess", "SimulationResult",
    "adaptive_latency", "adaptive_round", "as_acceptance_law", "as_cost_curve", "expected_tokens", "expected_tokens_from_prefix_probs", "fexpected_tokens",
    "fhierarchy_latency", "fhierarchy_speedup", "fops_factor", "fwalltime_factor", "hierarchy_latency",
    "hierarchy_speedup", "level_tables", "ops_factor", "optimal_draft_length", "simulate_hierarchy", "token_classes", "verify_cost",
    "walltime_factor",
]
