"""The measured effect of ``SpeculativeDecoder(compile=True)``: the same decodes with eager and with
compiled layers, in one process, same prompts and seeds, interleaved prompt by prompt.

    python benchmarks/compile_effect.py                 # SmolLM2 and the Qwen pair, B = 1 and 8
    python benchmarks/compile_effect.py --quick         # SmolLM2 only, 2 prompts

Configurations (bf16, HumanEval tasks ``--first``.., T = 1, ``--max-new-tokens`` forced, no EOS):
SmolLM2-135M autoregressive and with the n-gram drafter (tokenwise K=4) at B = 1 and 8; Qwen2.5-Coder
1.5B autoregressive and with the int8 0.5B draft (block K=4) at B = 1 and 8.  The compiled decoders
are warmed up first (their first calls compile; the seconds are reported apart).  tokens/s = new
tokens / wall time of ``generate`` (prefill included), pooled over the prompts; the ratio is
compiled / eager.  Prints a markdown table (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import time

import torch

CONFIGS = [  # (family, label, level keys bottom-up before the target, scheme, K, batch size)
    ("smollm2", "autoregressive", (), "tokenwise", None, 1),
    ("smollm2", "n-gram, tokenwise K=4", ("ngram",), "tokenwise", 4, 1),
    ("smollm2", "autoregressive", (), "tokenwise", None, 8),
    ("qwen", "autoregressive", (), "tokenwise", None, 1),
    ("qwen", "int8 draft, block K=4", ("draft@int8",), "block", 4, 1),
    ("qwen", "autoregressive", (), "tokenwise", None, 8),
]


def main(argv=None) -> int:
    from hsd_fast.bench.families import get_family
    from hsd_fast.engine import SpeculativeDecoder
    from hsd_fast.prompts import humaneval_prompts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--first", type=int, default=100, help="first HumanEval task (default 100)")
    p.add_argument("--prompts", type=int, default=8, help="prompts (rows) per configuration (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="SmolLM2 only, 2 prompts")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_prompts = 2 if args.quick else args.prompts
    prompts = humaneval_prompts()[args.first : args.first + n_prompts]
    lines = ["| model | configuration | B | eager tok/s | compiled tok/s | compiled / eager | compile s (first calls) | same tokens |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for fam_name in dict.fromkeys(c[0] for c in CONFIGS):
        if args.quick and fam_name != "smollm2":
            continue
        family = get_family(fam_name)
        models = family.load(torch.bfloat16, torch.device("cpu"), quantized_draft=True)
        ids = [models.encode(p) for p in prompts]
        for fam, label, keys, scheme, k, B in CONFIGS:
            if fam != fam_name:
                continue
            batches = [ids[i : i + B] for i in range(0, len(ids), B)]
            decs, compile_s = {}, 0.0
            for comp in (False, True):
                decs[comp] = SpeculativeDecoder([models.level(x) for x in (*keys, "target")], scheme=scheme, thresholds=k,
                                                tokenizer=models.tokenizer, eos_token_id=None, compile=comp)
                t0 = time.perf_counter()
                decs[comp].generate([x[-16:] for x in batches[0]], max_new_tokens=4, seeds=list(range(len(batches[0]))))
                if comp:
                    compile_s = time.perf_counter() - t0
            wall, toks, same = {False: 0.0, True: 0.0}, {False: 0, True: 0}, True
            for b, rows in enumerate(batches):
                seeds = [100 * b + i for i in range(len(rows))]
                out = {}
                for comp in ((False, True) if b % 2 == 0 else (True, False)):
                    t0 = time.perf_counter()
                    res = decs[comp].generate(rows, max_new_tokens=args.max_new_tokens, seeds=seeds)
                    wall[comp] += time.perf_counter() - t0
                    toks[comp] += sum(len(t) for t in res.tokens)
                    out[comp] = res.tokens
                same &= out[False] == out[True]
            e, c = toks[False] / wall[False], toks[True] / wall[True]
            lines.append(f"| {fam_name} | {label} | {B} | {e:.2f} | {c:.2f} | {c / e:.3f}x | {compile_s:.0f} | {'yes' if same else 'no'} |")
            print(lines[-1], flush=True)
        models = None
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
