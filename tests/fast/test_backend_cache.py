"""The KV-cache policy of CachedLM (hsd_fast.engine.backend) and the backends' context length.

Oracles: the HF model's own full forward (no cache) in float64, and the same backend called on a
narrow token buffer.  The policy under test: memory and per-call work follow the positions in use
(the longest row, plus a scratch slot for ragged rows), never the width of the caller's buffer; the
capacity grows geometrically; attention reads only the slots up to the longest row's end;
``select_rows`` keeps the occupied slots and shrinks the capacity when they fill a quarter of it.
"""

from __future__ import annotations

import types

import pytest
import torch

from hsd_fast.engine import CachedLM, EarlyExit, SpeculativeDecoder
from hsd_fast.engine.backend import RecomputeLM
from hsd_fast.tiny import tiny_llama, tiny_pair

F64 = torch.float64
PROMPTS = ["hello world, hello wor", "abc", "the quick brown fox jumps over the lazy dog; the quick"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer): a 2-layer random Llama in float64 on the character vocabulary."""
    return tiny_llama(0, n_layers=2, tokenizer="chars", dtype=F64)


def rows_of(tok, texts, width):
    """``(seq [B, width], lens [B])`` holding the texts' ids left-aligned, zeros after."""
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    seq = torch.zeros(len(ids), width, dtype=torch.int64)
    for b, r in enumerate(ids):
        seq[b, : len(r)] = torch.tensor(r)
    return seq, torch.tensor([len(r) for r in ids])


@torch.no_grad()
def full_logits(model, seq, lens, n_out):
    """``[B, n_out, V]`` from one uncached HF forward per row."""
    return torch.stack([model(seq[b : b + 1, : int(lens[b])]).logits[0, -n_out:] for b in range(seq.shape[0])])


def test_wide_buffer_allocates_for_the_lengths_not_the_width(tiny):
    model, tok = tiny
    narrow, lens = rows_of(tok, PROMPTS, 60)
    wide = torch.zeros(3, 100_000, dtype=torch.int64)
    wide[:, :60] = narrow
    wide[:, 60:] = 7  # garbage past every row's length
    be_wide, be_narrow = CachedLM(model), CachedLM(model)
    assert be_wide.capacity == 0  # nothing allocated before the first call
    got = be_wide.logits(2, wide, lens, 2)
    assert be_wide.capacity == 64  # the longest row (54 tokens) + the scratch slot, rounded up to 2^k
    assert torch.equal(got, be_narrow.logits(2, narrow, lens, 2))
    assert torch.allclose(got, full_logits(model, narrow, lens, 2), atol=1e-10, rtol=0)
    # one more token per row through the wide buffer: cached prefix reused, still small
    wide2 = wide.clone()
    wide2[torch.arange(3), lens] = torch.tensor([5, 6, 7])
    got = be_wide.logits(2, wide2, lens + 1, 1)
    assert be_wide.capacity == 64
    assert torch.allclose(got, full_logits(model, wide2[:, :60], lens + 1, 1), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="lens"):
        be_wide.logits(2, wide[:, :10], lens, 1)  # rows longer than the buffer


def test_capacity_grows_geometrically(tiny):
    model, _ = tiny
    be = CachedLM(model)
    be.add_exit(1)
    g = torch.Generator().manual_seed(0)
    row = torch.randint(0, int(model.config.vocab_size), (1, 300), generator=g)
    seen = []
    for n in range(1, 301):
        depth = 1 if n % 3 else 2  # the early exit and the full depth share the cache
        got = be.logits(depth, row, torch.tensor([n]), 1)
        if not seen or seen[-1] != be.capacity:
            seen.append(be.capacity)
        if n in (1, 17, 129, 300):
            ref = model(row[:, :n], output_hidden_states=True)
            want = ref.logits[:, -1:] if depth == 2 else model.lm_head(model.model.norm(ref.hidden_states[1][:, -1:]))
            assert torch.allclose(got, want, atol=1e-10, rtol=0), n
    assert seen == [16, 32, 64, 128, 256, 512]  # doubling, each time the row outgrows it


def test_attention_reads_only_the_slots_up_to_the_longest_row(tiny, monkeypatch):
    """Row 0 recomputes 18 positions after a rewrite at position 2 while row 1 adds one token: M = 18
    positions run for both rows, but the keys read stop at the longest row's end (21), and no position
    fed to the model exceeds 20, even though row 1's surplus positions run up to 20 + 17."""
    model, _ = tiny
    be = CachedLM(model)
    seq = torch.randint(0, int(model.config.vocab_size), (2, 40), generator=torch.Generator().manual_seed(1))
    be.logits(2, seq, torch.tensor([20, 20]), 1)
    key_lens = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        key_lens.append(k.shape[-2])
        return sdpa(q, k, v, *args, **kwargs)

    positions = []
    rotary = be.rotary

    def rotary_spy(x, pos):
        positions.append(int(pos.max()))
        return rotary(x, pos)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(be, "rotary", rotary_spy)
    seq2 = seq.clone()
    seq2[0, 2] = (seq[0, 2] + 1) % int(model.config.vocab_size)
    lens2 = torch.tensor([20, 21])
    got = be.logits(2, seq2, lens2, 2)
    assert key_lens == [21, 21]  # one call per layer
    assert positions == [20]  # no position past the longest row reaches the model (surplus ones are clamped)
    assert be.capacity == 32
    monkeypatch.undo()
    assert torch.allclose(got, full_logits(model, seq2, lens2, 2), atol=1e-10, rtol=0)


def test_select_rows_keeps_occupied_slots_and_shrinks(tiny):
    model, tok = tiny
    be = CachedLM(model)
    g = torch.Generator().manual_seed(2)
    seq = torch.randint(0, int(model.config.vocab_size), (3, 120), generator=g)
    lens = torch.tensor([100, 10, 30])
    be.logits(2, seq, lens, 1)
    assert be.capacity == 128
    be.select_rows(torch.tensor([2, 1, 1]))  # drop the long row, duplicate one (shared prefills do)
    assert be.capacity == 64  # the kept rows use 30 slots: a quarter of 128 at most
    kept, klens = seq[[2, 1, 1]], lens[[2, 1, 1]] + torch.tensor([1, 2, 3])
    got = be.logits(2, kept, klens, 2)
    assert torch.allclose(got, full_logits(model, kept, klens, 2), atol=1e-10, rtol=0)
    be.select_rows(torch.tensor([0, 1]))  # 31 of 64 slots in use: no shrink
    assert be.capacity == 64
    be.reset()
    assert be.capacity == 0


def test_backends_expose_the_context_length(tiny):
    model, _ = tiny
    assert model.config.max_position_embeddings == 1024
    assert CachedLM(model).max_positions == 1024
    assert RecomputeLM(model).max_positions == 1024

    class NoPositions(torch.nn.Module):  # a causal LM whose config names no context length
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(2, 3)
            self.config = types.SimpleNamespace(vocab_size=3, num_hidden_layers=1)

    assert RecomputeLM(NoPositions()).max_positions is None


def test_float32_batch_invariance_bitwise():
    """float32: a row's tokens are the same batched, alone and permuted (sampling with a draft model and
    an early exit, and greedy).  This holds for the TOKENS: the float32 logits themselves differ with the
    batch at the level of rounding (~1e-6; measured, not asserted here), which a decision flips only when
    a uniform (or a greedy top-2 gap) falls within that distance of its boundary."""
    draft, target, tok = tiny_pair(0, target_layers=4, draft_layers=4, noise=0.05, tokenizer="chars", dtype=torch.float32)
    prompts = [*PROMPTS, "zz top", "a"]
    seeds = [101, 202, 303, 404, 505]
    perm = [2, 4, 0, 3, 1]
    for scheme, temperature in ((["tokenwise", "block"], 1.0), ("greedy", 0.0)):
        dec = SpeculativeDecoder([draft, EarlyExit(target, 2), target], scheme=scheme, thresholds=(2, 3),
                                 temperature=temperature, tokenizer=tok, eos_token_id=None)
        batch = dec.generate(prompts, max_new_tokens=24, seeds=seeds).tokens
        for b in range(len(prompts)):
            assert dec.generate([prompts[b]], max_new_tokens=24, seeds=[seeds[b]]).tokens[0] == batch[b], (scheme, b)
        permuted = dec.generate([prompts[i] for i in perm], max_new_tokens=24, seeds=[seeds[i] for i in perm]).tokens
        assert permuted == [batch[i] for i in perm], scheme
        if temperature:
            assert len({tuple(t) for t in batch}) == len(prompts)


@pytest.mark.parametrize("layers", ["fused", "hf"])
def test_uniform_rows_attend_without_a_per_row_mask(tiny, monkeypatch, layers):
    """Rows that all run the same positions need no per-row mask: one query per row attends to every
    key (no mask at all, so SDPA's efficient kernels serve it); several queries share one
    [1, 1, M, E] mask.  Ragged rows keep the per-row [B, 1, M, E] mask.  Every answer equals the full
    forward."""
    model, _ = tiny
    be = CachedLM(model, layers=layers)
    seq = torch.randint(0, int(model.config.vocab_size), (2, 40), generator=torch.Generator().manual_seed(2))
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        m = kwargs.get("attn_mask", args[0] if args else None)
        masks.append(None if m is None else tuple(m.shape[:2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    cases = [
        (torch.tensor([12, 12]), 1, (1, 1)),  # the prefill: the same 12 positions in each row
        (torch.tensor([13, 13]), 1, None),  # one new position per row
        (torch.tensor([17, 17]), 4, (1, 1)),  # a verification: the same 4 new positions per row
        (torch.tensor([19, 18]), 2, (2, 1)),  # ragged rows
    ]
    for lens, n_out, kind in cases:
        masks.clear()
        got = be.logits(2, seq, lens, n_out)
        assert masks and set(masks) == {kind}, (lens, masks)
        assert torch.allclose(got, full_logits(model, seq, lens, n_out), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_keep_float32_keys_and_values_on_the_cpu(dtype):
    """Attention with one query per row is 4-8x slower in bfloat16 than in float32 on this torch's CPU
    path, so the fused layers keep keys and values (and attention) in float32 there; hidden states
    stay in the model's dtype.  Against the float32 forward of the same weights, the logits are no
    less accurate than the model's own half-precision forward; the HF-layer path (whose attention
    would mix dtypes) keeps the model's dtype."""
    import copy

    model, _ = tiny_llama(0, n_layers=2, hidden=64, dtype=dtype)
    seq, lens = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 0, 0]]), torch.tensor([5, 3])
    fused = CachedLM(model)
    out = fused.logits(2, seq, lens, 2)
    assert fused.kv_dtype == torch.float32 and fused.kv[0][0].dtype == torch.float32 and fused.hid[0].dtype == dtype
    exact = copy.deepcopy(model).float()
    with torch.no_grad():
        own = torch.cat([model(seq[b : b + 1, : int(lens[b])]).logits[:, -2:] for b in range(2)]).float()
        ref = torch.cat([exact(seq[b : b + 1, : int(lens[b])]).logits[:, -2:] for b in range(2)])
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() <= 1.5 * (own - ref).abs().max()
    hf = CachedLM(model, layers="hf")
    hf.logits(2, seq, lens, 2)
    assert hf.kv_dtype == dtype and hf.kv[0][0].dtype == dtype
