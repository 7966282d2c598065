"""Integration: a real ``vllm.LLM`` (CPU, V1 model runner) on SmolLM2-135M drafting for itself, with
the plugin loaded through its ``vllm.general_plugins`` entry point in vLLM's own worker process.

Each run is a subprocess (tests/vllm/llm_job.py) so that the plugin reads its switch afresh:

* baseline: no speculation, greedy;
* block: ``draft_model`` (greedy drafts, so ``draft_probs`` is ``None``), ``HSD_VLLM_VERIFY=block``,
  one batch mixing greedy, seeded and unseeded random requests (one with top-k), then the same
  seeded request alone, twice;
* capped: ``draft_sample_method="probabilistic"`` (vLLM passes the draft distributions),
  ``HSD_VLLM_VERIFY=hsd_capped``, random requests only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="tests/vllm need vLLM (run .ci/vllm, which makes its own venv)")

MODEL = Path(os.environ.get("HSD_VLLM_TEST_MODEL", Path.home() / ".cache/hsd/models/smollm2-135m"))
JOB = Path(__file__).with_name("llm_job.py")
GREEDY = ["def fibonacci(n):", "The capital of France is", "import numpy as np\n"]
SEEDED = ["Once upon a time", {"temperature": 1.0, "seed": 1234, "max_tokens": 32, "ignore_eos": True}]
MAX_TOKENS = 32

if not (MODEL / "config.json").is_file():
    pytest.skip(f"no model folder at {MODEL} (set HSD_VLLM_TEST_MODEL to a HF safetensors folder)", allow_module_level=True)
if not any(ep.value == "hsd_fast.vllm:register" for ep in entry_points(group="vllm.general_plugins")):
    pytest.skip("hsd's vllm.general_plugins entry point is not installed here (pip install -e '.[vllm]')", allow_module_level=True)


def _run(spec: dict, verify: str | None) -> dict:
    env = dict(os.environ)
    env.pop("HSD_VLLM_VERIFY", None)
    if verify is not None:
        env["HSD_VLLM_VERIFY"] = verify
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc(worker_stats) pickles a function
    proc = subprocess.run([sys.executable, str(JOB), json.dumps(spec)], env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"vLLM run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _llm(**extra) -> dict:
    return dict(
        model=str(MODEL), dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
        enable_prefix_caching=False, max_num_seqs=8, **extra,
    )


def _greedy_requests() -> list:
    return [[p, {"temperature": 0.0, "max_tokens": MAX_TOKENS, "ignore_eos": True}] for p in GREEDY]


@pytest.fixture(scope="module")
def baseline() -> dict:
    return _run({"llm": _llm(), "batches": [_greedy_requests()]}, verify=None)


@pytest.fixture(scope="module")
def block() -> dict:
    spec = {"method": "draft_model", "model": str(MODEL), "num_speculative_tokens": 3}
    mixed = _greedy_requests() + [
        SEEDED,
        ["The quick brown fox", {"temperature": 1.0, "max_tokens": MAX_TOKENS, "ignore_eos": True}],
        ["In 1492,", {"temperature": 0.7, "top_k": 20, "seed": 99, "max_tokens": MAX_TOKENS, "ignore_eos": True}],
    ]
    return _run({"llm": _llm(speculative_config=spec), "batches": [mixed, [SEEDED], [SEEDED]], "stats": True}, verify="block")


@pytest.fixture(scope="module")
def capped() -> dict:
    spec = {"method": "draft_model", "model": str(MODEL), "num_speculative_tokens": 3, "draft_sample_method": "probabilistic"}
    batch = [[p, {"temperature": 1.0, "seed": i, "max_tokens": MAX_TOKENS, "ignore_eos": True}] for i, p in enumerate(GREEDY)]
    return _run({"llm": _llm(speculative_config=spec), "batches": [batch], "stats": True}, verify="hsd_capped")


def test_block_plugin_verified_the_random_requests(block):
    (stats,) = block["stats"]  # one worker
    assert stats["scheme"] == "block"
    assert stats["calls"] > 0
    assert stats["rows"] > 0 and stats["drafted"] > 0  # random rows went through hsd_fast.kernels.verify
    assert stats["greedy_rows"] > 0  # greedy rows went through vLLM's greedy kernel
    assert all(len(t) == MAX_TOKENS for t in block["tokens"][0])


def test_block_greedy_output_equals_plain_decoding(block, baseline):
    assert block["tokens"][0][: len(GREEDY)] == baseline["tokens"][0]


def test_seeded_request_is_reproducible_with_the_plugin(block):
    # the same seeded request alone, twice: the default generator has moved on in between, so equal
    # outputs mean every draw came from the request's own generator
    assert block["tokens"][1] == block["tokens"][2]
    assert len(block["tokens"][1][0]) == MAX_TOKENS


def test_probabilistic_drafts_reach_the_kernel_with_their_distributions(capped):
    (stats,) = capped["stats"]
    assert stats["scheme"] == "hsd_capped" and stats["greedy_rows"] == 0 and stats["rows"] > 0
    # the draft is the target itself, so q equals p up to rounding and nearly every draft token is
    # accepted; with q treated as one-hot (greedy drafts at T=1) SmolLM2 accepts about 1 in 4
    assert stats["accepted"] / stats["drafted"] > 0.9
