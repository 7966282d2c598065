"""Weight-only int8 drafts (hsd_fast.quant).

Oracles: the dequantised weight computed here from the definition (per-row max / 127, round, clamp),
``torch.nn.functional.linear`` on it, and the target's own plain greedy decode (a quantized draft must
not change the output: only the acceptance rate may move).
"""

from __future__ import annotations

import pytest
import torch

from hsd_fast.engine import SpeculativeDecoder
from hsd_fast.engine.specs import resolve_levels
from hsd_fast.quant import Int8Linear, is_quantized, quantize_int8
from hsd_fast.tiny import tiny_pair
from tests.helpers import plain_greedy

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_weight(w: torch.Tensor) -> torch.Tensor:
    """The definition, written out element by element for a small matrix."""
    out = torch.empty_like(w, dtype=torch.float64)
    for n in range(w.shape[0]):
        row = [float(x) for x in w[n]]
        s = max(abs(x) for x in row) / 127
        out[n] = torch.tensor([s * max(-127, min(127, round(x / s))) for x in row], dtype=torch.float64)
    return out


def test_int8_weight_matches_the_definition():
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(7, 5, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(5, 7, generator=gen))
    q = Int8Linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    assert torch.allclose(q.dequantized(torch.float64), reference_weight(lin.weight.detach()), rtol=1e-6, atol=1e-7)
    x = torch.randn(3, 2, 7, generator=gen)
    expected = torch.nn.functional.linear(x.double(), reference_weight(lin.weight.detach()), lin.bias.detach().double())
    assert torch.allclose(q(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert q(x).shape == (3, 2, 5)


def test_fused_cpu_kernel_agrees_with_the_dequantised_product():
    gen = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=gen).to(torch.bfloat16))
    q = Int8Linear(lin)
    x = torch.randn(4, 64, generator=gen).to(torch.bfloat16)
    fused = q(x).float()  # torch._weight_int8pack_mm on the CPU
    exact = x.double() @ q.dequantized(torch.float64).T
    assert torch.allclose(fused.double(), exact, rtol=2e-2, atol=2e-2 * float(exact.abs().max()))


def test_rows_is_the_restricted_head():
    """The restricted head computes the full head's columns ``ids`` (a product of a different shape:
    equal up to float32 rounding, not bitwise; the weights are seeded, not the global stream's)."""
    gen = torch.Generator().manual_seed(2)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        lin = torch.nn.Linear(6, 10, bias=True)
    q = Int8Linear(lin)
    ids = torch.tensor([7, 0, 3])
    x = torch.randn(2, 6, generator=gen)
    assert torch.allclose(q.rows(ids)(x), q(x)[:, ids], rtol=1e-6, atol=1e-6)


def test_quantize_replaces_every_linear_and_keeps_embeddings():
    draft, target, tok = tiny_pair(0, target_layers=2, tokenizer="chars", dtype=torch.float32)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in draft.modules())
    emb = draft.model.embed_tokens.weight.clone()
    quantize_int8(draft)
    assert is_quantized(draft) == "int8" and is_quantized(target) is None
    assert not any(isinstance(m, torch.nn.Linear) for m in draft.modules())
    assert sum(isinstance(m, Int8Linear) for m in draft.modules()) == n_linear
    assert torch.equal(draft.model.embed_tokens.weight, emb)


def test_bad_input():
    with pytest.raises(ValueError, match="model"):
        quantize_int8("not a model")
    with pytest.raises(ValueError, match="model"):
        quantize_int8(torch.nn.ReLU())
    from hsd_fast import models

    with pytest.raises(ValueError, match="quantize"):
        models.load("smollm2-135m", quantize="int4")


def test_quantized_draft_keeps_the_targets_greedy_output():
    draft, target, tok = tiny_pair(0, target_layers=3, draft_layers=3, noise=0.05, tokenizer="chars", dtype=F64)
    quantize_int8(draft)
    prompts = ["hello world, hello wor", "the quick brown fox"]
    dec = SpeculativeDecoder([draft, target], temperature=0, thresholds=3, tokenizer=tok, eos_token_id=None)
    res = dec.generate(prompts, max_new_tokens=16)
    for b, p in enumerate(prompts):
        assert res.tokens[b] == plain_greedy(target, tok(p, add_special_tokens=False)["input_ids"], 16)
    assert res.metrics.levels[0].name.endswith("@int8")


def test_quantized_draft_restricted_vocabulary_equals_full():
    draft, target, tok = tiny_pair(0, target_layers=2, tokenizer="chars", dtype=F64)
    quantize_int8(draft)
    allowed = sorted(set(tok("abcdefgh ", add_special_tokens=False)["input_ids"]))
    kw = dict(thresholds=3, tokenizer=tok, eos_token_id=None, allowed_ids=allowed)
    small = SpeculativeDecoder([draft, target], **kw)
    full = SpeculativeDecoder([draft, target], logits_processor=lambda x: x, **kw)  # disables the compression
    assert small.vocab.restricted and not full.vocab.restricted
    a = small.generate(["abc", "hgf"], max_new_tokens=10, seeds=[3, 4]).tokens
    b = full.generate(["abc", "hgf"], max_new_tokens=10, seeds=[3, 4]).tokens
    assert a == b


def test_quantized_name_spec_loads_a_separate_copy():
    calls = []

    def loader(name, **kw):
        calls.append(name)
        d, t, tok = tiny_pair(0, target_layers=2, tokenizer="chars", dtype=F64)
        return t, tok

    levels, _ = resolve_levels(["m@int8", "m"], loader=loader)
    assert calls == ["m", "m"]
    assert is_quantized(levels[0].backend.model) == "int8" and is_quantized(levels[1].backend.model) is None
    assert levels[0].backend is not levels[1].backend
    with pytest.raises(ValueError, match="quantized model spec"):
        resolve_levels(["m@int4", "m"], loader=loader)


def test_int8_is_refused_on_cuda_with_a_clear_message():
    """hsd_fast.quant has no CUDA int8 kernel: the device check every Int8Linear call and every int8
    level goes through refuses CUDA (tests/gpu checks it on a real device) and accepts the CPU."""
    from hsd_fast.quant import check_device

    with pytest.raises(ValueError, match=r"levels: draft@int8: weight-only int8 .* no CUDA kernel"):
        check_device(torch.device("cuda", 0), "levels: draft@int8")
    with pytest.raises(ValueError, match="Int8Linear"):
        check_device("cuda", "Int8Linear")
    check_device("cpu")  # no error
