"""Trained early-exit heads (hsd_fast.exits; docs/early-exit.md).

Oracles, none computed by the code under test:

* hand values of the top-k-coarsened KL (written out with ``math``);
* the exit's law recomputed from the HF model's own ``output_hidden_states`` (pre-norm hidden state of
  layer ``d``) and the head's weight read straight from its safetensors file, then ``h + h W``, the
  final norm and the LM head by hand;
* plain greedy decoding of the full model, and ``hsd_ref.Hierarchy`` draw for draw (exact TableLMs of
  those recomputed laws) for the engine with a trained-exit level;
* the exact target law (hsd_ref) for a G test of the engine's output with a trained-exit middle level.

Tiny float64 Llama models with the character tokenizer; every run is seeded.
"""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from hsd_fast.engine import CachedLM, EarlyExit, SpeculativeDecoder
from hsd_fast.engine.refverify import exact_row
from hsd_fast.exits import LinearHead, TrainConfig, coarse_kl, find_head, list_heads, load_head, model_sha256, train_exit, verify_heads
from hsd_fast.exits.text import stdlib_modules, token_sequences
from hsd_fast.models import CorruptCacheError, InsufficientMemoryError
from hsd_fast.tiny import tiny_pair
from hsd_fast.warp import Warp
from hsd_ref import TableLM
from hsd_ref.registry import get_scheme
from hsd_ref.schemes.hierarchy import Hierarchy
from tests.helpers import Replay, plain_greedy

F64 = torch.float64
LAYER = 2
PROMPTS = ["def add(a, b):\n    return", "import os\nimport", "class Foo:\n    def __init__(self"]
CFG = TrainConfig(layer=LAYER, tokens=2048, seq_len=128, per_module=256, epochs=3, lr=3e-3, batch=128, heldout=0, checkpoint_every=4)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache root, also as $HSD_CACHE (what ``head="trained"`` reads) for the module."""
    root = tmp_path_factory.mktemp("hsd_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSD_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def trained(cache):
    """(draft, target, tokenizer, head folder): a linear head at layer 2 of a 4-layer float64 target."""
    draft, target, tok = tiny_pair(0, target_layers=4, draft_layers=4, noise=0.05, tokenizer="chars", dtype=F64)
    folder = train_exit(target, tok, CFG, cache_dir=cache, progress=False, log=lambda msg: None)
    return draft, target, tok, folder


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference_exit_logits(model, folder, ids):
    """The trained exit's logits after every prefix of ``ids``, by hand (module docstring)."""
    W = load_file(str(folder / "head.safetensors"))["weight"].to(F64)
    h = model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states[LAYER][0]  # after LAYER layers
    return model.lm_head(model.model.norm(h + h @ W))


# ############################################################ the loss


def test_coarse_kl_hand_values():
    p = [0.5, 0.3, 0.15, 0.05]
    student = torch.zeros(1, 4, dtype=F64)  # q uniform: 1/4 each
    logp = torch.tensor([p], dtype=F64).log()
    top_ids = torch.tensor([[0, 1]])
    tail = torch.tensor([math.log(0.2)], dtype=F64)
    got = float(coarse_kl(student, top_ids, logp[:, :2].float(), tail.float())[0])
    want = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert got == pytest.approx(want, abs=1e-6)
    full = sum(pi * math.log(pi / 0.25) for pi in p)
    assert got < full  # a lower bound of the full KL ...
    every = float(coarse_kl(student, torch.tensor([[0, 1, 2, 3]]), logp.float(), torch.tensor([-math.inf]))[0])
    assert every == pytest.approx(full, abs=1e-6)  # ... equal to it with an empty tail


def test_coarse_kl_is_zero_when_student_equals_teacher():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.1, 3.0]])
    logp = logits.log_softmax(-1)
    top, ids = logp.topk(2)
    tail = logp.scatter(1, ids, -math.inf).logsumexp(-1)
    assert abs(float(coarse_kl(logits, ids, top, tail)[0])) < 1e-6


# ############################################################ the head in the engine


def test_zero_linear_head_is_the_untrained_exit(trained):
    _, target, tok, _ = trained
    be = CachedLM(target)
    be.add_exit(LAYER)
    seq = torch.tensor([ids_of(tok, PROMPTS[0])])
    lens = torch.tensor([seq.shape[1]])
    plain = be.logits(LAYER, seq, lens, 3)
    zero = LinearHead(LAYER, target.config.hidden_size)
    assert torch.equal(be.logits(LAYER, seq, lens, 3, head=zero), plain)


def test_cached_logits_with_head_match_the_reference_with_rollback(trained):
    _, target, tok, folder = trained
    head = load_head(folder, target, LAYER)
    be = CachedLM(target)
    be.add_exit(LAYER)
    rows = [ids_of(tok, p) for p in PROMPTS]
    S = max(map(len, rows)) + 4
    seq = torch.zeros(3, S, dtype=torch.int64)
    for b, r in enumerate(rows):
        seq[b, : len(r)] = torch.tensor(r)
    lens = torch.tensor([len(r) for r in rows])

    def check(seq, lens, n_out):
        got = be.logits(LAYER, seq, lens, n_out, head=head)
        for b in range(3):
            want = reference_exit_logits(target, folder, seq[b, : int(lens[b])].tolist())[-n_out:]
            assert torch.allclose(got[b], want, atol=1e-10, rtol=0)

    be.logits(4, seq, lens, 1)  # the full model fills the shared cache first
    check(seq, lens, 2)
    seq2 = seq.clone()
    seq2[1, 2] = 40  # rewrite a token inside row 1: its cache is recomputed from there
    seq2[0, lens[0] : lens[0] + 2] = torch.tensor([5, 6])
    check(seq2, lens + torch.tensor([2, 0, 1]), 3)


def test_trained_exit_beats_untrained_exit_on_heldout_text(trained):
    """Seeded: held-out stdlib modules (never trained on), E[min(p, q)] and KL recomputed by hand."""
    _, target, tok, folder = trained
    rows, _ = token_sequences(tok, 1024, seq_len=128, per_module=256, split="heldout")
    W = load_file(str(folder / "head.safetensors"))["weight"].to(F64)
    sums = {"untrained": [0.0, 0.0], "trained": [0.0, 0.0]}
    with torch.no_grad():
        for row in rows:
            out = target(row[None], output_hidden_states=True)
            p = out.logits[0].softmax(-1)
            h = out.hidden_states[LAYER][0]
            for name, x in (("untrained", h), ("trained", h + h @ W)):
                q = target.lm_head(target.model.norm(x)).softmax(-1)
                sums[name][0] += float(torch.minimum(p, q).sum())
                sums[name][1] += float((p * (p.log() - q.log())).sum())
    n = rows.numel()
    e_untrained, e_trained = sums["untrained"][0] / n, sums["trained"][0] / n
    kl_untrained, kl_trained = sums["untrained"][1] / n, sums["trained"][1] / n
    assert e_trained > e_untrained + 0.1, (e_untrained, e_trained)
    assert kl_trained < 0.7 * kl_untrained, (kl_untrained, kl_trained)
    # the training text and the held-out text share no module
    assert not {p.name for p in stdlib_modules("train")} & {p.name for p in stdlib_modules("heldout")}


def test_greedy_with_a_trained_exit_equals_plain_greedy(trained):
    draft, target, tok, _ = trained
    n = 16
    for levels in ([EarlyExit(target, LAYER, head="trained"), target],
                   ["ngram", EarlyExit(target, LAYER, head="trained"), target],
                   [draft, EarlyExit(target, LAYER, head="trained"), target]):
        dec = SpeculativeDecoder(levels, temperature=0, tokenizer=tok, eos_token_id=None, thresholds=3)
        res = dec.generate(PROMPTS, max_new_tokens=n)
        for b, p in enumerate(PROMPTS):
            assert res.tokens[b] == plain_greedy(target, ids_of(tok, p), n)
        assert dec.levels[-2].name.endswith("+linear")


def _table(fn_logits, prompt, warp, V):
    @torch.no_grad()
    def fn(ctx):
        return exact_row(warp.probs(fn_logits(list(prompt) + list(ctx))[-1]))

    return TableLM(V, fn, "hf")


@pytest.mark.parametrize("schemes,thresholds", [(("tokenwise", "block"), (2, 4)), (("block", "hsd_capped"), (3, 2))])
def test_sampling_with_a_trained_exit_matches_hsd_ref_draw_for_draw(trained, schemes, thresholds):
    """The engine's exact check with a trained-exit middle level: draft -> trained exit -> target."""
    draft, target, tok, folder = trained
    warp = Warp(temperature=0.9, top_k=40)
    dec = SpeculativeDecoder([draft, EarlyExit(target, LAYER, head=folder), target], scheme=list(schemes), thresholds=thresholds,
                             temperature=0.9, top_k=40, tokenizer=tok, eos_token_id=None)
    seeds, n = [5, 6], 12
    res = dec.generate(PROMPTS[:2], max_new_tokens=n, seeds=seeds)
    V = dec.vocab_size
    full = lambda m: (lambda ids: m(torch.tensor([ids])).logits[0])  # noqa: E731
    for b in range(2):
        p = ids_of(tok, PROMPTS[b])
        t, d = _table(full(target), p, warp, V), _table(full(draft), p, warp, V)
        mid = _table(lambda ids: reference_exit_logits(target, folder, ids), p, warp, V)
        h = Hierarchy(middles=[mid], verifiers=[get_scheme(s) for s in schemes], thresholds=thresholds[:-1])
        rng, out = Replay(seeds[b]), ()
        while len(out) < n:
            out += h.sample_iteration(t, d, out, thresholds[-1], rng).tokens
        assert res.tokens[b] == list(out[:n]), b


def test_statistical_check_with_a_trained_exit_level(trained):
    """G test (false failure 1e-6) of 6000 3-token samples against the exact target law, over 4
    allowed ids: draft -> trained exit -> target; the test's power against a planted 0.05 transfer is checked first."""
    from hsd_fast import fidelity as fid

    N = 6000
    draft, target, tok, folder = trained
    prompt = ids_of(tok, PROMPTS[0])
    with torch.no_grad():
        allowed = sorted(target(torch.tensor([prompt])).logits[0, -1].topk(4).indices.tolist())
    ids = torch.tensor(allowed)

    @torch.no_grad()
    def fn(ctx):
        logits = target(torch.tensor([prompt + [allowed[c] for c in ctx]])).logits[0, -1]
        return exact_row(torch.softmax(logits[ids], -1))

    codes, probs = fid.law_arrays(TableLM(4, fn, "t").sequence_law(3), 4)
    planted, _, _ = fid.planted_bias_law(codes, probs, 0.05)
    assert fid.power(codes, probs, planted, N, 1e-6, mc_reps=200).power >= 0.99
    dec = SpeculativeDecoder([draft, EarlyExit(target, LAYER, head="trained"), target], scheme=["tokenwise", "block"],
                             thresholds=(2, 2), allowed_ids=allowed, tokenizer=tok, eos_token_id=None)
    index = {a: i for i, a in enumerate(allowed)}
    rows = []
    for start in range(0, N, 1000):
        res = dec.generate([prompt] * 1000, max_new_tokens=3, seeds=list(range(start, start + 1000)))
        rows.extend([index[x] for x in r] for r in res.tokens)
    test = fid.g_test(fid.encode(torch.tensor(rows), 4), codes, probs, 1e-6)
    assert not test.rejected, test


# ############################################################ the cache of heads


def test_head_folder_name_carries_model_sha_layer_kind_and_training_hash(trained):
    _, target, _, folder = trained
    meta = json.loads((folder / "head.json").read_text())
    sha = model_sha256(target)
    assert len(sha) == 64 and meta["model_sha256"] == sha and len(meta["train_hash"]) == 64
    assert folder.name == f"{sha[:16]}-L{LAYER}-linear-{meta['train_hash'][:16]}"
    assert meta["inputs"]["text"]["source"] == "python-stdlib" and meta["inputs"]["top_k"] == 64
    assert sorted(p.name for p in folder.iterdir()) == [".hsd_verified.json", "head.json", "head.safetensors", "hsd_manifest.json"]


def test_training_hash_changes_with_every_input(trained, cache):
    """Another seed, lr or top-k is another head (names differ); the same arguments find the sealed one."""
    _, target, tok, folder = trained
    assert train_exit(target, tok, CFG, cache_dir=cache, progress=False, log=lambda m: None) == folder
    small = dict(tokens=256, epochs=1, heldout=0)
    names = {train_exit(target, tok, TrainConfig(layer=LAYER, seq_len=128, per_module=256, **small, **kw), cache_dir=cache,
                        progress=False, log=lambda m: None).name for kw in ({}, {"seed": 1}, {"lr": 2e-3}, {"top_k": 8})}
    assert len(names) == 4 and folder.name not in names
    newest = find_head(target, LAYER)  # the newest of the five is found by head="trained"
    assert newest == list_heads(target)[0][0] and newest.name in names


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    _, target, tok = tiny_pair(1, target_layers=3, draft_layers=3, tokenizer="chars", dtype=F64)
    cfg = TrainConfig(layer=1, tokens=512, seq_len=64, per_module=128, epochs=2, batch=64, heldout=0, checkpoint_every=3)
    quiet = dict(progress=False, log=lambda m: None)
    run = train_exit(target, tok, cfg, cache_dir=tmp_path / "a", stop_after=5, **quiet)
    assert run.name.startswith("run-") and (run / "state.pt").is_file() and not list_heads(target, cache_dir=tmp_path / "a")
    resumed = train_exit(target, tok, cfg, cache_dir=tmp_path / "a", **quiet)
    straight = train_exit(target, tok, cfg, cache_dir=tmp_path / "b", **quiet)
    assert resumed.name == straight.name and not run.exists()
    a = load_file(str(resumed / "head.safetensors"))["weight"]
    b = load_file(str(straight / "head.safetensors"))["weight"]
    assert torch.equal(a, b) and a.abs().max() > 0


def test_corrupted_head_is_refused_like_a_model_file(trained, tmp_path):
    _, target, tok, folder = trained
    bad = tmp_path / "exits" / folder.parent.name / folder.name
    bad.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(folder, bad)
    assert verify_heads(target, cache_dir=tmp_path) == [bad]
    data = bytearray((bad / "head.safetensors").read_bytes())
    data[-1] ^= 1  # same size, one bit flipped
    (bad / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="head.safetensors"):
        verify_heads(target, cache_dir=tmp_path)
    with pytest.raises(CorruptCacheError, match="sha256"):
        load_head(bad, target, LAYER)
    with pytest.raises(CorruptCacheError):
        find_head(target, LAYER, cache_dir=tmp_path)


def test_missing_or_foreign_heads_are_value_errors(trained, tmp_path):
    draft, target, tok, folder = trained
    with pytest.raises(ValueError, match="hsd-fast train-exit .* --layer 1"):
        SpeculativeDecoder([EarlyExit(target, 1, head="trained"), target])
    with pytest.raises(ValueError, match="sha256"):
        load_head(folder, draft, LAYER)  # trained on another model
    with pytest.raises(ValueError, match="layer 2, not layer 3"):
        SpeculativeDecoder([EarlyExit(target, 3, head=folder), target])
    with pytest.raises(ValueError, match="not a trained exit-head folder"):
        SpeculativeDecoder([EarlyExit(target, LAYER, head=tmp_path), target])
    with pytest.raises(ValueError, match="EarlyExit head"):
        SpeculativeDecoder([EarlyExit(target, LAYER, head=3), target])
    with pytest.raises(ValueError, match="layer"):
        TrainConfig(layer=4).check(4)
    with pytest.raises(ValueError, match="top_k"):
        TrainConfig(layer=1, top_k=0).check(4)


def test_insufficient_memory_is_a_clear_error(trained, monkeypatch, tmp_path):
    _, target, tok, _ = trained
    monkeypatch.setattr("hsd_fast.exits.train.available_memory_bytes", lambda device: 1000)
    with pytest.raises(InsufficientMemoryError, match="--tokens"):
        train_exit(target, tok, TrainConfig(layer=1, tokens=256, seq_len=128, per_module=256), cache_dir=tmp_path, progress=False)


def test_cli_train_verify_and_generate_with_exit_trained(trained, tmp_path, capsys, monkeypatch):
    from hsd_fast.cli import main
    from hsd_fast.generate_cli import parse_exit

    _, target, tok, _ = trained
    model_dir = tmp_path / "tiny"
    copy.deepcopy(target).to(torch.float32).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    monkeypatch.setenv("HSD_CACHE", str(tmp_path / "cache"))
    common = [str(model_dir), "--dtype", "float32", "--quiet", "--threads", "1"]
    assert main(["train-exit", *common, "--layer", "1", "--tokens", "256", "--seq-len", "64", "--epochs", "1"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert os.path.basename(folder).split("-")[1:3] == ["L1", "linear"]
    assert main(["train-exit", *common, "--verify"]) == 0
    assert "all files match" in capsys.readouterr().out
    gen = ["generate", "--target", str(model_dir), "--dtype", "float32", "--temperature", "0", "--max-new-tokens", "4",
           "--no-eos", "--prompt", PROMPTS[0]]
    assert main([*gen, "--draft", "exit:1:trained"]) == 0
    assert "+linear" in capsys.readouterr().out
    assert main([*gen, "--draft", "exit:2:trained"]) == 2  # no head at layer 2
    assert "hsd-fast train-exit" in capsys.readouterr().err
    assert parse_exit("exit:3", "m") == EarlyExit("m", 3)
    for bad in ("exit:3:fancy", "exit:x", "exit:1:trained:2"):
        with pytest.raises(ValueError, match="exit:D:trained"):
            parse_exit(bad, "m")
    assert main(["train-exit", *common]) == 2  # no --layer
    assert "--layer" in capsys.readouterr().err


def test_block_head_trains_loads_and_is_refused_by_the_engine(tmp_path):
    """A block head starts as a copy of the last layer, trains, round-trips through its folder, and is
    refused by the engine (it would need cache positions of its own) with a ValueError saying so."""
    _, target, tok = tiny_pair(2, target_layers=3, draft_layers=3, tokenizer="chars", dtype=F64)
    cfg = TrainConfig(layer=1, head="block", tokens=256, seq_len=64, per_module=128, epochs=1, batch=128, heldout=0)
    folder = train_exit(target, tok, cfg, cache_dir=tmp_path, progress=False, log=lambda m: None)
    assert folder.name.split("-")[1:3] == ["L1", "block"]
    head = load_head(folder, target, 1)
    last = target.model.layers[-1].mlp.down_proj.weight.float()
    assert head.block.mlp.down_proj.weight.shape == last.shape and not torch.equal(head.block.mlp.down_proj.weight, last)
    with pytest.raises(ValueError, match="linear exit heads only"):
        SpeculativeDecoder([EarlyExit(target, 1, head=folder), target])


# ############################################################ hsd-fast bench and hsd-fast models with trained heads


def _tiny_bench_models():
    from hsd_fast.bench.families import get_family

    return get_family("tiny").load(F64, torch.device("cpu"))


def _only_head(folder, root, monkeypatch):
    """A cache (also $HSD_CACHE) holding a copy of ``folder`` alone: the head that ``exit:2:trained``
    finds (other tests of this module add newer, weaker heads to the module's cache)."""
    import shutil

    copy_ = root / "exits" / folder.parent.name / folder.name
    shutil.copytree(folder, copy_)
    monkeypatch.setenv("HSD_CACHE", str(root))
    return copy_


def test_bench_calibration_of_a_trained_exit_matches_a_hand_computation(trained, tmp_path, monkeypatch):
    """``exit:2:trained`` in the bench: level, cost and acceptance.  Oracle: E[min(p, q)] along the
    target's own (seeded) continuation, with the exit's law recomputed by hand from the head file."""
    from hsd_fast.bench.calibrate import calibrate

    _, target, tok, folder = trained
    folder = _only_head(folder, tmp_path / "cache", monkeypatch)
    models = _tiny_bench_models()
    assert model_sha256(models.target) == model_sha256(target)  # the bench's tiny target is this module's
    spec = models.level("exit:2:trained")
    assert isinstance(spec, EarlyExit) and spec.layers == LAYER and models.trained_head(LAYER)[0] == folder
    assert torch.equal(spec.head.weight.detach(), load_file(str(folder / "head.safetensors"))["weight"])
    assert models.level("exit:2").head is None
    ids = ids_of(tok, PROMPTS[0])
    calib = calibrate(models, ["exit:2", "exit:2:trained", "target"], [ids], 1.0, new_tokens=8, positions=(1, 2), reps=1)
    assert calib.heads == {"exit:2:trained": folder.name} and set(calib.costs) == {"target"}
    y = SpeculativeDecoder([target], temperature=1.0, eos_token_id=None).generate([ids], max_new_tokens=8, seeds=[0]).tokens[0]
    seq = ids + y
    rows = slice(len(ids) - 1, len(seq) - 1)  # the laws of y_1 .. y_n
    with torch.no_grad():
        out = target(torch.tensor([seq]), output_hidden_states=True)
        p = out.logits[0, rows].softmax(-1)
        untrained = target.lm_head(target.model.norm(out.hidden_states[LAYER][0]))[rows].softmax(-1)
    trained_q = reference_exit_logits(target, folder, seq)[rows].softmax(-1)
    want = {"exit:2:trained": float(torch.minimum(trained_q, p).sum(-1).mean()),
            "exit:2": float(torch.minimum(untrained, p).sum(-1).mean())}
    for key, value in want.items():
        assert calib.acceptance[(key, "target")] == pytest.approx(value, abs=1e-9)
    assert abs(want["exit:2:trained"] - want["exit:2"]) > 0.01  # the head is really applied
    assert calib.acceptance[("exit:2", "exit:2:trained")] == pytest.approx(float(torch.minimum(untrained, trained_q).sum(-1).mean()), abs=1e-9)
    curves = calib.curves(["exit:2", "exit:2:trained"])
    assert float(curves["exit:2:trained"](1)) == float(curves["exit:2"](1))


def test_bench_runs_trained_exit_configurations_and_skips_them_without_a_head(trained, tmp_path, monkeypatch):
    """A one-prompt tiny suite with a fixed self-speculation run and a HiSpec plan: run with the cached
    head (each record names it); with an empty cache both are skipped, saying how to train the head;
    a corrupt head stops the benchmark; a Qwen family names the exact ``hsd-fast train-exit`` command."""
    from hsd_fast.bench.families import Family, LevelUnavailable, Models
    from hsd_fast.bench.runner import Settings, run_suites
    from hsd_fast.bench.suites import PlanSpec, RunSpec, Suite

    _, target, tok, folder = trained
    folder = _only_head(folder, tmp_path / "cache", monkeypatch)
    suite = Suite("tiny-trained", "tiny", "float64", "humaneval", 1, temperatures=(1.0,), calibration_prompts=1,
                  calibration_tokens=8, max_threshold=2,
                  runs=(RunSpec("autoregressive", "engine", group="baseline"),
                        RunSpec("self-spec K=2", "engine", ("exit:2:trained", "target"), "tokenwise", (2,))),
                  plans=(PlanSpec("HiSpec", ("draft", "exit:2:trained"), through_all=True),))

    def bench(work):
        logs = []
        records = run_suites([suite], Settings(work=work, max_new_tokens=6, threads=1, progress=False, log=logs.append))
        return records, json.loads((work / "calibration.json").read_text())["tiny-trained@1.0"], "\n".join(logs)

    records, calib, log = bench(tmp_path / "with")
    assert {r["run"] for r in records} == {"autoregressive", "self-spec K=2", "HiSpec (tokenwise)"}
    for r in records:
        if r["run"] != "autoregressive":
            assert r["heads"] == {"exit:2:trained": folder.name}
            assert any(lv["name"].endswith(f"[:{LAYER}]+linear") for lv in r["metrics"]["levels"])
    assert calib["plans"]["HiSpec"]["chain"] == ["draft", "exit:2:trained", "target"]
    assert calib["heads"] == {"exit:2:trained": folder.name} and folder.name in log

    monkeypatch.setenv("HSD_CACHE", str(tmp_path / "empty"))
    records, calib, log = bench(tmp_path / "without")
    assert {r["run"] for r in records} == {"autoregressive"}
    assert calib["plans"]["HiSpec"]["chain"] is None and "no trained exit head" in calib["plans"]["HiSpec"]["reason"]
    assert "skipping the runs and plans with exit:2:trained" in log and "TrainConfig(layer=2)" in log

    qwen_like = Models(Family("q", "qwen2.5-coder-1.5b", None), target, tok, None, None, ())
    with pytest.raises(LevelUnavailable, match="`hsd-fast train-exit qwen2.5-coder-1.5b --layer 2`"):
        qwen_like.level("exit:2:trained")
    with pytest.raises(ValueError, match="4 layers; an exit needs 1 <= D < 4"):
        qwen_like.level("exit:4:trained")
    with pytest.raises(ValueError, match="level key 'exit:2:foo'"):
        qwen_like.level("exit:2:foo")

    import shutil

    bad = tmp_path / "bad" / "exits" / folder.parent.name / folder.name
    shutil.copytree(folder, bad)
    data = bytearray((bad / "head.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "head.safetensors").write_bytes(bytes(data))
    monkeypatch.setenv("HSD_CACHE", str(tmp_path / "bad"))
    with pytest.raises(CorruptCacheError, match="head.safetensors"):
        bench(tmp_path / "corrupt")


def test_models_verify_and_list_cover_the_trained_heads(trained, tmp_path, capsys):
    """``hsd-fast models verify all`` re-hashes every head (OK / CORRUPT naming the file, exit status 2),
    ``models list`` lists them; a cache copy, so the module's heads stay intact."""
    import shutil

    from hsd_fast.cli import main

    _, target, _, folder = trained
    copy_ = tmp_path / "exits" / folder.parent.name / folder.name
    shutil.copytree(folder, copy_)
    meta = json.loads((folder / "head.json").read_text())
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["models", "list", *cache]) == 0
    out = capsys.readouterr().out
    assert "trained exit heads" in out and str(copy_) in out and meta["train_hash"][:16] in out
    assert main(["models", "verify", "all", *cache]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("exit head"))
    assert line == (f"exit head {folder.parent.name} layer {LAYER} linear (model sha256 {model_sha256(target)[:16]}, "
                    f"training hash {meta['train_hash'][:16]}): OK")
    data = bytearray((copy_ / "head.safetensors").read_bytes())
    data[len(data) // 2] ^= 1  # one byte of the head's weights, same size
    (copy_ / "head.safetensors").write_bytes(bytes(data))
    assert main(["models", "verify", "all", *cache]) == 2
    out, err = capsys.readouterr()
    assert ": CORRUPT: " in out and "head.safetensors has sha256" in out
    assert "hsd-fast models: error: 1 corrupt:" in err and "head.safetensors" in err and "hsd-fast train-exit" in err
    (copy_ / "head.json").write_text("{")  # an unreadable head.json is listed and reported too (manifest facts)
    assert main(["models", "list", *cache]) == 0 and str(copy_) in capsys.readouterr().out
    assert main(["models", "verify", "all", *cache]) == 2
    assert "head.json" in capsys.readouterr().err
