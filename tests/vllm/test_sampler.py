"""Unit tests of hsd_fast.vllm on hand-made inputs in vLLM 0.32's flattened layout (no model).

The replacement ``rejection_sample`` must equal, request by request and draw for draw,
``hsd_fast.kernels.verify`` on that request alone (random requests) and the greedy rule (greedy
requests), whatever the other requests of the batch.  Expected values are built here from the
definitions in hsd_fast/vllm/layout.py's docstring, not with the code under test.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

vllm = pytest.importorskip("vllm", reason="tests/vllm need vLLM (run .ci/vllm, which makes its own venv)")

import torch  # noqa: E402

import hsd_fast.vllm as plugin  # noqa: E402
from hsd_fast.kernels import verify  # noqa: E402
from hsd_fast.vllm.sampler import EXPECTED_PARAMETERS, expand_batch_to_tokens, make_rejection_sample  # noqa: E402
from vllm.v1.sample import rejection_sampler as rs  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402

V = 11
MAX_SPEC = 4


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    """vLLM's CPU kernels for its greedy rejection kernel, as a worker registers them at start-up."""
    from vllm.platforms import current_platform

    current_platform.register_triton_kernel_overrides()


def _batch(seed: int, with_draft_probs: bool):
    """Six requests in vLLM's layout: ragged drafts (3, 0, 2, 4, 1, 3), greedy and random rows mixed,
    seeded and unseeded random rows, a random row with no draft, a random row whose draft is cut
    by a -1 placeholder at position 2, and (with draft probabilities) a random row whose draft
    distribution equals the target's, so that its bonus token is always emitted."""
    g = torch.Generator().manual_seed(seed)
    n = [3, 0, 2, 4, 1, 3]
    temperature = torch.tensor([1.0, 0.7, 0.0, 1.0, 0.5, 0.0])  # rows 2 and 5 greedy
    seeds = {0: 11, 3: 33}  # rows 0 and 3 seeded; rows 1 and 4 use the default generator
    T = sum(n)
    logits = torch.randn(T, V, generator=g) * 2  # [T, V]
    q = torch.softmax(torch.randn(T, V, generator=g), dim=-1)  # [T, V]
    q[0:3] = torch.softmax(logits[0:3], dim=-1)  # row 0: q == p, so every scheme accepts it whole
    drafts = torch.multinomial(q, 1, generator=g).reshape(T).to(torch.int32)  # [T]
    drafts[7] = -1  # row 3 (starts at 5): positions 0, 1 real, then the placeholder, then one more
    drafts[8] = int(logits[8].argmax())
    # make row 2 (greedy, starts at 3) accept its first token and reject its second
    drafts[3] = int(logits[3].argmax())
    drafts[4] = (int(logits[4].argmax()) + 1) % V
    # row 5 (greedy, starts at 10): its whole draft is the argmax, so it gets the bonus token
    for t in (10, 11, 12):
        drafts[t] = int(logits[t].argmax())
    bonus = torch.randint(0, V, (len(n), 1), generator=g)  # [B, 1]
    return SimpleNamespace(
        n=n, temperature=temperature, seeds=seeds, logits=logits,
        q=q if with_draft_probs else None, drafts=drafts, bonus=bonus,
    )


def _generators(seeds):
    return {b: torch.Generator().manual_seed(s) for b, s in seeds.items()}


def _metadata(batch):
    greedy = batch.temperature == 0
    return SimpleNamespace(
        all_greedy=bool(greedy.all()), all_random=bool((~greedy).all()),
        temperature=batch.temperature, generators=_generators(batch.seeds),
    )


def _call(scheme, batch, logits=None):
    fn = make_rejection_sample(scheme)
    cu = torch.tensor(batch.n).cumsum(0).to(torch.int32)
    return fn(
        batch.drafts, batch.n, MAX_SPEC, cu, batch.q,
        (batch.logits if logits is None else logits).clone(), batch.bonus, _metadata(batch),
    )


def _expected(scheme, batch, global_seed):
    """Row by row from the definitions: greedy rows by the argmax rule, random rows by verify on the
    request alone with its own generator (a fresh one seeded like vLLM's) or the default one."""
    torch.manual_seed(global_seed)
    gens = _generators(batch.seeds)
    rows = []
    start = 0
    for b, n in enumerate(batch.n):
        row = [-1] * (MAX_SPEC + 1)
        own = batch.drafts[start : start + n].tolist()
        bonus = int(batch.bonus[b, 0])
        if float(batch.temperature[b]) == 0:
            out = []
            for i, x in enumerate(own):
                top = int(batch.logits[start + i].argmax())
                out.append(top)
                if x != top:
                    break
            else:
                out.append(bonus)
            row[: len(out)] = out
        elif n == 0:
            row[0] = bonus
        else:
            k = own.index(-1) if -1 in own else n
            p = torch.softmax(batch.logits[start : start + n], dim=-1)  # [n, V]
            P = torch.zeros(1, k + 1, V)
            P[0, :k] = p[:k]
            if k < n:
                P[0, k] = p[k]
            else:
                P[0, k, bonus] = 1.0
            X = torch.tensor([own[:k]], dtype=torch.int64)
            if batch.q is None:
                Q = torch.zeros(1, k, V)
                for i, x in enumerate(own[:k]):
                    Q[0, i, x] = 1.0
            else:
                Q = batch.q[start : start + k].unsqueeze(0).clone()
            gen = gens.get(b)
            if gen is not None:
                res = verify(scheme, P, Q, X, generator=gen)
            else:
                res = verify(scheme, P, Q, X, draws=torch.rand((1, k + 1), dtype=torch.float64))
            row[: k + 1] = res.tokens[0].tolist()
        rows.append(row)
        start += n
    return rows


@pytest.mark.parametrize("scheme", ["tokenwise", "block", "hsd_capped"])
@pytest.mark.parametrize("with_draft_probs", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rejection_sample_equals_verify_row_by_row(scheme, with_draft_probs, seed):
    batch = _batch(seed, with_draft_probs)
    torch.manual_seed(1000 + seed)
    out = _call(scheme, batch)
    assert out.dtype == torch.int32 and tuple(out.shape) == (len(batch.n), MAX_SPEC + 1)
    assert out.tolist() == _expected(scheme, batch, 1000 + seed)


def test_greedy_rows_and_rows_without_drafts_have_their_fixed_outputs():
    batch = _batch(0, True)
    torch.manual_seed(5)
    out = _call("block", batch).tolist()
    # row 1: random, no draft -> its bonus token alone
    assert out[1] == [int(batch.bonus[1, 0]), -1, -1, -1, -1]
    # row 2: greedy, first draft token is the argmax, the second is not -> argmax, argmax
    assert out[2] == [int(batch.logits[3].argmax()), int(batch.logits[4].argmax()), -1, -1, -1]
    # row 5: greedy, whole draft is the argmax -> the draft then the bonus token
    assert out[5] == [*batch.drafts[10:13].tolist(), int(batch.bonus[5, 0]), -1]
    # row 3: cut at the placeholder (position 2): at most 3 tokens
    assert out[3][3:] == [-1, -1]
    # row 0: q == p, the draft is accepted whole and the bonus token follows
    assert out[0] == [*batch.drafts[0:3].tolist(), int(batch.bonus[0, 0]), -1]


def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch():
    batch = _batch(3, True)
    torch.manual_seed(7)
    full = _call("block", batch)
    torch.manual_seed(8)  # another default-generator state: only unseeded rows may change
    again = _call("block", batch)
    for b in batch.seeds:
        assert full[b].tolist() == again[b].tolist()


def test_all_greedy_batch_draws_no_randomness():
    batch = _batch(4, True)
    batch.temperature = torch.zeros(len(batch.n))
    torch.manual_seed(9)
    before = torch.get_rng_state()
    out = _call("block", batch)
    assert torch.equal(torch.get_rng_state(), before)
    assert out.tolist() == _expected("block", batch, 9)


def test_synthetic_mode_is_refused():
    batch = _batch(0, True)
    fn = make_rejection_sample("block")
    cu = torch.tensor(batch.n).cumsum(0).to(torch.int32)
    with pytest.raises(ValueError, match="synthetic_mode"):
        fn(batch.drafts, batch.n, MAX_SPEC, cu, batch.q, batch.logits, batch.bonus, _metadata(batch), synthetic_mode=True)


def test_invalid_target_rows_raise_instead_of_sampling():
    batch = _batch(0, True)
    bad = batch.logits.clone()
    bad[0, 0] = float("inf")  # softmax -> NaN row for random row 0
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="target_probs"):
        _call("block", batch, logits=bad)


def test_expand_batch_to_tokens_repeats_and_replaces():
    cu = torch.tensor([2, 5, 5, 6], dtype=torch.int32)
    temps = torch.tensor([0.5, 0.0, 2.0, 0.25])
    assert expand_batch_to_tokens(temps, cu, 6, replace_from=0, replace_to=1).tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 0.25]
    top_k = torch.tensor([5, 7, 9, 3], dtype=torch.int32)
    got = expand_batch_to_tokens(top_k, cu, 6)
    assert got.dtype == torch.int32 and got.tolist() == [5, 5, 7, 7, 7, 3]


def test_vllm_signatures_are_the_tested_ones():
    import inspect

    assert vllm.__version__ == plugin.TESTED_VLLM_VERSION
    assert tuple(inspect.signature(rs.rejection_sample).parameters) == EXPECTED_PARAMETERS
    assert tuple(inspect.signature(rs.expand_batch_to_tokens).parameters) == plugin.EXPAND_PARAMETERS
    fields = {f.name for f in dataclasses.fields(SamplingMetadata)}
    assert {"all_greedy", "all_random", "temperature", "generators"} <= fields


def test_switch_values_and_start_up_checks():
    assert plugin.selected_scheme({}) is None
    assert plugin.selected_scheme({"HSD_VLLM_VERIFY": " "}) is None
    assert plugin.selected_scheme({"HSD_VLLM_VERIFY": "hsd_capped"}) == "hsd_capped"
    with pytest.raises(ValueError, match="HSD_VLLM_VERIFY"):
        plugin.selected_scheme({"HSD_VLLM_VERIFY": "blocks"})
    with pytest.raises(RuntimeError, match="0.31.0"):
        plugin._check_vllm("0.31.0", None, False)
    with pytest.raises(RuntimeError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        plugin._check_vllm("0.32.0", None, True)
    with pytest.raises(RuntimeError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        plugin._check_vllm("0.32.0", True, False)
    plugin._check_vllm("0.32.0", False, True)  # V1 forced on a Triton machine: accepted
    plugin._check_vllm("0.32.0", None, True, needs_v1=False)  # HSD_VLLM_VERIFY=vllm: any runner


def test_register_refuses_an_unknown_scheme_and_is_inert_when_off(monkeypatch):
    monkeypatch.setenv("HSD_VLLM_VERIFY", "blok")
    with pytest.raises(ValueError, match="HSD_VLLM_VERIFY"):
        plugin.register()
    monkeypatch.delenv("HSD_VLLM_VERIFY")
    original = rs.rejection_sample
    plugin.register()
    assert rs.rejection_sample is original
