"""Latency model of speculative decoding: one draft (closed forms) and any hierarchy (exact recursion).

Single draft -- Leviathan, Kalman, Matias, "Fast Inference from Transformers via Speculative
Decoding", ICML 2023 (arXiv 2211.17192), §3: Eq. (1) (expected tokens per iteration), Theorem 3.8
(walltime improvement factor ``S``), Theorem 3.11 (arithmetic-operations factor), §3.5 (optimal draft
length by integer search), Table 1 (test vectors).  Closed-form identities: proofs/coq/Latency.v
(``geom_closed``, ``walltime_factor_closed``, ``ops_factor_closed``) and the sympy proofs in
tests/ref/test_latency.py.

Hierarchy -- the model cascade of Globerson, Kaplan, Mansour, Mohri, Schuster, "Fast Inference via
Hierarchical Speculative Decoding" (arXiv 2510.19705; papers.md §4), with HiSpec's shared
early-exit computation (Kumar, Sanghavi, Das, arXiv 2510.01336; papers.md §5) as a cost model.  The
expression here is our own derivation (docs/latency.md), not the paper's closed form:

* level 0 (``M_0``) produces a batch of exactly ``T_0`` tokens with ``T_0`` calls of 1 position;
* level ``i`` (``0 < i < n``) requests batches of ``T_{i-1}`` tokens from level ``i - 1``, verifies
  each with ONE call of ``M_i`` scoring ``T_{i-1} + 1`` positions, appends accepted + 1 tokens and
  passes up exactly the first ``T_i`` once it holds ``>= T_i`` (surplus discarded);
* the target (level ``n``): one iteration = one batch of ``T_{n-1}`` tokens, one call scoring
  ``T_{n-1} + 1`` positions, accepted + 1 tokens emitted.

Under the i.i.d. assumption every verification of a ``b``-token batch at edge ``(i-1, i)`` draws its
accepted count independently from a fixed law (token-wise: ``P(>= j accepted) = alpha^j``), so the
buffer count of each level is a finite Markov chain.  With ``h(d)`` = expected number of requests to
collect ``>= d`` tokens (``h(d) = 1 + sum_y P(Y=y) h(d-y)``, ``h(d<=0) = 0``), Wald's identity gives the
expected cost of one level-``i`` batch ``E_i = h(T_i) (E_{i-1} + v_i)`` with ``E_0 = T_0 c_0(1)`` and
``v_i`` the expected cost of one level-``i`` verify call; renewal-reward gives the expected latency
per emitted token ``L = (E_{n-1} + v_n) / E[Y_n]``.  For one level this is ``(k c + 1)/E[tokens]``, the
reciprocal of Leviathan's ``S(alpha, k, c)`` (proved symbolically in the tests).

Exact/fast pairs, after ``statistics.mean``/``fmean``: the exact functions take ints, Fractions or
sympy expressions (never floats) and return a ``Fraction`` when every input is rational, a sympy
expression otherwise; the ``f``-prefixed twins take and return floats (``lambdify``'d closed forms for
the single-draft formulas; the same recursion in float arithmetic for hierarchies).
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Protocol, Sequence

import sympy as sp

from .exact import HSDInputError

__all__ = [
    "AcceptanceLaw",
    "BernoulliProcess",
    "CostCurve",
    "FloatRefused",
    "HierarchyProcess",
    "SimulationResult",
    "as_acceptance_law",
    "as_cost_curve",
    "expected_tokens",
    "expected_tokens_from_prefix_probs",
    "fexpected_tokens",
    "fhierarchy_latency",
    "fhierarchy_speedup",
    "fops_factor",
    "fwalltime_factor",
    "hierarchy_latency",
    "hierarchy_speedup",
    "level_tables",
    "ops_factor",
    "optimal_draft_length",
    "simulate_hierarchy",
    "verify_cost",
    "walltime_factor",
]


# ---------------------------------------------------------------------------------------------------
# number handling: exact (Fraction / sympy) or float
# ---------------------------------------------------------------------------------------------------

class FloatRefused(HSDInputError):
    """An exact routine was given a float (the optimiser then falls back to float arithmetic)."""


def _exact(x: object, name: str):
    """``x`` as a Fraction (rational input) or a sympy expression (symbolic input); floats refused."""
    if isinstance(x, bool):
        raise HSDInputError(f"{name}: expected a number, got bool {x!r}")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        raise FloatRefused(
            f"{name}: got the float {x!r}; the exact latency functions refuse floats "
            "(pass Fraction('0.39') or use the f-prefixed float twin)"
        )
    if isinstance(x, sp.Basic):
        if x.is_Rational:
            return Fraction(int(x.p), int(x.q))
        if x.has(sp.Float):
            raise FloatRefused(f"{name}: got {x!r}, which contains a sympy Float; pass Rationals")
        return x
    if isinstance(x, numbers.Rational):
        return Fraction(x.numerator, x.denominator)
    raise HSDInputError(f"{name}: expected an int, Fraction or sympy expression, got {type(x).__name__} {x!r}")


def _float(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, sp.Basic)):
        raise HSDInputError(f"{name}: expected a real number, got {x!r}")
    try:
        xf = float(x)
    except TypeError:
        raise HSDInputError(f"{name}: expected a real number, got the expression {x!r}") from None
    if not math.isfinite(xf):
        raise HSDInputError(f"{name}: {x!r} is not finite")
    return xf


def _is_number(x) -> bool:
    return not (isinstance(x, sp.Basic) and x.free_symbols)


def _check_range(x, name: str, lo=None, hi=None, *, lo_open: bool = False) -> None:
    """Range check, skipped for symbolic values."""
    if not _is_number(x):
        return
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise HSDInputError(f"{name} = {x} is out of range (must be {'>' if lo_open else '>='} {lo})")
    if hi is not None and x > hi:
        raise HSDInputError(f"{name} = {x} is out of range (must be <= {hi})")


def _finish(x):
    """Fraction for a rational result, sympy expression otherwise."""
    if isinstance(x, sp.Basic) and x.is_Rational:
        return Fraction(int(x.p), int(x.q))
    return x


def _check_int(x: object, name: str, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, sp.Integer)):
        raise HSDInputError(f"{name}: expected an int >= {lo}, got {x!r}")
    x = int(x)
    if x < lo:
        raise HSDInputError(f"{name} = {x} is out of range (must be >= {lo})")
    return x


def _length(k: object, name: str = "k"):
    """A draft length: an int >= 0 or a sympy Symbol (for identities over all k)."""
    if isinstance(k, sp.Symbol):
        return k
    return _check_int(k, name, 0)


# ---------------------------------------------------------------------------------------------------
# single draft: Leviathan et al. §3
# ---------------------------------------------------------------------------------------------------

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


def optimal_draft_length(alpha, c, *, max_k: int = 256, min_k: int = 1):
    """§3.5: ``argmax_k S(alpha, k, c)`` over ``min_k <= k <= max_k`` by integer search.

    Returns ``(k, S)``; ties go to the smallest ``k``.  Exact when ``alpha`` and ``c`` are rational,
    float arithmetic when either is a float.

    >>> optimal_draft_length(Fraction(4, 5), Fraction(1, 5))[0]
    4
    """
    max_k = _check_int(max_k, "max_k", 0)
    min_k = _check_int(min_k, "min_k", 0)
    if min_k > max_k:
        raise HSDInputError(f"min_k = {min_k} exceeds max_k = {max_k}")
    if isinstance(alpha, float) or isinstance(c, float):
        a, cf = _float(alpha, "alpha"), _float(c, "c")
        if not 0 <= a <= 1:
            raise HSDInputError(f"alpha = {alpha} is out of range [0, 1]")
        if cf < 0:
            raise HSDInputError(f"c = {c} is out of range (must be >= 0)")
        f = (lambda k: (k + 1) / (k * cf + 1)) if a == 1 else (lambda k: fwalltime_factor(a, k, cf))
    else:
        a, ce = _exact(alpha, "alpha"), _exact(c, "c")
        if not (_is_number(a) and _is_number(ce)):
            raise HSDInputError("alpha, c: the integer search needs numeric values, got a symbolic one")
        f = lambda k: walltime_factor(a, k, ce)  # noqa: E731
    best_k, best = min_k, f(min_k)
    for k in range(min_k + 1, max_k + 1):
        s = f(k)
        if s > best:
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


# ---------------------------------------------------------------------------------------------------
# cost model
# ---------------------------------------------------------------------------------------------------

class CostCurve:
    """Cost of one forward call of a model as a function of the number ``m >= 1`` of positions scored.

    Build one with :meth:`constant` (Leviathan's model: any number of positions costs one step),
    :meth:`points` (measured ``{m: cost}`` points, piecewise-linear between them, flat below the
    smallest ``m``, extended along the last segment above the largest ``m``) or :meth:`function`
    (any callable ``m -> cost``).  Units are arbitrary but must be the same for every level.

    Shared computation (HiSpec): ``curve.early_exit(f)`` is an early exit of ``curve``'s model at
    depth fraction ``f = d/D``.  Its call costs ``f * curve(m)`` (cost spread evenly over layers).
    When the level right above an exit runs the same backbone deeper (the full model, or a deeper exit
    of it), that level reuses the exit's KV cache and hidden states: for the positions the exit has
    already processed it pays only the layers from ``f`` up to its own depth.  See :func:`verify_cost`.

    >>> qwen = CostCurve.points({1: 1, 5: 1, 9: Fraction(176, 100)})
    >>> qwen(7)
    Fraction(69, 50)
    >>> qwen.early_exit(Fraction(1, 4))(7)
    Fraction(69, 200)
    """

    __slots__ = ("_base", "depth", "root", "description")

    def __init__(self, base: Callable[[int], object], description: str, *, depth=Fraction(1), root: "CostCurve | None" = None):
        self._base = base
        self.depth = depth
        self.root = root
        self.description = description

    def __repr__(self) -> str:
        if self.root is not None:
            return f"CostCurve(early exit at depth {self.depth} of {self.root.description})"
        return f"CostCurve({self.description})"

    @classmethod
    def constant(cls, cost) -> "CostCurve":
        """Every call costs ``cost`` whatever the number of positions (Leviathan's model)."""
        if not isinstance(cost, float):
            cost = _exact(cost, "cost")
        _check_range(cost, "cost", 0)
        return cls(lambda m: cost, f"constant {cost}")

    @classmethod
    def points(cls, points: Mapping[int, object]) -> "CostCurve":
        """Piecewise-linear interpolation of measured ``{m: cost}`` points (exact for rational costs)."""
        if not isinstance(points, Mapping) or not points:
            raise HSDInputError(f"points: expected a non-empty mapping {{positions: cost}}, got {points!r}")
        pts = []
        for m, v in points.items():
            m = _check_int(m, "points key", 1)
            v = v if isinstance(v, float) else _exact(v, f"points[{m}]")
            if not _is_number(v):
                raise HSDInputError(f"points[{m}]: measured costs must be numbers, got {v!r}")
            _check_range(v, f"points[{m}]", 0)
            pts.append((m, v))
        pts.sort()
        ms = [m for m, _ in pts]

        def base(m):
            if not isinstance(m, int):
                raise HSDInputError(f"positions: a piecewise-linear cost curve needs an int, got {m!r}")
            if m <= ms[0]:
                return pts[0][1]
            for (m0, v0), (m1, v1) in zip(pts, pts[1:]):
                if m <= m1:
                    return v0 + (v1 - v0) * Fraction(m - m0, m1 - m0)
            if len(pts) == 1:
                return pts[0][1]
            (m0, v0), (m1, v1) = pts[-2], pts[-1]
            return v1 + (v1 - v0) * Fraction(m - m1, m1 - m0)

        return cls(base, "points " + ", ".join(f"{m}:{v}" for m, v in pts))

    @classmethod
    def function(cls, fn: Callable[[int], object], description: str = "") -> "CostCurve":
        """Any callable ``m -> cost`` (return exact numbers or sympy expressions for the exact functions)."""
        if not callable(fn):
            raise HSDInputError(f"fn: expected a callable, got {fn!r}")
        return cls(fn, description or getattr(fn, "__name__", "function"))

    def full(self, m):
        """Cost of a call of the whole backbone (depth 1) scoring ``m`` positions."""
        return self._base(m)

    def __call__(self, m):
        return self.depth * self._base(m)

    def early_exit(self, depth) -> "CostCurve":
        """An early exit of this (full-depth) model at depth fraction ``0 < depth < 1``."""
        if self.root is not None:
            raise HSDInputError("depth: early_exit must be called on the full model's curve, not on an exit")
        if not isinstance(depth, float):
            depth = _exact(depth, "depth")
        if _is_number(depth) and not 0 < depth < 1:
            raise HSDInputError(f"depth = {depth} is out of range (0, 1)")
        return CostCurve(self._base, self.description, depth=depth, root=self)

    def backbone(self) -> "CostCurve":
        return self if self.root is None else self.root


def as_cost_curve(spec: object, name: str = "cost") -> CostCurve:
    """A :class:`CostCurve` from a number / symbol (constant), a ``{m: cost}`` mapping (points), a
    callable, or a CostCurve."""
    if isinstance(spec, CostCurve):
        return spec
    if isinstance(spec, Mapping):
        try:
            return CostCurve.points(spec)
        except HSDInputError as exc:
            raise HSDInputError(f"{name}: {exc}") from None
    if callable(spec) and not isinstance(spec, sp.Basic):
        return CostCurve.function(spec)
    try:
        return CostCurve.constant(spec)
    except HSDInputError as exc:
        raise HSDInputError(f"{name}: {exc}") from None


def _shares(lower: CostCurve, upper: CostCurve) -> bool:
    """Whether ``upper`` reuses ``lower``'s KV cache and hidden states (same backbone, deeper)."""
    if lower.root is None or lower.root is not upper.backbone():
        return False
    if upper.root is None:  # the full model: deeper than any of its exits (0 < depth < 1)
        return True
    lo, up = lower.depth, upper.depth
    if not (_is_number(lo) and _is_number(up)):
        raise HSDInputError(f"depth: cannot order the symbolic exit depths {lo} and {up} of one backbone")
    return lo < up


def verify_cost(lower: CostCurve, upper: CostCurve, positions, unprocessed_prob):
    """Expected cost of one verify call of ``upper`` scoring ``positions`` positions fed by ``lower``.

    Without shared computation: ``upper(positions)``.  With it (``lower`` an early exit at depth
    ``f_lo`` of the backbone that ``upper`` runs to depth ``f_up > f_lo``): the lower level has already
    computed layers ``1..f_lo`` for every scored position except possibly the last one (the final
    recovered/bonus token of its last call, or level 0's last drafted token, was never fed to it);
    ``unprocessed_prob`` is the probability that it was not.  The call then costs
    ``(f_up - f_lo) c(m) + f_lo c(1) * unprocessed_prob`` with ``c`` the full backbone curve: layers above
    ``f_lo`` for all ``m`` positions, layers up to ``f_lo`` for the one missing position.
    """
    if _shares(lower, upper):
        return (upper.depth - lower.depth) * upper.full(positions) + lower.depth * upper.full(1) * unprocessed_prob
    return upper(positions)


# ---------------------------------------------------------------------------------------------------
# acceptance laws
# ---------------------------------------------------------------------------------------------------

class AcceptanceLaw:
    """Law of the number of accepted tokens when one verify call checks a batch of ``b`` tokens.

    :meth:`tokenwise` is the i.i.d. token-wise law (``P(>= j accepted) = alpha^j``, capped at ``b``);
    :meth:`table` / :meth:`function` plug in any law, e.g. block verification's accepted-count law
    (``SingleDraftScheme.accepted_law``).  The yield of a call is accepted + 1 tokens.
    """

    __slots__ = ("_fn", "alpha", "description", "_cache")

    def __init__(self, fn: Callable[[int], Mapping[int, object]], description: str, alpha=None):
        self._fn = fn
        self.alpha = alpha
        self.description = description
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"AcceptanceLaw({self.description})"

    @classmethod
    def tokenwise(cls, alpha) -> "AcceptanceLaw":
        """Capped geometric: ``j < b`` accepted with probability ``alpha^j (1 - alpha)``, all ``b`` with ``alpha^b``."""
        if not isinstance(alpha, float):
            alpha = _exact(alpha, "alpha")
        _check_range(alpha, "alpha", 0, 1)

        def law(b):
            out = {j: alpha ** j * (1 - alpha) for j in range(b)}
            out[b] = alpha ** b
            return out

        return cls(law, f"token-wise alpha={alpha}", alpha=alpha)

    @classmethod
    def table(cls, table: Mapping[int, Mapping[int, object]]) -> "AcceptanceLaw":
        """``{b: {accepted: probability}}`` for every batch size ``b`` that will be verified."""
        if not isinstance(table, Mapping):
            raise HSDInputError(f"table: expected {{batch size: {{accepted: probability}}}}, got {table!r}")

        def law(b):
            if b not in table:
                raise HSDInputError(f"acceptance table: no law for batch size {b} (have {sorted(table)})")
            return table[b]

        return cls(law, f"table for b in {sorted(table)}")

    @classmethod
    def function(cls, fn: Callable[[int], Mapping[int, object]], description: str = "") -> "AcceptanceLaw":
        if not callable(fn):
            raise HSDInputError(f"fn: expected a callable, got {fn!r}")
        return cls(fn, description or getattr(fn, "__name__", "function"))

    def accepted(self, b: int, conv: Callable = None) -> dict:
        """Validated ``{accepted: probability}`` for a batch of ``b`` tokens (converted by ``conv``)."""
        conv = conv or _exact
        key = (b, conv)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        raw = self._fn(b)
        if not isinstance(raw, Mapping):
            raise HSDInputError(f"acceptance law ({self.description}) for b={b}: expected a mapping, got {raw!r}")
        out = {}
        for j, p in raw.items():
            j = _check_int(j, f"acceptance law b={b}: accepted count", 0)
            if j > b:
                raise HSDInputError(f"acceptance law ({self.description}) for b={b}: accepted count {j} > b")
            p = conv(p, f"acceptance law b={b}: P({j})")
            _check_range(p, f"acceptance law b={b}: P({j})", 0, 1)
            out[j] = out.get(j, 0) + p
        numeric = all(_is_number(p) for p in out.values())
        if numeric and self.alpha is None:
            total = sum(out.values())
            if (conv is _float and abs(total - 1) > 1e-9) or (conv is not _float and total != 1):
                raise HSDInputError(f"acceptance law ({self.description}) for b={b}: probabilities sum to {total}, not 1")
        self._cache[key] = out
        return out


def as_acceptance_law(spec: object, name: str = "acceptance") -> AcceptanceLaw:
    """An :class:`AcceptanceLaw` from an acceptance rate (token-wise), a ``{b: {j: p}}`` table, a
    callable ``b -> {j: p}`` or an AcceptanceLaw."""
    if isinstance(spec, AcceptanceLaw):
        return spec
    try:
        if isinstance(spec, Mapping):
            return AcceptanceLaw.table(spec)
        if callable(spec) and not isinstance(spec, sp.Basic):
            return AcceptanceLaw.function(spec)
        return AcceptanceLaw.tokenwise(spec)
    except HSDInputError as exc:
        raise HSDInputError(f"{name}: {exc}") from None


def level_tables(yields: Mapping[int, object], t_max: int, zero=Fraction(0), one=Fraction(1)):
    """Expected requests and exact-hit probabilities of one level's buffer chain.

    ``yields`` maps the number of tokens one verify call appends (accepted + 1, ``>= 1``) to its
    probability.  Returns ``(h, p)`` with, for ``d = 0..t_max``, ``h[d]`` = expected number of verify
    calls until the buffer holds ``>= d`` tokens and ``p[d]`` = probability it ever holds exactly ``d``
    (so ``1 - p[T]`` is the probability of a surplus at threshold ``T``)::

        h[0] = 0,  h[d] = 1 + sum_y P(y) h[max(d - y, 0)]
        p[0] = 1,  p[d] = sum_{y <= d} P(y) p[d - y]

    >>> level_tables({1: Fraction(1, 2), 2: Fraction(1, 2)}, 2)
    ([Fraction(0, 1), Fraction(1, 1), Fraction(3, 2)], [Fraction(1, 1), Fraction(1, 2), Fraction(3, 4)])
    """
    h, p = [zero], [one]
    for d in range(1, t_max + 1):
        hd, pd = one, zero
        for y, q in yields.items():
            hd = hd + q * h[max(d - y, 0)]
            if y <= d:
                pd = pd + q * p[d - y]
        h.append(hd)
        p.append(pd)
    return h, p


# ---------------------------------------------------------------------------------------------------
# hierarchy latency
# ---------------------------------------------------------------------------------------------------

def _prepare(costs, acceptance, thresholds, *, allow_symbolic_k: bool):
    if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence):
        raise HSDInputError(f"costs: expected a sequence of per-level cost specs (level 0 .. target), got {costs!r}")
    if isinstance(acceptance, (str, bytes)) or not isinstance(acceptance, Sequence):
        raise HSDInputError(f"acceptance: expected a sequence of per-edge acceptance specs, got {acceptance!r}")
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise HSDInputError(f"thresholds: expected a sequence of ints T_0..T_(n-1), got {thresholds!r}")
    n = len(thresholds)
    if len(costs) != n + 1:
        raise HSDInputError(f"costs: has {len(costs)} levels, expected len(thresholds) + 1 = {n + 1}")
    if len(acceptance) != n:
        raise HSDInputError(f"acceptance: has {len(acceptance)} edges, expected len(thresholds) = {n}")
    curves = [as_cost_curve(c, f"costs[{i}]") for i, c in enumerate(costs)]
    laws = [as_acceptance_law(a, f"acceptance[{i}]") for i, a in enumerate(acceptance)]
    ts = []
    for i, t in enumerate(thresholds):
        if allow_symbolic_k and n == 1 and isinstance(t, sp.Symbol):
            if laws[0].alpha is None:
                raise HSDInputError("thresholds[0]: a symbolic draft length needs a token-wise acceptance rate")
            ts.append(t)
        else:
            ts.append(_check_int(t, f"thresholds[{i}]", 1))
    return curves, laws, ts


def _edge_law(laws, edge: int, b: int, conv) -> dict:
    try:
        return laws[edge].accepted(b, conv)
    except HSDInputError as exc:
        raise type(exc)(f"acceptance[{edge}]: {exc}") from None


def _edge_tables(laws, edge: int, b: int, t: int, conv):
    """:func:`level_tables` of one edge, cached on the law object (repeated evaluations are cheap)."""
    law = laws[edge]
    key = ("tables", b, t, conv)
    hit = law._cache.get(key)
    if hit is None:
        acc = _edge_law(laws, edge, b, conv)
        hit = level_tables({j + 1: q for j, q in acc.items()}, t, conv(0, "0"), conv(1, "1"))
        law._cache[key] = hit
    return hit


def _latency(curves, laws, ts, conv):
    """The recursion of the module docstring, in the arithmetic ``conv`` chooses."""
    n = len(ts)

    def cost(curve, m, name):
        return conv(curve(m), name)

    if n == 0:
        return cost(curves[0], 1, "costs[0](1)")
    zero, one = conv(0, "0"), conv(1, "1")
    e = ts[0] * cost(curves[0], 1, "costs[0](1)")  # level 0: T_0 calls of one position
    unprocessed = one  # level 0's last drafted token was never fed to M_0
    for i in range(1, n):
        b = ts[i - 1]
        v = conv(verify_cost(curves[i - 1], curves[i], b + 1, unprocessed), f"costs[{i}]({b + 1})")
        h, p = _edge_tables(laws, i - 1, b, ts[i], conv)
        e = h[ts[i]] * (e + v)
        unprocessed = p[ts[i]]
    b = ts[n - 1]
    v = conv(verify_cost(curves[n - 1], curves[n], b + 1, unprocessed), f"costs[{n}]({b + 1})")
    if isinstance(b, sp.Symbol):
        alpha = laws[0].alpha
        mean_yield = (1 - alpha ** (b + 1)) / (1 - alpha)
    else:
        key = ("mean yield", b, conv)
        mean_yield = laws[n - 1]._cache.get(key)
        if mean_yield is None:
            acc = _edge_law(laws, n - 1, b, conv)
            mean_yield = laws[n - 1]._cache[key] = sum(((j + 1) * q for j, q in acc.items()), zero)
    return (e + v) / mean_yield


def hierarchy_latency(costs: Sequence[object], acceptance: Sequence[object], thresholds: Sequence[object]):
    """Exact expected latency per emitted token of the hierarchy ``M_0 -> ... -> M_n`` (i.i.d. model).

    ``costs[i]`` (``i = 0..n``): level ``i``'s cost per call (see :func:`as_cost_curve`; an early exit
    made with :meth:`CostCurve.early_exit` shares computation with the level above it).
    ``acceptance[i]`` (``i = 0..n-1``): the law of edge ``(i, i+1)``, i.e. how ``M_{i+1}`` accepts
    ``M_i``'s batches (an acceptance rate, or see :func:`as_acceptance_law`).  ``thresholds``:
    ``T_0..T_{n-1}``.  ``n = 0`` (only the target) gives ``costs[0](1)``.  With one level
    ``thresholds[0]`` may be a sympy Symbol (token-wise law only), for identities over all ``k``.

    Returns a Fraction when every input is rational, else a sympy expression.

    >>> hierarchy_latency([Fraction(1, 10), 1], [Fraction(4, 5)], [2])
    Fraction(30, 61)
    >>> 1 / walltime_factor(Fraction(4, 5), 2, Fraction(1, 10))
    Fraction(30, 61)
    """
    curves, laws, ts = _prepare(costs, acceptance, thresholds, allow_symbolic_k=True)
    return _finish(_latency(curves, laws, ts, _exact))


def fhierarchy_latency(costs: Sequence[object], acceptance: Sequence[object], thresholds: Sequence[int]) -> float:
    """Float twin of :func:`hierarchy_latency` (same recursion in float arithmetic)."""
    curves, laws, ts = _prepare(costs, acceptance, thresholds, allow_symbolic_k=False)
    return _latency(curves, laws, ts, _float)


def hierarchy_speedup(costs, acceptance, thresholds):
    """Predicted speed-up over the target alone: ``costs[-1](1) / hierarchy_latency(...)``."""
    target = as_cost_curve(costs[-1], f"costs[{len(costs) - 1}]") if costs else None
    lat = hierarchy_latency(costs, acceptance, thresholds)
    return _finish(_exact(target(1), "costs[-1](1)") / lat)


def fhierarchy_speedup(costs, acceptance, thresholds) -> float:
    """Float twin of :func:`hierarchy_speedup`."""
    target = as_cost_curve(costs[-1], f"costs[{len(costs) - 1}]") if costs else None
    lat = fhierarchy_latency(costs, acceptance, thresholds)
    return _float(target(1), "costs[-1](1)") / lat


# ---------------------------------------------------------------------------------------------------
# Monte-Carlo simulation of the same process
# ---------------------------------------------------------------------------------------------------

class HierarchyProcess(Protocol):
    """What the simulator needs from the models: drafting at level 0 and verification at each level.

    ``committed`` is the target's output so far (a list; do not modify it) and ``pending`` the tokens
    tentatively accepted above the calling level plus its own buffer, so the calling level's context
    is ``committed + pending``.  ``verify`` returns the emitted tokens: the accepted prefix of
    ``batch`` followed by one recovered or bonus token.
    """

    def draft(self, committed: list, pending: tuple, n: int, rng: random.Random) -> tuple: ...

    def verify(self, level: int, committed: list, pending: tuple, batch: tuple, rng: random.Random) -> tuple: ...


class BernoulliProcess:
    """The i.i.d. process: token contents are placeholders (0), verification at edge ``(i-1, i)``
    draws the accepted count from ``acceptance[i-1]`` (token-wise: one Bernoulli(alpha) per token)."""

    def __init__(self, acceptance: Sequence[object]):
        self.laws = [as_acceptance_law(a, f"acceptance[{i}]") for i, a in enumerate(acceptance)]
        self._cdf: dict = {}

    def draft(self, committed, pending, n, rng):
        return (0,) * n

    def _accepted(self, edge: int, b: int, rng: random.Random) -> int:
        law = self.laws[edge]
        if law.alpha is not None:
            a = float(law.alpha)
            j = 0
            while j < b and rng.random() < a:
                j += 1
            return j
        key = (edge, b)
        cdf = self._cdf.get(key)
        if cdf is None:
            acc, cdf = 0.0, []
            for j, p in sorted(law.accepted(b, _float).items()):
                acc += p
                cdf.append((acc, j))
            self._cdf[key] = cdf
        u = rng.random()
        for acc, j in cdf:
            if u < acc:
                return j
        return cdf[-1][1]

    def verify(self, level, committed, pending, batch, rng):
        return batch[: self._accepted(level - 1, len(batch), rng)] + (0,)


@dataclass(frozen=True)
class SimulationResult:
    """Per target iteration (a renewal cycle): its cost and the number of tokens it emitted."""

    cycle_costs: tuple[float, ...]
    cycle_tokens: tuple[int, ...]
    tokens: tuple[int, ...] = ()

    @property
    def latency(self) -> float:
        """Total cost / total tokens: the ratio estimator of the expected latency per token."""
        return math.fsum(self.cycle_costs) / sum(self.cycle_tokens)


def simulate_hierarchy(
    costs: Sequence[object],
    thresholds: Sequence[int],
    process: HierarchyProcess,
    *,
    cycles: int,
    seed: int,
    keep_tokens: bool = False,
) -> SimulationResult:
    """Run ``cycles`` target iterations of the hierarchy and record each one's cost and yield.

    Same process and cost model as :func:`hierarchy_latency` (costs evaluated in floats, the
    shared-computation discount applied per call with the actual last-token state), driven by
    ``process`` (e.g. :class:`BernoulliProcess` for the i.i.d. model, or real toy models) and by
    ``random.Random(seed)`` only.
    """
    n = len(thresholds)
    if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence) or len(costs) != n + 1:
        raise HSDInputError(f"costs: expected {n + 1} per-level cost specs (len(thresholds) + 1), got {costs!r}")
    curves = [as_cost_curve(c, f"costs[{i}]") for i, c in enumerate(costs)]
    ts = [_check_int(t, f"thresholds[{i}]", 1) for i, t in enumerate(thresholds)]
    cycles = _check_int(cycles, "cycles", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    rng = random.Random(seed)
    # per-call costs in floats; the verify cost depends on whether the batch's last token is unprocessed
    step0 = _float(curves[0](1), "costs[0](1)")
    vcost = [None] + [
        tuple(_float(verify_cost(curves[i - 1], curves[i], ts[i - 1] + 1, u), f"costs[{i}]") for u in (0, 1))
        for i in range(1, n + 1)
    ]
    committed: list = []

    def produce(level: int, pending: tuple):
        """One batch of exactly T_level tokens: (batch, cost, last token unprocessed)."""
        if level == 0:
            return tuple(process.draft(committed, pending, ts[0], rng)), ts[0] * step0, 1
        buf: tuple = ()
        spent = 0.0
        while len(buf) < ts[level]:
            sub, sub_cost, unproc = produce(level - 1, pending + buf)
            out = tuple(process.verify(level, committed, pending + buf, sub, rng))
            if not 1 <= len(out) <= len(sub) + 1:
                raise HSDInputError(f"process.verify at level {level}: returned {len(out)} tokens for a batch of {len(sub)}")
            spent += sub_cost + vcost[level][unproc]
            buf += out
        return buf[: ts[level]], spent, int(len(buf) == ts[level])

    ccost, ctok = [], []
    for _ in range(cycles):
        if n == 0:
            out, spent = tuple(process.draft(committed, (), 1, rng)), step0
        else:
            batch, spent, unproc = produce(n - 1, ())
            out = tuple(process.verify(n, committed, (), batch, rng))
            if not 1 <= len(out) <= len(batch) + 1:
                raise HSDInputError(f"process.verify at level {n}: returned {len(out)} tokens for a batch of {len(batch)}")
            spent += vcost[n][unproc]
        ccost.append(spent)
        ctok.append(len(out))
        committed.extend(out)
    return SimulationResult(tuple(ccost), tuple(ctok), tuple(committed) if keep_tokens else ())
