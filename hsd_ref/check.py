"""``check_lossless``: exact verification of a scheme's losslessness claim on a family of instances.

For each instance (a target/draft pair, a prefix and a draft length ``k``) the checker compares, with
``==`` on Fractions,

* the one-iteration law extended to ``k + 1`` tokens (papers.md §0.2) with the reference model's law
  of ``k + 1`` tokens, and
* the law of the first ``n_tokens`` tokens of the full decoding loop with the reference's law.

It works for ANY object following :class:`hsd_ref.Scheme` (``name``, ``lossless``,
``outcome_law``), so users can check their own verifiers.  A failure comes with the smallest
counterexample found (instances are visited by increasing vocabulary size, then draft length, then
model complexity), which prints the models' conditionals and can be re-checked independently.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Sequence

from .enumerate import iteration_law, reference_model, sequence_law
from .exact import HSDInputError, as_list, one_hot
from .models import TableLM, check_context, check_pair
from .scheme import Scheme, check_k

__all__ = ["Instance", "Counterexample", "LosslessReport", "check_lossless", "instance_family"]

F = Fraction


@dataclass(frozen=True)
class Instance:
    """One check: ``target`` and ``draft`` models, the context ``prefix``, the draft length ``k``."""

    target: TableLM
    draft: TableLM
    prefix: tuple[int, ...] = ()
    k: int = 1
    label: str = ""

    def __post_init__(self) -> None:
        vocab = check_pair(self.target, self.draft)
        object.__setattr__(self, "prefix", check_context(self.prefix, vocab))
        check_k(self.k)

    @property
    def vocab_size(self) -> int:
        return self.target.vocab_size


@dataclass(frozen=True)
class Counterexample:
    """A sequence whose probability under the scheme differs from the reference's."""

    scheme_name: str
    instance: Instance
    horizon: str  # "iteration" (one iteration, extended to k + 1 tokens) or "sequence" (decoding loop)
    n_tokens: int
    sequence: tuple[int, ...]
    scheme_prob: Fraction
    target_prob: Fraction

    def recheck(self, scheme: Scheme) -> bool:
        """Recompute both probabilities from scratch; True iff they still differ as recorded."""
        inst = self.instance
        if self.horizon == "iteration":
            law = iteration_law(scheme, inst.target, inst.draft, inst.prefix, inst.k)
        else:
            law = sequence_law(scheme, inst.target, inst.draft, inst.prefix, inst.k, self.n_tokens)
        ref = reference_model(scheme, inst.target).sequence_prob(self.sequence, inst.prefix)
        got = law.get(self.sequence, F(0))
        return got == self.scheme_prob and ref == self.target_prob and got != ref

    def __str__(self) -> str:
        inst = self.instance
        depth = len(inst.prefix) + self.n_tokens - 1
        lines = [
            f"counterexample for scheme {self.scheme_name!r} ({inst.label or 'instance'}):",
            f"  vocab_size={inst.vocab_size}, k={inst.k}, prefix={inst.prefix}, horizon={self.horizon} ({self.n_tokens} tokens)",
            f"  sequence {self.sequence}: scheme probability {self.scheme_prob} != target probability {self.target_prob}",
            "  target conditionals:",
        ]
        lines += _table_lines(inst.target, inst.prefix, depth)
        lines.append("  draft conditionals:")
        lines += _table_lines(inst.draft, inst.prefix, depth)
        return "\n".join(lines)


def _table_lines(model: TableLM, prefix: tuple[int, ...], depth: int) -> list[str]:
    """Conditionals along every context that extends ``prefix`` up to ``depth`` tokens (deduplicated when
    the model is context-free)."""
    rows = {}
    frontier = [prefix]
    while frontier:
        ctx = frontier.pop(0)
        rows[ctx] = model.probs(ctx)
        if len(ctx) < depth:
            frontier.extend(ctx + (v,) for v in range(model.vocab_size))
    distinct = set(rows.values())
    fmt = lambda d: "(" + ", ".join(str(x) for x in d) + ")"
    if len(distinct) == 1:
        return [f"    every context: {fmt(next(iter(distinct)))}"]
    return [f"    {ctx}: {fmt(d)}" for ctx, d in rows.items()]


@dataclass
class LosslessReport:
    scheme: str
    claimed: bool
    lossless: bool
    max_error: Fraction
    tv: Fraction
    instances_checked: int
    counterexample: Counterexample | None = None
    per_instance: list[tuple[str, Fraction]] = field(default_factory=list)  # (label, TV) of each check

    def __post_init__(self) -> None:
        if self.lossless and self.instances_checked < 1:
            raise HSDInputError("instances_checked: a report over 0 instances cannot say lossless (nothing was checked)")

    @property
    def verdict(self) -> str:
        if self.claimed == self.lossless:
            return "verified lossless" if self.lossless else "lossy, caught"
        return "CLAIM FALSE: lossy" if self.claimed else "claimed lossy, but no counterexample found"

    def __str__(self) -> str:
        head = (
            f"{self.scheme}: claimed {'lossless' if self.claimed else 'lossy'}; {self.verdict} over "
            f"{self.instances_checked} instances (max error {self.max_error}, TV {self.tv})"
        )
        return head + ("\n" + str(self.counterexample) if self.counterexample else "")


def instance_family(vocab_sizes: Sequence[int] = (2, 3), ks: Sequence[int] = (1, 2, 3), instances: int = 3, seed: int = 0) -> list[Instance]:
    """The seeded family of instances, smallest first: for each ``(V, k)`` the context-free toy pair
    (V = 2), draft == target, a point-mass draft against a target with zeros, then ``instances``
    random context-dependent pairs.  Empty ``vocab_sizes`` or ``ks`` give the empty family."""
    vocab_sizes, ks = tuple(as_list(vocab_sizes, "vocab_sizes", "a sequence of ints")), tuple(as_list(ks, "ks", "a sequence of ints"))
    for V in vocab_sizes:
        if isinstance(V, bool) or not isinstance(V, int) or V < 1:
            raise HSDInputError(f"vocab_sizes: every entry must be an int >= 1, got {V!r}")
    for k in ks:
        check_k(k)
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 0:
        raise HSDInputError(f"instances: expected a count >= 0, got {instances!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    out = []
    for V, k in itertools.product(sorted(vocab_sizes), sorted(ks)):
        if V == 2:
            out.append(Instance(TableLM.context_free((F(1, 3), F(2, 3))), TableLM.context_free((F(2, 3), F(1, 3))), (), k, "toy p=(1/3,2/3) q=(2/3,1/3)"))
        tgt = TableLM.random(V, seed * 7919 + V * 101 + k, max_denominator=6, zero_prob=0.3, peaked_prob=0.1, depth=2)
        out.append(Instance(tgt, tgt, (), k, "draft == target"))
        zeros = tuple([F(0)] + [F(1, V - 1)] * (V - 1)) if V > 1 else (F(1),)
        out.append(Instance(TableLM.context_free(zeros), TableLM.context_free(one_hot(0, V)), (), k, "point-mass draft on a target zero"))
        for i in range(instances):
            s = seed * 1_000_003 + V * 1009 + k * 101 + i
            out.append(
                Instance(
                    TableLM.random(V, 2 * s, max_denominator=8, zero_prob=0.25, peaked_prob=0.15),
                    TableLM.random(V, 2 * s + 1, max_denominator=8, zero_prob=0.25, peaked_prob=0.15),
                    (),
                    k,
                    f"random pair #{i} (seeds {2 * s}, {2 * s + 1})",
                )
            )
    return out


def _compare(law: dict, ref: dict) -> tuple[Fraction, Fraction, tuple[int, ...] | None]:
    """(max abs error, TV, the worst sequence or None)."""
    worst, worst_seq, total = F(0), None, F(0)
    for seq in sorted(set(law) | set(ref)):
        d = abs(law.get(seq, F(0)) - ref.get(seq, F(0)))
        total += d
        if d > worst:
            worst, worst_seq = d, seq
    return worst, total / 2, worst_seq


def check_lossless(
    scheme: Scheme,
    *,
    vocab_sizes: Sequence[int] = (2, 3),
    ks: Sequence[int] = (1, 2, 3),
    n_tokens: int = 4,
    instances: int | Iterable[Instance] = 3,
    seed: int = 0,
) -> LosslessReport:
    """Check ``scheme`` exactly on a seeded family of instances (or on the given ``instances``).

    Returns a :class:`LosslessReport` whose ``lossless`` is True iff every law matched exactly;
    ``max_error`` is the largest absolute probability difference and ``tv`` the largest total
    variation seen; ``counterexample`` is the first failure in smallest-first order.  An empty family
    (empty ``vocab_sizes`` or ``ks``, or no ``instances``) checks nothing and raises ``ValueError``.
    """
    for attr in ("name", "lossless", "outcome_law"):
        if not hasattr(scheme, attr):
            raise HSDInputError(f"scheme: does not follow the hsd_ref.Scheme protocol (missing {attr!r})")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise HSDInputError(f"n_tokens: expected an int >= 1, got {n_tokens!r}")
    if isinstance(instances, int) and not isinstance(instances, bool):
        if instances < 0:
            raise HSDInputError(f"instances: expected a count >= 0 or an iterable of Instance, got {instances}")
        vocab_sizes, ks = tuple(as_list(vocab_sizes, "vocab_sizes", "a sequence of ints")), tuple(as_list(ks, "ks", "a sequence of ints"))
        for name, values in (("vocab_sizes", vocab_sizes), ("ks", ks)):
            if not values:
                raise HSDInputError(f"{name}: empty, so the family has no instances and nothing would be checked")
        family = instance_family(vocab_sizes, ks, instances, seed)
    else:
        if isinstance(instances, (str, bytes, Instance)):
            raise HSDInputError(f"instances: expected a count >= 0 or an iterable of Instance, got {type(instances).__name__}")
        try:
            family = list(instances)
        except TypeError:
            raise HSDInputError(f"instances: expected a count >= 0 or an iterable of Instance, got {instances!r}") from None
        for i, inst in enumerate(family):
            if not isinstance(inst, Instance):
                raise HSDInputError(f"instances[{i}]: expected hsd_ref.Instance, got {type(inst).__name__}")
    if not family:
        raise HSDInputError("instances: no instances to check, so nothing would be verified (an empty family is never lossless)")
    max_err, max_tv, cex = F(0), F(0), None
    per_instance = []
    for inst in family:
        ref = reference_model(scheme, inst.target)
        checks = (
            ("iteration", inst.k + 1, lambda: iteration_law(scheme, inst.target, inst.draft, inst.prefix, inst.k)),
            ("sequence", n_tokens, lambda: sequence_law(scheme, inst.target, inst.draft, inst.prefix, inst.k, n_tokens)),
        )
        inst_tv = F(0)
        for horizon, length, law_fn in checks:
            law = law_fn()
            want = ref.sequence_law(length, inst.prefix)
            err, tv, seq = _compare(law, want)
            inst_tv = max(inst_tv, tv)
            max_err, max_tv = max(max_err, err), max(max_tv, tv)
            if seq is not None and cex is None:
                cex = Counterexample(
                    scheme.name, inst, horizon, length, seq, law.get(seq, F(0)), want.get(seq, F(0))
                )
        per_instance.append((inst.label, inst_tv))
    return LosslessReport(scheme.name, bool(scheme.lossless), cex is None, max_err, max_tv, len(family), cex, per_instance)
