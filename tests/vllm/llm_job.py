"""One vLLM run for tests/vllm/test_llm.py, in its own process (so each run loads the plugin afresh
with its own HSD_VLLM_VERIFY): ``python tests/vllm/llm_job.py JSON`` where JSON is
``{"llm": {LLM kwargs}, "batches": [[[prompt, {SamplingParams kwargs}], ...], ...], "stats": bool}``:
each batch is one ``LLM.generate`` call, in order.

Prints one line ``RESULT {"tokens": [[[ids...] per request] per batch], "stats": [per-worker
hsd_fast.vllm stats] or null}`` on stdout.  The ``__main__`` guard is required: vLLM spawns its engine process.
"""

from __future__ import annotations

import json
import sys


def main(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(**spec["llm"])
    tokens = []
    for batch in spec["batches"]:
        prompts = [p for p, _ in batch]
        params = [SamplingParams(**kw) for _, kw in batch]
        outs = llm.generate(prompts, params, use_tqdm=False)
        tokens.append([list(o.outputs[0].token_ids) for o in outs])
    stats = None
    if spec.get("stats"):
        from hsd_fast.vllm.sampler import worker_stats

        stats = llm.collective_rpc(worker_stats)  # needs VLLM_ALLOW_INSECURE_SERIALIZATION=1
    return {"tokens": tokens, "stats": stats}


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
