"""``hsd-fast train-exit MODEL --layer D [--head linear|block] [--tokens N] ...``; also ``--list`` and
``--verify`` (re-hash the model's cached heads).  Errors are reported by :func:`hsd_fast.cli.main`.

``--eval-prompts N`` measures the untrained and the trained exit after training, teacher-forced on
the first ``N`` HumanEval prompts and ``N`` Spec-Bench prompts (the first ``ceil(N / 13)`` of each of
its 13 categories, cut to ``N``; chat template for those), each followed by ``--eval-new-tokens``
tokens that the full model samples at T = 1 (seeded): the text the exit meets while decoding.
"""

from __future__ import annotations

import json
import math
import sys

__all__ = ["add_cli", "eval_rows"]


def eval_rows(model, tok, n: int, new_tokens: int, seed: int = 0) -> dict[str, list[list[int]]]:
    """``{"humaneval": rows, "spec_bench": rows}``: prompt ids + the model's own continuation (module doc)."""
    from ..engine import SpeculativeDecoder
    from ..prompts import SPEC_BENCH_CATEGORIES, humaneval_prompts, spec_bench_prompts

    def encode(p):
        if p.source != "humaneval" and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": p.text}], tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
            return [int(x) for x in ids]
        return [int(x) for x in tok(p.text, add_special_tokens=False)["input_ids"]]

    sets = {"humaneval": humaneval_prompts(n),
            "spec_bench": spec_bench_prompts(per_category=math.ceil(n / len(SPEC_BENCH_CATEGORIES)))[:n]}
    out = {}
    for name, prompts in sets.items():
        ids = [encode(p) for p in prompts]
        if new_tokens > 0:
            dec = SpeculativeDecoder([model], temperature=1.0, eos_token_id=None)
            res = dec.generate(ids, max_new_tokens=new_tokens, seeds=[seed + i for i in range(len(ids))])
            ids = [a + b for a, b in zip(ids, res.tokens)]
        out[name] = ids
    return out


def _run(args) -> int:
    from ..cli import check_threads

    check_threads(args.threads)
    import torch

    from ..models import load
    from .store import list_heads, load_head, verify_heads
    from .train import TrainConfig, train_exit

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"--dtype: expected float32, bfloat16, float16 or float64, got {args.dtype!r}")
    model, tok = load(args.model, dtype=dtype, cache_dir=args.cache_dir)
    if args.list or args.verify:
        found = verify_heads(model, cache_dir=args.cache_dir) if args.verify else [f for f, _ in list_heads(model, cache_dir=args.cache_dir)]
        for folder in found:
            print(f"{folder}{': all files match their manifest' if args.verify else ''}")
        if not found:
            print(f"no trained exit heads for {args.model}")
        return 0
    if args.layer is None:
        raise ValueError("--layer: required to train (or pass --list / --verify)")
    cfg = TrainConfig(layer=args.layer, head=args.head, tokens=args.tokens, top_k=args.top_k, epochs=args.epochs,
                      lr=args.lr, batch=args.batch, seed=args.seed, seq_len=args.seq_len)
    folder = train_exit(model, tok, cfg, cache_dir=args.cache_dir, progress=not args.quiet, stop_after=args.stop_after)
    print(folder)
    if args.eval_prompts and (folder / "head.json").is_file():
        from .evaluate import exit_agreement

        head = load_head(folder, model, args.layer)
        rows = eval_rows(model, tok, args.eval_prompts, args.eval_new_tokens, args.seed)
        report = {name: exit_agreement(model, args.layer, r, {"untrained": None, "trained": head}) for name, r in rows.items()}
        print(json.dumps({"model": args.model, "layer": args.layer, "head": args.head, "dtype": args.dtype, **report}, indent=1))
    sys.stdout.flush()
    return 0


def add_cli(subparsers) -> None:
    """Register ``train-exit``."""
    p = subparsers.add_parser("train-exit", help="train an early-exit head by self-distillation (docs/early-exit.md)",
                              description="Self-distil MODEL's final distribution onto a head at layer D, trained on "
                                          "Python standard-library sources; cache it beside the model.")
    p.add_argument("model", help="a registered model name (hsd-fast models list) or a local HF folder")
    p.add_argument("--layer", type=int, default=None, help="exit depth D (1 .. layers-1)")
    p.add_argument("--head", default="linear", choices=["linear", "block"], help="head kind (default linear)")
    p.add_argument("--tokens", type=int, default=20_000, help="training tokens (default 20000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=64, help="teacher ids kept per position (the KL's top-k + tail cells)")
    p.add_argument("--batch", type=int, default=256, help="positions per optimiser step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16", help="the teacher's dtype (default bfloat16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $HSD_CACHE or ~/.cache/hsd)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many optimiser steps in all (resume by rerunning)")
    p.add_argument("--eval-prompts", type=int, default=0, help="after training: measure on N HumanEval + N Spec-Bench prompts")
    p.add_argument("--eval-new-tokens", type=int, default=64, help="model continuation tokens per evaluation prompt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list MODEL's cached heads")
    p.add_argument("--verify", action="store_true", help="re-hash every file of MODEL's cached heads")
    p.set_defaults(func=_run)
