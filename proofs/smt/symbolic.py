"""Symbolic language models for the z3 proofs: every conditional is a row of fresh real variables.

``SymModel(name, V)`` creates, on first use of a context, the row ``name<ctx>_v`` (v < V) and records
the hypotheses that make it a distribution: every entry ``>= 0`` and the entries sum to 1.  Rows are
created only for the contexts an encoding actually reads, so a proof over ``V`` tokens and draft
length ``k`` quantifies over exactly the conditionals one iteration can touch.
"""

from __future__ import annotations

import itertools

import z3

from .prover import Fact

__all__ = ["SymModel", "contexts"]


class SymModel:
    """A model whose conditionals are z3 variables (see the module docstring)."""

    def __init__(self, name: str, vocab: int):
        self.name, self.vocab = name, vocab
        self.rows: dict[tuple, tuple] = {}
        self.nonneg: dict[tuple, list[Fact]] = {}
        self.total: dict[tuple, Fact] = {}

    def __call__(self, ctx: tuple) -> tuple:
        ctx = tuple(ctx)
        if ctx not in self.rows:
            tag = "".join(map(str, ctx)) or "e"
            row = tuple(z3.Real(f"{self.name}{tag}_{v}") for v in range(self.vocab))
            self.rows[ctx] = row
            self.nonneg[ctx] = [Fact(f"{self.name}{tag}_{v}>=0", x >= 0) for v, x in enumerate(row)]
            self.total[ctx] = Fact(f"sum {self.name}{tag} = 1", z3.Sum(row) == 1)
        return self.rows[ctx]

    def hyps(self, ctx: tuple) -> list[Fact]:
        """The distribution hypotheses of the row at ``ctx``."""
        self(ctx)
        return self.nonneg[tuple(ctx)] + [self.total[tuple(ctx)]]

    def all_hyps(self) -> list[Fact]:
        return [h for ctx in self.rows for h in self.hyps(ctx)]


def contexts(vocab: int, max_len: int):
    """Every context of length ``<= max_len`` over ``range(vocab)``, shortest first."""
    for n in range(max_len + 1):
        yield from itertools.product(range(vocab), repeat=n)
