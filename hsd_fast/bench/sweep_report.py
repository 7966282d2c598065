"""The batch sweep's figures (:mod:`.sweep`): summary rows, the target's measured cost curve, the
"Batch sweep" section of ``benchmarks.md`` and its plot.

Per (suite, temperature, configuration, batch size ``B``), pooled over the batches:

* aggregate tokens/s = new tokens / wall time (prefill included; the engine's ``wall_time_s``,
  transformers' ``generate`` call), and decode-only tokens/s (engine);
* the speed-ups over our autoregressive loop and over transformers' ``generate`` at the same ``B``;
* target calls (batched forwards), tokens per target call (all rows), ``tau`` = tokens per row per
  target call, ``rho`` = live rows per call / ``B`` (rows retire as they finish);
* the target's cost per call by positions scored per row (``metrics.levels[-1].by_positions``), and
  the positions per call in all (rows per call x per-row positions);
* ``r_B`` = cost of a verification call (``K + 1`` positions per row) / cost of the autoregressive
  step at the same ``B`` (one position per row), and ``q`` = one speculative iteration (drafting,
  verification, bookkeeping) / one autoregressive step.  The decode-only speed-up is exactly
  ``tau * rho / q``; speculation pays while ``tau * rho > q``, and ``q >= r_B``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["summarize_sweep", "cost_curve", "sweep_section", "splice_section", "SWEEP_BEGIN", "SWEEP_END"]

SWEEP_BEGIN = "<!-- batch sweep: begin (written by hsd-fast bench --batch-sweep; kept when the suites are regenerated) -->"
SWEEP_END = "<!-- batch sweep: end -->"


def _pool_positions(recs: list[dict], level: int = -1) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in recs:
        for m, (c, t) in r["metrics"]["levels"][level].get("by_positions", {}).items():
            acc = out.setdefault(int(m), [0, 0.0])
            acc[0] += c
            acc[1] += t
    return dict(sorted(out.items()))


def summarize_sweep(records: list[dict]) -> list[dict]:
    """One row per (suite, temperature, run, B), runs in their first order, B ascending."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r["suite"], r["temperature"], r["run"], r["batch_size"])].append(r)
    runs = list(dict.fromkeys((r["suite"], r["temperature"], r["run"]) for r in records))
    rows = []
    for suite, temp, run in runs:
        for B in sorted({k[3] for k in groups if k[:3] == (suite, temp, run)}):
            rows.append(_row(groups[(suite, temp, run, B)]))
    by = {(r["suite"], r["temperature"], r["run"], r["batch_size"]): r for r in rows}
    for row in rows:
        ar = by.get((row["suite"], row["temperature"], "autoregressive", row["batch_size"]))
        hf = by.get((row["suite"], row["temperature"], "hf generate", row["batch_size"]))
        row["vs_autoregressive"] = row["tokens_per_s"] / ar["tokens_per_s"] if ar else None
        row["vs_hf_generate"] = row["tokens_per_s"] / hf["tokens_per_s"] if hf else None
        if row["kind"] != "engine" or ar is None or ar is row:
            continue
        row["decode_vs_autoregressive"] = row["decode_tokens_per_s"] / ar["decode_tokens_per_s"]
        m = (row["k"] or 0) + 1
        ar_step = ar["target_ms_per_call"].get(1)
        if ar_step and m in row["target_ms_per_call"]:
            row["verify_cost_ratio"] = row["target_ms_per_call"][m] / ar_step  # r_B
        row["iteration_over_step"] = row["iteration_s"] / ar["iteration_s"]  # q
    return rows


def _row(recs: list[dict]) -> dict:
    r0 = recs[0]
    tokens = sum(r["new_tokens"] for r in recs)
    wall = sum(r["wall_s"] for r in recs)
    B = r0["batch_size"]
    row = {k: r0[k] for k in ("suite", "family", "dtype", "temperature", "run", "kind", "group", "levels", "scheme",
                              "thresholds", "k")}
    row.update(batch_size=B, batches=len(recs), rows=sum(len(r["row_tokens"]) for r in recs), new_tokens=tokens,
               wall_s=wall, tokens_per_s=tokens / wall if wall else None,
               forced_length=all(n == r.get("max_new_tokens") for r in recs for n in r["row_tokens"]))
    if r0["kind"] != "engine":
        return row
    decode = sum(r["decode_s"] for r in recs)
    calls = sum(r["metrics"]["levels"][-1]["calls"] for r in recs)
    # row-calls: a verifying target counts its rounds per live row; the autoregressive target runs
    # every row at every call (all rows emit max_new_tokens, so they retire together).  Per record:
    # an auto configuration may run either at one batch size
    row_calls = sum(r["metrics"]["levels"][-1]["rounds"] if len(r["metrics"]["levels"]) > 1 else r["metrics"]["levels"][-1]["calls"] * len(r["row_tokens"])
                    for r in recs)
    pooled = _pool_positions(recs)
    rows_per_call = row_calls / calls if calls else None
    row.update(
        prefill_s=sum(r["prefill_s"] for r in recs), decode_s=decode, decode_tokens_per_s=tokens / decode if decode else None,
        target_calls=calls, tokens_per_target_call=tokens / calls if calls else None,
        tokens_per_row_call=tokens / row_calls if row_calls else None, rows_per_call=rows_per_call,
        rho=rows_per_call / B if rows_per_call else None, iteration_s=decode / calls if calls else None,
        target_by_positions={m: list(v) for m, v in pooled.items()},
        target_ms_per_call={m: 1000 * t / c for m, (c, t) in pooled.items() if c},
        positions_per_call={m: m * rows_per_call for m in pooled} if rows_per_call else {},
        draft_s=sum(lv["time_s"] for r in recs for lv in r["metrics"]["levels"][:-1]),
        target_s=sum(r["metrics"]["levels"][-1]["time_s"] for r in recs),
        verify_s=sum(lv.get("verify_s") or 0.0 for r in recs for lv in r["metrics"]["levels"]),
        plans=sorted({r["metrics"].get("plan", "").split(";")[0] for r in recs}),  # the chains and thresholds that ran
    )
    return row


def cost_curve(rows: list[dict], suite: str, temperature: float) -> list[dict]:
    """The target's measured cost per call against the positions it scores, per B: the autoregressive
    step (B x 1 positions) and the verification call of every speculative configuration
    (B x (K + 1)), pooled over the configurations with the same K."""
    sel = [r for r in rows if r["suite"] == suite and r["temperature"] == temperature and r["kind"] == "engine"]
    out = []
    for B in sorted({r["batch_size"] for r in sel}):
        calls: dict = defaultdict(lambda: [0, 0.0, 0.0])  # per-row positions -> calls, seconds, row-calls
        for r in sel:
            if r["batch_size"] != B:
                continue
            for m, (c, t) in r["target_by_positions"].items():
                acc = calls[m]
                acc[0] += c
                acc[1] += t
                acc[2] += c * r["rows_per_call"]
        for m, (c, t, rc) in sorted(calls.items()):
            if c:
                out.append({"batch_size": B, "positions_per_row": m, "rows_per_call": rc / c, "positions": m * rc / c, "calls": c,
                            "ms_per_call": 1000 * t / c})
    return out


def _f(v, fmt: str = ".2f", suffix: str = "") -> str:
    return "" if v is None else f"{v:{fmt}}{suffix}"


def _main_table(sel: list[dict]) -> list[str]:
    out = ["| configuration | B | rows | tok/s | vs autoregressive | vs HF generate | target calls | tokens / target call "
           "| tau: tokens / row / call | rho: rows / call / B | target ms / call (positions per row: ms) | positions / call "
           "| r_B: verify / AR step | q: iteration / AR step |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in sel:
        costs = ", ".join(f"{m}: {v:.1f}" for m, v in (r.get("target_ms_per_call") or {}).items())
        pos = ", ".join(f"{B} x {m} = {p:.1f}" if abs(p - B * m) > 1e-9 else f"{B} x {m}" for m, p, B in
                        ((m, p, r["batch_size"]) for m, p in (r.get("positions_per_call") or {}).items()))
        out.append("| " + " | ".join([
            r["run"] + ("" if r["forced_length"] else " (short rows!)"), str(r["batch_size"]), str(r["rows"]),
            _f(r["tokens_per_s"]), _f(r["vs_autoregressive"], suffix="x"), _f(r["vs_hf_generate"], suffix="x"),
            _f(r.get("target_calls"), "d"), _f(r.get("tokens_per_target_call")), _f(r.get("tokens_per_row_call")),
            _f(r.get("rho"), ".3f"), costs, pos, _f(r.get("verify_cost_ratio")), _f(r.get("iteration_over_step")),
        ]) + " |")
    return out


def _speedup_table(sel: list[dict], sizes: list[int]) -> list[str]:
    out = ["| configuration | " + " | ".join(f"B={B}" for B in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for run in dict.fromkeys(r["run"] for r in sel if r["run"] != "autoregressive"):
        cells = {r["batch_size"]: r["vs_autoregressive"] for r in sel if r["run"] == run}
        out.append(f"| {run} | " + " | ".join(_f(cells.get(B), suffix="x") for B in sizes) + " |")
    ar = {r["batch_size"]: r["tokens_per_s"] for r in sel if r["run"] == "autoregressive"}
    out.append("| (autoregressive tok/s) | " + " | ".join(_f(ar.get(B)) for B in sizes) + " |")
    return out


def _curve_table(curve: list[dict]) -> list[str]:
    out = ["| B | positions per row | rows per call | positions per call | calls | ms per call | ms per position |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for c in curve:
        out.append(f"| {c['batch_size']} | {c['positions_per_row']} | {c['rows_per_call']:.2f} | {c['positions']:.1f} | {c['calls']} | "
                   f"{c['ms_per_call']:.2f} | {c['ms_per_call'] / c['positions']:.3f} |")
    return out


def _verdict(sel: list[dict], curve: list[dict]) -> list[str]:
    """Where speculation stops paying as B grows, and why, in sentences made from the figures."""
    spec = [r for r in sel if r["kind"] == "engine" and r["run"] != "autoregressive" and r["group"] != "auto" and r["vs_autoregressive"] is not None]
    lines = []
    for run in dict.fromkeys(r["run"] for r in spec):
        pts = sorted((r for r in spec if r["run"] == run), key=lambda r: r["batch_size"])
        first, last = pts[0], pts[-1]
        stop = next((r for r in pts if r["vs_autoregressive"] < 1.0), None)
        trend = f"{first['vs_autoregressive']:.2f}x at B={first['batch_size']}, {last['vs_autoregressive']:.2f}x at B={last['batch_size']}"
        if stop is None:
            head = f"*{run}* pays at every measured B ({trend})"
        elif stop is first:
            later = [r["batch_size"] for r in pts if r["vs_autoregressive"] >= 1.0]
            head = f"*{run}* does not pay at B={stop['batch_size']} ({trend}" + (f"; it pays at B in {later})" if later else ")")
        else:
            prev = pts[pts.index(stop) - 1]
            head = (f"*{run}* stops paying at B={stop['batch_size']}: {stop['vs_autoregressive']:.2f}x, after "
                    f"{prev['vs_autoregressive']:.2f}x at B={prev['batch_size']} ({trend})")
        why = []
        end = stop or last  # where it stops paying, else the largest B
        for r in [first] if end is first else [first, end]:
            if r.get("verify_cost_ratio") is None or r.get("iteration_over_step") is None or r.get("tokens_per_row_call") is None:
                continue
            B, m = r["batch_size"], (r["k"] or 0) + 1
            gain = r["tokens_per_row_call"] * r["rho"]
            why.append(f"at B={B} a verification call scores {B} x {m} positions for r = {r['verify_cost_ratio']:.2f} "
                       f"autoregressive steps of {B} x 1, one iteration costs q = {r['iteration_over_step']:.2f} steps and "
                       f"emits tau = {r['tokens_per_row_call']:.2f} tokens per row (tau x rho = {gain:.2f} "
                       f"{'>' if gain > r['iteration_over_step'] else '<='} q: decode-only {r['decode_vs_autoregressive']:.2f}x)")
        lines.append(f"- {head}" + (": " + "; ".join(why) + "." if why else "."))
    ar_cost = {c["batch_size"]: c for c in curve if c["positions_per_row"] == 1}
    ver = [c for c in curve if c["positions_per_row"] > 1]
    if ar_cost and ver:
        lo, hi = min(ar_cost), max(ar_cost)
        v_lo = next((c for c in ver if c["batch_size"] == lo), None)
        v_hi = next((c for c in reversed(ver) if c["batch_size"] == hi), None)
        if v_lo and v_hi:
            r_lo, r_hi = v_lo["ms_per_call"] / ar_cost[lo]["ms_per_call"], v_hi["ms_per_call"] / ar_cost[hi]["ms_per_call"]
            m = v_hi["positions_per_row"]
            per_pos_lo = ar_cost[lo]["ms_per_call"] / ar_cost[lo]["positions"]
            per_pos_hi = v_hi["ms_per_call"] / v_hi["positions"]
            head = (f"- Why (the cost curve below): verifying {m} positions per row costs r = {r_lo:.2f} autoregressive steps at "
                    f"B={lo} and r = {r_hi:.2f} at B={hi} ({m} would mean a call is priced per position); per position scored, "
                    f"a call costs {per_pos_lo:.3f} ms at {ar_cost[lo]['positions']:.0f} position(s) and {per_pos_hi:.3f} ms at "
                    f"{v_hi['positions']:.0f}. ")
            if r_hi > 1.1 * r_lo:
                tail = ("The ratio rises with B: the extra positions of a verification are nearly free while a call is bound "
                        "by reading the weights (few positions), and are paid for once the batch's own positions keep the "
                        "cores busy, while tau, set by the acceptance, does not grow with B; so q approaches tau x rho and "
                        "speculation stops paying.")
            else:
                tail = ("The ratio does not rise over the measured B, so the cost curve alone does not end the gain: what "
                        "changes is q - r (drafting and bookkeeping per iteration, in autoregressive steps) and rho (rows "
                        "retiring at different iterations).")
            lines.append(head + tail + " Speculation pays while tau x rho > q, and q >= r.")
    return lines


def _auto_lines(sel: list[dict]) -> list[str]:
    """Per batch size: the plans an auto configuration ran and its throughput against the better of
    autoregressive decoding and the best fixed speculative configuration (the target: >= 0.95x)."""
    out = []
    for run in dict.fromkeys(r["run"] for r in sel if r["group"] == "auto"):
        cells = []
        for r in sorted((r for r in sel if r["run"] == run), key=lambda r: r["batch_size"]):
            B = r["batch_size"]
            rivals = [x for x in sel if x["batch_size"] == B and x["kind"] == "engine" and x["group"] != "auto"]
            best = max(rivals, key=lambda x: x["tokens_per_s"] or 0.0, default=None)
            plans = r.get("plans") or ["?"]
            if best is None or not r["tokens_per_s"]:
                continue
            ratio = r["tokens_per_s"] / best["tokens_per_s"]
            cells.append(f"B={B}: {' / '.join(plans)}, {r['tokens_per_s']:.2f} tok/s = {ratio:.2f}x the best fixed configuration "
                         f"({best['run']}, {best['tokens_per_s']:.2f}){'' if ratio >= 0.95 else ' (below the 0.95x target)'}")
        if cells:
            out.append(f"- *{run}* (the plan chosen per call for its batch size): " + "; ".join(cells) + ".")
    return out


def _plot(sel: list[dict], curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, run in enumerate(dict.fromkeys(r["run"] for r in sel)):
        pts = sorted((r["batch_size"], r["tokens_per_s"], r["vs_autoregressive"]) for r in sel if r["run"] == run)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i}", label=run)
        if run != "autoregressive":
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", color=f"C{i}", label=run)
    for m in sorted({c["positions_per_row"] for c in curve}):
        pts = [c for c in curve if c["positions_per_row"] == m]
        axes[2].plot([c["positions"] for c in pts], [c["ms_per_call"] for c in pts], marker="o",
                     label="autoregressive step (B x 1)" if m == 1 else f"verification (B x {m})")
        for c in pts:
            axes[2].annotate(f"B={c['batch_size']}", (c["positions"], c["ms_per_call"]), fontsize=6)
    axes[1].axhline(1.0, color="black", lw=0.7)
    for ax, ylab in zip(axes, ("aggregate tokens/s", "speed-up vs autoregressive (same B)", "target ms per call")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel(ylab)
        ax.legend(fontsize=7)
    axes[0].set_xlabel("batch size B")
    axes[1].set_xlabel("batch size B")
    axes[2].set_xlabel("positions scored per call (rows x positions per row)")
    axes[2].set_yscale("log")
    axes[2].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[2].yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_section(rows: list[dict], suites: list, *, out_dir: Path, machine: dict, command: str, settings: dict) -> list[str]:
    """The "Batch sweep" section (markers included); writes its plots into ``out_dir/bench``."""
    m = machine
    names = list(dict.fromkeys(r["suite"] for r in rows))
    by_name = {s.name: s for s in suites}
    L = [SWEEP_BEGIN, "## Batch sweep", "",
         f"Generated by `{command}` on {m.get('date')} ({m.get('cpu')}, {m.get('cores')} cores, `torch.set_num_threads({m.get('threads')})`, "
         f"torch {m.get('torch')}, transformers {m.get('transformers')}, device {m.get('device')}; load average at the end "
         f"{m.get('load_average')}); the figures are in `bench.json` under `batch_sweep`. Reproduce: `hsd-fast bench --batch-sweep` "
         f"(this run: {sum(r['wall_s'] for r in rows) / 60:.1f} min of measured generation, warm-ups and model loading not counted; "
         "`--resume` continues an interrupted sweep).", "",
         f"Aggregate tokens/s = total new tokens / total wall time (prefill included) at batch size B. {settings['max_new_tokens']} new "
         "tokens per row, forced (no id ends a row: the engine with `eos_token_id=None`, transformers with the model's EOS unset); temperature "
         f"{', '.join(f'{t:g}' for t in settings['temperatures'])} (pure sampling at 1); row j is prompt j mod N with seed "
         f"{settings['seed']} + j, and at batch size B the ceil(N / B) x B rows are decoded in ceil(N / B) batches of B rows (a B "
         "larger than N repeats prompts with other seeds). transformers' `generate` gets the same rows, left-padded. Configurations "
         "are interleaved batch by batch after a warm-up at each B. tau = tokens per row per target call, rho = live rows per call "
         "/ B (rows retire as they finish), r_B = the target's cost per verification call (B x (K + 1) positions) / its cost per "
         "autoregressive step (B x 1), q = one speculative iteration (drafting, verification, bookkeeping) / one autoregressive "
         "step; the decode-only speed-up is exactly tau x rho / q.", ""]
    for name in names:
        s = by_name.get(name)
        for t in sorted({r["temperature"] for r in rows if r["suite"] == name}):
            sel = [r for r in rows if r["suite"] == name and r["temperature"] == t]
            sizes = sorted({r["batch_size"] for r in sel})
            curve = cost_curve(rows, name, t)
            prompts = "" if s is None else f", HumanEval/{s.first_task}-{s.first_task + s.n_prompts - 1} (N = {s.n_prompts})"
            L += [f"### {name} ({sel[0]['family']}, {sel[0]['dtype']}{prompts}), T = {t:g}", ""]
            L += ["Speed-up over our autoregressive loop at the same B (aggregate tokens/s):", ""] + _speedup_table(sel, sizes) + [""]
            L += ["**Where speculation stops paying.**", ""] + _verdict(sel, curve) + [""]
            auto = _auto_lines(sel)
            if auto:
                L += ["**The batch-aware plan** (`thresholds=\"auto\"`: hsd_fast.engine.plan).", ""] + auto + [""]
            img = f"sweep-{name}-T{t:g}.png"
            _plot(sel, curve, Path(out_dir) / "bench" / img, f"{name}, T={t:g}")
            L += [f"![batch sweep, {name}, T={t:g}](bench/{img})", ""]
            L += ["The target's measured cost per call by positions scored:", ""] + _curve_table(curve) + [""]
            L += ["Every configuration and batch size:", ""] + _main_table(sel) + [""]
    L += [SWEEP_END]
    return L


def splice_section(md_path: Path, lines: list[str], *, before: tuple[str, ...] = ("## Calibration and plans", "## Analysis")) -> None:
    """Put the section into ``md_path``: in place of an earlier one, else before the first heading of
    ``before`` that the file has, else at its end (a missing file gets a title and the section)."""
    block = "\n".join(lines)
    if not md_path.exists():
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text("# Benchmarks: decoding speed\n\n" + block + "\n")
        return
    text = md_path.read_text()
    if SWEEP_BEGIN in text and SWEEP_END in text:
        head, rest = text.split(SWEEP_BEGIN, 1)
        text = head + block + rest.split(SWEEP_END, 1)[1]
    else:
        at = next((text.index("\n" + h + "\n") + 1 for h in before if "\n" + h + "\n" in text), None)
        text = text.rstrip("\n") + "\n\n" + block + "\n" if at is None else text[:at] + block + "\n\n" + text[at:]
    md_path.write_text(text)


def existing_section(md_path: Path) -> list[str] | None:
    """The section of an existing report (markers included), to carry over when the suites' report is rewritten."""
    if not md_path.exists():
        return None
    text = md_path.read_text()
    if SWEEP_BEGIN not in text or SWEEP_END not in text:
        return None
    return (SWEEP_BEGIN + text.split(SWEEP_BEGIN, 1)[1].split(SWEEP_END, 1)[0] + SWEEP_END).split("\n")


def update_bench_json(path: Path, sweep: dict) -> None:
    """Set ``batch_sweep`` in ``bench.json``, keeping everything else."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data["batch_sweep"] = sweep
    path.write_text(json.dumps(data, indent=1))
