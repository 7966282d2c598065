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
    with pytest.MonkeyPatch.context() as mp:  # an empty cache: no trained heads, so those plans are skipped (and say why)
        mp.setenv("HSD_CACHE", str(tmp_path_factory.mktemp("empty_cache")))
        rc = main(["bench", "--tiny", "--suites", SUITE, "--out", str(out), "--no-progress", "--threads", "1"])
        assert rc == 0
        yield out


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
    # no head in the (empty) cache: the trained-exit plans are reported as not run, with how to train one
    assert not any("trained" in n for n in names)
    for plan in ("trained-exit hierarchy", "HiSpec exit:2:trained", "self-speculation exit:2:trained"):
        assert f"- plan *{plan}*: not run (level key 'exit:2:trained': no trained exit head" in md
    assert "TrainConfig(layer=2)" in md
    assert "| exit:2 | not timed: 2/4 of the target's cost |" in md


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


def test_level_keys_accept_trained_exits_and_name_bad_ones():
    from hsd_fast.bench.suites import default_suites, parse_exit_key

    assert [parse_exit_key(k) for k in ("exit:14", "exit:14:trained", "exit:2:trained", "draft", "ngram", "draft@int8", "target")] == \
        [(14, False), (14, True), (2, True), None, None, None, None]
    for bad in ("exit:x:trained", "exit:3:foo", "exit:0", "exit:", "exit:3:trained:1", "exit:-1", "exit: 3"):
        with pytest.raises(ValueError, match=f"level key '{bad}': expected exit:D .* or exit:D:trained"):
            parse_exit_key(bad)
    with pytest.raises(ValueError, match="level key 'draft2': unknown"):
        parse_exit_key("draft2")
    # malformed keys fail where the configuration is written, naming the run / plan and the key
    with pytest.raises(ValueError, match="run 'x': level key 'exit:3:foo'"):
        RunSpec("x", "engine", ("exit:3:foo", "target"), "tokenwise", (2,))
    with pytest.raises(ValueError, match="plan 'p': level key 'exit:x:trained'"):
        PlanSpec("p", ("draft", "exit:x:trained"), through_all=True)
    assert RunSpec("x", "engine", ("exit:3:trained", "target"), "tokenwise", (2,)).describe() == "exit:3:trained [T=2] -> target, tokenwise"
    # the Qwen 1.5B suite has the trained-exit variants (HiSpec, self-speculation); the SmolLM2 suites have no exits
    plans = {p.name: p for s in default_suites() if s.name == "qwen-bf16-humaneval" for p in s.plans}
    assert plans["HiSpec exit:14:trained"].candidates == ("draft", "exit:14:trained") and plans["HiSpec exit:14:trained"].through_all
    assert plans["self-speculation exit:14:trained"].candidates == ("exit:14:trained",)
    assert plans["trained-exit hierarchy"].through_any == ("exit:14:trained",)
    assert not any("exit" in k for s in default_suites() if s.family == "smollm2" for p in s.plans for k in p.candidates)


def test_trained_exit_is_priced_and_planned_like_an_exit():
    """Priced as d/L of the target's curve (the head is not counted); the forced HiSpec and
    self-speculation plans are the best thresholds of exactly those chains (a direct scan)."""
    from hsd_ref.latency import fhierarchy_latency

    costs = {"draft": {1: 0.3, 5: 0.32, 9: 0.35}, "target": {1: 1.0, 3: 1.0, 5: 1.02, 9: 1.1}}
    acc = {("draft", "exit:14:trained"): 0.5, ("draft", "target"): 0.85, ("exit:14:trained", "target"): 0.3}
    cal = Calibration(1.0, costs, acc, n_layers=28, heads={"exit:14:trained": "abc-L14-linear-def"})
    curves = cal.curves(["exit:14", "exit:14:trained", "target"])
    for m in (1, 5, 9):
        assert float(curves["exit:14:trained"](m)) == float(curves["exit:14"](m))
    assert Calibration.from_dict(json.loads(json.dumps(cal.as_dict()))).heads == {"exit:14:trained": "abc-L14-linear-def"}
    for spec, chain in ((PlanSpec("HiSpec", ("draft", "exit:14:trained"), through_all=True), ["draft", "exit:14:trained", "target"]),
                        (PlanSpec("self", ("exit:14:trained",), through_all=True), ["exit:14:trained", "target"])):
        runs, info = make_plan(spec, cal, 4)
        assert info["chain"] == chain and runs[0].levels == tuple(chain)
        cs = cal.curves(chain)
        law = [acc[(a, b)] for a, b in zip(chain, chain[1:])]
        grid = [(a,) for a in range(1, 5)] if len(chain) == 2 else [(a, b) for a in range(1, 5) for b in range(1, 5)]
        lat = {t: fhierarchy_latency([cs[c] for c in chain], law, list(t)) for t in grid}
        assert tuple(info["thresholds"]) == min(lat, key=lat.get)


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


# ############################################################ batch sweep (hsd-fast bench --batch-sweep)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    rc = main(["bench", "--tiny", "--batch-sweep", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    return out


def test_tiny_sweep_has_every_configuration_at_every_batch_size(tiny_sweep):
    import math

    from hsd_fast.bench.sweep import tiny_sweeps

    data = json.loads((tiny_sweep / "bench.json").read_text())["batch_sweep"]
    suite = tiny_sweeps()[0]
    rows = data["summary"]
    for t in suite.temperatures:
        names = [r.name for r in for_temperature(list(suite.runs), t)]
        assert {(r["run"], r["batch_size"]) for r in rows if r["temperature"] == t} == {(n, B) for n in names for B in suite.batch_sizes}
    assert len(rows) == len({(r["temperature"], r["run"], r["batch_size"]) for r in rows})
    N = data["settings"]["max_new_tokens"]
    for r in rows:
        B = r["batch_size"]
        assert r["rows"] == math.ceil(suite.n_prompts / B) * B  # 3 prompts: 3 rows at B=1, 4 at B=2 and B=4
        assert r["forced_length"] and r["new_tokens"] == r["rows"] * N  # no row stopped early
        assert r["tokens_per_s"] > 0 and r["vs_autoregressive"] > 0 and r["vs_hf_generate"] > 0
        if r["kind"] != "engine":
            continue
        if r["group"] == "auto":  # thresholds="auto": the chains it ran at this B (target alone, or the draft at some T)
            assert r["plans"] and all(p.startswith(("L0:", "L1:")) for p in r["plans"]) and r["target_calls"] > 0
            continue
        m = 1 if r["run"] == "autoregressive" else r["k"] + 1  # positions scored per row per target call
        assert r["target_calls"] > 0 and r["iteration_s"] > 0 and r["decode_tokens_per_s"] > 0
        assert list(r["target_ms_per_call"]) == [str(m)] and r["target_ms_per_call"][str(m)] > 0
        assert r["positions_per_call"][str(m)] == pytest.approx(m * r["rows_per_call"])
        assert r["tokens_per_target_call"] == pytest.approx(r["tokens_per_row_call"] * r["rho"] * B)
        if r["run"] == "autoregressive":  # one token per row per call, every row live at every call
            assert r["tokens_per_row_call"] == 1 and r["rho"] == 1 and r["target_calls"] == N * r["batches"]
        else:
            assert 0 < r["rho"] <= 1 and 1 <= r["tokens_per_row_call"] <= m and r["verify_cost_ratio"] > 0
            assert r["decode_vs_autoregressive"] == pytest.approx(r["tokens_per_row_call"] * r["rho"] / r["iteration_over_step"])
    md = (tiny_sweep / "benchmarks.md").read_text()
    assert md.count("## Batch sweep") == 1 and "**Where speculation stops paying.**" in md and "**The batch-aware plan**" in md
    for r in rows:
        assert f"| {r['run']} | {r['batch_size']} | {r['rows']} | {r['tokens_per_s']:.2f} |" in md
        if r["kind"] == "engine" and r["run"] != "autoregressive":
            assert f"- *{r['run']}* " in md
    for t in suite.temperatures:
        assert (tiny_sweep / "bench" / f"sweep-{suite.name}-T{t:g}.png").stat().st_size > 1000


def test_tiny_sweep_greedy_rows_agree_across_configurations_and_padding(tiny_sweep):
    """At T=0 every configuration, transformers' left-padded batches included, emits the target's
    greedy tokens, whatever the batch size; rows follow the documented prompt rule."""
    records = [json.loads(x) for x in (tiny_sweep / "work" / "sweep.jsonl").read_text().splitlines()]
    by_row: dict = {}
    for r in records:
        if r["temperature"] == 0:
            for pid, sha in zip(r["prompt_ids"], r["tokens_sha1"]):
                by_row.setdefault(pid, set()).add(sha)
    assert len(by_row) == 3 and all(len(s) == 1 for s in by_row.values())
    assert {r["kind"] for r in records} == {"engine", "hf"}
    b2 = sorted((r["batch"], r["prompt_ids"], r["seeds"]) for r in records if r["batch_size"] == 2 and r["run"] == "autoregressive"
                and r["temperature"] == 1)
    assert b2 == [(0, ["HumanEval/100", "HumanEval/101"], [0, 1]), (1, ["HumanEval/102", "HumanEval/100"], [2, 3])]


def test_sweep_section_survives_both_reports(tiny_run, tiny_sweep, tmp_path):
    import shutil

    from hsd_fast.bench.sweep_report import SWEEP_BEGIN, existing_section

    for name in ("benchmarks.md", "bench.json"):
        shutil.copy(tiny_run / name, tmp_path / name)
    args = ["bench", "--tiny", "--batch-sweep", "--report-only", "--out", str(tmp_path), "--work", str(tiny_sweep / "work")]
    assert main(args) == 0 and main(args) == 0  # twice: the section is replaced, not added again
    md = (tmp_path / "benchmarks.md").read_text()
    assert md.count(SWEEP_BEGIN) == 1 and f"## {SUITE}" in md
    assert md.index(f"## {SUITE}") < md.index("## Batch sweep") < md.index("## Calibration and plans")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["summary"] and data["batch_sweep"]["summary"]
    section = existing_section(tmp_path / "benchmarks.md")
    assert main(["bench", "--tiny", "--suites", SUITE, "--report-only", "--out", str(tmp_path), "--work", str(tiny_run / "work")]) == 0
    assert existing_section(tmp_path / "benchmarks.md") == section
    assert json.loads((tmp_path / "bench.json").read_text())["batch_sweep"] == data["batch_sweep"]


def test_sweep_cli_rejects_bad_arguments(tmp_path, capsys):
    for bad in (["--batch-sizes", "0"], ["--batch-sizes", "1,1"], ["--batch-sizes", "a"], ["--suites", "nope"],
                ["--humaneval-first", "-1"], ["--spec-bench-per-category", "1"]):
        assert main(["bench", "--tiny", "--batch-sweep", "--out", str(tmp_path), *bad]) == 2
    assert main(["bench", "--tiny", "--batch-sizes", "1,2", "--out", str(tmp_path)]) == 2
    assert "only with --batch-sweep" in capsys.readouterr().err
    assert main(["bench", "--tiny", "--batch-sweep", "--report-only", "--out", str(tmp_path), "--work", str(tmp_path / "w")]) == 2
    assert "no batch-sweep results" in capsys.readouterr().err


def test_sweep_rows_and_hand_made_figures():
    from hsd_fast.bench.sweep import sweep_rows
    from hsd_fast.bench.sweep_report import _verdict, cost_curve, summarize_sweep

    assert sweep_rows(8, 16) == [list(range(8)) * 2] and sweep_rows(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]

    def rec(run, B, tokens, wall, decode, levels):
        return {"suite": "s", "family": "f", "dtype": "d", "temperature": 1.0, "run": run, "kind": "engine", "group": "g",
                "levels": [], "scheme": "tokenwise", "thresholds": [4], "k": None if run == "autoregressive" else 4,
                "batch_size": B, "batch": 0, "max_new_tokens": tokens // B, "row_tokens": [tokens // B] * B,
                "new_tokens": tokens, "wall_s": wall, "prefill_s": wall - decode, "decode_s": decode,
                "metrics": {"levels": levels}}

    def target(calls, ms, m, rounds=0):
        return {"calls": calls, "time_s": calls * ms / 1000, "rounds": rounds, "by_positions": {str(m): [calls, calls * ms / 1000]}}

    draft = {"calls": 0, "time_s": 0.5, "by_positions": {}}
    recs = [
        # B=1: AR 64 steps of 10 ms; speculative 20 calls of 12 ms, 3.2 tokens per call
        rec("autoregressive", 1, 64, 1.0, 0.8, [target(64, 10, 1)]),
        rec("tokenwise K=4", 1, 64, 0.5, 0.4, [draft, target(20, 12, 5, rounds=20)]),
        # B=4: AR 64 steps of 20 ms; verifications of 4 x 5 positions cost 60 ms
        rec("autoregressive", 4, 256, 1.6, 1.28, [target(64, 20, 1)]),
        rec("tokenwise K=4", 4, 256, 2.0, 1.6, [draft, target(20, 60, 5, rounds=80)]),
    ]
    rows = {(r["run"], r["batch_size"]): r for r in summarize_sweep(recs)}
    s1, s4 = rows[("tokenwise K=4", 1)], rows[("tokenwise K=4", 4)]
    assert s1["vs_autoregressive"] == pytest.approx((64 / 0.5) / (64 / 1.0)) and s4["vs_autoregressive"] == pytest.approx(0.8)
    assert s1["verify_cost_ratio"] == pytest.approx(1.2) and s4["verify_cost_ratio"] == pytest.approx(3.0)
    assert s4["tokens_per_row_call"] == pytest.approx(3.2) and s4["rho"] == 1 and s4["tokens_per_target_call"] == pytest.approx(12.8)
    assert s4["iteration_over_step"] == pytest.approx((1.6 / 20) / (1.28 / 64))
    curve = cost_curve(list(rows.values()), "s", 1.0)
    assert [(c["batch_size"], c["positions"], round(c["ms_per_call"], 9)) for c in curve] == [(1, 1, 10), (1, 5, 12), (4, 4, 20), (4, 20, 60)]
    text = "\n".join(_verdict([r for r in rows.values()], curve))
    assert "*tokenwise K=4* stops paying at B=4: 0.80x, after 2.00x at B=1" in text
    assert "r = 1.20 autoregressive steps at B=1 and r = 3.00 at B=4" in text and "The ratio rises with B" in text
