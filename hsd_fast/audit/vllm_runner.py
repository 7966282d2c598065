"""vLLM's own speculative sampling for ``hsd-fast audit-engine``: run with vLLM's Python.

    python hsd_fast/audit/vllm_runner.py --json '{"target": PATH, ...}'
    python -m hsd_fast.audit.vllm_runner --json ...      (where hsd_fast and vllm import together)

The ``--json`` object: ``target`` (model folder), ``speculative_config`` (passed to ``vllm.LLM``
as is, e.g. ``{"method": "draft_model", "model": DRAFT, "num_speculative_tokens": 4}``; ``null``
for plain sampling), ``prompt_ids`` (token ids), ``allowed`` (ids), ``n`` (new tokens),
``seeds`` (one request per seed), ``temperature``, ``top_p``, and optionally ``dtype`` (default
``"float32"``), ``max_model_len`` (default 256).  All requests go to ONE ``LLM.generate`` call,
each with its own ``SamplingParams(temperature, top_p, seed, max_tokens=n, min_tokens=n,
allowed_token_ids, ignore_eos=True)``.

Output: one line ``HSD_AUDIT_RESULT {"tokens": [[...], ...], "seconds": ..., "spec": ...}`` on
stdout (everything vLLM logs goes to stderr or precedes it).  Only the standard library and vLLM are
imported, so the file runs in vLLM's environment without this project installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

RESULT_MARKER = "HSD_AUDIT_RESULT "


def run(spec: dict) -> dict:
    """Sample ``spec`` (module docstring) with vLLM; returns the result object."""
    from vllm import LLM, SamplingParams

    for key in ("target", "prompt_ids", "allowed", "n", "seeds"):
        if key not in spec:
            raise ValueError(f"--json: missing key {key!r}")
    kwargs = dict(model=spec["target"], tokenizer=spec.get("tokenizer", spec["target"]), enforce_eager=True, dtype=spec.get("dtype", "float32"),
                  max_model_len=int(spec.get("max_model_len", 256)), seed=0,
                  # bounded batch: with the default 256 concurrent sequences the CPU worker's float32
                  # logits buffers reached 21 GB and were killed for memory on a 23 GiB machine
                  max_num_seqs=int(spec.get("max_num_seqs", 16)))
    if spec.get("speculative_config"):
        kwargs["speculative_config"] = spec["speculative_config"]
    start = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - start
    top_p = spec.get("top_p")
    params = [
        SamplingParams(temperature=float(spec.get("temperature", 1.0)), top_p=1.0 if top_p is None else float(top_p), top_k=-1 if _old_top_k() else 0,
                       seed=int(s), max_tokens=int(spec["n"]), min_tokens=int(spec["n"]), allowed_token_ids=list(spec["allowed"]), ignore_eos=True)
        for s in spec["seeds"]
    ]
    prompts = [{"prompt_token_ids": list(spec["prompt_ids"])} for _ in spec["seeds"]]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
    gen_s = time.perf_counter() - t0
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    return {"tokens": tokens, "load_seconds": load_s, "generate_seconds": gen_s, "llm_kwargs": {k: v for k, v in kwargs.items()}}


def _old_top_k() -> bool:
    """Whether this vLLM spells "no top-k" as -1 (older releases) rather than 0."""
    import inspect

    from vllm import SamplingParams

    try:
        default = inspect.signature(SamplingParams.__init__).parameters["top_k"].default
    except (KeyError, ValueError, TypeError):
        return False
    return default == -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm_runner", description="vLLM speculative sampling for hsd-fast audit-engine (run with vLLM's Python)")
    parser.add_argument("--json", required=True, help="the run's spec as one JSON object (module docstring)")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.json)
    except json.JSONDecodeError as exc:
        print(f"vllm_runner: error: --json: not JSON ({exc})", file=sys.stderr)
        return 2
    if not isinstance(spec, dict):
        print("vllm_runner: error: --json: expected an object", file=sys.stderr)
        return 2
    try:
        result = run(spec)
    except ImportError as exc:
        print(f"vllm_runner: error: cannot import vllm ({exc})", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
