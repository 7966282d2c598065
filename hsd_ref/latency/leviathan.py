"""One draft: Leviathan, Kalman, Matias, "Fast Inference from Transformers via Speculative Decoding",
ICML 2023 (arXiv 2211.17192), §3: Eq. (1), Theorem 3.8 (walltime factor ``S``), Theorem 3.11
(arithmetic-operations factor), §3.5 (optimal draft length by integer search), Table 1 (test vectors).
Closed-form identities: proofs/coq/Latency.v (``geom_closed``, ``walltime_factor_closed``,
``ops_factor_closed``) and the sympy proofs in tests/ref/test_latency.py.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping, Sequence

import sympy as sp

from ..exact import HSDInputError
from .costs import CostCurve
from .formula import fhierarchy_speedup, hierarchy_speedup
from .numeric import FloatRefused, _check_int, _check_range, _exact, _finish, _float, _is_number, _length


def expected_tokens(alpha, k):
    """Expected tokens per iteration, Eq. (1): ``(1 - alpha^(k+1)) / (1 - alpha)`` (``k + 1`` at alpha = 1).

    ``alpha`` is the i.i.d. acceptance rate, ``k`` (gamma in the paper) the draft length.  A symbolic
    ``alpha`` gets the closed form (valid for ``alpha != 1``).

    >>> expected_tokens(Fraction(1, 2), 2)
    Fraction(7, 4)
    """
    a = _exact(alpha, "alpha")
    _check_range(a, "alpha", 0, 1)
    k = _length(k)
    if _is_number(a) and a == 1:
        return _finish(sp.Integer(1) * (k + 1)) if isinstance(k, sp.Basic) else Fraction(k + 1)
    return _finish((1 - a ** (k + 1)) / (1 - a))


def expected_tokens_from_prefix_probs(prefix_probs: Sequence[object]):
    """The non-i.i.d. form of Eq. (1): ``E[tokens] = 1 + sum_i P(A_1 and ... and A_i)``.

    ``prefix_probs[i-1]`` is the probability that the first ``i`` drafted tokens are all accepted
    (``i = 1..k``); it must be non-increasing in ``i``.

    >>> expected_tokens_from_prefix_probs([Fraction(1, 2), Fraction(1, 4)])
    Fraction(7, 4)
    """
    probs = [_exact(p, f"prefix_probs[{i}]") for i, p in enumerate(prefix_probs)]
    prev = Fraction(1)
    for i, p in enumerate(probs):
        _check_range(p, f"prefix_probs[{i}]", 0, 1)
        if _is_number(p) and _is_number(prev) and p > prev:
            raise HSDInputError(f"prefix_probs[{i}] = {p} exceeds prefix_probs[{i - 1}] = {prev}; the events are nested")
        prev = p
    return _finish(sum(probs, Fraction(1)))


def walltime_factor(alpha, k, c):
    """Theorem 3.8: ``S(alpha, k, c) = (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1))``.

    ``c`` is the cost of one draft step relative to one target step; the ``k + 1`` target scores are
    assumed to cost one target step (use :func:`hierarchy_latency` with a cost curve otherwise).

    >>> walltime_factor(Fraction(9, 10), 10, 0) == expected_tokens(Fraction(9, 10), 10)
    True
    """
    c = _exact(c, "c")
    _check_range(c, "c", 0)
    k = _length(k)
    return _finish(expected_tokens(alpha, k) / (k * c + 1))


def ops_factor(alpha, k, c_hat):
    """Theorem 3.11: expected factor of increase in arithmetic operations,
    ``(1 - alpha)(k c_hat + k + 1) / (1 - alpha^(k+1))``; ``c_hat`` = draft/target ops per token."""
    c_hat = _exact(c_hat, "c_hat")
    _check_range(c_hat, "c_hat", 0)
    k = _length(k)
    return _finish((k * c_hat + k + 1) / expected_tokens(alpha, k))


def optimal_draft_length(alpha, c, *, max_k: int = 256, min_k: int = 1, batch: int = 1, target_cost=None):
    """§3.5: ``argmax_k S(alpha, k, c)`` over ``min_k <= k <= max_k`` by integer search.

    Returns ``(k, S)``; ties go to the smallest ``k``; ``k = 0`` (``min_k=0``) is autoregressive
    decoding, ``S = 1``.  Exact when every input is rational, float arithmetic when one is a float.

    Batch-aware form (``batch != 1``, a ``target_cost``, or a cost curve as ``c``): ``c`` (the draft)
    and ``target_cost`` (default 1 per call whatever it scores) are cost specs (:func:`as_cost_curve`)
    indexed by the total positions of a call, and ``S = hierarchy_speedup([c, target_cost], [alpha],
    [k], batch=batch)``, the speed-up of ``batch`` rows in lockstep over autoregressive decoding of
    the same rows (docs/latency.md, "Batch-aware costs").  With constant costs the batch changes nothing.

    >>> optimal_draft_length(Fraction(4, 5), Fraction(1, 5))[0]
    4
    >>> draft, target = CostCurve.points({1: Fraction(1, 10), 16: Fraction(1, 10), 32: Fraction(1, 5)}), CostCurve.points({1: 1, 16: 1, 32: 2})
    >>> optimal_draft_length(Fraction(4, 5), draft, target_cost=target, batch=4, min_k=0)
    (3, Fraction(738, 325))
    >>> optimal_draft_length(Fraction(4, 5), draft, target_cost=target, batch=16, min_k=0)
    (0, Fraction(1, 1))
    """
    max_k = _check_int(max_k, "max_k", 0)
    min_k = _check_int(min_k, "min_k", 0)
    batch = _check_int(batch, "batch", 1)
    if min_k > max_k:
        raise HSDInputError(f"min_k = {min_k} exceeds max_k = {max_k}")
    curve = isinstance(c, (CostCurve, Mapping)) or (callable(c) and not isinstance(c, sp.Basic))
    if batch != 1 or target_cost is not None or curve:
        costs = [c, 1 if target_cost is None else target_cost]
        try:
            return _argmax(lambda k: Fraction(1) if k == 0 else hierarchy_speedup(costs, [alpha], [k], batch=batch), min_k, max_k)
        except FloatRefused:
            return _argmax(lambda k: 1.0 if k == 0 else fhierarchy_speedup(costs, [alpha], [k], batch=batch), min_k, max_k)
    if isinstance(alpha, float) or isinstance(c, float):
        a, cf = _float(alpha, "alpha"), _float(c, "c")
        if not 0 <= a <= 1:
            raise HSDInputError(f"alpha = {alpha} is out of range [0, 1]")
        if cf < 0:
            raise HSDInputError(f"c = {c} is out of range (must be >= 0)")
        f = (lambda k: (k + 1) / (k * cf + 1)) if a == 1 else (lambda k: fwalltime_factor(a, k, cf))
    else:
        a, ce = _exact(alpha, "alpha"), _exact(c, "c")
        f = lambda k: walltime_factor(a, k, ce)  # noqa: E731
    return _argmax(f, min_k, max_k)


def _argmax(f, min_k: int, max_k: int):
    best_k, best = None, None
    for k in range(min_k, max_k + 1):
        s = f(k)
        if not _is_number(s):
            raise HSDInputError("alpha, c: the integer search needs numeric values, got a symbolic one")
        if best is None or s > best:
            best_k, best = k, s
    return best_k, best


_A, _K, _C = sp.symbols("alpha k c")
# lambdify'd float twins of the closed forms (valid for 0 <= alpha < 1)
fexpected_tokens = sp.lambdify((_A, _K), (1 - _A ** (_K + 1)) / (1 - _A), "math")
fwalltime_factor = sp.lambdify((_A, _K, _C), (1 - _A ** (_K + 1)) / ((1 - _A) * (_K * _C + 1)), "math")
fops_factor = sp.lambdify((_A, _K, _C), (1 - _A) * (_K * _C + _K + 1) / (1 - _A ** (_K + 1)), "math")
fexpected_tokens.__doc__ = "Float twin of :func:`expected_tokens` (lambdify'd closed form, 0 <= alpha < 1)."
fwalltime_factor.__doc__ = "Float twin of :func:`walltime_factor` (lambdify'd, 0 <= alpha < 1)."
fops_factor.__doc__ = "Float twin of :func:`ops_factor` (lambdify'd, 0 <= alpha < 1); third argument c_hat."
