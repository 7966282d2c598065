"""Same-run comparisons for issues 15 and 16: adaptive draft length against fixed lengths, and
trained early exits (self-speculation, HiSpec's three levels) against their baselines.

    python benchmarks/hierarchies.py --set adaptive     # Qwen 0.5B int8 -> 1.5B, 6 HumanEval prompts
    python benchmarks/hierarchies.py --set exits        # the 1.5B's trained L14 exit (hsd-fast train-exit)
    python benchmarks/hierarchies.py --set multidraft   # N drafts per row (rrs) against one
    python benchmarks/hierarchies.py --set adaptive --prompts 2 --max-new-tokens 32   # a smoke run

Common settings: Qwen2.5-Coder 1.5B bf16 target, B = 1, T = 1 with no top-k/top-p, EOS ends a row,
at most ``--max-new-tokens``, seed = prompt index; the configurations of a set run interleaved
prompt by prompt in one process after one warm-up call each, so every ratio is measured in the same
run.  Different configurations draw different samples (their layouts of uniforms differ); every
one samples the target's law.

``--set adaptive`` (block verification, int8 0.5B draft): the target alone; fixed K = 3, 4, 6;
``draft_stop=ConfidenceStop(0.4)`` (transformers' rule) with at most 8 and at most 12 tokens;
``draft_stop=LearnedConfidenceStop(0.4)`` with at most 8.  Greedy decoding is not run: at
temperature 0 the engine's draft rows are point masses, so a confidence rule never stops.

``--set exits`` (block verification at every level): the target alone; the bf16 0.5B draft, K = 4; self-speculation ``exit:14:trained -> target`` with K = 1 and K = 3; HiSpec
``0.5B -> exit:14:trained -> target`` with thresholds (1, 1) (the latency model's choice in
docs/early-exit.md) and (2, 4).

``--set multidraft`` (int8 0.5B draft): the target alone; one draft, token-wise and block, K = 4;
``rrs`` with 2 drafts of K = 4; ``rrs_without_replacement`` with 2 drafts of K = 4 and 3 of K = 3
(``n_drafts=N``: the N draft rows of a row are scored by the target in one call).

Reported per configuration: tokens/s (new tokens / wall time of ``generate``, prefill included,
pooled over prompts), the ratios to the target alone and to the set's reference (the best fixed K;
the 0.5B draft alone at K = 4; the best single draft), target calls, tokens per target call, mean draft length per round at the top
edge and its acceptance (accepted / drafted).  Prints a markdown table (and writes it, with the
raw rows as JSON, to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

TARGET, DRAFT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"


def adaptive_configs(target):
    """(label, levels below the target, thresholds, draft_stop) of ``--set adaptive``."""
    from hsd_fast.engine.stopping import ConfidenceStop, LearnedConfidenceStop
    from hsd_fast.models import load
    from hsd_fast.quant import quantize_int8

    low = [quantize_int8(load(DRAFT, dtype=torch.bfloat16)[0])]  # the bench's draft@int8
    out = [("target alone", [], None, None)] + [(f"fixed K={k}", low, k, None) for k in (3, 4, 6)]
    out += [("confidence < 0.4, at most 8", low, 8, ConfidenceStop(0.4)), ("confidence < 0.4, at most 12", low, 12, ConfidenceStop(0.4)),
            ("learned confidence (start 0.4), at most 8", low, 8, LearnedConfidenceStop(0.4))]
    return out


def exit_configs(target):
    """(label, levels below the target, thresholds, draft_stop) of ``--set exits``."""
    from hsd_fast.engine import EarlyExit
    from hsd_fast.models import load

    draft = load(DRAFT, dtype=torch.bfloat16)[0]
    ex = EarlyExit(target, 14, head="trained")
    return [
        ("target alone", [], None, None),
        ("0.5B draft, K=4", [draft], 4, None),
        ("self-speculation: exit:14:trained, K=1", [ex], 1, None),
        ("self-speculation: exit:14:trained, K=3", [ex], 3, None),
        ("HiSpec: 0.5B -> exit:14:trained, T=(1, 1)", [draft, ex], (1, 1), None),
        ("HiSpec: 0.5B -> exit:14:trained, T=(2, 4)", [draft, ex], (2, 4), None),
    ]


def multidraft_configs(target):
    """(label, levels below the target, thresholds, extra decoder arguments) of ``--set multidraft``."""
    from hsd_fast.models import load
    from hsd_fast.quant import quantize_int8

    low = [quantize_int8(load(DRAFT, dtype=torch.bfloat16)[0])]
    return [
        ("target alone", [], None, None),
        ("single draft, tokenwise K=4", low, 4, {"scheme": "tokenwise"}),
        ("single draft, block K=4", low, 4, None),
        ("rrs, 2 drafts, K=4", low, 4, {"scheme": "rrs", "n_drafts": 2}),
        ("rrs without replacement, 2 drafts, K=4", low, 4, {"scheme": "rrs_without_replacement", "n_drafts": 2}),
        ("rrs without replacement, 3 drafts, K=3", low, 3, {"scheme": "rrs_without_replacement", "n_drafts": 3}),
    ]


SETS = {"adaptive": (adaptive_configs, "fixed"), "exits": (exit_configs, "0.5B draft, K=4"), "multidraft": (multidraft_configs, "single draft")}


def main(argv=None) -> int:
    from hsd_fast.engine import SpeculativeDecoder
    from hsd_fast.models import load
    from hsd_fast.prompts import humaneval_prompts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=sorted(SETS), required=True, help="which comparison")
    p.add_argument("--prompts", type=int, default=6, help="HumanEval prompts, from the first (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    for name in ("prompts", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    torch.set_num_threads(args.threads)
    target, tok = load(TARGET, dtype=torch.bfloat16)  # every configuration shares the loaded weights
    prompts = [tok(pr.text, add_special_tokens=False)["input_ids"] for pr in humaneval_prompts(args.prompts)]
    eos = [i for i in (tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")) if isinstance(i, int) and i >= 0]
    make, reference = SETS[args.set]
    decs = {}
    for label, low, k, extra in make(target):
        kw = {"scheme": "block", **(extra if isinstance(extra, dict) else {"draft_stop": extra})}
        decs[label] = SpeculativeDecoder([*low, target], thresholds=k, temperature=1.0, dtype=torch.bfloat16, eos_token_id=eos, **kw)
        decs[label].generate([prompts[0]], max_new_tokens=4, seeds=[999])  # warm-up
    acc = {label: dict(tokens=0, wall=0.0, calls=0, rounds=0, drafted=0, accepted=0) for label in decs}
    for i, prompt in enumerate(prompts):
        for label, dec in decs.items():
            t0 = time.perf_counter()
            res = dec.generate([prompt], max_new_tokens=args.max_new_tokens, seeds=[i])
            a, top = acc[label], res.metrics.levels[-1]
            a["wall"] += time.perf_counter() - t0
            a["tokens"] += len(res.tokens[0])
            a["calls"] += res.metrics.target_calls
            a["rounds"] += top.rounds
            a["drafted"] += top.drafted
            a["accepted"] += top.accepted
        print(f"# prompt {i + 1}/{len(prompts)} done", flush=True)
    rows = [{"config": label, **a, "tok_s": a["tokens"] / a["wall"]} for label, a in acc.items()]
    ref = max(r["tok_s"] for r in rows if r["config"].startswith(reference))
    ar = next(r["tok_s"] for r in rows if r["config"] == "target alone")
    lines = [f"--set {args.set}: Qwen2.5-Coder 1.5B bf16 target, block, B = 1, T = 1, {len(prompts)} HumanEval prompts, "
             f"<= {args.max_new_tokens} new tokens (EOS ends a row); {platform.processor() or platform.machine()}, "
             f"{args.threads} threads, torch {torch.__version__}", "",
             f"| configuration | tokens/s | / target alone | / {dict(adaptive='best fixed K', multidraft='best single draft').get(args.set, reference)} | target calls | "
             "tokens / target call | mean draft length | acceptance |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        drafted = f"{r['drafted'] / r['rounds']:.2f} | {r['accepted'] / max(r['drafted'], 1):.3f}" if r["drafted"] else "— | —"
        lines.append(f"| {r['config']} | {r['tok_s']:.2f} | {r['tok_s'] / ar:.3f} | {r['tok_s'] / ref:.3f} | {r['calls']} | "
                     f"{r['tokens'] / r['calls']:.2f} | {drafted} |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.set}.md").write_text(table + "\n")
        (args.out / f"{args.set}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
