"""``hsd-fast bench --batch-sweep``: aggregate throughput against the batch size (issue 13).

What runs.  A :class:`SweepSuite` is one model family and dtype with its configurations: our engine
with the target alone (autoregressive), transformers' batched ``generate`` (left padding, the same
rows) and speculative configurations, at every batch size ``B`` of the suite, all in one process.

Rows.  The sweep's ``N`` prompts (HumanEval tasks ``first .. first + N - 1``; 100-107 by default) are
decoded as rows: row ``j`` is prompt ``j mod N`` with seed ``seed + j``, and at batch size ``B`` the
``ceil(N / B) * B`` rows are cut into ``ceil(N / B)`` batches of ``B`` consecutive rows.  For ``B``
dividing ``N`` that is every prompt once; a larger ``B`` (16 for 8 prompts) repeats prompts, with
other seeds, so that every batch is full.  Every row emits exactly ``max_new_tokens`` tokens: no id
ends a row, in the engine (``eos_token_id=None``) or in transformers (:func:`hf_generate_batch`).

Order.  Per temperature and batch size, every configuration is warmed up once on ``B`` short rows
(an auto configuration, ``thresholds="auto"``, three times with 16 new tokens: its first calls
measure the acceptance, probe the costs its plan for that ``B`` needs and run both that plan and the
target alone once, so that every measured batch runs the plan it chose),
then the batches are measured with the configurations interleaved, in an order rotated by the
batch's index and the batch size's place, so that no configuration always runs first.  Each batch's
result is appended to ``sweep.jsonl`` as soon as it exists (``resume=True`` runs only what is
missing).  Engine decoders run with ``timing=True`` (per-level call times by positions scored,
:mod:`hsd_fast.engine.metrics`).  The figures are made by :mod:`.sweep_report`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace

import torch

from .suites import RunSpec

__all__ = ["SweepSuite", "default_sweeps", "quick_sweeps", "tiny_sweeps", "sweep_rows", "hf_generate_batch",
           "run_sweep", "sweep_key", "SWEEP_FILE"]

SWEEP_FILE = "sweep.jsonl"
BATCH_SIZES = (1, 2, 4, 8, 16)
K = 4
WARMUP_PROMPT, WARMUP_TOKENS = 16, 4  # warm-up rows: the last 16 prompt tokens, 4 new tokens


@dataclass(frozen=True)
class SweepSuite:
    name: str
    family: str
    dtype: str
    runs: tuple[RunSpec, ...]
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    n_prompts: int = 8
    first_task: int = 100  # HumanEval task index of the first prompt
    temperatures: tuple[float, ...] = (1.0,)

    def with_overrides(self, **kw) -> "SweepSuite":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def _runs(draft_keys: dict[str, str], schemes=("tokenwise", "block"), k: int = K, auto: str | None = None) -> tuple[RunSpec, ...]:
    """Autoregressive, transformers generate, and ``scheme K=k`` over every draft level key
    (``draft_keys``: name prefix -> level key); ``auto``: the key of a draft whose stack also runs with
    ``thresholds="auto"`` (block), the plan chosen per batch size."""
    runs = [RunSpec("autoregressive", "engine", group="baseline"), RunSpec("hf generate", "hf", group="baseline")]
    for prefix, key in draft_keys.items():
        group = "int8" if key.endswith("@int8") else "single"
        runs += [RunSpec(f"{prefix}{s} K={k}", "engine", (key, "target"), s, (k,), group) for s in schemes]
    if auto is not None:
        runs.append(RunSpec(f"auto {auto} block", "engine", (auto, "target"), "block", (), "auto"))
    return tuple(runs)


def default_sweeps() -> list[SweepSuite]:
    """SmolLM2-135M with the n-gram drafter, and Qwen2.5-Coder 0.5B -> 1.5B (bf16 target; bf16 and
    int8 drafts): HumanEval 100-107, B = 1..16, T = 1 (about half an hour on 2 cores)."""
    return [SweepSuite("sweep-smollm2", "smollm2", "bfloat16", _runs({"": "ngram"}, auto="ngram")),
            SweepSuite("sweep-qwen", "qwen", "bfloat16", _runs({"": "draft", "int8 ": "draft@int8"}, auto="draft@int8"))]


def quick_sweeps() -> list[SweepSuite]:
    """``--quick --batch-sweep``: both families, 2 prompts, B = 1 and 2, one scheme."""
    return [replace(s, batch_sizes=(1, 2), n_prompts=2, runs=tuple(r for r in s.runs if "block" not in r.name))
            for s in default_sweeps()]


def tiny_sweeps() -> list[SweepSuite]:
    """Random tiny models, every kind of level (model draft, int8 draft, n-gram), 3 prompts so that a
    batch size that does not divide them repeats prompts; greedy and sampling."""
    runs = _runs({"": "draft"}, auto="draft") + _runs({"int8 ": "draft@int8", "ngram ": "ngram"}, schemes=("tokenwise",))[2:]
    return [SweepSuite("sweep-tiny", "tiny", "float64", runs, batch_sizes=(1, 2, 4), n_prompts=3, temperatures=(0.0, 1.0))]


def sweep_rows(n_prompts: int, batch_size: int) -> list[list[int]]:
    """Prompt indices of every batch at batch size ``B``: row ``j`` is prompt ``j mod N``.

    >>> sweep_rows(3, 2)
    [[0, 1], [2, 0]]
    >>> sweep_rows(2, 4)
    [[0, 1, 0, 1]]
    """
    n_batches = math.ceil(n_prompts / batch_size)
    return [[(b * batch_size + i) % n_prompts for i in range(batch_size)] for b in range(n_batches)]


def sweep_key(rec: dict) -> tuple:
    return (rec["suite"], float(rec["temperature"]), int(rec["batch_size"]), int(rec["batch"]), rec["run"])


def sweep_prompts(suite: SweepSuite):
    from ..prompts import humaneval_prompts

    allp = humaneval_prompts()
    sel = allp[suite.first_task : suite.first_task + suite.n_prompts]
    if len(sel) < suite.n_prompts:
        raise ValueError(f"{suite.name}: HumanEval has {len(allp)} tasks; tasks {suite.first_task}.."
                         f"{suite.first_task + suite.n_prompts - 1} are not all there")
    return sel


def _pad_id(models) -> int:
    tok = models.tokenizer
    for v in (getattr(tok, "pad_token_id", None), *(models.eos_ids or ()), getattr(tok, "eos_token_id", None)):
        if isinstance(v, int):
            return v
    return 0


@torch.no_grad()
def hf_generate_batch(target, rows: list[list[int]], *, max_new_tokens: int, temperature: float, seed: int, pad_id: int,
) -> tuple[list[list[int]], float]:
    """transformers ``generate`` on a left-padded batch, exactly ``max_new_tokens`` new tokens per row:
    ``(new token ids per row, seconds)``.  No id stops a row, as in the engine with
    ``eos_token_id=None`` (EOS keeps its probability, unlike ``min_new_tokens``, which masks it): the
    model's ``generation_config.eos_token_id`` is unset for the call (generate would fill an unset
    value from it).  Sampling is pure (``top_k=0``, ``top_p=1``, no repetition penalty), as in the
    engine; seeded by ``torch.manual_seed``."""
    from transformers import GenerationConfig

    dev = next(target.parameters()).device
    L = max(map(len, rows))
    x = torch.full((len(rows), L), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(x)
    for b, r in enumerate(rows):  # left padding: every row's last prompt token in the last column
        x[b, L - len(r):] = torch.tensor(r, dtype=torch.int64)
        mask[b, L - len(r):] = 1
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=None, repetition_penalty=1.0)
    if temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    x, mask = x.to(dev), mask.to(dev)
    model_cfg = target.generation_config
    saved, model_cfg.eos_token_id = model_cfg.eos_token_id, None
    try:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = target.generate(x, attention_mask=mask, generation_config=GenerationConfig(**kw))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
    finally:
        model_cfg.eos_token_id = saved
    new = out[:, L:].tolist()
    if any(len(t) != max_new_tokens for t in new):
        raise RuntimeError(f"transformers generate stopped early: {[len(t) for t in new]} new tokens, {max_new_tokens} asked for")
    return new, wall


class _SweepExecutor:
    """Runs one RunSpec on one batch of rows; decoders are built once per (run, temperature)."""

    def __init__(self, models):
        self.models = models
        self.pad_id = _pad_id(models)
        self._decoders: dict = {}

    def decoder(self, run: RunSpec, temperature: float):
        from ..engine import SpeculativeDecoder

        key = (run, temperature)
        if key not in self._decoders:
            m = self.models
            thresholds = "auto" if run.group == "auto" else (run.thresholds or None)
            self._decoders[key] = SpeculativeDecoder([m.level(k) for k in run.levels], scheme=run.scheme,
                                                     thresholds=thresholds, temperature=temperature,
                                                     tokenizer=m.tokenizer, eos_token_id=None, timing=True)
        return self._decoders[key]

    def __call__(self, run: RunSpec, rows: list[list[int]], temperature: float, seeds: list[int], max_new_tokens: int) -> dict:
        if run.kind == "engine":
            res = self.decoder(run, temperature).generate(rows, max_new_tokens=max_new_tokens, seeds=seeds)
            met = res.metrics.as_dict()
            return {"tokens": res.tokens, "wall_s": met["wall_time_s"], "prefill_s": met["prefill_s"],
                    "decode_s": met["decode_s"], "metrics": met}
        if run.kind != "hf":
            raise ValueError(f"batch sweep: run kind {run.kind!r} is not supported (engine or hf)")
        toks, wall = hf_generate_batch(self.models.target, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                                       seed=seeds[0], pad_id=self.pad_id)
        return {"tokens": toks, "wall_s": wall, "prefill_s": None, "decode_s": None, "metrics": None}


def _record(suite: SweepSuite, run: RunSpec, temp: float, B: int, batch: int, prompts, ids, seeds, res: dict,
            max_new_tokens: int) -> dict:
    toks = res["tokens"]
    return {
        "suite": suite.name, "family": suite.family, "dtype": suite.dtype, "temperature": float(temp),
        "batch_size": B, "batch": batch, "max_new_tokens": max_new_tokens, "run": run.name, "kind": run.kind, "group": run.group,
        "levels": list(run.levels), "scheme": run.scheme, "thresholds": list(run.thresholds), "k": run.k,
        "prompt_ids": [p.id for p in prompts], "seeds": seeds, "prompt_tokens": [len(x) for x in ids],
        "row_tokens": [len(t) for t in toks], "new_tokens": sum(len(t) for t in toks),
        "tokens_sha1": [hashlib.sha1(json.dumps(t).encode()).hexdigest()[:16] for t in toks],
        "wall_s": res["wall_s"], "prefill_s": res["prefill_s"], "decode_s": res["decode_s"],
        "metrics": res["metrics"], "time": time.time(),
    }


def run_sweep(suites: list[SweepSuite], settings) -> list[dict]:
    """Run every sweep suite (``settings``: :class:`hsd_fast.bench.runner.Settings`); returns all
    records of ``WORK/sweep.jsonl``, those of an earlier, resumed run included."""
    from tqdm.auto import tqdm

    from .families import get_family
    from .runner import _load_jsonl, _rotate, for_temperature

    torch.set_num_threads(settings.threads)
    work = settings.work
    work.mkdir(parents=True, exist_ok=True)
    path = work / SWEEP_FILE
    records = _load_jsonl(path) if settings.resume else []
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # drop a line cut by an interruption
    done = {sweep_key(r) for r in records}
    N = settings.max_new_tokens
    for suite in suites:
        family = get_family(suite.family)
        prompts = sweep_prompts(suite)
        todo = [(t, B, b, rows, r) for t in suite.temperatures for B in suite.batch_sizes
                for b, rows in enumerate(sweep_rows(suite.n_prompts, B))
                for r in _rotate(for_temperature(list(suite.runs), t), b + suite.batch_sizes.index(B))
                if (suite.name, float(t), B, b, r.name) not in done]
        if not todo:
            continue
        gc.collect()
        settings.log(f"[bench] batch sweep: loading {family.description} in {suite.dtype}")
        models = family.load(getattr(torch, suite.dtype), torch.device(settings.device),
                             quantized_draft=any("@int8" in k for r in suite.runs for k in r.levels))
        execute = _SweepExecutor(models)
        if torch.device(settings.device).type == "cuda":  # no int8 kernel on CUDA (hsd_fast.quant): no int8 runs there
            todo = [x for x in todo if not any(k.endswith("@int8") for k in x[4].levels)]
        ids = [models.encode(p) for p in prompts]
        settings.log(f"[bench] {suite.name}: {len(todo)} batches (B in {list(suite.batch_sizes)}, {suite.n_prompts} prompts, "
                     f"{N} new tokens per row)")
        warm: set = set()
        bar = tqdm(todo, desc=suite.name, unit="batch", disable=not settings.progress, dynamic_ncols=True)
        with path.open("a") as fh:
            for temp, B, b, rows, run in bar:
                if (temp, B) not in warm:  # first calls at a new batch size allocate caches and kernels
                    warm.add((temp, B))
                    for r in for_temperature(list(suite.runs), temp):  # an auto run 3 times (hsd_fast.engine.plan)
                        for _ in range(3 if r.group == "auto" else 1):
                            execute(r, [ids[i][-WARMUP_PROMPT:] for i in rows], temp, list(range(B)),
                                    4 * WARMUP_TOKENS if r.group == "auto" else WARMUP_TOKENS)
                bar.set_postfix_str(f"T={temp:g} B={B} batch {b} {run.name}")
                seeds = [settings.seed + b * B + i for i in range(B)]
                res = execute(run, [ids[i] for i in rows], temp, seeds, N)
                rec = _record(suite, run, temp, B, b, [prompts[i] for i in rows], [ids[i] for i in rows], seeds, res, N)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                records.append(rec)
        models = execute = None
    return records


# ############################################################ command line (hsd-fast bench --batch-sweep)


def _batch_sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes: expected comma-separated ints, e.g. 1,2,4,8,16, got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"--batch-sizes: expected distinct ints >= 1, got {text!r}")
    return tuple(sorted(sizes))


def select_sweeps(args):
    """``(sweep suites, out, work, max_new_tokens)`` of the command line."""
    from pathlib import Path

    from . import _paths, _pick_suites, _positive, _temperatures

    if args.spec_bench_per_category is not None:
        raise ValueError("--spec-bench-per-category: the batch sweep runs HumanEval prompts only")
    if args.tiny:
        suites, out, tokens = tiny_sweeps(), Path("out/bench-tiny"), 8
    elif args.quick:
        suites, out, tokens = quick_sweeps(), Path("out/bench-quick"), 16
    else:
        suites, out, tokens = default_sweeps(), Path("docs"), 64
    suites = _pick_suites(suites, args.suites, "--batch-sweep")
    first = args.humaneval_first
    if first is not None and (isinstance(first, bool) or first < 0):
        raise ValueError(f"--humaneval-first: expected an int >= 0, got {first!r}")
    suites = [s.with_overrides(batch_sizes=_batch_sizes(args.batch_sizes), n_prompts=_positive("--humaneval", args.humaneval),
                               first_task=first, temperatures=_temperatures(args)) for s in suites]
    out, work = _paths(args, out)
    return suites, out, work, _positive("--max-new-tokens", args.max_new_tokens) or tokens


def run_cli(args) -> int:
    """``hsd-fast bench --batch-sweep``: run (or, with ``--report-only``, re-report) the sweep and put
    its section into ``OUT/benchmarks.md`` and ``OUT/bench.json`` (the rest of both is kept)."""
    import sys

    from ..cli import check_device, check_threads
    from .report import machine_info
    from .runner import Settings, _load_jsonl
    from .sweep_report import cost_curve, splice_section, summarize_sweep, sweep_section, update_bench_json

    suites, out, work, tokens = select_sweeps(args)
    check_threads(args.threads)
    check_device(args.device)
    settings = Settings(work=work, max_new_tokens=tokens, threads=args.threads, device=args.device, seed=args.seed,
                        resume=args.resume, progress=not args.no_progress,
                        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.report_only:
        records = _load_jsonl(work / SWEEP_FILE)
        if not records:
            raise ValueError(f"--report-only: no batch-sweep results in {work / SWEEP_FILE} to report")
    else:
        records = run_sweep(suites, settings)
    wanted = {(s.name, float(t), B) for s in suites for t in s.temperatures for B in s.batch_sizes}
    records = [r for r in records if (r["suite"], float(r["temperature"]), r["batch_size"]) in wanted]
    command = "hsd-fast bench" + "".join(f" {a}" for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "hsd-fast bench --batch-sweep"
    run_path = work / "sweep_run.json"  # the measuring run's machine and command: --report-only keeps them
    if args.report_only and run_path.exists():
        info = json.loads(run_path.read_text())
        machine, command = info["machine"], info["command"]
    else:
        machine = machine_info(args.threads, args.device)
        if not args.report_only:
            run_path.write_text(json.dumps({"machine": machine, "command": command}, indent=1))
    temps = sorted({float(t) for s in suites for t in s.temperatures})
    rows = summarize_sweep(records)
    sweep_settings = {"max_new_tokens": tokens, "threads": args.threads, "seed": args.seed, "device": args.device, "temperatures": temps}
    lines = sweep_section(rows, suites, out_dir=out, machine=machine, command=command, settings=sweep_settings)
    splice_section(out / "benchmarks.md", lines)
    curves = {f"{s}@{t:g}": cost_curve(rows, s, t) for s, t in dict.fromkeys((r["suite"], r["temperature"]) for r in rows)}
    per_batch = [[r["suite"], r["temperature"], r["batch_size"], r["batch"], r["run"], r["prompt_ids"], r["new_tokens"],
                  round(r["wall_s"], 4), None if r["decode_s"] is None else round(r["decode_s"], 4), r["tokens_sha1"]] for r in records]
    update_bench_json(out / "bench.json", {
        "machine": machine, "command": command, "settings": sweep_settings,
        "suites": [{"name": s.name, "family": s.family, "dtype": s.dtype, "first_task": s.first_task, "n_prompts": s.n_prompts,
                    "batch_sizes": list(s.batch_sizes), "temperatures": list(s.temperatures), "runs": [r.name for r in s.runs]}
                   for s in suites],
        "summary": rows, "cost_curves": curves,
        "per_batch_columns": ["suite", "temperature", "batch_size", "batch", "run", "prompts", "new_tokens", "wall_s", "decode_s",
                              "tokens_sha1"],
        "per_batch": per_batch})
    print(f"hsd-fast bench --batch-sweep: {len(records)} batches; wrote the Batch sweep section of {out / 'benchmarks.md'}, "
          f"{out / 'bench.json'} (batch_sweep) and {out / 'bench'}/sweep-*.png")
    return 0
