"""Inputs that used to give silently wrong output or the wrong error (issue 12, items 3 and 4).

Each test failed before its fix: every bad value is now a ValueError naming the argument (numpy and
tensor integers are accepted where a user would pass them), rows that are not finite, non-negative
distributions stop the decode with a ValueError naming the level, a tiny temperature is sampled
exactly, and memory and step cost follow the tokens generated, not max_new_tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsd_fast.engine import SpeculativeDecoder
from hsd_fast.engine import step
from hsd_fast.engine.tables import TableModel
from hsd_fast.kernels import verify
from hsd_fast.tiny import tiny_llama
from hsd_fast.warp import Warp
from hsd_ref.strategies import toy_pair
from tests.helpers import plain_greedy

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    t, d = toy_pair(3, 0)
    return TableModel([t], "t"), TableModel([d], "d")


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama(0, tokenizer="chars", dtype=F64)
    return model, tok


class Recorder:
    """A custom level written to the documented protocol ``probs(seq, lens, n_out, warp)`` (nothing
    else): a fixed law, or whatever ``rows`` returns; it records the widths of the contexts."""

    def __init__(self, V, rows=None):
        self.vocab_size = V
        self.rows = rows
        self.widths = []

    def probs(self, seq, lens, n_out, warp):
        self.widths.append(seq.shape[1])
        B = seq.shape[0]
        if self.rows is not None:
            return self.rows(B, n_out)
        logits = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=F64)).expand(B, n_out, 3)
        return warp.probs(logits)


# ------------------------------------------------------------------------ the custom-level protocol


def test_custom_level_with_the_documented_signature_works(toy):
    T, D = toy
    res = SpeculativeDecoder([Recorder(3), T], thresholds=2, eos_token_id=None).generate([[0]], max_new_tokens=4, seeds=[1])
    assert len(res.tokens[0]) == 4
    res = SpeculativeDecoder([D, Recorder(3)], thresholds=2, eos_token_id=None).generate([[0]], max_new_tokens=4, seeds=[1])
    assert len(res.tokens[0]) == 4 and res.metrics.levels[1].name == "Recorder"


@pytest.mark.parametrize(
    "rows, what",
    [
        (lambda B, n: torch.full((B, n, 3), float("nan"), dtype=F64), "NaN"),
        (lambda B, n: torch.full((B, n, 3), 0.5, dtype=F64), "unnormalised"),
        (lambda B, n: torch.tensor([1.5, -0.5, 0.0], dtype=F64).expand(B, n, 3), "negative"),
    ],
)
def test_custom_level_bad_rows_stop_the_decode_naming_the_level(toy, rows, what):
    T, _ = toy
    seen = []
    dec = SpeculativeDecoder([Recorder(3, rows), T], thresholds=2, eos_token_id=None)
    with pytest.raises(ValueError, match=r"levels\[0\]: Recorder produced a probability row"):
        dec.generate([[0]], max_new_tokens=4, seeds=[1], on_tokens=seen.append)
    assert seen == []  # nothing from the bad iteration was emitted


def test_custom_level_wrong_shape_or_dtype_is_named(toy):
    T, _ = toy
    for rows in (lambda B, n: torch.full((B, n, 4), 0.25, dtype=F64), lambda B, n: torch.full((B, n, 3), 1 / 3, dtype=torch.float16)):
        with pytest.raises(ValueError, match=r"levels\[0\]: Recorder.probs returned"):
            SpeculativeDecoder([Recorder(3, rows), T], thresholds=2, eos_token_id=None).generate([[0]], max_new_tokens=2)


@pytest.mark.parametrize("probs_dtype", ["float32", "float64"])
@pytest.mark.parametrize("level_dtype", [torch.float32, F64])
def test_custom_level_rows_take_the_engine_row_dtype(toy, probs_dtype, level_dtype):
    """A custom level may answer float32 or float64; the engine casts to its probs_dtype, and every
    row it verifies (the target's as well) has that dtype."""
    T, _ = toy
    seen = []

    def spy(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        seen.append((target_probs.dtype, draft_probs.dtype))
        return verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws)

    rows = lambda B, n: torch.tensor([0.5, 0.25, 0.25], dtype=level_dtype).expand(B, n, 3)  # noqa: E731  (exact in both dtypes)
    dec = SpeculativeDecoder([Recorder(3, rows), T], thresholds=2, eos_token_id=None, probs_dtype=probs_dtype, verify_fn=spy)
    assert len(dec.generate([[0]], max_new_tokens=3, seeds=[1]).tokens[0]) == 3
    want = getattr(torch, probs_dtype)
    assert seen and all(d == (want, want) for d in seen)


@pytest.mark.parametrize("bad", ["float16", torch.bfloat16, "half", None, 32])
def test_probs_dtype_is_checked(toy, bad):
    with pytest.raises(ValueError, match="probs_dtype"):
        SpeculativeDecoder(list(toy[::-1]), probs_dtype=bad)


# ------------------------------------------------------------------------ NaN / inf logits, temperature


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_logits_are_an_error_not_a_constant_token(tiny, bad):
    model, tok = tiny

    def processor(x):
        x = x.clone()
        x[..., 7] = bad
        return x

    dec = SpeculativeDecoder(["ngram", model], logits_processor=processor, tokenizer=tok, eos_token_id=None)
    with pytest.raises(ValueError, match=r"levels\[1\].*not finite"):
        dec.generate(["abc"], max_new_tokens=5)


def test_tiny_temperature_is_sampled_exactly(tiny):
    """1e-308 used to overflow (logits / T = inf - inf = NaN) and repeat the last id; now the rows are
    the exact float64 softmax: the point mass on the argmax when it is unique (tiny Llama logits have
    no ties), so the decode equals greedy decoding."""
    model, tok = tiny
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    for T in (1e-308, 1e-310):
        res = SpeculativeDecoder([model], temperature=T, tokenizer=tok, eos_token_id=None).generate([ids], max_new_tokens=8, seeds=[3])
        assert res.tokens[0] == plain_greedy(model, ids, 8)
    tie = torch.tensor([[1.0, 3.0, 3.0]], dtype=F64)
    assert Warp(temperature=1e-308).probs(tie).tolist() == [[0.0, 0.5, 0.5]]  # the T -> 0 limit: ties share
    x = torch.randn(4, 9, dtype=F64)
    assert torch.allclose(Warp(temperature=0.7).probs(x), torch.softmax(x / 0.7, -1), atol=1e-15, rtol=0)


# ------------------------------------------------------------------------ arguments


def test_bad_arguments_are_value_errors_naming_them(toy, monkeypatch):
    T, D = toy
    with pytest.raises(ValueError, match="thresholds"):
        SpeculativeDecoder([D, T], thresholds=4.0)
    with pytest.raises(ValueError, match="thresholds"):
        SpeculativeDecoder([D, T], thresholds=True)
    with pytest.raises(ValueError, match="scheme"):
        SpeculativeDecoder([D, T], scheme=None)
    with pytest.raises(ValueError, match="scheme"):
        SpeculativeDecoder([D, T], scheme=[None])
    with pytest.raises(ValueError, match="eos_token_id"):
        SpeculativeDecoder([D, T], eos_token_id="eos")
    with pytest.raises(ValueError, match="verify_fn"):
        SpeculativeDecoder([D, T], verify_fn=3)
    dec = SpeculativeDecoder([D, T], eos_token_id=None)
    calls = []
    monkeypatch.setattr(step, "iteration", lambda *a, _orig=step.iteration: calls.append(1) or _orig(*a))
    with pytest.raises(ValueError, match="seeds"):
        dec.generate([[0], [1]], seeds=3)
    with pytest.raises(ValueError, match="on_tokens"):
        dec.generate([[0]], on_tokens=5)
    with pytest.raises(ValueError, match=r"prompts\[0\]\[0\]"):
        dec.generate([[1.7, 2.9]])
    with pytest.raises(ValueError, match=r"prompts\[0\]\[0\]"):
        dec.generate([[True, 2]])
    with pytest.raises(ValueError, match="prompts"):
        dec.generate(b"ab")
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        dec.generate([torch.tensor([0.5, 1.0])])
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate([[0]], max_new_tokens=np.float64(3.0))
    with pytest.raises(ValueError, match=r"seeds\[0\]"):
        dec.generate([[0]], seeds=[-1])
    assert calls == []  # every refusal came before a step ran


def test_numpy_and_tensor_integers_are_accepted(toy):
    T, D = toy
    dec = SpeculativeDecoder([D, T], thresholds=np.int64(2), eos_token_id=np.int32(2))
    want = dec.generate([[0, 1], [2]], max_new_tokens=5, seeds=[4, 5]).tokens
    for prompts, seeds in (
        ([np.array([0, 1]), torch.tensor([2])], np.array([4, 5])),
        (torch.tensor([[0, 1]]), torch.tensor([4])),
        ([[np.int64(0), torch.tensor(1)], [2]], [np.int64(4), torch.tensor(5)]),
    ):
        got = dec.generate(prompts, max_new_tokens=np.int64(5), seeds=seeds).tokens
        assert got == want[: len(got)]
    assert dec.thresholds == (2,) and dec.eos_ids == (2,)


# ------------------------------------------------------------------------ lengths and memory


def test_context_length_is_checked_up_front(tiny):
    model, tok = tiny
    limit = model.config.max_position_embeddings
    dec = SpeculativeDecoder(["ngram", model], tokenizer=tok, eos_token_id=None)
    with pytest.raises(ValueError, match=f"max_new_tokens: .* exceeds the context length {limit}"):
        dec.generate(["abc"], max_new_tokens=10**7)
    with pytest.raises(ValueError, match="context length"):
        dec.generate([[5] * (limit + 1)], max_new_tokens=1)


def test_buffers_grow_with_the_tokens_generated_not_max_new_tokens(toy):
    """max_new_tokens = 10**6 with an EOS that comes early: the contexts a level sees stay a few
    dozen wide (the old engine sized them to prompt + max_new_tokens up front)."""
    rec = Recorder(3)
    eos_always = Recorder(3, lambda B, n: torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(B, n, 3))  # a target of no context limit
    dec = SpeculativeDecoder([rec, eos_always], thresholds=3, eos_token_id=2)
    res = dec.generate([[0, 1, 0]] * 4, max_new_tokens=10**6, seeds=[0, 1, 2, 3])
    assert res.finish_reasons == ["eos"] * 4 and all(r == [2] for r in res.tokens)
    assert max(rec.widths) < 40


def test_long_generation_keeps_the_row_widths_close_to_the_lengths(toy):
    T, D = toy
    rec = Recorder(3)
    res = SpeculativeDecoder([rec, TableModel([toy_pair(3, 0)[0]], "t")], thresholds=1, eos_token_id=None).generate([[0]], max_new_tokens=30, seeds=[9])
    assert len(res.tokens[0]) == 30 and max(rec.widths) <= 2 * (1 + 30 + 4)


def test_metrics_target_rounds_is_filled(toy):
    T, D = toy
    m = SpeculativeDecoder([D, T], thresholds=2, eos_token_id=None).generate([[0], [1]], max_new_tokens=6, seeds=[1, 2]).metrics
    assert m.target_rounds == m.levels[-1].rounds > 0
    assert m.tokens_per_target_call is not None and math.isfinite(m.tokens_per_target_call)


def test_table_model_of_a_single_token_vocabulary():
    """V = 1 used to loop for ever sizing the context codes; its only law is the constant token."""
    from hsd_ref import TableLM

    one = TableModel([TableLM.context_free((1,))], "one")
    res = SpeculativeDecoder([one, one], thresholds=2, eos_token_id=None).generate([[0, 0]], max_new_tokens=5, seeds=[1])
    assert res.tokens == [[0] * 5]


def test_finished_rows_are_dropped_lazily_off_the_cpu(tiny, monkeypatch):
    """The GPU policy of hsd_fast.engine.decoder._compact_due (finished rows ride along, inactive,
    until at most half the rows are live), forced on the CPU: the same tokens and finish reasons as
    dropping each row when it finishes, with fewer cache compactions."""
    from hsd_fast.engine import decoder

    model, tok = tiny
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19]]
    eos = list(range(2, 60, 3))  # many EOS ids: rows finish at different iterations

    def run(policy):
        monkeypatch.setattr(decoder, "_compact_due", policy)
        dec = SpeculativeDecoder(["ngram", model], thresholds=3, eos_token_id=eos)
        be = dec.levels[-1].backend
        calls = []
        orig = be.select_rows
        monkeypatch.setattr(be, "select_rows", lambda rows: calls.append(rows.numel()) or orig(rows))
        res = dec.generate(prompts, max_new_tokens=12, seeds=list(range(6)))
        return res, calls

    eager, eager_calls = run(lambda n_live, n_rows, device: True)
    lazy, lazy_calls = run(lambda n_live, n_rows, device: 2 * n_live <= n_rows)
    assert lazy.tokens == eager.tokens and lazy.finish_reasons == eager.finish_reasons
    assert "eos" in eager.finish_reasons and len(set(map(len, eager.tokens))) > 2  # rows did finish apart
    assert len(lazy_calls) < len(eager_calls)
    assert lazy.metrics.new_tokens == eager.metrics.new_tokens


@pytest.mark.parametrize("allowed", [None, [0, 2]])
def test_a_drafter_proposing_an_id_outside_the_vocabulary_is_a_value_error(toy, allowed):
    """The drafter's ids are checked at the iteration's host read; until then an out-of-range id must
    not index the vocabulary map (with a restricted vocabulary that was an IndexError)."""
    T, _ = toy

    class Wild:
        name = "wild"

        def propose(self, seq, lens, n):
            return torch.full((seq.shape[0], n), 10**6, dtype=torch.int64)

    dec = SpeculativeDecoder([Wild(), T], thresholds=2, allowed_ids=allowed, eos_token_id=None)
    with pytest.raises(ValueError, match=r"levels\[0\]: drafter wild proposed an id outside \[0, 3\)"):
        dec.generate([[0, 1]], max_new_tokens=4)
