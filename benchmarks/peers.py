"""Side by side with the peers on one machine and one prompt set (issue 14, part 4).

Cells at B = 1 (the first prompt) and B = 8 (the first 8 prompts as one batch of concurrent
requests), Qwen2.5-Coder 1.5B target in bf16, T = 1, exactly ``--new-tokens`` tokens per request (EOS
ignored), on the prompts and settings of ``python -m hsd_fast.vllm.bench`` (the Spec-Bench "coding"
prompts shipped in hsd_fast/data, no chat template, seeds 0..B-1):

* ours: the target alone, the 0.5B draft (int8, block verification, K = 4), prompt lookup (n-grams,
  token-wise, K = 4), and the 3-level stack n-gram -> 0.5B int8 -> target (default thresholds for K = 4);
* ours through ``hsd_fast.hf.generate`` on the same transformers objects (bf16 draft, block, K = 4);
* transformers: ``generate`` (batched with left padding at B = 8) and assisted generation (it
  refuses batches, so B = 8 runs the requests one after another);
* vLLM's cells are measured in their own environment (``python -m hsd_fast.vllm.bench``) and merged
  from ``--vllm-json``.

Reported per cell: new tokens per second of wall time (all rows together), target forward calls and
tokens per target call (ours: the engine's metrics; transformers: a counter on the target's forward),
and the acceptance rate where the engine reports it.  Every draw is seeded (ours per row;
transformers by ``torch.manual_seed`` before each call).  Writes ``OUT/peers.json`` and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DRAFT, TARGET = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


class CountingForward:
    """Counts a transformers model's forward calls (the target calls of its generate loops)."""

    def __init__(self, model):
        self.model, self.calls, self._orig = model, 0, model.forward

        def forward(*args, **kwargs):
            self.calls += 1
            return self._orig(*args, **kwargs)

        model.forward = forward

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n


def _row(engine: str, config: str, batch: int, new_tokens: int, wall: float, calls: int | None, acceptance: float | None = None) -> dict:
    return {
        "engine": engine, "config": config, "batch": batch, "new_tokens": new_tokens, "wall_s": round(wall, 3),
        "tok_s": new_tokens / wall, "target_calls": calls,
        "tokens_per_call": (new_tokens / calls if calls else None), "acceptance": acceptance,
    }


def run_ours(prompts: list[list[int]], new_tokens: int, batch: int, levels, label: str, **kw) -> dict:
    from hsd_fast.engine import SpeculativeDecoder

    dec = SpeculativeDecoder(levels, temperature=1.0, **kw)
    dec.generate([prompts[0]], max_new_tokens=4, seeds=[999])  # warm-up
    t0, n, calls, acc, drafted = time.perf_counter(), 0, 0, 0, 0
    for i in range(0, len(prompts), batch):
        res = dec.generate(prompts[i : i + batch], max_new_tokens=new_tokens, seeds=list(range(i, i + batch)))
        n += sum(map(len, res.tokens))
        calls += res.metrics.target_calls
        top = res.metrics.levels[-1]
        acc, drafted = acc + top.accepted, drafted + top.drafted
    return _row("hsd", label, batch, n, time.perf_counter() - t0, calls, acc / drafted if drafted else None)


def run_hf(target, counter, prompts, new_tokens: int, batch: int, pad: int, assistant=None, ours: bool = False) -> dict:
    from hsd_fast import hf

    kw = dict(max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=pad)
    t0, n, calls = time.perf_counter(), 0, 0
    counter.take()
    if ours:  # our engine drives the layers itself: its own metrics count the target calls
        acc = drafted = 0
        for i in range(0, len(prompts), batch):
            out = hf.generate(target, prompts[i : i + batch], assistant_model=assistant, scheme="block", thresholds=4, seeds=list(range(batch)), return_dict_in_generate=True, **kw)
            n += sum(map(len, out.tokens))
            calls += out.metrics.target_calls
            acc, drafted = acc + out.metrics.levels[-1].accepted, drafted + out.metrics.levels[-1].drafted
        label = "hf.generate (ours): 0.5B draft, block K=4"
        return _row("hsd", label, batch, n, time.perf_counter() - t0, calls, acc / drafted if drafted else None)
    sequential = assistant is not None  # transformers' assisted generation refuses batch > 1
    step = 1 if sequential else batch
    for i in range(0, len(prompts), step):
        rows = prompts[i : i + step]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        torch.manual_seed(i)
        out = target.generate(ids, attention_mask=mask, assistant_model=assistant, **kw)
        n += out[:, width:].numel()  # EOS ignored: every request runs to max_new_tokens
    calls = counter.take()
    label = "assisted: 0.5B draft (defaults)" + (", requests one by one" if sequential and batch > 1 else "") if assistant is not None else "generate"
    return _row("transformers", label, batch, n, time.perf_counter() - t0, calls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/peers"))
    ap.add_argument("--vllm-json", type=Path, default=None, help="rows measured by python -m hsd_fast.vllm.bench")
    ap.add_argument("--from-json", type=Path, default=None, help="re-print a previous OUT/peers.json (with --vllm-json) without measuring")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        rows = json.loads(args.from_json.read_text())["rows"]
        if args.vllm_json is not None:
            rows = [r for r in rows if r["engine"] != "vllm"] + vllm_rows(args.vllm_json)
        print(table(rows))
        return 0
    torch.set_num_threads(args.threads)
    from hsd_fast.models import load
    from hsd_fast.prompts import spec_bench_prompts

    target, tok = load(TARGET, dtype=torch.bfloat16)
    draft, _ = load(DRAFT, dtype=torch.bfloat16)
    texts = [p.text for p in spec_bench_prompts(["coding"])][:8]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    counter = CountingForward(target)
    rows = []
    for batch in (1, 8):
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[:batch]]
        rows.append(run_ours(prompts, args.new_tokens, batch, [target], "target alone", eos_token_id=None))
        rows.append(run_ours(prompts, args.new_tokens, batch, [f"{DRAFT}@int8", target], "0.5B int8 draft, block K=4", scheme="block", thresholds=4, eos_token_id=None, dtype=torch.bfloat16))
        rows.append(run_ours(prompts, args.new_tokens, batch, ["ngram", target], "n-gram prompt lookup, tokenwise K=4", scheme="tokenwise", thresholds=4, eos_token_id=None))
        rows.append(run_ours(prompts, args.new_tokens, batch, ["ngram", f"{DRAFT}@int8", target], "n-gram -> 0.5B int8 -> target (tokenwise, block), K=4", scheme=("tokenwise", "block"), thresholds=4, eos_token_id=None, dtype=torch.bfloat16))
        rows.append(run_hf(target, counter, prompts, args.new_tokens, batch, pad, assistant=draft, ours=True))
        rows.append(run_hf(target, counter, prompts, args.new_tokens, batch, pad))
        rows.append(run_hf(target, counter, prompts, args.new_tokens, batch, pad, assistant=draft))
        for r in rows[-7:]:
            print(json.dumps(r), flush=True)
    if args.vllm_json is not None:
        rows.extend(vllm_rows(args.vllm_json))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps({"prompts": "Spec-Bench coding 1..8", "new_tokens": args.new_tokens, "threads": args.threads, "rows": rows}, indent=1))
    print(table(rows))
    return 0


def vllm_rows(path: Path) -> list[dict]:
    """The rows of ``python -m hsd_fast.vllm.bench --json PATH`` in this script's format (vLLM reports
    tokens per target step from its own counters; it does not count target calls)."""
    from hsd_fast.vllm.bench import LABELS

    return [
        {"engine": "vllm", "config": LABELS.get(r["config"], r["config"]), "batch": r["batch"], "new_tokens": r["tokens"],
         "wall_s": round(r["wall_s"], 3), "tok_s": r["tok_s"], "target_calls": None, "tokens_per_call": r["tokens_per_step"],
         "acceptance": r["acceptance"]}
        for r in json.loads(path.read_text())
    ]


def table(rows: list[dict]) -> str:
    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"

    lines = ["| B | engine | configuration | tok/s | target calls | tokens / target call | acceptance |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["batch"], r["engine"] != "hsd", r["engine"])):
        lines.append(f"| {r['batch']} | {r['engine']} | {r['config']} | {f(r['tok_s'])} | {r.get('target_calls') or '—'} | {f(r.get('tokens_per_call'))} | {f(r.get('acceptance'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
