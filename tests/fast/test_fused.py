"""The lean layer forward (hsd_fast.engine.fused) against the Hugging Face layers.

Oracle: the HF model's own full forward (no cache), in float64, for Llama (no biases), Qwen2 (q/k/v
biases, grouped-query heads) and Qwen3 (per-head q/k norms) configurations, through CachedLM with
ragged rows, a rollback and an early exit; and the HF-layer path of CachedLM itself.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hsd_fast.engine import CachedLM, ModelLevel, SpeculativeDecoder
from hsd_fast.engine.fused import FusedLayer, fusable
from hsd_fast.quant import Int8Linear, quantize_int8
from hsd_fast.tiny import tiny_llama

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_model(kind: str):
    """A seeded random tiny model of the given architecture (float64, eval)."""
    import transformers

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    if kind == "llama":
        model, _ = tiny_llama(3, n_layers=3, hidden=32, tokenizer="chars", dtype=F64)
        return model
    cfg_cls, model_cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]
    cfg = cfg_cls(**common, head_dim=8) if kind == "qwen3" else cfg_cls(**common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = model_cls(cfg)
        for name, p in model.named_parameters():  # non-trivial biases and norm weights too
            with torch.no_grad():
                p.copy_(torch.randn(p.shape) * (0.5 if p.ndim == 2 else 0.2) + (1.0 if "norm" in name else 0.0))
    return model.to(F64).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@torch.no_grad()
def test_fused_layers_match_the_hf_forward(kind):
    model = _random_model(kind)
    fused, plain = CachedLM(model, layers="fused"), CachedLM(model, layers="hf")
    assert fused._fused is not None and plain._fused is None
    V = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    lens = torch.tensor([9, 4, 13])
    seq = torch.randint(0, V, (3, 16), generator=gen)
    for be in (fused, plain):
        be.add_exit(2)

    def full(depth, seq, lens, n_out, b):
        m = model if depth == model.config.num_hidden_layers else _truncated(model, depth)
        return m(seq[b : b + 1, : int(lens[b])]).logits[0, -n_out:]

    for depth, s, ln, n in ((3, seq, lens, 3), (2, seq, lens, 1), (3, seq, lens + 2, 2)):
        for be in (fused, plain):
            got = be.logits(depth, s, ln, n)
            for b in range(3):
                assert torch.allclose(got[b], full(depth, s, ln, n, b), atol=1e-10, rtol=0), (kind, depth, b)
    seq2 = seq.clone()
    seq2[1, 1] = (seq2[1, 1] + 1) % V  # roll row 1 back to its second token
    a, b_ = fused.logits(3, seq2, lens, 2), plain.logits(3, seq2, lens, 2)
    assert torch.allclose(a, b_, atol=1e-10, rtol=0)


def _truncated(model, depth):
    cfg = model.config.__class__.from_dict(model.config.to_dict())
    cfg.num_hidden_layers = depth
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = cfg.layer_types[:depth]
    small = type(model)(cfg).to(F64).eval()
    small.load_state_dict(model.state_dict(), strict=False)
    return small


@torch.no_grad()
def test_fused_int8_products_equal_the_modules_products():
    model = quantize_int8(_random_model("qwen2"))
    fused, plain = CachedLM(model, layers="fused"), CachedLM(model, layers="hf")
    assert fused._fused[0].qkv.fused is not None  # one concatenated int8 product
    seq = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    lens = torch.tensor([12, 7])
    assert torch.allclose(fused.logits(3, seq, lens, 4), plain.logits(3, seq, lens, 4), atol=1e-10, rtol=0)
    assert FusedLayer.of(model.model.layers[0]) is fused._fused[0]  # shared by every backend of the model


def test_sampling_is_the_same_with_either_layer_path():
    model = _random_model("qwen2")
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=F64))
    prompts = [[1, 2, 3, 4], [5, 6]]
    outs = []
    for layers in ("fused", "hf"):
        levels = [ModelLevel(CachedLM(m, layers=layers), 3, name) for m, name in ((draft, "d"), (model, "t"))]
        dec = SpeculativeDecoder(levels, scheme="block", thresholds=3, eos_token_id=None)
        outs.append(dec.generate(prompts, max_new_tokens=12, seeds=[4, 5]).tokens)
    assert outs[0] == outs[1]


def test_replaced_layers_are_refused_and_bad_input():
    model = quantize_int8(_random_model("llama"))
    be = CachedLM(model)
    be.logits(3, torch.tensor([[1, 2, 3]]), torch.tensor([3]), 1)
    attn = model.model.layers[0].self_attn
    attn.q_proj = Int8Linear(torch.nn.Linear(attn.q_proj.in_features, attn.q_proj.out_features, dtype=F64))
    with pytest.raises(RuntimeError, match="replaced"):
        be.logits(3, torch.tensor([[1, 2, 4]]), torch.tensor([3]), 1)
    with pytest.raises(ValueError, match="layers"):
        CachedLM(_random_model("llama"), layers="fast")
    assert fusable(torch.nn.Linear(2, 2)) is not None
