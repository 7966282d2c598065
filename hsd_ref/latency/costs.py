"""Cost curves: the cost of one forward call as a function of the positions it scores.

Leviathan et al.'s model is a constant curve; measured curves are piecewise linear; HiSpec's early
exits (Kumar, Sanghavi, Das, arXiv 2510.01336; papers.md §5) share computation with the level above
(:func:`verify_cost`).  A curve is indexed by the TOTAL positions a call scores across its batch:
under ``batch=B`` (docs/latency.md, "Batch-aware costs") a call in which each of ``B`` rows scores
``m`` positions costs ``curve(B * m)``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Mapping

import sympy as sp

from ..exact import HSDInputError
from .numeric import _check_int, _check_range, _exact, _is_number, _total


class CostCurve:
    """Cost of one forward call of a model as a function of the number ``m >= 1`` of positions scored
    in the call, counted over all the rows of its batch (``B * m`` for ``B`` rows of ``m``).

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
    def points(cls, points: Mapping[int, object], *, rows: int = 1) -> "CostCurve":
        """Piecewise-linear interpolation of measured ``{m: cost}`` points (exact for rational costs).

        The keys are total positions per call.  ``rows=B``: the calls were timed with ``B`` rows each
        scoring ``m`` positions, so key ``m`` is stored as the total ``B * m``.

        >>> CostCurve.points({1: 1, 4: 2}, rows=4)(8) == CostCurve.points({4: 1, 16: 2})(8) == Fraction(4, 3)
        True
        """
        if not isinstance(points, Mapping) or not points:
            raise HSDInputError(f"points: expected a non-empty mapping {{positions: cost}}, got {points!r}")
        rows = _check_int(rows, "rows", 1)
        pts = []
        for m, v in points.items():
            m = rows * _check_int(m, "points key", 1)
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


def verify_cost(lower: CostCurve, upper: CostCurve, positions, unprocessed_prob, *, batch: int = 1):
    """Expected cost of one verify call of ``upper`` scoring ``positions`` positions fed by ``lower``.

    ``batch=B``: the call scores ``positions`` in each of ``B`` rows, and every ``c(m)`` below is
    ``c(B m)`` (the missing position is one per row, ``c(B)``, with probability ``unprocessed_prob``).
    Without shared computation: ``upper(positions)``.  With it (``lower`` an early exit at depth
    ``f_lo`` of the backbone that ``upper`` runs to depth ``f_up > f_lo``): the lower level has already
    computed layers ``1..f_lo`` for every scored position except possibly the last one (the final
    recovered/bonus token of its last call, or level 0's last drafted token, was never fed to it);
    ``unprocessed_prob`` is the probability that it was not.  The call then costs
    ``(f_up - f_lo) c(m) + f_lo c(1) * unprocessed_prob`` with ``c`` the full backbone curve: layers above
    ``f_lo`` for all ``m`` positions, layers up to ``f_lo`` for the one missing position.
    """
    m = _total(_check_int(batch, "batch", 1), positions)
    if _shares(lower, upper):
        return (upper.depth - lower.depth) * upper.full(m) + lower.depth * upper.full(_total(batch, 1)) * unprocessed_prob
    return upper(m)
