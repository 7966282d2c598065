"""The fidelity test's cells: the real engine, one (scheme, level kind) at a time, over exact models.

Every cell runs :class:`hsd_fast.engine.SpeculativeDecoder` -- the object users decode with -- over
:class:`hsd_fast.engine.tables.TableModel` levels built from one seeded toy instance
(:func:`hsd_ref.strategies.toy_pair`: context-dependent rows that are peaked, near-flat, with zeros,
random, point masses), so the law of what it emits is known exactly: it is the warped target's law
(``hsd_ref.warp.warped_model``), cut at EOS and at ``max_new_tokens`` like the engine's output,
whatever the scheme and the levels (the argmax law for greedy).  Level kinds:

===============  ==============================================================================
``draft``        a draft model and the target (``T = 3``)
``ngram``        the n-gram drafter (point-mass proposals, ``T = 3``) and the target
``middle3``      draft -> middle model -> target, the cell's scheme at both levels (``T = 2, 3``)
``middle4``      draft -> two middles -> target, token-wise, block, then the cell's scheme
``early_exit``   draft -> an early exit of the target (a two-layer :class:`TableModel`) -> target
``restricted``   n-gram -> draft -> target with ``allowed_ids`` (proposals outside it: the sink)
``warps``        draft -> target at temperature 1/2 with top-k 2 and top-p 0.7071
``batch``        ragged prompts in one batch, EOS id 2: rows retire at EOS and at the length cut
``adaptive``     a draft model with a stopping rule and the target: ``draft_stop=RandomisedStop(1/2,
                 1/4)`` (stop with chance ``(1 - q_t(x_t)) / 2`` after a token, ``1/4`` before any;
                 at most ``T = 3``), the fast twin of hsd_ref's ``adaptive_<scheme>``
===============  ==============================================================================

:func:`build` returns everything a test needs for a cell: the decoder's arguments, the prompts, the
exact per-level models (for draw-for-draw checks against ``hsd_ref.Hierarchy``) and the exact law.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from hsd_ref.exact import HSDInputError
from hsd_ref.models import TableLM
from hsd_ref.schemes.hierarchy import mix_middle
from hsd_ref.strategies import toy_pair
from hsd_ref.warp import warped_model

from ..engine import ENGINE_SCHEMES as _ENGINE_SCHEMES
from ..engine import EarlyExit, SpeculativeDecoder
from ..engine.tables import TableModel

__all__ = ["ENGINE_SCHEMES", "LEVEL_KINDS", "DEFAULT_INSTANCE", "Instance", "Setup", "build", "encode_rows", "exact_law", "law_codes", "sample_cell"]

ENGINE_SCHEMES = _ENGINE_SCHEMES  # every scheme the engine runs
LEVEL_KINDS = ("draft", "ngram", "middle3", "middle4", "early_exit", "restricted", "warps", "batch", "adaptive")
# the adaptive kind's stopping rule: (scale, at_start) of RandomisedStop, engine and hsd_ref alike
ADAPTIVE_RULE = (Fraction(1, 2), Fraction(1, 4))


@dataclass(frozen=True)
class Instance:
    """The toy instance: ``toy_pair(vocab_size, toy_seed)``, ``n_tokens`` new tokens per row."""

    vocab_size: int = 3
    toy_seed: int = 0
    n_tokens: int = 5
    prompt: tuple[int, ...] = (0,)

    def models(self) -> tuple[TableLM, TableLM]:
        return toy_pair(self.vocab_size, self.toy_seed)


DEFAULT_INSTANCE = Instance()


@dataclass
class Setup:
    """One cell, ready to run: ``SpeculativeDecoder(levels, **decoder_kwargs).generate(prompts_for(n),
    max_new_tokens=n_tokens, seeds=...)``.

    ``exact``: the exact model of each level, bottom-up (``None`` for a drafter), already warped like
    the engine warps it; ``warp``: the keyword arguments of :func:`hsd_ref.warp.warp_dist`;
    ``prompts``: the prompts cycled over the batch rows; ``eos``: the EOS ids."""

    scheme: str
    kind: str
    levels: list
    decoder_kwargs: dict
    exact: list
    warp: dict
    prompts: list[tuple[int, ...]]
    n_tokens: int
    eos: tuple[int, ...] = ()
    vocab_size: int = 3
    thresholds: tuple[int, ...] = field(default=())
    stop_rule: object = None  # the adaptive kind: hsd_ref's twin of the engine's draft_stop


    def prompts_for(self, n_rows: int) -> list[list[int]]:
        return [list(self.prompts[b % len(self.prompts)]) for b in range(n_rows)]

    def decoder(self, **override) -> SpeculativeDecoder:
        return SpeculativeDecoder(self.levels, **{**self.decoder_kwargs, **override})


@functools.lru_cache(maxsize=4)
def _models(inst: Instance) -> dict:
    """The instance's exact models and their TableModels, built once (the TableModels memoise their
    float rows, so every cell of a run shares them)."""
    t, d = inst.models()
    mix = {w: mix_middle(w).build(t, d) for w in (Fraction(1, 2), Fraction(1, 4), Fraction(3, 4))}
    m, m1, m2 = mix[Fraction(1, 2)], mix[Fraction(1, 4)], mix[Fraction(3, 4)]
    tm = {name: TableModel([lm], name) for name, lm in (("target", t), ("draft", d), ("middle", m), ("middle1", m1), ("middle2", m2))}
    return dict(t=t, d=d, m=m, m1=m1, m2=m2, T=tm["target"], D=tm["draft"], M=tm["middle"], M1=tm["middle1"], M2=tm["middle2"], E=TableModel([m, t], "target+exit"))


def build(scheme: str, kind: str, inst: Instance = DEFAULT_INSTANCE) -> Setup:
    """The cell ``(scheme, kind)`` on ``inst`` (module docstring)."""
    if scheme not in ENGINE_SCHEMES:
        raise HSDInputError(f"scheme: {scheme!r} is not an engine scheme; known: {', '.join(ENGINE_SCHEMES)}")
    if kind not in LEVEL_KINDS:
        raise HSDInputError(f"kind: unknown level kind {kind!r}; known: {', '.join(LEVEL_KINDS)}")
    mod = _models(inst)
    t, d, m, m1, m2, T, D = (mod[k] for k in ("t", "d", "m", "m1", "m2", "T", "D"))
    V = inst.vocab_size
    greedy = scheme == "greedy"
    warp: dict = {"temperature": 0 if greedy else 1}
    if kind == "warps" and not greedy:
        warp.update(temperature=Fraction(1, 2), top_k=2, top_p=0.7071)
    if kind == "restricted":
        warp["allowed_ids"] = tuple(v for v in range(V) if v != 1)
    per_level = lambda n: [scheme] * n  # noqa: E731
    prompts, eos = [inst.prompt], ()
    stop = None
    if kind in ("draft", "warps", "batch", "adaptive"):
        levels, exact, schemes, th = [D, T], [d, t], per_level(1), (3,)
        if kind == "batch":
            prompts, eos = [inst.prompt, (1, 2), (2,)], (2,)
    elif kind == "ngram":
        levels, exact, schemes, th = ["ngram", T], [None, t], per_level(1), (3,)
    elif kind == "middle3":
        levels, exact, schemes, th = [D, mod["M"], T], [d, m, t], per_level(2), (2, 3)
    elif kind == "middle4":
        levels, exact, th = [D, mod["M1"], mod["M2"], T], [d, m1, m2, t], (1, 2, 3)
        schemes = per_level(3) if greedy else ["tokenwise", "block", scheme]
    elif kind == "early_exit":
        levels, exact, schemes, th = [D, EarlyExit(mod["E"], 1), mod["E"]], [d, m, t], per_level(2), (2, 3)
    else:  # restricted
        levels, exact, schemes, th = ["ngram", D, T], [None, d, t], per_level(2), (2, 3)
    float_warp = {k: (float(v) if k in ("temperature", "top_p") else v) for k, v in warp.items()}
    kwargs = dict(scheme=schemes, thresholds=th, eos_token_id=list(eos) if eos else None, **float_warp)
    if kind == "adaptive":
        from hsd_ref.schemes.adaptive import RandomisedStop as ExactRandomisedStop

        from ..engine.stopping import RandomisedStop

        kwargs["draft_stop"] = RandomisedStop(*map(float, ADAPTIVE_RULE))
        stop = ExactRandomisedStop(*ADAPTIVE_RULE)
    exact = [None if lm is None else warped_model(lm, **warp) for lm in exact]
    return Setup(scheme, kind, levels, kwargs, exact, warp, prompts, inst.n_tokens, eos, V, thresholds=th, stop_rule=stop)


def _cut(seq: tuple[int, ...], eos: Sequence[int]) -> tuple[int, ...]:
    for i, x in enumerate(seq):
        if x in eos:
            return seq[: i + 1]
    return seq


def exact_law(setup: Setup) -> dict[tuple[int, ...], Fraction]:
    """The exact law of one row's output, as ``(prompt index, *tokens)`` (prompts in proportion
    ``1 / len(prompts)`` each, as :meth:`Setup.prompts_for` lays them out over many rows; the test
    treats the fixed proportions conservatively, see docs/fidelity.md)."""
    target = setup.exact[-1]
    law: dict[tuple[int, ...], Fraction] = {}
    share = Fraction(1, len(setup.prompts))
    for i, prompt in enumerate(setup.prompts):
        for seq, mass in target.sequence_law(setup.n_tokens, prompt).items():
            key = (i, *_cut(seq, setup.eos))
            law[key] = law.get(key, Fraction(0)) + share * mass
    return law


def encode_rows(setup: Setup, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Codes of engine outputs laid out by :meth:`Setup.prompts_for`: ``(prompt index, tokens padded
    with the id V)`` in base ``V + 1`` (the codes of :func:`law_codes`)."""
    V, n = setup.vocab_size, setup.n_tokens
    padded = np.full((len(rows), n + 1), V, dtype=np.int64)
    padded[:, 0] = np.arange(len(rows)) % len(setup.prompts)
    for b, r in enumerate(rows):
        padded[b, 1 : 1 + len(r)] = r
    return padded @ ((V + 1) ** np.arange(n, -1, -1, dtype=np.int64))


def law_codes(setup: Setup, law: dict[tuple[int, ...], Fraction]) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, probs)`` of an exact law in :func:`encode_rows`' code, codes increasing."""
    V, n = setup.vocab_size, setup.n_tokens
    weights = (V + 1) ** np.arange(n, -1, -1, dtype=np.int64)
    items = sorted((int(np.dot(list(k) + [V] * (n + 1 - len(k)), weights)), float(p)) for k, p in law.items())
    return np.array([c for c, _ in items], dtype=np.int64), np.array([p for _, p in items], dtype=np.float64)


def sample_cell(setup: Setup, n_samples: int, seed: int, *, verify_fn: Callable | None = None) -> np.ndarray:
    """``n_samples`` rows decoded by the engine in ONE batch (row ``b`` seeded ``seed + b``); their
    codes (:func:`encode_rows`).  ``verify_fn`` replaces the kernels (the lossy controls)."""
    dec = setup.decoder(**({} if verify_fn is None else {"verify_fn": verify_fn}))
    res = dec.generate(setup.prompts_for(n_samples), max_new_tokens=setup.n_tokens, seeds=list(range(seed, seed + n_samples)))
    return encode_rows(setup, res.tokens)
