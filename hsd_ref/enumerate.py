"""Exact enumeration of output laws (papers.md §0.2 and §0.3).

* :func:`iteration_law`: the one-iteration law extended to ``k + 1`` tokens with the reference model
  (the target, or the argmax model for greedy).  A scheme is lossless iff this equals the reference's
  law of ``k + 1`` tokens for every model pair (by marginalisation this covers every shorter horizon).
* :func:`sequence_law`: the law of the first ``n_tokens`` tokens over the full multi-iteration
  decoding loop (the bonus token included, every iteration restarting from the emitted context).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping

from .exact import HSDInputError
from .models import TableLM, check_context, check_pair
from .scheme import Scheme, check_k, law_add

__all__ = ["iteration_law", "sequence_law", "reference_model", "extend_law"]

Law = dict[tuple[int, ...], Fraction]


def reference_model(scheme: Scheme, target: TableLM) -> TableLM:
    ref = getattr(scheme, "reference", None)
    return ref(target) if callable(ref) else target


def _outcome(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Mapping[tuple[int, ...], Fraction]:
    law = scheme.outcome_law(target, draft, prefix, k)
    for seq, m in law.items():
        if not isinstance(m, Fraction):
            raise HSDInputError(f"scheme {getattr(scheme, 'name', scheme)!r}: outcome_law returned a non-Fraction mass {m!r}")
        if not seq:
            raise HSDInputError(f"scheme {getattr(scheme, 'name', scheme)!r}: outcome_law returned an empty emission")
    return law


def extend_law(law: Mapping[tuple[int, ...], Fraction], model: TableLM, prefix: tuple[int, ...], length: int) -> Law:
    """Extend (or truncate) every sequence of ``law`` to ``length`` tokens with ``model``."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise HSDInputError(f"length: expected an int >= 0, got {length!r}")
    prefix = check_context(prefix, model.vocab_size)
    out: Law = {}
    for seq, mass in law.items():
        if len(seq) >= length:
            law_add(out, tuple(seq[:length]), mass)
            continue
        for tail, m in model.sequence_law(length - len(seq), prefix + tuple(seq)).items():
            law_add(out, tuple(seq) + tail, mass * m)
    return out


def iteration_law(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int) -> Law:
    """The law of one iteration's output, extended to ``k + 1`` tokens with the reference model.

    Every enumerator is iterative, so any ``k`` works (no recursion limit); the cost grows with the
    number of positive-probability drafts and outputs, up to ``V ** (k + 1)``."""
    vocab = check_pair(target, draft)
    prefix = check_context(prefix, vocab)
    k = check_k(k)
    return extend_law(_outcome(scheme, target, draft, prefix, k), reference_model(scheme, target), prefix, k + 1)


def sequence_law(scheme: Scheme, target: TableLM, draft: TableLM, prefix: tuple[int, ...], k: int, n_tokens: int) -> Law:
    """The law of the first ``n_tokens`` emitted tokens of the full decoding loop."""
    vocab = check_pair(target, draft)
    prefix = check_context(prefix, vocab)
    k = check_k(k)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise HSDInputError(f"n_tokens: expected an int >= 0, got {n_tokens!r}")
    cache: dict[tuple[int, ...], Mapping[tuple[int, ...], Fraction]] = {}
    law: Law = {}
    frontier: Law = {(): Fraction(1)}
    while frontier:
        nxt: Law = {}
        for done, mass in frontier.items():
            if len(done) >= n_tokens:
                law_add(law, done[:n_tokens], mass)
                continue
            ctx = prefix + done
            if ctx not in cache:
                cache[ctx] = _outcome(scheme, target, draft, ctx, k)
            for seq, m in cache[ctx].items():
                law_add(nxt, done + tuple(seq), mass * m)
        frontier = nxt
    return law
