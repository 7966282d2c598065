"""GPU tests of hsd_fast.engine (skipped without CUDA).

The same oracles as tests/fast/test_engine.py, on the CUDA device: plain greedy decoding of the HF
model, batch invariance, and draw-for-draw agreement of a CUDA run with a CPU run (float64 tiny
models: the uniforms are identical by construction, so the tokens differ only if a uniform falls
within rounding distance of a decision boundary, probability ~1e-13 per decision).  A bf16 smoke run
on SmolLM2-135M checks that the real-model path works and reports its metrics.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hsd_fast.engine import EarlyExit, SpeculativeDecoder
from hsd_fast.tiny import tiny_pair
from tests.helpers import plain_greedy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F64 = torch.float64
PROMPTS = ["hello world, hello wor", "abc", "the quick brown fox jumps over the lazy dog; the quick"]


@pytest.fixture(scope="module")
def models():
    draft, target, tok = tiny_pair(0, target_layers=4, draft_layers=4, noise=0.05, tokenizer="chars", dtype=F64)
    return draft, target, tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_gpu_greedy_matches_plain_greedy(models):
    draft, target, tok = models
    d, t = copy.deepcopy(draft).cuda(), copy.deepcopy(target).cuda()
    for levels in ([d, t], ["ngram", EarlyExit(t, 2), t]):
        res = SpeculativeDecoder(levels, temperature=0, tokenizer=tok, eos_token_id=None).generate(PROMPTS, max_new_tokens=16)
        for b, p in enumerate(PROMPTS):
            assert res.tokens[b] == plain_greedy(t, _ids(tok, p), 16)


def test_gpu_sampling_equals_cpu_sampling_and_is_batch_invariant(models):
    draft, target, tok = models
    kw = dict(scheme=["tokenwise", "block"], thresholds=(2, 3), tokenizer=tok, eos_token_id=None)
    cpu = SpeculativeDecoder([draft, EarlyExit(target, 2), target], **kw).generate(PROMPTS, max_new_tokens=14, seeds=[1, 2, 3]).tokens
    d, t = copy.deepcopy(draft).cuda(), copy.deepcopy(target).cuda()
    dec = SpeculativeDecoder([d, EarlyExit(t, 2), t], **kw)
    gpu = dec.generate(PROMPTS, max_new_tokens=14, seeds=[1, 2, 3]).tokens
    assert gpu == cpu
    for b in range(3):
        assert dec.generate([PROMPTS[b]], max_new_tokens=14, seeds=[b + 1]).tokens[0] == gpu[b]


def test_gpu_smollm2_bf16_smoke():
    from hsd_fast import models as registry

    try:
        target, tok = registry.load("smollm2-135m", dtype=torch.bfloat16, device="cuda")
    except (registry.ModelFetchError, OSError) as exc:
        pytest.skip(f"smollm2-135m cannot be loaded: {exc}")
    dec = SpeculativeDecoder(["ngram", EarlyExit(target, 10), target], thresholds=(2, 4), tokenizer=tok)
    res = dec.generate(["Once upon a time, there was a little"] * 4, max_new_tokens=32, seeds=[0, 1, 2, 3])
    assert all(1 <= len(t) <= 32 for t in res.tokens)
    assert res.metrics.tokens_per_target_call >= 1.0
    print(res.metrics.format())


def test_gpu_int8_draft_is_refused_with_a_clear_message(models):
    """Weight-only int8 has no CUDA kernel in hsd_fast.quant: a CUDA int8 draft is refused when the
    decoder is built (and an Int8Linear called on CUDA refuses too); the target alone still runs."""
    from hsd_fast.quant import quantize_int8

    draft, target, tok = models
    d, t = quantize_int8(copy.deepcopy(draft).cuda()), copy.deepcopy(target).cuda()
    with pytest.raises(ValueError, match="no CUDA kernel"):
        SpeculativeDecoder([d, t], temperature=0, tokenizer=tok, eos_token_id=None)
    with pytest.raises(ValueError, match="Int8Linear: .*no CUDA kernel"):
        d.lm_head(torch.zeros(1, d.lm_head.in_features, dtype=torch.bfloat16, device="cuda"))
    res = SpeculativeDecoder([t], temperature=0, tokenizer=tok, eos_token_id=None).generate(PROMPTS, max_new_tokens=12)
    for b, p in enumerate(PROMPTS):
        assert res.tokens[b] == plain_greedy(t, _ids(tok, p), 12)


def test_gpu_bench_tiny_smoke(tmp_path):
    """``hsd-fast bench --tiny --device cuda``: every code path of the benchmark on the GPU."""
    from hsd_fast.cli import main

    assert main(["bench", "--tiny", "--device", "cuda", "--suites", "tiny-f64-humaneval", "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "benchmarks.md").read_text().count("| autoregressive |") >= 2
