"""From run records to the figures of docs/benchmarks.md: speed-ups, acceptance, costs, predictions.

Per (suite, temperature, configuration):

* tokens/s per prompt (new tokens / wall time, prefill included), median and quartiles over prompts;
* speed-ups, per prompt, over the baselines measured on the same prompt in the same process: our
  autoregressive loop, transformers ``generate``, transformers assisted generation (prompt lookup
  for a family without a draft model) (median, quartiles);
* pooled over prompts: tokens per target call, per-level acceptance (the i.i.d. MLE
  ``accepted / (accepted + rejections)``, and ``accepted / drafted``), the draft cost ratio ``c``
  (draft step / target step), the shares of decode time in verification kernels and in the
  engine's bookkeeping;
* the latency model's prediction from what the run itself measured: the cost curve of every level
  from its own calls (``{positions: seconds per call}``, the target's single-step point from the
  autoregressive run) and the acceptance of every edge, through ``hsd_ref.latency.fhierarchy_speedup``
  -- once with the i.i.d. token-wise law at the measured ``alpha`` and once with the measured law of
  accepted counts (the histogram) -- next to the measured decode-only speed-up (the model has no
  prefill).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

__all__ = ["summarize", "targets", "quartiles"]


def quartiles(xs: list[float]) -> tuple[float, float, float] | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _pool_positions(recs: list[dict], level: int) -> dict[int, float]:
    calls: dict[int, float] = defaultdict(float)
    secs: dict[int, float] = defaultdict(float)
    for r in recs:
        for m, (c, t) in r["metrics"]["levels"][level].get("by_positions", {}).items():
            calls[int(m)] += c
            secs[int(m)] += t
    return {m: secs[m] / calls[m] for m in sorted(calls) if calls[m]}


def _pool_level(recs: list[dict], level: int) -> dict:
    keys = ("calls", "time_s", "verify_s", "rounds", "drafted", "accepted", "rejections")
    tot = {k: sum(r["metrics"]["levels"][level].get(k) or 0 for r in recs) for k in keys}
    hist: list[int] = []
    for r in recs:
        counts = r["metrics"]["levels"][level].get("accept_counts") or []
        hist += [0] * max(0, len(counts) - len(hist))
        for j, c in enumerate(counts):
            hist[j] += c
    lv0 = recs[0]["metrics"]["levels"][level]
    out = dict(name=lv0["name"], kind=lv0["kind"], scheme=lv0.get("scheme"), threshold=lv0.get("threshold"), **tot)
    n = tot["accepted"] + tot["rejections"]
    out["alpha"] = tot["accepted"] / n if n else None
    out["acceptance_rate"] = tot["accepted"] / tot["drafted"] if tot["drafted"] else None
    out["accept_counts"] = hist
    out["costs"] = _pool_positions(recs, level)
    return out


def _predict(levels: list[dict], thresholds: list[int], target_step: float | None, law: str) -> float | None:
    from hsd_ref.latency import AcceptanceLaw, fhierarchy_speedup

    if target_step is None or not thresholds:
        return None
    costs = []
    for i, lv in enumerate(levels):
        if lv["kind"] == "drafter":
            per_token = lv["time_s"] / (lv["calls"] * thresholds[0]) if lv["calls"] else 0.0
            costs.append({1: per_token})
        elif i == len(levels) - 1:
            costs.append({1: target_step, **{m: c for m, c in lv["costs"].items() if m > 1}})
        else:
            if not lv["costs"]:
                return None
            costs.append(lv["costs"])
    acc = []
    for i in range(1, len(levels)):
        lv = levels[i]
        if lv["alpha"] is None:
            return None
        if law == "alpha":
            acc.append(AcceptanceLaw.tokenwise(min(lv["alpha"], 1.0)))
        else:
            total = sum(lv["accept_counts"])
            if not total:
                return None
            b = thresholds[i - 1]
            acc.append(AcceptanceLaw.table({b: {j: c / total for j, c in enumerate(lv["accept_counts"][: b + 1])}}))
    try:
        return fhierarchy_speedup(costs, acc, thresholds)
    except Exception:  # an unmeasured point (e.g. a level that never ran): no prediction
        return None


def summarize(records: list[dict]) -> list[dict]:
    """One row per (suite, temperature, run), in the order the runs first appear."""
    groups: dict = defaultdict(list)
    order: list = []
    for r in records:
        key = (r["suite"], r["temperature"], r["run"])
        if key not in groups:
            order.append(key)
        groups[key].append(r)
    by_prompt = {(r["suite"], r["temperature"], r["run"], r["prompt_id"]): r for r in records}

    def per_prompt_ratio(recs, base_run):
        out = []
        for r in recs:
            b = by_prompt.get((r["suite"], r["temperature"], base_run, r["prompt_id"]))
            if b and r["wall_s"] > 0 and b["wall_s"] > 0 and r["new_tokens"] and b["new_tokens"]:
                out.append((r["new_tokens"] / r["wall_s"]) / (b["new_tokens"] / b["wall_s"]))
        return out

    rows = []
    for key in order:
        recs = groups[key]
        suite, temp, run = key
        r0 = recs[0]
        tps = [r["new_tokens"] / r["wall_s"] for r in recs if r["wall_s"] > 0]
        tokens = sum(r["new_tokens"] for r in recs)
        wall = sum(r["wall_s"] for r in recs)
        row = {
            "suite": suite, "temperature": temp, "run": run, "kind": r0["kind"], "group": r0["group"], "plan": r0["plan"],
            "levels": r0["levels"], "scheme": r0["scheme"], "thresholds": r0["thresholds"], "k": r0["k"],
            "prompts": len(recs), "new_tokens": tokens, "wall_s": wall,
            "tokens_per_s": quartiles(tps), "pooled_tokens_per_s": tokens / wall if wall else None,
            "vs_autoregressive": quartiles(per_prompt_ratio(recs, "autoregressive")),
            "vs_hf_generate": quartiles(per_prompt_ratio(recs, "hf generate")),
            # transformers' speculative baseline: assisted generation with the draft model, or prompt
            # lookup where the family has no draft model
            "vs_hf_speculative": quartiles(per_prompt_ratio(recs, "hf assisted") or per_prompt_ratio(recs, "hf prompt lookup")),
            "eos_finished": sum(r["finish"] == "eos" for r in recs),
        }
        if temp == 0:
            same = [r["tokens"] == by_prompt[(suite, temp, "autoregressive", r["prompt_id"])]["tokens"]
                    for r in recs if (suite, temp, "autoregressive", r["prompt_id"]) in by_prompt]
            row["greedy_equal_to_autoregressive"] = [sum(same), len(same)]
        if r0["kind"] == "engine":
            _engine_row(row, recs, groups.get((suite, temp, "autoregressive")))
        rows.append(row)
    return rows


def _level_cost(lv: dict, i: int, thresholds: list[int]) -> float | None:
    """Seconds per call of a draft level at the call it makes most: a drafter per proposed token,
    level 0 per single-position step, a middle level per verification of ``T_{i-1} + 1`` positions."""
    if lv["kind"] == "drafter":
        return lv["time_s"] / (lv["calls"] * thresholds[0]) if lv["calls"] else None
    return lv["costs"].get(1 if i == 0 else thresholds[i - 1] + 1)


def _engine_row(row: dict, recs: list[dict], ar_recs: list[dict] | None) -> None:
    nlev = len(recs[0]["metrics"]["levels"])
    levels = [_pool_level(recs, i) for i in range(nlev)]
    decode = sum(r["decode_s"] for r in recs)
    tokens = sum(r["new_tokens"] for r in recs)
    top = levels[-1]
    row["levels_pooled"] = levels
    row["tokens_per_target_call"] = (top["accepted"] + top["rounds"]) / top["rounds"] if top["rounds"] else None
    row["decode_s"] = decode
    row["prefill_s"] = sum(r["prefill_s"] for r in recs)
    row["verify_share"] = sum(lv["verify_s"] for lv in levels) / decode if decode else None
    row["other_share"] = sum(r["metrics"]["other_s"] for r in recs) / decode if decode else None
    row["level_shares"] = [lv["time_s"] / decode if decode else None for lv in levels]
    target_step = None
    if ar_recs:
        ar_top = _pool_level(ar_recs, 0)
        target_step = ar_top["costs"].get(1)
        ar_decode = sum(r["decode_s"] for r in ar_recs)
        ar_tokens = sum(r["new_tokens"] for r in ar_recs)
        if ar_tokens and tokens and decode:
            row["measured_decode_speedup"] = (ar_decode / ar_tokens) / (decode / tokens)
            # per token the target emitted before the EOS / max_new_tokens cuts: the steady-state rate the
            # latency model describes (the cut tail of the last iteration is drafted and verified for nothing)
            emitted = top["accepted"] + top["rounds"]
            row["measured_uncut_speedup"] = (ar_decode / ar_tokens) / (decode / emitted) if emitted else None
    row["target_step_s"] = target_step
    if nlev >= 2 and target_step:
        costs = [_level_cost(lv, i, row["thresholds"]) for i, lv in enumerate(levels[:-1])]
        row["c"] = [None if x is None else x / target_step for x in costs]
        row["predicted_speedup"] = _predict(levels, row["thresholds"], target_step, "alpha")
        row["predicted_speedup_law"] = _predict(levels, row["thresholds"], target_step, "law")
        m, u, p = row.get("measured_decode_speedup"), row.get("measured_uncut_speedup"), row["predicted_speedup"]
        row["measured_over_predicted"] = m / p if (m and p) else None
        row["uncut_over_predicted"] = u / p if (u and p) else None


def targets(rows: list[dict], suite: str, temperature: float) -> list[dict]:
    """The issue's targets, evaluated on one suite and temperature (reported, never asserted)."""
    sel = [r for r in rows if r["suite"] == suite and r["temperature"] == temperature]
    eng = [r for r in sel if r["kind"] == "engine" and r["group"] != "baseline"]
    med = lambda q: None if q is None else q[1]  # noqa: E731
    out = []

    def add(name, value, goal, ok, detail=""):
        out.append({"target": name, "value": value, "goal": goal, "met": ok, "detail": detail})

    if eng:
        best = max(eng, key=lambda r: med(r["vs_autoregressive"]) or 0)
        v_ar, v_hf, v_as = med(best["vs_autoregressive"]), med(best["vs_hf_generate"]), med(best["vs_hf_speculative"])
        base = min(x for x in (v_ar, v_hf) if x is not None) if (v_ar or v_hf) else None
        add("best configuration vs plain autoregressive (the smaller of its speed-ups over our loop and over HF generate)", base, ">= 2.0x",
            base is not None and base >= 2.0, best["run"])
        add("best configuration vs HF assisted generation (HF prompt lookup where the family has no draft model)", v_as, ">= 1.3x", v_as is not None and v_as >= 1.3, best["run"])
        ratios = [(r["measured_over_predicted"], r["run"]) for r in eng if r.get("measured_over_predicted")]
        if ratios:
            worst = min(ratios)
            add("every configuration: measured / predicted speed-up", worst[0], ">= 0.95",
                worst[0] >= 0.95, f"worst: {worst[1]}; {sum(x >= 0.95 for x, _ in ratios)}/{len(ratios)} meet it")
        singles = [r for r in eng if r["group"] == "single"]
        three = [r for r in eng if r["group"] == "hierarchy" and len([x for x in r["levels"] if x != "target"]) >= 2]
        if singles and three:
            bs = max(singles, key=lambda r: r["pooled_tokens_per_s"] or 0)
            bh = max(three, key=lambda r: r["pooled_tokens_per_s"] or 0)
            v = bh["pooled_tokens_per_s"] / bs["pooled_tokens_per_s"]
            add("best 3-level hierarchy vs best single-draft configuration (pooled tokens/s)", v, ">= 1.2x", v >= 1.2,
                f"{bh['run']} vs {bs['run']}")
        tw = next((r for r in eng if r["run"] == "tokenwise K=8"), None)
        bl = next((r for r in eng if r["run"] == "block K=8"), None)
        if tw and bl and tw["tokens_per_target_call"] and bl["tokens_per_target_call"]:
            v = bl["tokens_per_target_call"] / tw["tokens_per_target_call"] - 1
            add("block vs token-wise tokens per target call at K = 8", v, ">= +5%", v >= 0.05,
                f"{bl['tokens_per_target_call']:.3f} vs {tw['tokens_per_target_call']:.3f}")
        shares = [(r["verify_share"], r["run"]) for r in eng if r.get("verify_share") is not None]
        if shares:
            worst = max(shares)
            add("verification kernels, share of decode time (worst configuration)", worst[0], "<= 2%", worst[0] <= 0.02, worst[1])
    return out
