"""``SpeculativeDecoder(compile=True)``: the cached models' layers through ``torch.compile``
(hsd_fast.engine.backend.compiled_layer_forward) compute what the eager layers compute.

One compiled function serves every layer of every model: the layer index and the weights are not
guards, only the mask's presence is (masked and unmasked calls), and shapes are dynamic.  The first
calls compile (tens of seconds on a CPU), so the equality test is marked slow.
"""

from __future__ import annotations

import pytest
import torch

from hsd_fast.engine import SpeculativeDecoder
from hsd_fast.engine.backend import CachedLM
from hsd_fast.tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_compiled_layers_decode_the_same_tokens_and_logits():
    t, _ = tiny_llama(0, n_layers=2, hidden=64, dtype=torch.float64)
    d, _ = tiny_llama(1, n_layers=1, hidden=32, dtype=torch.float64)
    prompts, seeds = [[1, 2, 3], [4, 5], [6]], [1, 2, 3]  # ragged rows: masked calls; B = 1 steps: unmasked
    eager = SpeculativeDecoder([d, t], thresholds=3, eos_token_id=None).generate(prompts, max_new_tokens=12, seeds=seeds)
    comp = SpeculativeDecoder([d, t], thresholds=3, eos_token_id=None, compile=True).generate(prompts, max_new_tokens=12, seeds=seeds)
    assert comp.tokens == eager.tokens
    seq, lens = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]), torch.tensor([5, 3])
    a, b = CachedLM(t).logits(2, seq, lens, 2), CachedLM(t, compile=True).logits(2, seq, lens, 2)
    # HF's RMSNorm rounds through float32 even in a float64 model, and the compiled graph may skip that
    # round trip: the two agree to float32 rounding (measured 4e-6 on logits of magnitude 23), not 1e-10
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_compile_needs_the_fused_layers_and_a_bool():
    t, _ = tiny_llama(0, n_layers=1, hidden=32)
    with pytest.raises(ValueError, match="compile"):
        CachedLM(t, layers="hf", compile=True)
    with pytest.raises(ValueError, match="compile"):
        SpeculativeDecoder([t], compile="yes")
