"""``hsd_fast.hf.generate`` against transformers' own ``model.generate`` on tiny random Llama models.

* Greedy (float32): token for token equal to ``model.generate`` of the same options, one prompt at a
  time, for batches of ragged prompts, transformers' processors that read ``input_ids`` (repetition
  penalty, no-repeat-n-gram, bad words), stop strings and stopping criteria, assistants (a draft, a
  list of drafts, prompt lookup, none) and a draft whose vocabulary lacks the target's padding rows.
* Sampling: the law of the first two tokens at T = 0.8 with top-k, top-p and a repetition penalty
  equals the target's processed law, which this module computes from the target's logits and
  transformers' processor classes.  G-test at false-failure probability 1e-6 per test
  (``hsd_fast.fidelity.stats``) with the samples that give power >= 0.99 against a TV-0.05 transfer
  (``samples_for_power``), and in the same test that transfer planted into the same samples must be
  rejected (the power check).
* Streamers, chat templates, ``num_return_sequences``, seeds, and the errors.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from hsd_fast import hf
from hsd_fast.fidelity.report import _plant
from hsd_fast.fidelity.stats import ALPHA_PER_TEST, g_test, planted_bias_law, samples_for_power
from hsd_fast.tiny import tiny_llama, tiny_pair

pytestmark = pytest.mark.usefixtures("one_thread")

N_NEW = 16
TEXTS = ["def f(x):", "for i in range(10):\n    ", "hello"]


@pytest.fixture(scope="module")
def models():
    draft, target, tok = tiny_pair(3, tokenizer="chars", noise=0.3)
    small, _ = tiny_llama(3, n_layers=1, tokenizer="chars")
    return draft, target, tok, small


def hf_new_tokens(model, ids: list[int], **opts) -> list[int]:
    """transformers' own ``generate`` for one prompt: its new tokens, cut after the first EOS."""
    out = model.generate(torch.tensor([ids]), **opts)[0, len(ids):].tolist()
    eos = opts.get("eos_token_id", model.generation_config.eos_token_id)
    pad = model.generation_config.pad_token_id
    if eos is not None and eos in out:
        return out[: out.index(eos) + 1]
    while out and pad is not None and out[-1] == pad and eos is None:
        out.pop()
    return out


OPTIONS = [
    {},
    {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2},
    {"bad_words_ids": [[5], [18, 17]], "repetition_penalty": 0.8},
]


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "penalty+ngram", "badwords"])
@pytest.mark.parametrize("assist", ["draft", "hierarchy", "lookup", "none"])
def test_greedy_equals_model_generate(models, opts, assist):
    draft, target, tok, small = models
    rows = [tok(t)["input_ids"] for t in TEXTS]
    extra = {}
    if assist == "draft":
        extra["assistant_model"] = draft
    elif assist == "hierarchy":
        extra["assistant_model"] = [small, draft]
    elif assist == "lookup":
        extra["prompt_lookup_num_tokens"] = 3
    out = hf.generate(target, rows, max_new_tokens=N_NEW, do_sample=False, scheme="block", return_dict_in_generate=True, **extra, **opts)
    for b, ids in enumerate(rows):
        want = hf_new_tokens(target, ids, max_new_tokens=N_NEW, do_sample=False, **opts)
        assert out.tokens[b] == want, (b, TEXTS[b])
    assert out.sequences.shape == (len(rows), max(map(len, rows)) + max(map(len, out.tokens)))
    assert out.metrics.target_calls < N_NEW * len(rows) or assist == "none"


def test_tensor_inputs_with_padding_equal_model_generate(models):
    """A left-padded LongTensor with its attention mask: the output is the input tensor as given,
    followed by each row's tokens (right-padded), as ``model.generate`` lays it out; each row's tokens
    are those of its unpadded prompt."""
    draft, target, tok, _ = models
    rows = [tok(t)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    pad = target.generation_config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    seq = hf.generate(target, ids, attention_mask=mask, assistant_model=draft, max_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(seq[:, :width], ids)
    for b, r in enumerate(rows):
        want = hf_new_tokens(target, r, max_new_tokens=N_NEW, do_sample=False)
        got = seq[b, width:].tolist()
        assert got[: len(want)] == want and all(x == pad for x in got[len(want):])
    enc = {"input_ids": ids, "attention_mask": mask}  # what a tokenizer returns with padding
    assert torch.equal(hf.generate(target, **enc, assistant_model=draft, max_new_tokens=N_NEW, do_sample=False), seq)
    assert torch.equal(hf.generate(target, enc, assistant_model=draft, max_new_tokens=N_NEW, do_sample=False), seq)
    single = hf.generate(target, torch.tensor([rows[0]]), assistant_model=draft, max_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(single, target.generate(torch.tensor([rows[0]]), max_new_tokens=N_NEW, do_sample=False))


def test_stop_strings_and_stopping_criteria_equal_model_generate(models):
    draft, target, tok, _ = models
    ids = tok(TEXTS[0])["input_ids"]
    free = hf_new_tokens(target, ids, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None)
    stop = tok.decode(free[5:7])  # a string the free run emits at tokens 6-7
    want = target.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, stop_strings=[stop], tokenizer=tok)[0, len(ids):].tolist()
    out = hf.generate(target, [ids], assistant_model=draft, tokenizer=tok, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, stop_strings=[stop], return_dict_in_generate=True)
    assert out.tokens[0] == want and len(want) < N_NEW and out.finish_reasons == ["stop"]

    class AtLength(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= len(ids) + 4, dtype=torch.bool)

    crit = StoppingCriteriaList([AtLength()])
    want = target.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, stopping_criteria=crit)[0, len(ids):].tolist()
    out = hf.generate(target, [ids], assistant_model=draft, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, stopping_criteria=crit, return_dict_in_generate=True)
    assert out.tokens[0] == want and len(want) == 4


def test_vocabularies_differing_by_padding_rows(models):
    """A target with 28 padding rows the draft lacks (100 vs 128): accepted with the tokenizer; greedy
    equals transformers' greedy with the padding ids suppressed.  Unrelated vocabularies are refused."""
    draft, target, tok, _ = models
    padded, _ = tiny_llama(3, tokenizer="chars")
    padded.resize_token_embeddings(128)
    with torch.no_grad():  # give the padding rows the largest logits, so ignoring the mask would show
        padded.lm_head.weight[100:] = 3 * padded.lm_head.weight[:28]
    ids = tok(TEXTS[1])["input_ids"]
    want = hf_new_tokens(padded, ids, max_new_tokens=N_NEW, do_sample=False, suppress_tokens=list(range(100, 128)))
    out = hf.generate(padded, [ids], assistant_model=draft, tokenizer=tok, max_new_tokens=N_NEW, do_sample=False, return_dict_in_generate=True)
    assert out.tokens[0] == want
    assert hf_new_tokens(padded, ids, max_new_tokens=N_NEW, do_sample=False) != want  # the padding rows matter
    with pytest.raises(ValueError, match=r"vocabulary sizes \[100, 128\] differ; pass tokenizer="):
        hf.generate(padded, [ids], assistant_model=draft, max_new_tokens=4)
    cut, _ = tiny_llama(4, tokenizer="chars")
    cut.resize_token_embeddings(90)
    with pytest.raises(ValueError, match="tokenizer has 100 ids, more than the smaller vocabulary"):
        hf.generate(target, [ids], assistant_model=cut, tokenizer=tok, max_new_tokens=4)


# ------------------------------------------------------------------ the sampling law

PLANTED_TV = 0.05
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.5, eos_token_id=None)


def processed_probs(target, contexts: list[list[int]]) -> torch.Tensor:
    """The target's law after each context under SAMPLING, by transformers' processor classes in
    ``generate``'s order (penalty, temperature, top-k, top-p).  -> [n, V] float64"""
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.5), TemperatureLogitsWarper(0.8), TopKLogitsWarper(20), TopPLogitsWarper(0.9)])
    rows = []
    with torch.no_grad():
        for ctx in contexts:
            ids = torch.tensor([ctx])
            scores = target(ids).logits[:, -1].float()
            rows.append(torch.softmax(procs(ids, scores), -1)[0].double())
    return torch.stack(rows)


@pytest.mark.parametrize("scheme", ["block", "tokenwise"])
def test_first_two_tokens_law_equals_the_processed_target(models, scheme):
    draft, target, tok, _ = models
    prompt = tok("aaab")["input_ids"]
    V = len(tok)
    p1 = processed_probs(target, [prompt])[0]
    firsts = torch.nonzero(p1)[:, 0].tolist()
    p2 = processed_probs(target, [prompt + [x] for x in firsts])
    codes, probs = [], []
    for i, x in enumerate(firsts):
        for y in torch.nonzero(p2[i])[:, 0].tolist():
            codes.append(x * V + y)
            probs.append(float(p1[x] * p2[i, y]))
    codes, probs = np.array(codes), np.array(probs)
    order = np.argsort(codes)
    codes, probs = codes[order], probs[order] / probs.sum()
    alt, src, dst = planted_bias_law(codes, probs, PLANTED_TV)
    n = samples_for_power(codes, probs, alt, lo=500)
    assert len(codes) >= 8 and n <= 10_000  # a law with some spread; the CI budget
    out = hf.generate(target, [prompt] * n, assistant_model=draft, scheme=scheme, max_new_tokens=2, seeds=range(n), return_dict_in_generate=True, **SAMPLING)
    samples = np.array([t[0] * V + t[1] for t in out.tokens])
    assert not g_test(samples, codes, probs, ALPHA_PER_TEST).rejected
    planted = _plant(samples, src, dst, float(probs[codes == src][0]), PLANTED_TV, seed=11)
    assert g_test(planted, codes, probs, ALPHA_PER_TEST).rejected


def test_seeds_and_num_return_sequences(models):
    draft, target, tok, _ = models
    rows = [tok(t)["input_ids"] for t in TEXTS[:2]]
    kw = dict(assistant_model=draft, max_new_tokens=8, do_sample=True, return_dict_in_generate=True)
    a = hf.generate(target, rows, num_return_sequences=3, seed=5, **kw)
    assert len(a.tokens) == 6 and a.sequences.shape[0] == 6
    assert len({tuple(t) for t in a.tokens[:3]}) > 1  # three samples of one prompt
    b = hf.generate(target, [rows[1]], seeds=[8, 9, 10], num_return_sequences=3, **kw)
    assert b.tokens == a.tokens[3:]  # sequence i * n + j has seed seed + i * n + j
    assert torch.equal(a.sequences[:3, : len(rows[0])], torch.tensor([rows[0]] * 3)) or len(rows[0]) < len(rows[1])


# ------------------------------------------------------------------ streaming and chat templates

class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_streamers(models):
    draft, target, tok, _ = models
    ids = tok(TEXTS[0])["input_ids"]
    rec = Recorder()
    out = hf.generate(target, [ids], assistant_model=draft, streamer=rec, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    assert rec.puts[0] == [ids] and rec.ended
    assert [x for chunk in rec.puts[1:] for x in chunk] == out.tokens[0]
    assert len(rec.puts) - 1 == out.metrics.target_calls  # one chunk per target iteration

    it = TextIteratorStreamer(tok, skip_prompt=True)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("out", hf.generate(target, [ids], assistant_model=draft, streamer=it, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None, return_dict_in_generate=True)))
    th.start()
    text = "".join(it)
    th.join()
    assert text == tok.decode(result["out"].tokens[0])

    failing = Recorder()
    with pytest.raises(ValueError, match="num_beams"):
        hf.generate(target, [ids], streamer=failing, num_beams=2)
    with pytest.raises(ValueError, match="streamer: streaming needs exactly one sequence"):
        hf.generate(target, [ids, ids], streamer=Recorder(), max_new_tokens=2)


def test_chat_template(models):
    draft, target, tok, _ = models
    tok.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}:{% endif %}"
    out = hf.generate(target, "hi", tokenizer=tok, apply_chat_template=True, assistant_model=draft, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    want = tok("<hi>:", add_special_tokens=False)["input_ids"]
    assert out.sequences[0, : len(want)].tolist() == want
    assert out.tokens[0] == hf_new_tokens(target, want, max_new_tokens=3, do_sample=False)


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_beams": 2}, r"num_beams=2: not supported"),
        ({"output_scores": True}, r"output_scores=True: not supported"),
        ({"foo": 1}, r"foo: not a generation option"),
        ({"assistant_tokenizer": object()}, r"assistant_tokenizer: not a generation option .* another tokenizer"),
        ({"max_length": 3}, r"max_length: 3 leaves no room"),
        ({"min_new_tokens": 2, "inputs": [[3, 4], [5]]}, r"min_new_tokens: reads the prompt length"),
        ({"inputs": "text"}, r"tokenizer: text prompts need tokenizer="),
        ({"inputs": [[3, 4]], "apply_chat_template": True}, r"apply_chat_template: only text prompts"),
        ({"inputs": None}, r"inputs: expected token ids"),
        ({"inputs": [[]]}, r"inputs: every prompt needs at least one token"),
        ({"stop_strings": ["x"]}, r"stop_strings: needs tokenizer="),
        ({"assistant_model": None, "thresholds": 3}, r"thresholds: the target alone"),
        ({"inputs": torch.tensor([[3, 4]]), "attention_mask": torch.ones(1, 3)}, r"attention_mask: shape \(1, 3\) differs"),
    ],
)
def test_errors_name_the_argument(models, kwargs, match):
    draft, target, tok, _ = models
    kwargs = dict(kwargs)
    inputs = kwargs.pop("inputs", [[3, 4, 5]])
    kwargs.setdefault("assistant_model", draft)
    with pytest.raises(ValueError, match=match):
        hf.generate(target, inputs, **kwargs)
