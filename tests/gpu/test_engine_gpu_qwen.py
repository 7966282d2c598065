"""GPU tests of the engine on Qwen2-style random models with the real Qwen2.5 vocabulary (151936 ids).

Skipped without CUDA.  What a GPU run can check (docs/gpu.md):

* greedy speculative decoding equals the target's plain greedy decode (HF full forward, no cache) in
  float32 and float64, for a draft, an n-gram drafter, an early exit and the target alone; a float32
  divergence is allowed only where the plain model's top-2 logits tie within 1e-4 relative;
* every engine scheme (tokenwise, block, hsd_capped, greedy) in bf16 at batch 16 with top-k, top-p
  and EOS: seeded reruns are identical (same decoder and a fresh one), ids in range, lengths, EOS only
  last, finish reasons;
* float64: every emitted token lies in the warped target's support (top-k, top-p) recomputed by the
  plain HF forward, and the output with EOS is the prefix of the output without it (same seeds);
* CPU and CUDA float64 runs agree draw for draw.

The models: Qwen2 layers (q/k/v biases, grouped-query heads), hidden 64, V = 151936, seeded weights
as in hsd_fast.tiny (N(0, 1/fan_in) matrices, N(0, 1) embeddings, logits of std ~5) plus N(0, 0.1^2)
biases; the draft is the target perturbed by 0.1 x each tensor's std.  The EOS set is every id
divisible by 7 (1/7 of the vocabulary), so that rows end both ways within a few tokens.

``HSD_GPU_TEST_DEVICE=cpu`` runs the same tests on the CPU (a dry run of their logic; slow, and the
CPU-CUDA comparison then compares the CPU with itself).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from hsd_fast.engine import EarlyExit, SpeculativeDecoder
from tests.helpers import plain_greedy

DEVICE = os.environ.get("HSD_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")]

V = 151936  # Qwen2.5's vocabulary
F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
SAMPLING = ("tokenwise", "block", "hsd_capped")
EOS = tuple(range(0, V, 7))
EOS_SET = frozenset(EOS)
MAX_NEW = 12


def _prompts(n: int = 16, seed: int = 0) -> list[list[int]]:
    """``n`` ragged random prompts (3 to 20 ids), the last one repetitive (the n-gram drafter proposes)."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randint(0, V, (int(torch.randint(3, 21, (1,), generator=gen)),), generator=gen).tolist() for _ in range(n - 1)]
    return out + [[11, 12, 13, 14] * 4]


PROMPTS = _prompts()


@torch.no_grad()
def _qwen2_pair(seed: int = 0, layers: int = 3, hidden: int = 64, noise: float = 0.1):
    """``(draft, target)``: float32 CPU Qwen2ForCausalLM models with seeded weights (module doc)."""
    import transformers

    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=False, use_sliding_window=False)
    with torch.random.fork_rng(devices=[]):
        target = transformers.Qwen2ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    for name, p in target.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        elif p.ndim == 1:  # q/k/v biases
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif name.startswith("lm_head."):
            p.copy_(torch.randn(p.shape, generator=gen) * (5.0 / math.sqrt(hidden)))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    draft = copy.deepcopy(target)
    for p in draft.parameters():
        p.add_(noise * float(p.std()) * torch.randn(p.shape, generator=gen))
    return draft.eval(), target.eval()


@pytest.fixture(scope="module")
def pair():
    return _qwen2_pair()


_placed: dict = {}


def _on(model, dtype, device=DEVICE):
    """A copy of ``model`` on ``device`` in ``dtype`` (one per model, dtype and device)."""
    key = (id(model), dtype, str(device))
    if key not in _placed:
        _placed[key] = copy.deepcopy(model).to(device=device, dtype=dtype)
    return _placed[key]


@torch.no_grad()
def _plain_logits(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(tokens), V] float64: the plain HF forward's logits predicting each generated token."""
    ids = torch.tensor([prompt + tokens], device=next(model.parameters()).device)
    return model(ids).logits[0, len(prompt) - 1: len(prompt) + len(tokens) - 1].double()


def _assert_greedy(model, prompt, got, want, rel_tol):
    """``got == want``, or they first differ where the plain model's top-2 logits tie within rel_tol."""
    if got == want:
        return
    j = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    top2 = _plain_logits(model, prompt, want[: j + 1])[j].topk(2).values
    gap = float(top2[0] - top2[1])
    assert gap <= rel_tol * float(top2.abs().max()), f"greedy tokens differ at {j} with a top-2 logit gap {gap}"


def _check_rows(res, eos_set, max_new):
    """Ids in range, lengths, EOS only as the last token, finish reasons consistent with both."""
    assert len(res.tokens) == len(res.finish_reasons)
    for toks, why in zip(res.tokens, res.finish_reasons):
        assert 1 <= len(toks) <= max_new
        assert all(isinstance(t, int) and 0 <= t < V for t in toks)
        assert not any(t in eos_set for t in toks[:-1]), "a token after an EOS was emitted"
        if toks[-1] in eos_set:
            assert why == "eos"
        else:
            assert why == "length" and len(toks) == max_new


# ------------------------------------------------------------------------- greedy = plain greedy

_plain: dict = {}


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", ["draft", "ngram-draft", "exit", "target-alone", "greedy-scheme"])
def test_greedy_speculative_equals_greedy_autoregressive(pair, dtype, layout):
    draft, target = _on(pair[0], dtype), _on(pair[1], dtype)
    levels = {"draft": [draft, target], "ngram-draft": ["ngram", draft, target], "exit": [draft, EarlyExit(target, 2), target],
              "target-alone": [target], "greedy-scheme": [draft, target]}[layout]
    kw = dict(scheme="greedy", temperature=1.0) if layout == "greedy-scheme" else dict(temperature=0)
    res = SpeculativeDecoder(levels, eos_token_id=None, **kw).generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert res.finish_reasons == ["length"] * len(PROMPTS)
    for b, p in enumerate(PROMPTS):
        key = (dtype, b)
        if key not in _plain:
            _plain[key] = plain_greedy(target, p, MAX_NEW)
        _assert_greedy(target, p, res.tokens[b], _plain[key], 0.0 if dtype == F64 else 1e-4)


# ------------------------------------------------------------------- every scheme, bf16, batch 16

@pytest.mark.parametrize("scheme", [*SAMPLING, "greedy"])
@pytest.mark.parametrize("levels", ["draft", "ngram-draft"])
def test_bf16_every_scheme_topk_topp_eos_batch16(pair, scheme, levels):
    draft, target = _on(pair[0], BF16), _on(pair[1], BF16)

    def decoder():
        stack = [draft, target] if levels == "draft" else ["ngram", draft, target]
        return SpeculativeDecoder(stack, scheme=scheme, thresholds=3 if levels == "draft" else (2, 4), temperature=0.8,
                                  top_k=50, top_p=0.9, eos_token_id=list(EOS))

    seeds = list(range(100, 100 + len(PROMPTS)))
    dec = decoder()
    first = dec.generate(PROMPTS, max_new_tokens=MAX_NEW, seeds=seeds)
    _check_rows(first, EOS_SET, MAX_NEW)
    assert first.metrics.tokens_per_target_call >= 1.0
    again = dec.generate(PROMPTS, max_new_tokens=MAX_NEW, seeds=seeds)
    fresh = decoder().generate(PROMPTS, max_new_tokens=MAX_NEW, seeds=seeds)
    for other in (again, fresh):
        assert other.tokens == first.tokens and other.finish_reasons == first.finish_reasons


# ------------------------------------------------------- float64: the warped support, EOS prefixes

def _in_top_k(logits: torch.Tensor, x: int, k: int) -> bool:
    kth = logits.topk(k).values[-1]
    return bool(logits[x] >= kth - 1e-9 * float(kth.abs()))  # ties with the k-th value are kept


def _in_top_p(logits: torch.Tensor, x: int, top_p: float) -> bool:
    probs = torch.softmax(logits, dim=-1)
    ids = torch.arange(probs.shape[0], device=probs.device)
    before = probs[(probs > probs[x]) | ((probs == probs[x]) & (ids < x))].sum()  # mass ranked before x
    return bool(before < top_p + 1e-9)


@pytest.mark.parametrize("scheme", [*SAMPLING, ("tokenwise", "hsd_capped")], ids=[*SAMPLING, "ngram-tokenwise-hsd_capped"])
@pytest.mark.parametrize("warp", [dict(top_k=5, temperature=0.7), dict(top_p=0.6)], ids=["top_k", "top_p"])
def test_float64_tokens_lie_in_the_warped_support_and_eos_cuts_prefixes(pair, scheme, warp):
    draft, target = _on(pair[0], F64), _on(pair[1], F64)
    stack, thresholds = ([draft, target], 3) if isinstance(scheme, str) else (["ngram", draft, target], (2, 3))
    seeds = list(range(len(PROMPTS)))

    def run(eos):
        dec = SpeculativeDecoder(stack, scheme=scheme, thresholds=thresholds, eos_token_id=eos, **warp)
        return dec.generate(PROMPTS, max_new_tokens=MAX_NEW, seeds=seeds)

    free, cut = run(None), run(list(EOS))
    assert free.finish_reasons == ["length"] * len(PROMPTS)
    _check_rows(cut, EOS_SET, MAX_NEW)
    for b, p in enumerate(PROMPTS):
        toks = free.tokens[b]
        first_eos = next((i for i, t in enumerate(toks) if t in EOS_SET), None)
        assert cut.tokens[b] == (toks if first_eos is None else toks[: first_eos + 1])
        logits = _plain_logits(target, p, toks)
        for j, x in enumerate(toks):
            ok = _in_top_k(logits[j], x, warp["top_k"]) if "top_k" in warp else _in_top_p(logits[j], x, warp["top_p"])
            assert ok, f"row {b} token {j} ({x}) is outside the warped target's support"


# --------------------------------------------------------------------- CPU = CUDA, draw for draw

@pytest.mark.parametrize("scheme", [*SAMPLING, "hierarchy"])
def test_cpu_and_cuda_float64_agree_draw_for_draw(pair, scheme):
    prompts, seeds = PROMPTS[:3] + PROMPTS[-1:], [7, 8, 9, 10]
    tokens = {}
    for device in ("cpu", DEVICE):
        draft, target = _on(pair[0], F64, device), _on(pair[1], F64, device)
        if scheme == "hierarchy":
            stack, kw = [draft, EarlyExit(target, 2), target], dict(scheme=["tokenwise", "block"], thresholds=(2, 3))
        else:
            stack, kw = [draft, target], dict(scheme=scheme, thresholds=3)
        dec = SpeculativeDecoder(stack, top_k=20, top_p=0.95, eos_token_id=list(EOS), **kw)
        res = dec.generate(prompts, max_new_tokens=10, seeds=seeds)
        tokens[device] = (res.tokens, res.finish_reasons)
    assert tokens["cpu"] == tokens[DEVICE]
