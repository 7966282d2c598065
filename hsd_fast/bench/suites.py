"""What the decoding benchmark runs: run specifications, plans and suites.

A :class:`RunSpec` is one configuration: a baseline (``kind="hf"`` / ``"hf_assisted"``, or the engine
with the target alone), or the engine over some levels with a scheme and thresholds.  A
:class:`PlanSpec` is a configuration the latency model chooses: after calibration (measured cost
curves and acceptance rates, :mod:`hsd_fast.bench.calibrate`), ``hsd_ref.optimize.optimal_hierarchy``
picks the chain and the thresholds, and the plan becomes a RunSpec.  A :class:`Suite` is one process's
worth of work: one model family and dtype, one prompt set, the temperatures, and the configurations,
interleaved prompt by prompt so that machine drift cancels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

__all__ = ["RunSpec", "PlanSpec", "Suite", "default_suites", "quick_suites", "tiny_suites", "SCHEMES", "K_GRID",
           "LEVEL_KEYS", "parse_exit_key"]

SCHEMES = ("tokenwise", "block", "hsd_capped")
K_GRID = (2, 4, 6, 8)
LEVEL_KEYS = ("ngram", "draft", "draft@int8", "target")  # and exit:D, exit:D:trained (hsd_fast.bench.families)
_EXIT_KEY = re.compile(r"exit:([0-9]+)(:trained)?")


def parse_exit_key(key: str) -> tuple[int, bool] | None:
    """``"exit:D"`` -> ``(D, False)``; ``"exit:D:trained"`` -> ``(D, True)``; ``None`` for the other
    level keys (:data:`LEVEL_KEYS`).  Any other key is a ``ValueError`` that names it."""
    if key in LEVEL_KEYS:
        return None
    m = _EXIT_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is not None and int(m[1]) >= 1:
        return int(m[1]), m[2] is not None
    if isinstance(key, str) and key.split(":", 1)[0] == "exit":
        raise ValueError(f"level key {key!r}: expected exit:D (the untrained exit) or exit:D:trained (the head "
                         f"`hsd-fast train-exit MODEL --layer D` cached), with D an integer >= 1")
    raise ValueError(f"level key {key!r}: unknown; expected one of {', '.join(LEVEL_KEYS[:3])}, exit:D, exit:D:trained "
                     f"or target")


def _check_keys(where: str, keys) -> None:
    for key in keys:
        try:
            parse_exit_key(key)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class RunSpec:
    name: str  # unique within a suite
    kind: str  # "engine", "hf" (transformers generate), "hf_assisted" (generate(assistant_model=draft)) or
    # "hf_lookup" (generate(prompt_lookup_num_tokens=K): transformers' n-gram drafter)
    levels: tuple[str, ...] = ("target",)  # engine level keys, bottom-up, "target" last (hsd_fast.bench.families)
    scheme: str = "tokenwise"
    thresholds: tuple[int, ...] = ()
    group: str = "single"  # "baseline", "single", "hierarchy", "int8", "auto" (SpeculativeDecoder(thresholds="auto"))
    plan: str | None = None  # the PlanSpec this run came from

    def __post_init__(self):
        _check_keys(f"run {self.name!r}", self.levels)

    @property
    def k(self) -> int | None:
        """Draft length of a single-draft run (the speed-up-vs-K plots)."""
        return self.thresholds[0] if self.kind == "engine" and len(self.levels) == 2 and self.thresholds else None

    def describe(self) -> str:
        if self.kind != "engine":
            return {"hf": "transformers generate", "hf_assisted": "transformers generate(assistant_model=draft)",
                    "hf_lookup": f"transformers generate(prompt_lookup_num_tokens={self.thresholds[0]})"}[self.kind]
        if self.levels == ("target",):
            return "engine, target alone (autoregressive)"
        if self.group == "auto":
            return f"{' -> '.join(self.levels)}, {self.scheme}; levels and thresholds chosen per call for its batch size (thresholds='auto')"
        chain = " -> ".join(f"{lv} [T={t}]" for lv, t in zip(self.levels, self.thresholds)) + " -> target"  # zip stops before the target
        return f"{chain}, {self.scheme}"


@dataclass(frozen=True)
class PlanSpec:
    """A configuration chosen by the latency model from the calibration.

    ``candidates``: level keys (cheapest first, the target implied last) the optimiser may chain.
    ``through_any``: the chain must pass through at least one of these keys (e.g. an early exit);
    ``through_all``: through every candidate (a forced full hierarchy).  Both are enforced by
    optimising over restricted problems in which no acceptance pair jumps over a required key.
    ``schemes``: one run per scheme."""

    name: str
    candidates: tuple[str, ...]
    schemes: tuple[str, ...] = ("tokenwise",)
    group: str = "hierarchy"
    through_any: tuple[str, ...] = ()
    through_all: bool = False

    def __post_init__(self):
        _check_keys(f"plan {self.name!r}", (*self.candidates, *self.through_any))


@dataclass(frozen=True)
class Suite:
    name: str
    family: str
    dtype: str  # "bfloat16" or "float32"
    prompts: str  # "humaneval" or "spec_bench"
    n_prompts: int  # HumanEval: the first n; Spec-Bench: the first n of every category
    categories: tuple[str, ...] | None = None  # Spec-Bench: only these categories (default all 13)
    temperatures: tuple[float, ...] = (0.0, 1.0)
    runs: tuple[RunSpec, ...] = ()
    plans: tuple[PlanSpec, ...] = ()
    calibration_prompts: int = 2  # prompts (disjoint from the measured ones) for the calibration
    calibration_tokens: int = 64
    max_threshold: int = 16  # the plans' largest threshold (the calibration measures up to 17 positions)

    def with_overrides(self, **kw) -> "Suite":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def _baselines(assisted: bool = True, lookup: bool = False) -> tuple[RunSpec, ...]:
    runs = [RunSpec("autoregressive", "engine", group="baseline"), RunSpec("hf generate", "hf", group="baseline")]
    if assisted:
        runs.append(RunSpec("hf assisted", "hf_assisted", levels=("draft", "target"), group="baseline"))
    if lookup:
        runs.append(RunSpec("hf prompt lookup", "hf_lookup", levels=("ngram", "target"), thresholds=(4,), group="baseline"))
    return tuple(runs)


def _single(draft: str, schemes=SCHEMES, ks=K_GRID) -> tuple[RunSpec, ...]:
    return tuple(RunSpec(f"{s} K={k}", "engine", (draft, "target"), s, (k,), "single") for s in schemes for k in ks)


def _qwen_plans(exits: tuple[int, ...], trained: tuple[int, ...] = ()) -> tuple[PlanSpec, ...]:
    """The plans of a draft/target family with untrained exits ``exits`` and trained exits ``trained``
    (``exit:D:trained``; the three trained-exit plans come last, one HiSpec and one self-speculation
    plan per depth: their runs are skipped, with the train-exit command, when no head is cached)."""
    exit_keys = tuple(f"exit:{d}" for d in exits)
    trained_keys = tuple(f"exit:{d}:trained" for d in trained)
    plans = (
        PlanSpec("hierarchy", ("ngram", "draft"), schemes=("tokenwise", "block")),
        PlanSpec("hierarchy 3-level", ("ngram", "draft"), through_all=True),
        PlanSpec("early-exit hierarchy", ("ngram", "draft", *exit_keys), through_any=exit_keys),
        PlanSpec("int8 draft", ("draft@int8",), schemes=("tokenwise", "block"), group="int8"),
        PlanSpec("int8 hierarchy", ("ngram", "draft@int8"), schemes=("tokenwise", "block"), group="int8"),
    )
    if not trained:
        return plans
    return plans + (
        PlanSpec("trained-exit hierarchy", ("ngram", "draft", *trained_keys), through_any=trained_keys),
        # HiSpec: draft -> trained exit of the target -> target (forced: all three levels)
        *(PlanSpec(f"HiSpec {k}", ("draft", k), through_all=True) for k in trained_keys),
        # self-speculation: trained exit -> target, no second model
        *(PlanSpec(f"self-speculation {k}", (k,), through_all=True) for k in trained_keys),
    )


def default_suites() -> list[Suite]:
    """The full benchmark of docs/benchmarks.md (hours on a 2-core CPU)."""
    from .families import FAMILIES

    plans = _qwen_plans(FAMILIES["qwen"].exits, FAMILIES["qwen"].trained_exits)
    return [
        Suite("qwen-bf16-humaneval", "qwen", "bfloat16", "humaneval", 6, runs=_baselines() + _single("draft"), plans=plans),
        Suite("qwen-bf16-specbench", "qwen", "bfloat16", "spec_bench", 1,
              runs=_baselines() + _single("draft", ks=(4,)),
              plans=(plans[0], plans[3], plans[4]), calibration_prompts=4, calibration_tokens=48),
        Suite("qwen-fp32-humaneval", "qwen", "float32", "humaneval", 3,
              runs=_baselines() + _single("draft", ks=(4,)), plans=(plans[0], plans[3])),
        Suite("smollm2-bf16-humaneval", "smollm2", "bfloat16", "humaneval", 6,
              runs=_baselines(assisted=False, lookup=True) + _single("ngram", schemes=("tokenwise", "block"), ks=(2, 4, 8))),
        Suite("smollm2-bf16-specbench", "smollm2", "bfloat16", "spec_bench", 1,
              runs=_baselines(assisted=False, lookup=True) + _single("ngram", schemes=("tokenwise", "block"), ks=(4,))),
    ]


def quick_suites() -> list[Suite]:
    """``--quick``: 2 prompts (one HumanEval, one Spec-Bench), short outputs, one K, the main plans."""
    plans = _qwen_plans(())[:1] + _qwen_plans(())[3:4]
    runs = _baselines() + _single("draft", ks=(4,))
    return [
        Suite("qwen-bf16-humaneval", "qwen", "bfloat16", "humaneval", 1, runs=runs, plans=plans,
              calibration_prompts=1, calibration_tokens=16, max_threshold=6),
        Suite("qwen-bf16-specbench", "qwen", "bfloat16", "spec_bench", 1, categories=("qa",), runs=runs, plans=plans[:1],
              calibration_prompts=1, calibration_tokens=16, max_threshold=6),
    ]


def tiny_suites() -> list[Suite]:
    """Random tiny models, every kind of run and plan: the CI smoke test of the whole pipeline."""
    from .families import FAMILIES

    plans = _qwen_plans(FAMILIES["tiny"].exits, FAMILIES["tiny"].trained_exits)
    return [
        Suite("tiny-f64-humaneval", "tiny", "float64", "humaneval", 1, runs=_baselines(lookup=True) + _single("draft", ks=(2, 4)),
              plans=plans, calibration_prompts=1, calibration_tokens=12, max_threshold=4),
        Suite("tiny-f64-specbench", "tiny", "float64", "spec_bench", 1, temperatures=(1.0,),
              runs=_baselines(lookup=True) + _single("ngram", schemes=("tokenwise",), ks=(2,)), plans=plans[:1],
              calibration_prompts=1, calibration_tokens=12, max_threshold=4),
    ]

