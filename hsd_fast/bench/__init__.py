"""``hsd-fast bench``: decoding benchmarks against autoregressive decoding, transformers' assisted
generation and the latency model (docs/benchmarks.md).

* :mod:`.suites` -- what runs (configurations, plans, suites);
* :mod:`.families` -- the models of each suite and how prompts are encoded;
* :mod:`.calibrate` -- measured cost curves and acceptance rates, and the latency model's plans;
* :mod:`.runner` -- one process, configurations interleaved prompt by prompt, results appended as
  they come (resumable);
* :mod:`.analysis` -- speed-ups, acceptance, predictions, the issue's targets;
* :mod:`.report` -- ``bench.json``, PNG plots, ``benchmarks.md``.

``hsd-fast bench`` runs the full grid and rewrites ``docs/benchmarks.md``; ``--quick`` is a 2-prompt
smoke run of the real models; ``--tiny`` runs every code path on random tiny models (no download,
seconds; the test suite uses it).

Level keys (:mod:`.families`): ``ngram``, ``draft``, ``draft@int8``, ``exit:D`` (untrained exit),
``exit:D:trained`` (the head ``hsd-fast train-exit`` cached) and ``target``.  The Qwen suite's
trained-exit plans (HiSpec draft -> exit:14:trained -> target, self-speculation exit:14:trained ->
target) need ``hsd-fast train-exit qwen2.5-coder-1.5b --layer 14`` first; without the head they are
skipped, and the log and the report say so and give that command.

``hsd-fast bench --batch-sweep`` (:mod:`.sweep`, :mod:`.sweep_report`) measures aggregate tokens/s
against the batch size instead (``--batch-sizes 1,2,4,8,16``; with ``--tiny`` / ``--quick`` too) and
rewrites only the "Batch sweep" section of ``benchmarks.md`` and ``batch_sweep`` in ``bench.json``;
the suites' report carries that section over when it is regenerated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_cli", "run", "main"]

MAIN_SUITE = ("qwen-bf16-humaneval", 1.0)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="decoding benchmarks; rewrites docs/benchmarks.md", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 prompts (HumanEval + Spec-Bench), 32 tokens, K=4, main plans")
    mode.add_argument("--tiny", action="store_true", help="random tiny models: every code path in seconds, no download")
    p.add_argument("--suites", default=None, help="comma-separated suite names to run (default: all of the mode)")
    p.add_argument("--out", default=None, help="where bench.json, bench/*.png and benchmarks.md go (default: docs, "
                                                "or out/bench-quick / out/bench-tiny)")
    p.add_argument("--work", default=None, help="raw results (runs.jsonl, calibration.json, run.json; default: OUT/../out/bench or OUT/work)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (quick 32, tiny 12)")
    p.add_argument("--humaneval", type=int, default=None, metavar="N", help="HumanEval prompts per HumanEval suite")
    p.add_argument("--spec-bench-per-category", type=int, default=None, metavar="M", help="Spec-Bench prompts per category")
    p.add_argument("--temperatures", default=None, help="comma-separated, e.g. 0,1 (default: each suite's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="keep the results in WORK and run only what is missing")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from WORK without running anything (the machine table and command stay the measuring run's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--batch-sweep", action="store_true",
                   help="aggregate tokens/s against the batch size (SmolLM2 + n-gram, Qwen 0.5B -> 1.5B; autoregressive, "
                        "speculative K=4, transformers generate) instead of the suites; rewrites only the Batch sweep "
                        "section (sweep results: WORK/sweep.jsonl; --report-only re-reports them)")
    p.add_argument("--batch-sizes", default=None, help="--batch-sweep: comma-separated batch sizes (default 1,2,4,8,16; tiny 1,2,4)")
    p.add_argument("--humaneval-first", type=int, default=None, metavar="I",
                   help="--batch-sweep: index of the first HumanEval task (default 100; --humaneval N prompts, default 8)")
    p.set_defaults(func=run)


def _positive(name: str, v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    return v


def _temperatures(args) -> tuple[float, ...] | None:
    if not args.temperatures:
        return None
    try:
        temps = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--temperatures: expected comma-separated numbers, got {args.temperatures!r}") from None
    if not temps or any(t < 0 for t in temps):
        raise ValueError(f"--temperatures: expected numbers >= 0, got {args.temperatures!r}")
    return temps


def _paths(args, default_out: Path) -> tuple[Path, Path]:
    """``(out, work)``: ``--out`` (default ``default_out``) and ``--work`` (default ``out/bench`` for
    docs, else ``OUT/work``)."""
    out = Path(args.out) if args.out else default_out
    work = Path(args.work) if args.work else (Path("out/bench") if out == Path("docs") else out / "work")
    return out, work


def _pick_suites(suites: list, text: str | None, where: str) -> list:
    """The suites named in ``--suites`` (comma-separated; all of them when not given)."""
    if not text:
        return suites
    names = [s.strip() for s in text.split(",") if s.strip()]
    known = {s.name for s in suites}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--suites: unknown suite(s) {unknown}; {where} has {sorted(known)}")
    return [s for s in suites if s.name in names]


def _select(args):
    from .suites import default_suites, quick_suites, tiny_suites

    if args.batch_sizes is not None or args.humaneval_first is not None:
        raise ValueError("--batch-sizes / --humaneval-first: only with --batch-sweep")
    if args.tiny:
        suites, out, tokens = tiny_suites(), Path("out/bench-tiny"), 12
    elif args.quick:
        suites, out, tokens = quick_suites(), Path("out/bench-quick"), 32
    else:
        suites, out, tokens = default_suites(), Path("docs"), 128
    suites = _pick_suites(suites, args.suites, "this mode")
    temps = _temperatures(args)
    hum = _positive("--humaneval", args.humaneval)
    spb = _positive("--spec-bench-per-category", args.spec_bench_per_category)
    suites = [s.with_overrides(temperatures=temps, n_prompts=(hum if s.prompts == "humaneval" else spb)) for s in suites]
    out, work = _paths(args, out)
    tokens = _positive("--max-new-tokens", args.max_new_tokens) or tokens
    return suites, out, work, tokens


def run(args) -> int:
    import json

    from ..cli import check_device, check_threads
    from .analysis import summarize
    from .report import machine_info, write_report
    from .runner import Settings, _load_jsonl, run_suites

    # errors (ValueError / OSError) are printed as one line by hsd_fast.cli.main
    if args.batch_sweep:
        from .sweep import run_cli

        return run_cli(args)
    suites, out, work, tokens = _select(args)
    check_threads(args.threads)
    check_device(args.device)
    settings = Settings(work=work, max_new_tokens=tokens, threads=args.threads, device=args.device, seed=args.seed,
                        resume=args.resume, progress=not args.no_progress,
                        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.report_only:
        records = _load_jsonl(work / "runs.jsonl")
        if not records:
            raise ValueError(f"--report-only: no results in {work / 'runs.jsonl'} to report")
    else:
        records = run_suites(suites, settings)
    names = {s.name for s in suites}
    records = [r for r in records if r["suite"] in names]
    calib_path = work / "calibration.json"
    calibs = json.loads(calib_path.read_text()) if calib_path.exists() else {}
    calibs = {k: v for k, v in calibs.items() if k.split("@")[0] in names}
    rows = summarize(records)
    command = "hsd-fast bench" + "".join(f" {a}" for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "hsd-fast bench"
    run_path = work / "run.json"  # the measuring run's machine and command: --report-only keeps them
    if args.report_only and run_path.exists():
        run_info = json.loads(run_path.read_text())
        machine, command = run_info["machine"], run_info["command"]
    else:
        machine = machine_info(args.threads, args.device)
        if not args.report_only:
            run_path.write_text(json.dumps({"machine": machine, "command": command}, indent=1))
    md = write_report(out, rows=rows, records=records, calibs=calibs, suites=suites, machine=machine,
                      settings={"max_new_tokens": tokens, "threads": args.threads, "seed": args.seed, "device": args.device},
                      command=command, main_suite=MAIN_SUITE)
    print(f"hsd-fast bench: {len(records)} runs; wrote {md}, {out / 'bench.json'} and {out / 'bench'}/*.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])
