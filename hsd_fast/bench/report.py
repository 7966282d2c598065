"""``bench.json``, the PNG plots and ``benchmarks.md`` from the summarised runs.

The markdown is generated in full except for the block between :data:`ANALYSIS_BEGIN` and
:data:`ANALYSIS_END`, which holds the written analysis of the figures (profiles, causes of missed
targets) and is carried over from the existing file when the report is regenerated.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .analysis import targets
from .suites import parse_exit_key

__all__ = ["machine_info", "write_report", "ANALYSIS_BEGIN", "ANALYSIS_END"]

ANALYSIS_BEGIN = "<!-- analysis: begin (kept when hsd-fast bench regenerates this file) -->"
ANALYSIS_END = "<!-- analysis: end -->"


def machine_info(threads: int, device: str) -> dict:
    import torch
    import transformers

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": device, "date": time.strftime("%Y-%m-%d")}
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        if names:
            info["cpu"] = names[0]
        info["cpu_features"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _x(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}x"


def _q(q, digits: int = 2, suffix: str = "") -> str:
    if q is None:
        return ""
    lo, med, hi = q
    return f"{med:.{digits}f}{suffix} ({lo:.{digits}f}-{hi:.{digits}f})"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def _pair(a, b, suffix: str) -> str:
    if a is None:
        return ""
    return f"{a:.2f}{suffix}" if b is None else f"{a:.2f}{suffix} / {b:.2f}{suffix}"


def _acc(row: dict) -> str:
    levels = row.get("levels_pooled") or []
    vals = [lv["alpha"] for lv in levels[1:]]
    return " / ".join("" if a is None else f"{a:.3f}" for a in vals)


def _config_table(rows: list[dict]) -> list[str]:
    out = ["| configuration | tok/s median (IQR) | vs autoregressive | vs HF generate | vs HF assisted (or prompt lookup) | tokens / target call "
           "| acceptance per level | c | predicted (alpha / law) | measured decode (kept / uncut) | measured / predicted (kept / uncut) "
           "| verification |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pred = "" if r.get("predicted_speedup") is None else f"{r['predicted_speedup']:.2f}x / {_x(r.get('predicted_speedup_law'))}"
        tpc = r.get("tokens_per_target_call")
        name = r["run"] + (" *" if r.get("temperature") == 0 and r.get("greedy_equal_to_autoregressive") and
                           r["greedy_equal_to_autoregressive"][0] != r["greedy_equal_to_autoregressive"][1] else "")
        out.append("| " + " | ".join([
            name, _q(r["tokens_per_s"]), _q(r["vs_autoregressive"], suffix="x"), _q(r["vs_hf_generate"], suffix="x"),
            _q(r["vs_hf_speculative"], suffix="x"), "" if tpc is None else f"{tpc:.2f}", _acc(r),
            " / ".join("" if c is None else f"{c:.3f}" for c in r.get("c") or []), pred,
            _pair(r.get("measured_decode_speedup"), r.get("measured_uncut_speedup"), "x"),
            _pair(r.get("measured_over_predicted"), r.get("uncut_over_predicted"), ""), _pct(r.get("verify_share")),
        ]) + " |")
    return out


def _time_table(rows: list[dict]) -> list[str]:
    out = ["| configuration | prefill / wall | level forwards (bottom-up) / decode | verification / decode | bookkeeping / decode |",
           "|---|---:|---|---:|---:|"]
    for r in rows:
        if r["kind"] != "engine":
            continue
        shares = " / ".join(_pct(s) for s in r.get("level_shares") or [])
        out.append(f"| {r['run']} | {_pct(r['prefill_s'] / r['wall_s'] if r['wall_s'] else None)} | {shares} | "
                   f"{_pct(r.get('verify_share'))} | {_pct(r.get('other_share'))} |")
    return out


def _category_table(records: list[dict], suite: str, temp: float) -> list[str]:
    from collections import defaultdict

    recs = [r for r in records if r["suite"] == suite and r["temperature"] == temp]
    base = {r["prompt_id"]: r for r in recs if r["run"] == "autoregressive"}
    runs = [n for n in dict.fromkeys(r["run"] for r in recs) if n != "autoregressive"]
    cells: dict = defaultdict(list)
    ar_tps: dict = defaultdict(list)
    for r in recs:
        b = base.get(r["prompt_id"])
        if r["run"] == "autoregressive" and r["wall_s"] > 0:
            ar_tps[r["category"]].append(r["new_tokens"] / r["wall_s"])
        elif b and r["wall_s"] > 0 and b["wall_s"] > 0 and r["new_tokens"] and b["new_tokens"]:
            cells[(r["category"], r["run"])].append((r["new_tokens"] / r["wall_s"]) / (b["new_tokens"] / b["wall_s"]))
    cats = list(dict.fromkeys(r["category"] for r in recs))
    out = ["| category | autoregressive tok/s | " + " | ".join(runs) + " |", "|---|---:|" + "---:|" * len(runs)]
    for c in cats:
        vals = [cells.get((c, n)) for n in runs]
        ar = ar_tps.get(c)
        out.append(f"| {c} | {'' if not ar else f'{sum(ar) / len(ar):.2f}'} | " +
                   " | ".join("" if not v else f"{sorted(v)[len(v) // 2]:.2f}x" for v in vals) + " |")
    return out


def _calibration_lines(calibs: dict) -> list[str]:
    out = []
    for key, c in calibs.items():
        out.append(f"**{key}** ({c['positions']} teacher-forced positions)")
        out.append("")
        out.append("| level | cost per call, ms, by positions scored |")
        out.append("|---|---|")
        for lvl, pts in c["costs"].items():
            out.append(f"| {lvl} | " + ", ".join(f"{m}: {1000 * v:.2f}" for m, v in pts.items()) + " |")
        for lvl in dict.fromkeys(x for a, b, _ in c["acceptance"] for x in (a, b)):
            exit_key = parse_exit_key(lvl)
            if exit_key is not None:  # exits are priced from the target's curve (hsd_fast.bench.calibrate)
                head = ", its head not counted" if exit_key[1] else ""
                out.append(f"| {lvl} | not timed: {exit_key[0]}/{c['n_layers']} of the target's cost{head} |")
        out.append("")
        out.append("acceptance: " + ", ".join(f"{a}->{b} {v:.3f}" for a, b, v in c["acceptance"]))
        out.append("")
        if c.get("heads"):
            out.append("trained exit heads: " + ", ".join(f"{k} = `{v}`" for k, v in c["heads"].items()))
            out.append("")
        for name, p in c.get("plans", {}).items():
            if p.get("chain"):
                chain = " -> ".join(f"{lv} [T={t}]" for lv, t in zip(p["chain"], p["thresholds"])) + " -> target"
                single = p.get("best_single")
                extra = "" if not single else f"; best single draft {single['draft']} K={single['k']} predicted {single['predicted_speedup']:.2f}x"
                same = f" (same configuration as {', '.join(p['same_as'])})" if p.get("same_as") else ""
                if p.get("forced"):
                    same += " (forced: the optimiser alone would choose fewer levels)"
                out.append(f"- plan *{name}*: {chain}, predicted {p['predicted_speedup']:.2f}x{extra}{same}")
            else:
                out.append(f"- plan *{name}*: not run ({p.get('reason', 'no chain')})")
        out.append("")
    return out


def _plots(rows: list[dict], img_dir: Path, rel: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    for suite in suites:
        sel = [r for r in rows if r["suite"] == suite]
        temps = sorted({r["temperature"] for r in sel})
        if len({r["k"] for r in sel if r["k"] is not None and r["group"] == "single"}) < 2:
            continue
        fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4), squeeze=False)
        for ax, t in zip(axes[0], temps):
            st = [r for r in sel if r["temperature"] == t]
            for scheme in dict.fromkeys(r["scheme"] for r in st if r["group"] == "single"):
                pts = sorted((r["k"], r["vs_autoregressive"][1]) for r in st if r["group"] == "single" and r["scheme"] == scheme and r["vs_autoregressive"])
                ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=scheme)
            for r in st:
                if r["group"] in ("hierarchy", "int8") or r["kind"] in ("hf_assisted", "hf_lookup"):
                    if r["vs_autoregressive"]:
                        ax.axhline(r["vs_autoregressive"][1], ls="--", lw=0.8, color="gray")
                        ax.annotate(r["run"], (ax.get_xlim()[0], r["vs_autoregressive"][1]), fontsize=6, va="bottom")
            ax.axhline(1.0, color="black", lw=0.6)
            ax.set_title(f"{suite}, T={t:g}")
            ax.set_xlabel("draft length K")
            ax.set_ylabel("median speed-up vs autoregressive")
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"{suite}-speedup-vs-k.png"
        fig.savefig(img_dir / name, dpi=110)
        plt.close(fig)
        lines.append(f"![speed-up vs K, {suite}]({rel}/{name})")
    pts = [(r["predicted_speedup"], r["measured_decode_speedup"], r["group"]) for r in rows
           if r.get("predicted_speedup") and r.get("measured_decode_speedup")]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 5))
        for group in dict.fromkeys(g for _, _, g in pts):
            ax.scatter([p for p, _, g in pts if g == group], [m for _, m, g in pts if g == group], s=14, label=group)
        hi = max(max(p, m) for p, m, _ in pts) * 1.05
        ax.plot([0, hi], [0, hi], color="black", lw=0.7, label="measured = predicted")
        ax.plot([0, hi], [0, 0.95 * hi], color="gray", lw=0.7, ls="--", label="0.95 x predicted")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("latency model's prediction (measured alpha and costs)")
        ax.set_ylabel("measured decode-only speed-up")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img_dir / "predicted-vs-measured.png", dpi=110)
        plt.close(fig)
        lines.append(f"![predicted vs measured]({rel}/predicted-vs-measured.png)")
    return lines


def _existing_analysis(md_path: Path) -> str | None:
    if not md_path.exists():
        return None
    text = md_path.read_text()
    if ANALYSIS_BEGIN in text and ANALYSIS_END in text:
        return text.split(ANALYSIS_BEGIN, 1)[1].split(ANALYSIS_END, 1)[0].strip("\n")
    return None


def write_report(out_dir: Path, *, rows: list[dict], records: list[dict], calibs: dict, suites: list, machine: dict,
                 settings: dict, command: str, main_suite: tuple[str, float] | None = None) -> Path:
    """Write ``bench.json``, the plots (``bench/``) and ``benchmarks.md`` into ``out_dir``; the batch
    sweep's section and ``batch_sweep`` entry (``hsd-fast bench --batch-sweep``) are carried over."""
    from .sweep_report import existing_section

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_json = out_dir / "bench.json"
    try:
        sweep_data = json.loads(old_json.read_text()).get("batch_sweep") if old_json.exists() else None
    except (json.JSONDecodeError, AttributeError):
        sweep_data = None
    sweep_lines = existing_section(out_dir / "benchmarks.md")
    checks = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        for t in sorted({r["temperature"] for r in rows if r["suite"] == suite}):
            checks[f"{suite}@{t:g}"] = targets(rows, suite, t)
    compact = [[r["suite"], r["temperature"], r["prompt_id"], r["category"], r["run"], r["new_tokens"], round(r["wall_s"], 4),
                None if r["decode_s"] is None else round(r["decode_s"], 4), r["finish"], r["tokens_sha1"]] for r in records]
    data = {"machine": machine, "settings": settings, "command": command,
            "suites": [{"name": s.name, "family": s.family, "dtype": s.dtype, "prompts": s.prompts, "n_prompts": s.n_prompts,
                        "temperatures": list(s.temperatures)} for s in suites],
            "calibration": calibs, "summary": rows, "targets": checks,
            "per_prompt_columns": ["suite", "temperature", "prompt", "category", "run", "new_tokens", "wall_s", "decode_s",
                                   "finish", "tokens_sha1"],
            "per_prompt": compact}
    if sweep_data is not None:
        data["batch_sweep"] = sweep_data
    (out_dir / "bench.json").write_text(json.dumps(data, indent=1))
    md_path = out_dir / "benchmarks.md"
    analysis = _existing_analysis(md_path)
    img = _plots(rows, out_dir / "bench", "bench")
    m = machine
    L = ["# Benchmarks: decoding speed", "",
         f"Generated by `{command}` on {m.get('date')}; every figure below comes from `bench.json` next to this file. "
         "Hand edits are lost at the next run, except in the analysis block.", "",
         "Reproduce (after `hsd-fast models fetch all`; hours on 2 cores, "
         "resumable with `--resume`):", "", "    hsd-fast bench", "",
         "A 2-prompt smoke run: `hsd-fast bench --quick` (writes into `out/bench-quick/`). The verification-kernel "
         "micro-benchmarks are in [kernels.md](kernels.md).", "",
         "## Machine", "", "| | |", "|---|---|",
         f"| CPU | {m.get('cpu')} ({m.get('cores')} cores; {', '.join(m.get('cpu_features', []))}) |",
         f"| memory | {m.get('memory_gib')} GiB |",
         f"| software | Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')} |",
         f"| threads | `torch.set_num_threads({m.get('threads')})` |",
         f"| device | {m.get('device')}{' (' + m['gpu'] + ')' if m.get('gpu') else ''} |",
         f"| load average at the end | {m.get('load_average')} |", "",
         "## Settings", "",
         f"max_new_tokens {settings['max_new_tokens']}; EOS ends a row (Qwen: `<|im_end|>` and `<|endoftext|>`); "
         "temperature 0 (greedy) and 1 (pure sampling: no top-k, no top-p); seeds: prompt index (engine rows and "
         "`torch.manual_seed` before transformers' sampling). HumanEval prompts are raw code (completion); Spec-Bench "
         "prompts go through the model's chat template. Configurations run interleaved, prompt by prompt, in one "
         "process per suite, with a warm-up call each. tokens/s = new tokens / wall time, prefill included; the "
         "speed-ups are per prompt (same prompt, same seed), then the median and quartiles over prompts. "
         "The prediction uses only what the run measured: per-level cost per call by positions scored (the target's "
         "single step from the autoregressive run), the acceptance MLE per edge (alpha; or the measured law of "
         "accepted counts), `hsd_ref.latency.fhierarchy_speedup`; it is compared with the measured decode-only "
         "speed-up (no prefill), per kept token and per token the target emitted before the EOS / max_new_tokens cuts "
         "(uncut: the model's steady state; the difference is the cut tail of the last iteration). c = cost per call "
         "of each draft level (a step; a middle level's verification) / the target's step. Rows marked * are greedy runs whose output differs from "
         "the autoregressive one on some prompt (bf16 rounding; see engine.md).", ""]
    L += ["## Targets", ""]
    for key, rowsk in checks.items():
        if not rowsk:
            continue
        star = " (the issue's reference setting)" if main_suite and key == f"{main_suite[0]}@{main_suite[1]:g}" else ""
        L += [f"**{key}**{star}", "", "| target | measured | goal | met | detail |", "|---|---:|---|---|---|"]
        for c in rowsk:
            v = c["value"]
            val = "" if v is None else (f"{100 * v:.1f}%" if "%" in c["goal"] else f"{v:.3f}")
            L.append(f"| {c['target']} | {val} | {c['goal']} | {'yes' if c['met'] else '**no**'} | {c['detail']} |")
        L.append("")
    for suite in dict.fromkeys(r["suite"] for r in rows):
        L += [f"## {suite}", ""]
        for t in sorted({r["temperature"] for r in rows if r["suite"] == suite}):
            sel = [r for r in rows if r["suite"] == suite and r["temperature"] == t]
            L += [f"### T = {t:g} ({sel[0]['prompts']} prompts)", ""] + _config_table(sel) + [""]
            L += ["Where the decode time goes:", ""] + _time_table(sel) + [""]
            if any(r["prompts"] for r in sel) and "specbench" in suite:
                L += ["Per Spec-Bench category (median speed-up over the autoregressive loop):", ""]
                L += _category_table(records, suite, t) + [""]
        L += [x for x in img if f"{suite}-" in x] + [""]
    L += ["## Predicted vs measured", ""] + [x for x in img if "predicted" in x] + [""]
    L += (sweep_lines + [""]) if sweep_lines else []
    L += ["## Calibration and plans", "",
          "Costs (ms per call) and teacher-forced acceptance rates measured before the runs, on prompts disjoint from "
          "the measured ones; the plans are `hsd_ref.optimize.optimal_hierarchy` over them (thresholds <= the suite's "
          "maximum).", ""] + _calibration_lines(calibs)
    L += ["## Analysis", "", ANALYSIS_BEGIN, analysis or "(not written yet)", ANALYSIS_END, ""]
    md_path.write_text("\n".join(L))
    return md_path
