"""Benchmark: vLLM's speculative decoding with and without hsd_fast's verification kernels.

Run in the vLLM venv (.ci/vllm makes it)::

    python -m hsd_fast.vllm.bench                        # the docs/vllm.md table
    python -m hsd_fast.vllm.bench --configs ar,block --batches 1 --tokens 32

Each configuration runs in its own process (vLLM reads the plugin switch ``HSD_VLLM_VERIFY`` when it
starts): it loads the target (and draft) once, warms up with one short request, then for each batch
size ``B`` times one ``LLM.generate`` of ``B`` concurrent requests (the first ``B`` Spec-Bench
"coding" prompts shipped in hsd_fast/data, chat template not applied), ``--tokens`` new tokens each
(``ignore_eos``), temperature ``--temperature``, seeds 0..B-1.  tokens/s = ``B * tokens / wall
time`` of that call.  Acceptance is read from vLLM's own counters (``LLM.get_metrics``): accepted
draft tokens / draft tokens, and mean tokens per target step = 1 + accepted / drafts.

Configurations (``--configs``, comma separated):

* ``ar``: no speculation;
* ``draft``: ``draft_model``, vLLM's own rejection sampler, ``HSD_VLLM_VERIFY=vllm`` (the CPU fix of
  vLLM issue #55005 only; without it vLLM samples random requests with garbage temperatures);
* ``draft_unfixed``: ``draft_model``, vLLM untouched (plugin off), to show that bug;
* ``ngram``: ``ngram`` (prompt lookup 1..4 tokens), ``HSD_VLLM_VERIFY=vllm``;
* ``block``, ``tokenwise``, ``hsd_capped``: ``draft_model`` verified by hsd_fast's kernels.

Drafts are the draft model's argmax (vLLM's default ``draft_sample_method="greedy"``, so q is
one-hot) except in ``draft_prob`` and ``block_prob``, which sample them from the draft's
distribution (``"probabilistic"``) and are otherwise ``draft`` and ``block``.

Prints a markdown table on stdout (and writes the rows as JSON with ``--json PATH``).

``--step-cost`` instead times the verification step alone, in this process, without a model:
vLLM's ``rejection_sample`` against the plugin's for each scheme, on random float32 logits
[B * K, V] (B = 8, K = 4, V = 151936 by default; all requests random, unseeded), with and without
draft probabilities; the mean of 5 calls after one warm-up call, each including the clone of the
logits that ``rejection_sample`` may modify.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = Path.home() / ".cache" / "hsd" / "models"
CONFIGS = {
    # name: (speculative method or None, HSD_VLLM_VERIFY or None, draft_sample_method)
    "ar": (None, None, None),
    "draft": ("draft_model", "vllm", "greedy"),
    "draft_unfixed": ("draft_model", None, "greedy"),
    "ngram": ("ngram", "vllm", None),
    "block": ("draft_model", "block", "greedy"),
    "tokenwise": ("draft_model", "tokenwise", "greedy"),
    "hsd_capped": ("draft_model", "hsd_capped", "greedy"),
    "draft_prob": ("draft_model", "vllm", "probabilistic"),
    "block_prob": ("draft_model", "block", "probabilistic"),
}
LABELS = {
    "ar": "vLLM autoregressive",
    "draft": "vLLM draft_model, vLLM's verifier (CPU fix)",
    "draft_unfixed": "vLLM draft_model, vLLM's verifier (unpatched vLLM)",
    "ngram": "vLLM ngram, vLLM's verifier (CPU fix)",
    "block": "vLLM draft_model + hsd block",
    "tokenwise": "vLLM draft_model + hsd tokenwise",
    "hsd_capped": "vLLM draft_model + hsd hsd_capped",
    "draft_prob": "vLLM draft_model (probabilistic drafts), vLLM's verifier (CPU fix)",
    "block_prob": "vLLM draft_model (probabilistic drafts) + hsd block",
}
COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")


def _prompts(n: int) -> list[str]:
    from hsd_fast.prompts import spec_bench_prompts

    texts = [p.text for p in spec_bench_prompts(["coding"])]
    if n > len(texts):
        raise ValueError(f"batches: at most {len(texts)} concurrent requests (Spec-Bench coding prompts), got {n}")
    return texts[:n]


def _counters(llm) -> dict[str, float]:
    """vLLM's speculative-decoding counters, summed over engines (0 when absent)."""
    totals = {name: 0.0 for name in COUNTERS}
    for metric in llm.get_metrics():
        if metric.name in totals:
            totals[metric.name] += float(getattr(metric, "value", 0) or 0)
    return totals


def child(job: dict) -> list[dict]:
    """One configuration, all batch sizes, in this process; returns one row per batch size."""
    from vllm import LLM, SamplingParams

    method, _, sample = CONFIGS[job["config"]]
    spec = None
    if method == "draft_model":
        spec = {"method": "draft_model", "model": job["draft"], "num_speculative_tokens": job["k"], "draft_sample_method": sample}
    elif method == "ngram":
        spec = {"method": "ngram", "num_speculative_tokens": job["k"], "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    t0 = time.perf_counter()
    llm = LLM(
        model=job["target"], dtype=job["dtype"], enforce_eager=True, max_model_len=2048, seed=0,
        speculative_config=spec, disable_log_stats=False, max_num_seqs=max(job["batches"]),
    )
    load_s = time.perf_counter() - t0
    warm = SamplingParams(temperature=job["temperature"], max_tokens=8, seed=12345, ignore_eos=True)
    llm.generate(_prompts(1), [warm], use_tqdm=False)
    rows = []
    for b in job["batches"]:
        params = [SamplingParams(temperature=job["temperature"], max_tokens=job["tokens"], seed=i, ignore_eos=True) for i in range(b)]
        before = _counters(llm)
        t0 = time.perf_counter()
        outs = llm.generate(_prompts(b), params, use_tqdm=False)
        wall = time.perf_counter() - t0
        after = _counters(llm)
        drafts, drafted, accepted = (after[n] - before[n] for n in COUNTERS)
        produced = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append({
            "config": job["config"], "batch": b, "tokens": produced, "wall_s": wall, "tok_s": produced / wall,
            "acceptance": accepted / drafted if drafted else None,
            "tokens_per_step": 1 + accepted / drafts if drafts else None, "load_s": load_s,
        })
    return rows


def step_cost(batch: int, k: int, vocab: int, repeats: int = 5) -> str:
    """The ``--step-cost`` table (module docstring)."""
    from types import SimpleNamespace

    import torch
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler as rs

    from .sampler import make_rejection_sample

    current_platform.register_triton_kernel_overrides()  # vLLM's CPU kernels, as a worker does
    gen = torch.Generator().manual_seed(0)
    T = batch * k
    logits = torch.randn(T, vocab, generator=gen) * 3  # [T, V]
    drafts = logits.argmax(-1).to(torch.int32)  # [T]: mostly accepted ...
    drafts[1::3] = 5  # ... with some rejections
    bonus = torch.randint(0, vocab, (batch, 1), generator=gen)  # [B, 1]
    cu = (torch.arange(1, batch + 1) * k).to(torch.int32)  # [B]
    meta = SimpleNamespace(all_greedy=False, all_random=True, temperature=torch.ones(batch), generators={})
    q = torch.softmax(torch.randn(T, vocab, generator=gen), dim=-1)  # [T, V]
    fns = {"vLLM rejection_sample": rs.rejection_sample}
    fns.update({f"hsd {s}": make_rejection_sample(s) for s in ("tokenwise", "block", "hsd_capped")})
    lines = [f"B={batch}, K={k}, V={vocab}, torch threads {torch.get_num_threads()}", "",
             "| verifier | draft_probs None (ms) | draft_probs given (ms) |", "|---|---:|---:|"]
    for name, fn in fns.items():
        cells = []
        for dp in (None, q):
            fn(drafts, [k] * batch, k, cu, dp, logits.clone(), bonus, meta)
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn(drafts, [k] * batch, k, cu, dp, logits.clone(), bonus, meta)
            cells.append(f"{(time.perf_counter() - t0) / repeats * 1000:.0f}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def _table(rows: list[dict], args) -> str:
    lines = [
        f"Target {Path(args.target).name}, draft {Path(args.draft).name}, {args.dtype}, K={args.k}, "
        f"T={args.temperature}, {args.tokens} new tokens per request, enforce_eager; "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}.",
        "",
        "| configuration | B | tokens/s | acceptance (accepted / drafted) | tokens per target step |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = "—" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        tps = "—" if r["tokens_per_step"] is None else f"{r['tokens_per_step']:.2f}"
        lines.append(f"| {LABELS[r['config']]} | {r['batch']} | {r['tok_s']:.2f} | {acc} | {tps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hsd_fast.vllm.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--configs", default="ar,draft,ngram,block")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--step-cost", action="store_true", help="time the verification step alone (no model)")
    ap.add_argument("--vocab", type=int, default=151936, help="V for --step-cost")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print("ROWS " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.step_cost:
        print(step_cost(max(int(b) for b in args.batches.split(",")), args.k, args.vocab))
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    batches = [int(b) for b in args.batches.split(",")]
    if any(b < 1 for b in batches):
        raise ValueError(f"batches: every batch size must be >= 1, got {batches}")
    rows = []
    for config in configs:
        job = {"config": config, "target": args.target, "draft": args.draft, "dtype": args.dtype, "k": args.k,
               "tokens": args.tokens, "temperature": args.temperature, "batches": batches}
        env = dict(os.environ)
        env.pop("HSD_VLLM_VERIFY", None)
        if CONFIGS[config][1] is not None:
            env["HSD_VLLM_VERIFY"] = CONFIGS[config][1]
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        proc = subprocess.run([sys.executable, "-m", "hsd_fast.vllm.bench", "--child", json.dumps(job)], env=env, capture_output=True, text=True)
        found = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
        if proc.returncode != 0 or not found:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError(f"configuration {config!r} failed with exit code {proc.returncode}")
        new = json.loads(found[-1][len("ROWS ") :])
        rows.extend(new)
        for r in new:
            print(f"# {config} B={r['batch']}: {r['tok_s']:.2f} tok/s (load {r['load_s']:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(_table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
