"""``hsd-fast bench``: the whole pipeline on random tiny models, and its arithmetic on hand-made records.

Oracles: hand-computed ratios and quartiles, Leviathan et al.'s closed form ``walltime_factor`` for
the single-draft prediction (the benchmark goes through ``fhierarchy_speedup``'s recursion), a direct
scan over thresholds for forced plans, ``optimal_hierarchy`` for free plans, and the target's greedy
output (every engine configuration at temperature 0 must reproduce the autoregressive tokens).
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from hsd_fast.bench import analysis
from hsd_fast.bench.calibrate import Calibration, make_plan
from hsd_fast.bench.report import ANALYSIS_BEGIN, ANALYSIS_END
from hsd_fast.bench.runner import for_temperature, suite_prompts
from hsd_fast.bench.suites import PlanSpec, RunSpec, Suite, tiny_suites
from hsd_fast.cli import main

SUITE = "tiny-f64-humaneval"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--tiny", "--suites", SUITE, "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    return out


def test_tiny_bench_writes_every_configuration(tiny_run):
    data = json.loads((tiny_run / "bench.json").read_text())
    suite = next(s for s in tiny_suites() if s.name == SUITE)
    names = {r["run"] for r in data["summary"] if r["suite"] == SUITE}
    assert {r.name for r in suite.runs} <= {r["run"] for r in data["summary"] if r["temperature"] == 1}
    greedy = {r["run"] for r in data["summary"] if r["temperature"] == 0}
    assert {"greedy K=2", "greedy K=4", "autoregressive"} <= greedy and not any("tokenwise" in n for n in greedy)
    assert any(n.startswith("hierarchy 3-level") for n in names)  # forced plans always run
    assert any(n.startswith("early-exit hierarchy") for n in names)
    md = (tiny_run / "benchmarks.md").read_text()
    for n in names:
        assert f"| {n} |" in md or f"| {n} * |" in md
    assert (tiny_run / "bench" / f"{SUITE}-speedup-vs-k.png").stat().st_size > 1000
    assert (tiny_run / "bench" / "predicted-vs-measured.png").stat().st_size > 1000
    records = [json.loads(x) for x in (tiny_run / "work" / "runs.jsonl").read_text().splitlines()]
    assert len(records) == len({(r["temperature"], r["prompt_id"], r["run"]) for r in records}) == len(data["per_prompt"])
    assert "Targets" in md and ANALYSIS_BEGIN in md and ANALYSIS_END in md


def test_tiny_bench_greedy_runs_reproduce_the_autoregressive_tokens(tiny_run):
    records = [json.loads(x) for x in (tiny_run / "work" / "runs.jsonl").read_text().splitlines()]
    greedy = [r for r in records if r["temperature"] == 0]
    ar = {r["prompt_id"]: r["tokens"] for r in greedy if r["run"] == "autoregressive"}
    engine = [r for r in greedy if r["kind"] == "engine"]
    assert engine and all(r["tokens"] == ar[r["prompt_id"]] for r in engine)
    hf = [r for r in greedy if r["kind"] in ("hf", "hf_lookup")]
    assert len({r["kind"] for r in hf}) == 2 and all(r["tokens"] == ar[r["prompt_id"]] for r in hf)


def test_report_only_keeps_the_written_analysis(tiny_run):
    md = tiny_run / "benchmarks.md"
    text = md.read_text()
    head, rest = text.split(ANALYSIS_BEGIN, 1)
    md.write_text(head + ANALYSIS_BEGIN + "\nprofiled: the time is in the linear layers\n" + ANALYSIS_END + rest.split(ANALYSIS_END, 1)[1])
    run_json = tiny_run / "work" / "run.json"  # the measuring run's machine and command, kept by --report-only
    info = json.loads(run_json.read_text())
    assert info["machine"]["threads"] == 1
    info["machine"]["cpu"] = "the CPU that measured"
    run_json.write_text(json.dumps(info))
    assert main(["bench", "--tiny", "--suites", SUITE, "--out", str(tiny_run), "--report-only"]) == 0
    text = md.read_text()
    assert "profiled: the time is in the linear layers" in text
    assert "| CPU | the CPU that measured (" in text and "--report-only" not in text.split("\n", 3)[2]


def test_resume_runs_only_what_is_missing(tiny_run, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_run / "work", work)
    lines = (work / "runs.jsonl").read_text().splitlines()
    kept = lines[:-3]
    (work / "runs.jsonl").write_text("\n".join(kept) + "\n" + lines[-3][:20])  # and a line cut mid-write
    rc = main(["bench", "--tiny", "--suites", SUITE, "--out", str(tmp_path / "o"), "--work", str(work), "--resume", "--no-progress"])
    assert rc == 0
    again = [x for x in (work / "runs.jsonl").read_text().splitlines() if x.strip()]
    parsed = []
    for x in again:
        try:
            parsed.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    assert again[: len(kept)] == kept
    assert len(parsed) == len(lines)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--tiny", "--suites", "nope", "--out", str(tmp_path)]) == 2
    assert "--suites" in capsys.readouterr().err
    assert main(["bench", "--tiny", "--temperatures", "-1", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--tiny", "--max-new-tokens", "0", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--tiny", "--report-only", "--out", str(tmp_path), "--work", str(tmp_path / "empty")]) == 2
    assert "no results" in capsys.readouterr().err


def test_greedy_configurations_are_run_once():
    runs = [RunSpec("autoregressive", "engine", group="baseline"), RunSpec("hf generate", "hf", group="baseline"),
            RunSpec("tokenwise K=4", "engine", ("draft", "target"), "tokenwise", (4,)),
            RunSpec("block K=4", "engine", ("draft", "target"), "block", (4,)),
            RunSpec("block K=6", "engine", ("draft", "target"), "block", (6,))]
    assert for_temperature(runs, 1.0) == runs
    greedy = for_temperature(runs, 0.0)
    assert [r.name for r in greedy] == ["autoregressive", "hf generate", "greedy K=4", "greedy K=6"]
    assert {r.scheme for r in greedy[2:]} == {"greedy"}


def test_suite_prompts_are_disjoint_and_cover_spec_bench():
    he = Suite("x", "tiny", "float64", "humaneval", 3, calibration_prompts=2)
    m, c = suite_prompts(he)
    assert len(m) == 3 and len(c) == 2 and not {p.id for p in m} & {p.id for p in c}
    sb = Suite("y", "tiny", "float64", "spec_bench", 1, calibration_prompts=4)
    m, c = suite_prompts(sb)
    assert len(m) == 13 and len({p.category for p in m}) == 13 and len(c) == 4
    assert not {p.id for p in m} & {p.id for p in c}


# ############################################################ arithmetic on hand-made records


def _record(run, prompt, tokens, wall, *, kind="engine", metrics=None, temperature=1.0, decode=None):
    return {"suite": "s", "temperature": temperature, "run": run, "prompt_id": prompt, "category": "code", "kind": kind,
            "group": "baseline" if run == "autoregressive" else "single", "plan": None, "levels": [], "scheme": "tokenwise",
            "thresholds": [], "k": None, "new_tokens": tokens, "wall_s": wall, "decode_s": decode if decode is not None else wall,
            "prefill_s": 0.0, "finish": "length", "tokens": list(range(tokens)), "tokens_sha1": "", "metrics": metrics}


def test_quartiles_and_per_prompt_speedups():
    assert analysis.quartiles([5, 1, 4, 2, 3]) == (2, 3, 4)
    assert analysis.quartiles([7]) == (7, 7, 7) and analysis.quartiles([]) is None
    recs = [_record("hf generate", "a", 10, 2.0, kind="hf"), _record("hf generate", "b", 10, 4.0, kind="hf"),
            _record("hf assisted", "a", 10, 1.0, kind="hf_assisted"), _record("hf assisted", "b", 20, 2.0, kind="hf_assisted")]
    rows = {r["run"]: r for r in analysis.summarize(recs)}
    # per prompt: a: (10/1) / (10/2) = 2, b: (20/2) / (10/4) = 4
    assert rows["hf assisted"]["vs_hf_generate"] == (2.5, 3.0, 3.5)
    assert rows["hf assisted"]["pooled_tokens_per_s"] == 30 / 3.0


def _level(name, kind, scheme, threshold, calls, time_s, by_positions, accepted=0, rejections=0, rounds=0, drafted=0, hist=()):
    return {"name": name, "kind": kind, "scheme": scheme, "threshold": threshold, "calls": calls, "time_s": time_s,
            "verify_s": 0.0, "by_positions": {str(m): v for m, v in by_positions.items()}, "rounds": rounds,
            "drafted": drafted, "accepted": accepted, "rejections": rejections, "accept_counts": list(hist)}


def test_single_draft_prediction_is_leviathans_closed_form():
    from hsd_ref.latency import walltime_factor

    k, step, c, alpha = 4, 0.2, Fraction(1, 4), Fraction(3, 4)
    ar_metrics = {"other_s": 0.0, "levels": [_level("t", "target", None, None, 50, 50 * step, {1: [50, 50 * step]})]}
    accepted = 300
    rejections = round(accepted * (1 - alpha) / alpha)  # alpha = accepted / (accepted + rejections) = 3/4
    spec_metrics = {"other_s": 0.0, "levels": [
        _level("d", "model", None, k, 400, 400 * float(c) * step, {1: [400, 400 * float(c) * step]}),
        _level("t", "target", "tokenwise", None, 100, 100 * step, {k + 1: [100, 100 * step]},
               accepted=accepted, rejections=rejections, rounds=100, drafted=400)]}
    recs = [_record("autoregressive", "a", 50, 50 * step, metrics=ar_metrics),
            _record("tokenwise K=4", "a", 400, 60.0, metrics=spec_metrics)]
    recs[1]["thresholds"], recs[1]["levels"] = [k], ["draft", "target"]
    row = next(r for r in analysis.summarize(recs) if r["run"] == "tokenwise K=4")
    assert row["predicted_speedup"] == pytest.approx(float(walltime_factor(alpha, k, c)), rel=1e-12)
    assert row["c"] == [pytest.approx(float(c))]
    assert row["tokens_per_target_call"] == (accepted + 100) / 100


def test_targets_flag_what_is_met():
    rows = [
        {"suite": "s", "temperature": 1.0, "run": "tokenwise K=8", "kind": "engine", "group": "single", "levels": ["draft", "target"],
         "vs_autoregressive": (1, 2.2, 3), "vs_hf_generate": (1, 2.1, 3), "vs_hf_speculative": (1, 1.4, 2), "tokens_per_target_call": 4.0,
         "measured_over_predicted": 0.97, "verify_share": 0.01, "pooled_tokens_per_s": 10.0},
        {"suite": "s", "temperature": 1.0, "run": "block K=8", "kind": "engine", "group": "single", "levels": ["draft", "target"],
         "vs_autoregressive": (1, 1.5, 3), "vs_hf_generate": (1, 1.4, 3), "vs_hf_speculative": (1, 1.0, 2), "tokens_per_target_call": 4.1,
         "measured_over_predicted": 0.90, "verify_share": 0.03, "pooled_tokens_per_s": 8.0},
    ]
    got = {t["target"].split(" ")[0] + t["goal"]: t["met"] for t in analysis.targets(rows, "s", 1.0)}
    assert got["best>= 2.0x"] is True and got["best>= 1.3x"] is True
    assert got["every>= 0.95"] is False and got["block>= +5%"] is False and got["verification<= 2%"] is False


def _calibration():
    costs = {"ngram": {1: 0.0005}, "draft": {1: 0.3, 5: 0.32, 9: 0.35}, "target": {1: 1.0, 3: 1.0, 5: 1.02, 9: 1.1}}
    acc = {("ngram", "draft"): 0.3, ("ngram", "target"): 0.25, ("draft", "target"): 0.85}
    return Calibration(1.0, costs, acc, n_layers=28)


def test_free_plan_is_the_optimisers_choice():
    from hsd_ref.optimize import optimal_hierarchy

    cal = _calibration()
    runs, info = make_plan(PlanSpec("h", ("ngram", "draft"), schemes=("tokenwise", "block")), cal, 8)
    names = ["ngram", "draft", "target"]
    plan = optimal_hierarchy(names, [cal.costs[n] for n in names], cal.acceptance, max_threshold=8, exact=False)
    assert info["chain"] == list(plan.chain) and info["thresholds"] == list(plan.thresholds)
    assert info["predicted_speedup"] == pytest.approx(float(plan.speedup))
    assert [r.scheme for r in runs] == ["tokenwise", "block"] and runs[0].levels == tuple(plan.chain)


def test_forced_plan_is_the_best_chain_through_every_level():
    from hsd_ref.latency import fhierarchy_latency

    cal = _calibration()
    cal.acceptance[("ngram", "draft")] = 0.02  # the n-gram level does not pay: the optimiser drops it
    runs, info = make_plan(PlanSpec("h3", ("ngram", "draft"), through_all=True), cal, 6)
    assert info["chain"] == ["ngram", "draft", "target"] and info.get("forced")
    curves = cal.curves(["ngram", "draft", "target"])
    lat = {(a, b): fhierarchy_latency([curves["ngram"], curves["draft"], curves["target"]], [0.02, 0.85], [a, b])
           for a in range(1, 7) for b in range(1, 7)}
    assert tuple(info["thresholds"]) == min(lat, key=lat.get)
    assert info["predicted_speedup"] == pytest.approx(1.0 / min(lat.values()))
    none, why = make_plan(PlanSpec("x", ("ngram",)), Calibration(1.0, {"ngram": {1: 1.0}, "target": {1: 1.0}}, {("ngram", "target"): 0.01}, 28), 4)
    assert none == [] and "no speed-up" in why["reason"]


def test_a_plan_equal_to_a_fixed_run_is_run_once():
    from types import SimpleNamespace

    from hsd_fast.bench.runner import _suite_runs

    cal = Calibration(1.0, {"draft": {1: 0.3, 5: 0.3}, "target": {1: 1.0, 5: 1.0}}, {("draft", "target"): 0.8}, 28)
    plan = PlanSpec("p", ("draft",))
    k = make_plan(plan, cal, 4)[1]["thresholds"][0]
    fixed = RunSpec(f"tokenwise K={k}", "engine", ("draft", "target"), "tokenwise", (k,))
    suite = Suite("s", "tiny", "float64", "humaneval", 1, runs=(fixed,), plans=(plan,), max_threshold=4)
    runs = _suite_runs(suite, SimpleNamespace(level=lambda key: key), cal, 1.0)
    assert runs == [fixed] and cal.plans["p"]["same_as"] == [fixed.name]
    greedy = _suite_runs(suite, SimpleNamespace(level=lambda key: key), cal, 0.0)
    assert [r.name for r in greedy] == [f"greedy K={k}"] and cal.plans["p"]["same_as"] == [f"greedy K={k}"]
