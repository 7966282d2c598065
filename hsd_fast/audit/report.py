"""The peer audit's report: ``peer-audit.md`` and ``peer-audit.json``, and ``hsd-fast audit-engine``."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..fidelity.report import _fmt  # one number format for both reports
from .cells import ENGINES

__all__ = ["audit_markdown", "write_audit", "add_cli"]


def audit_markdown(report: dict) -> str:
    """The ``peer-audit.md`` text of a :func:`hsd_fast.audit.run_audit` report."""
    v = report["versions"]
    ver = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "vllm") if k in v) + f"; hsd commit {v.get('hsd_commit', 'unknown')}"
    n_tests = sum(1 for r in report["results"] if "statistic" in r)
    lines = [
        "# hsd-fast audit-engine: peer engines against the exact law",
        "",
        f"Law of the first {report['n_tokens']} tokens, allowed set restricted to a few ids, T = 1 (and top-p where stated); "
        f"G test per cell at false-failure probability {report['alpha_per_test']:g} ({n_tests} tests: <= {n_tests * report['alpha_per_test']:.2g} together); "
        f"samples per cell: the fewest at which a planted transfer of TV {report['tv']:g} is rejected with probability >= {report['target_power']:g}"
        + (f" (overridden: {report['samples']})" if report["samples"] else "") + "; the last column but one: the smallest such transfer "
        "detected with probability >= 0.99 at the cell's own sample size.",
        f"Versions: {ver}; seed {report['seed']}; {report['total_seconds']:.0f} s in all.",
        "",
        "Setups:",
        "",
    ]
    for s in report["setups"].values():
        allowed = ", ".join(f"{a} {t!r}" for a, t in zip(s["allowed"], s["allowed_text"]))
        lines.append(f"* `{s['name']}`: target {s['target']}, draft {s['draft'] or 'none (n-gram / prompt lookup)'}; prompt {s['prompt_text']!r} "
                     f"({len(s['prompt_ids'])} tokens); allowed ids {allowed}.")
    for key, info in report["laws"].items():
        margin = info["top_p_margin"]
        lines.append(f"* law `{key}`: {info['sequences']} sequences, likeliest {info['max_prob']:.4f}"
                     + ("" if math.isinf(margin) else f", top-p margin {margin:.2e}") + ".")
    lines += [
        "",
        f"| cell | samples | cells (pooled) | G | dof | p-value | TV estimate [95% CI] | power vs TV {report['tv']:g} | planted bias rejected | verdict | TV detected at power 0.99 | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "statistic" not in r:
            lines.append(f"| {r['cell']} | — | — | — | — | — | — | — | — | {r['verdict']} | — | — |")
            continue
        pw = f"{r['power']:.4f}"
        if not r["lossless"]:
            pw += f" (vs its own law, TV {r['control_exact_tv']:.4f}: {r['control_power']:.4f})"
        off = f", {r['off_support']} off support" if r["off_support"] else ""
        lines.append(f"| {r['cell']} | {r['n_samples']} | {r['cells']} ({r['pooled_cells']}) | {_fmt(r['statistic'], 1)} | {r['dof']} | {_fmt(r['p_value'])} "
                     f"| {r['tv']:.4f} [{r['tv_low']:.4f}, {r['tv_high']:.4f}]{off} | {pw} | {'yes' if r['planted_rejected'] else 'no'} | {r['verdict']} "
                     f"| {_fmt(r['tv_at_power'])} | {r['sample_seconds']:.0f} |")
    lines += ["", f"Overall: {'OK' if report['ok'] else 'FAILED'}.", ""]
    return "\n".join(lines)


def write_audit(report: dict, out_dir: Path) -> list[Path]:
    """Write ``peer-audit.md`` and ``peer-audit.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "peer-audit.md", out_dir / "peer-audit.json"]
    paths[0].write_text(audit_markdown(report))
    paths[1].write_text(json.dumps(report, indent=1, default=str))
    return paths


def add_cli(subparsers) -> None:
    """Register ``hsd-fast audit-engine``."""
    p = subparsers.add_parser(
        "audit-engine",
        help="G-test peer engines' speculative sampling (ours, transformers, vLLM) on real models against the exact law",
        description="Sample the first tokens of each engine's own speculative decoding on real models with a restricted vocabulary and G-test "
        "them against the exact law of the target's conditionals; a deliberately lossy control must be rejected. Writes peer-audit.md and "
        "peer-audit.json.",
    )
    p.add_argument("engines", nargs="*", metavar="ENGINE", help=f"engines to audit: {', '.join(ENGINES)} (default: all)")
    p.add_argument("--cells", nargs="+", metavar="CELL", help="cells instead: an engine, ENGINE/METHOD (hf/assisted, vllm/block, ...), control, or a full cell name")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--tv", type=float, default=None, help="total variation of the planted transfer the sample sizes are chosen to detect (default 0.1)")
    p.add_argument("--samples", nargs="+", default=None, metavar="[ENGINE=]N",
                   help="samples per cell instead of the power-based size: N for every cell, ENGINE=N (hsd, hf, vllm, control) or ENGINE/METHOD=N (hf/assisted=300)")
    p.add_argument("--tokens", type=int, default=3, help="tokens per sample whose law is tested (1..4, default 3)")
    p.add_argument("--seed", type=int, default=0, help="run seed (per-cell seeds derive from it)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of this process (default 1: on a loaded machine more threads "
                   "spin and slow batch-1 generation down many times)")
    p.add_argument("--quick", action="store_true", help="tiny random models instead of the Qwen pair (SmolLM2 cells unchanged): a smoke run")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cli)


def _parse_samples(items: list[str] | None) -> dict | None:
    """``--samples`` items (``N`` or ``ENGINE=N``) as ``{engine or "*": N}``; ValueError on a bad item."""
    if not items:
        return None
    out = {}
    for item in items:
        key, _, val = item.rpartition("=")
        key = key or "*"
        if key.split("/")[0] not in ("*", "hsd", "hf", "vllm", "control") or not val.isdigit() or int(val) < 1:
            raise ValueError(f"--samples: expected N, ENGINE=N or ENGINE/METHOD=N (ENGINE: hsd, hf, vllm, control) with N >= 1, got {item!r}")
        out[key] = int(val)
    return out


def _cli(args) -> int:
    from .run import DEFAULT_TV, run_audit

    bad = [e for e in args.engines if e not in ENGINES]
    if bad:
        raise ValueError(f"engines: unknown engine {bad[0]!r}; known: {', '.join(ENGINES)}")
    if args.engines and args.cells:
        raise ValueError("cells: pass engines or --cells, not both")
    if args.tv is not None and not 0 < args.tv < 1:
        raise ValueError(f"--tv: expected a number in (0, 1), got {args.tv!r}")
    samples = _parse_samples(args.samples)
    from ..cli import check_threads

    import torch

    torch.set_num_threads(check_threads(args.threads))
    if not 1 <= args.tokens <= 4:
        raise ValueError(f"--tokens: expected an int in 1..4, got {args.tokens!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.cells or (args.engines or None)
    bars: dict = {}
    start = time.perf_counter()

    def progress(cell, done, total):
        if args.quiet:
            return
        if cell not in bars:
            from tqdm import tqdm

            bars[cell] = tqdm(total=total, desc=cell, file=sys.stderr, leave=True)
        bar = bars[cell]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    report = run_audit(names, tv=DEFAULT_TV if args.tv is None else args.tv, samples=samples, n=args.tokens, seed=args.seed, quick=args.quick,
                       log_dir=args.out, sample_dir=args.out / "samples", progress=progress)
    paths = write_audit(report, args.out)
    print(paths[0].read_text())
    print(f"wrote {paths[0]} and {paths[1]} ({time.perf_counter() - start:.0f} s)")
    return 0 if report["ok"] else 1
