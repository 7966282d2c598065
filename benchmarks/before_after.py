"""The engine before and after a change, in one run: B=1 speed per configuration, same prompts, same
seeds, interleaved prompt by prompt, and whether the two emit the same tokens.

    python benchmarks/before_after.py --ref 72f3eed            # the commit before the issue-13 redesign

``--ref``'s ``hsd_fast`` is extracted with ``git archive`` into a temporary folder as the package
``hsd_fast_before`` (its imports are relative, so it runs beside the working tree's ``hsd_fast``; both
use the working tree's ``hsd_ref``).  Models are loaded once (``hsd_fast.models.load``, weights from the local cache)
and shared, except the int8 draft, which each engine quantizes with its own ``quant.quantize_int8``
(its fused kernels recognise only their own ``Int8Linear``); each engine gets its own decoders, so
its own caches.  Setting: Qwen2.5-Coder
1.5B bf16 target, 0.5B bf16 and int8 drafts, HumanEval tasks ``--first``.. (raw code completion),
T = 1, ``--max-new-tokens`` forced (no EOS), ``torch.set_num_threads(--threads)``, one warm-up call per
decoder.  tokens/s = new tokens / wall time of ``generate`` (prefill included); the ratio is after /
before of the pooled tokens/s.  Prints a markdown table (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import torch

CONFIGS = [  # (label, draft level keys, scheme, thresholds)
    ("autoregressive", (), "tokenwise", None),
    ("bf16 draft, tokenwise K=4", ("draft",), "tokenwise", 4),
    ("bf16 draft, block K=4", ("draft",), "block", 4),
    ("int8 draft, tokenwise K=4", ("draft@int8",), "tokenwise", 4),
    ("int8 draft, block K=4", ("draft@int8",), "block", 4),
    ("n-gram + int8 draft hierarchy, tokenwise (2, 4)", ("ngram", "draft@int8"), "tokenwise", (2, 4)),
]


def extract(ref: str, into: str) -> None:
    """``ref``'s hsd_fast as the package ``hsd_fast_before`` under ``into``."""
    data = subprocess.run(["git", "archive", ref, "hsd_fast"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "hsd_fast"), os.path.join(into, "hsd_fast_before"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the git commit of the engine before")
    p.add_argument("--first", type=int, default=100, help="first HumanEval task (default 100)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=None, help="comma-separated indices into the configuration list (default all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="hsd-before-")
    extract(args.ref, tmp)
    sys.path.insert(0, tmp)
    before = importlib.import_module("hsd_fast_before")
    import hsd_fast
    from hsd_fast import models as registry
    from hsd_fast.prompts import humaneval_prompts
    import hsd_fast.quant  # noqa: F401  (pkg.quant below)
    importlib.import_module("hsd_fast_before.quant")

    target, tok = registry.load("qwen2.5-coder-1.5b", dtype=torch.bfloat16)
    draft, _ = registry.load("qwen2.5-coder-0.5b", dtype=torch.bfloat16)
    # each engine quantizes its own int8 copy: its kernels recognise only its own Int8Linear class
    levels = {
        name: {"draft": draft, "draft@int8": pkg.quant.quantize_int8(registry.load("qwen2.5-coder-0.5b", dtype=torch.bfloat16)[0]), "ngram": "ngram"}
        for name, pkg in (("before", before), ("after", hsd_fast))
    }
    prompts = humaneval_prompts()[args.first : args.first + args.prompts]
    ids = [tok(pr.text, add_special_tokens=False)["input_ids"] for pr in prompts]
    picked = CONFIGS if args.configs is None else [CONFIGS[int(i)] for i in args.configs.split(",")]
    rows = []
    for label, keys, scheme, th in picked:
        decs = {}
        for name, pkg in (("before", before), ("after", hsd_fast)):
            dec = pkg.SpeculativeDecoder([*(levels[name][k] for k in keys), target], scheme=scheme, thresholds=th, eos_token_id=None, tokenizer=tok)
            dec.generate([ids[0][:16]], max_new_tokens=8, seeds=[0])  # warm-up
            decs[name] = dec
        wall = {"before": 0.0, "after": 0.0}
        tokens = {"before": [], "after": []}
        for j, x in enumerate(ids):
            order = ("before", "after") if j % 2 == 0 else ("after", "before")
            for name in order:
                t0 = time.perf_counter()
                res = decs[name].generate([x], max_new_tokens=args.max_new_tokens, seeds=[j])
                wall[name] += time.perf_counter() - t0
                tokens[name].append(res.tokens[0])
        n = sum(map(len, tokens["after"]))
        tps = {k: sum(map(len, tokens[k])) / wall[k] for k in wall}
        rows.append((label, tps["before"], tps["after"], tps["after"] / tps["before"], tokens["before"] == tokens["after"], n))
        print(f"{label}: before {tps['before']:.2f} tok/s, after {tps['after']:.2f} tok/s, ratio {rows[-1][3]:.3f}, same tokens {rows[-1][4]}", flush=True)
    lines = [
        f"Engine before ({args.ref}) and after, B=1, Qwen2.5-Coder 1.5B bf16 target, HumanEval {args.first}..{args.first + args.prompts - 1}, "
        f"T=1, {args.max_new_tokens} tokens forced, {args.threads} threads, interleaved per prompt:",
        "",
        "| configuration | before tok/s | after tok/s | after / before | same tokens |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.3f} | {'yes' if r[4] else 'no'} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
