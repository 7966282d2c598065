"""``hsd-fast generate``: speculative / hierarchical generation from the command line.

Streams the generated text of a single prompt as the target accepts it, then prints the metrics
(tokens/s, tokens per target call, acceptance per level, calls and time per model).

Levels: ``--draft`` (repeatable, bottom-up) takes ``ngram`` / ``ngram:N`` (prompt lookup), a model
name of the ``hsd_fast.models`` registry or a local Hugging Face folder (``NAME@int8``: a weight-only
int8 copy), or ``exit:D`` (an early-exit view of the target: its first ``D`` layers + final norm + LM
head, sharing the target's KV cache; ``exit:D:trained`` reads it through the head that ``hsd-fast
train-exit`` trained and cached for that layer); ``--draft none`` decodes with the target alone
(autoregressive).  Default: ``smollm2-135m`` with an n-gram drafter.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_cli", "run"]


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="speculative / hierarchical generation (streams text, prints metrics)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", default="smollm2-135m", help="target model: registry name or local HF folder (default smollm2-135m)")
    p.add_argument("--draft", action="append", default=None, metavar="SPEC",
                   help="a draft level, bottom-up, repeatable: ngram, ngram:N, a model name/folder, NAME@int8, exit:D, exit:D:trained; "
                        "'none' = the target alone (default: ngram)")
    p.add_argument("--scheme", default="tokenwise",
                   help="verification scheme, one name or one per level comma-separated: tokenwise, block, hsd_capped, greedy")
    p.add_argument("--thresholds", default=None, help="T_0,...,T_{n-1} comma-separated, one int k (halving below), or 'auto' "
                                                      "(levels and thresholds chosen for the batch size from the decoder's own "
                                                      "measurements; the first call explores); default 4")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt (prompt b uses seed + b)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16, float64")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-eos", action="store_true", help="do not stop at the tokenizer's EOS")
    p.add_argument("--json", action="store_true", help="print the result and metrics as JSON instead of text")
    p.add_argument("--timing", action="store_true", help="time every level call and verification (with a device synchronisation around each on CUDA)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable: a batch)")
    p.set_defaults(func=run)


def _levels(args):
    drafts = args.draft or ["ngram"]
    if drafts == ["none"]:
        return [args.target]
    if "none" in drafts:
        raise ValueError("--draft: 'none' (the target alone) cannot be combined with other draft levels")
    levels = []
    for d in drafts:
        if d.startswith("exit:"):
            levels.append(parse_exit(d, args.target))
        else:
            levels.append(d)
    levels.append(args.target)
    return levels


def parse_exit(text: str, target):
    """``exit:D`` -> ``EarlyExit(target, D)``; ``exit:D:trained`` -> ``EarlyExit(target, D, head="trained")``
    (the newest cached head of ``hsd-fast train-exit``)."""
    from .engine import EarlyExit

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or parts[0] != "exit" or (len(parts) == 3 and parts[2] != "trained"):
            raise ValueError
        depth = int(parts[1])
    except ValueError:
        raise ValueError(f"--draft: bad early-exit spec {text!r}; expected exit:D or exit:D:trained") from None
    return EarlyExit(target, depth, head="trained" if len(parts) == 3 else None)


def _thresholds(text):
    if text is None or text == "auto":
        return text
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--thresholds: expected comma-separated ints or 'auto', got {text!r}") from None
    return vals[0] if len(vals) == 1 else tuple(vals)


def run(args) -> int:
    """Errors (ValueError / OSError) propagate to :func:`hsd_fast.cli.main`, which prints them as one line."""
    from .cli import check_device, check_threads

    # the cheap checks first: no model is loaded for a bad device or thread count
    check_threads(args.threads)
    check_device(args.device)
    import torch

    from .engine import SpeculativeDecoder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scheme = args.scheme.split(",") if "," in args.scheme else args.scheme
    dec = SpeculativeDecoder(
        _levels(args),
        scheme=scheme,
        thresholds=_thresholds(args.thresholds),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        device=device,
        dtype=args.dtype,
        eos_token_id=None if args.no_eos else "auto",
        timing=args.timing,
    )
    stream = len(args.prompt) == 1 and not args.json and dec.tokenizer is not None
    state = {"ids": [], "text": ""}

    def on_tokens(new):
        state["ids"].extend(new[0])
        # hold back a trailing replacement character: a multi-byte character may still be incomplete
        text = dec.tokenizer.decode(state["ids"]).rstrip("\ufffd")
        if text.startswith(state["text"]):
            sys.stdout.write(text[len(state["text"]):])
            sys.stdout.flush()
            state["text"] = text

    if not args.json:
        print(f"# {dec.describe()}", file=sys.stderr)
    if stream:
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
    try:
        res = dec.generate(args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed, on_tokens=on_tokens if stream else None)
    except (ValueError, OSError):
        if stream:  # end the streamed line before the error line
            sys.stdout.write("\n")
        raise
    if args.json:
        print(json.dumps({"tokens": res.tokens, "texts": res.texts, "finish_reasons": res.finish_reasons,
                          "metrics": res.metrics.as_dict()}, indent=2))
        return 0
    if stream:
        sys.stdout.write("\n")
    else:
        for b, prompt in enumerate(args.prompt):
            text = res.texts[b] if res.texts is not None else str(res.tokens[b])
            print(f"[{b}] {prompt}{text}")
    print(res.metrics.format())
    return 0
