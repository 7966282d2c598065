"""hsd_fast.audit (``hsd-fast audit-engine``): the exact law, the verdicts, the CLI's errors.

Statistical tests here use the audit's own G test at false-failure probability 1e-6 per test
(``hsd_fast.fidelity.stats.ALPHA_PER_TEST``); each asserts the power of its test (>= 0.99 against
the planted transfer it is sized for) in the same test, so a pass is not a test that cannot fail.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from hsd_fast.audit.cells import Cell, select_cells
from hsd_fast.audit.law import OFF_SUPPORT_CODE, build_law, encode_samples, prefix_logits, warped_row
from hsd_fast.tiny import tiny_llama

ALLOWED = (40, 41, 42, 70)  # four ids of the character vocabulary
PROMPT = [50, 51, 52, 50, 51]


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_llama(1, tokenizer="chars")
    return model


def _independent_law(model, prompt, allowed, n, top_p):
    """The law by another route: one full-vocabulary forward per prefix (no batching, no head
    slicing), softmax over all 100 ids in float64, then restriction to A and renormalisation,
    top-p by hand, products in float."""
    law = {}
    for seq in itertools.product(allowed, repeat=n):
        mass = 1.0
        for j in range(n):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + list(seq[:j])])).logits[0, -1].to(torch.float64)
            full = torch.softmax(logits, -1)
            row = {a: float(full[a]) for a in allowed}
            total = sum(row.values())
            row = {a: v / total for a, v in row.items()}
            if top_p is not None:
                kept, before = {}, 0.0
                for a in sorted(row, key=lambda a: (-row[a], a)):
                    if before < top_p:
                        kept[a] = row[a]
                    before += row[a]
                total = sum(kept.values())
                row = {a: kept.get(a, 0.0) / total for a in allowed}
            mass *= row[seq[j]]
        law[seq] = mass
    return law


@pytest.mark.parametrize("top_p", [None, 0.8])
def test_exact_law_matches_an_independent_computation(tiny, top_p):
    logits = prefix_logits(tiny, PROMPT, ALLOWED, 2, chunk=5)  # chunks of 5 rows: batching must not matter
    law = build_law(logits, ALLOWED, 3, 1.0, top_p)
    ref = _independent_law(tiny, PROMPT, ALLOWED, 3, top_p)
    assert sum(law.law.values()) == 1  # exact
    for seq, p in ref.items():
        assert abs(float(law.law.get(seq, Fraction(0))) - p) < 1e-6, seq  # float32 forwards of different batch shapes
    assert all(isinstance(v, Fraction) for v in law.law.values())
    assert len(law.codes) == len(law.law) and np.all(np.diff(law.codes) > 0)
    for c, p in zip(law.codes, law.probs):
        assert float(law.law[law.decode(int(c))]) == p
    if top_p is None:
        assert len(law.law) == 4**3 and math.isinf(law.top_p_margin)
    else:
        assert len(law.law) < 4**3 and law.top_p_margin > 0


def test_warped_row_top_p_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.75 keeps the first two (mass before the third is 0.8)
    row, margin = warped_row(torch.tensor([0.5, 0.3, 0.15, 0.05]).log().double(), 1.0, 0.75)
    assert torch.allclose(row, torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert margin == pytest.approx(0.05)
    # temperature 2 on logits (0, ln 4): probabilities 1/3, 2/3
    row, _ = warped_row(torch.tensor([0.0, math.log(4.0)], dtype=torch.float64), 2.0, None)
    assert torch.allclose(row, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        warped_row(torch.zeros(2, dtype=torch.float64), 0.0, None)


def test_encode_samples_marks_off_support():
    codes = encode_samples([[40, 41, 70], [70, 70, 70], [40, 99, 41], [40, 41]], ALLOWED, 3)
    assert codes.tolist() == [0 * 16 + 1 * 4 + 3, 63, OFF_SUPPORT_CODE, OFF_SUPPORT_CODE]


def _law_samples(law, n, rng, bias=0.0):
    """``n`` sequences drawn by numpy from the law (with ``bias`` moved from the likeliest to the
    second likeliest sequence)."""
    probs = law.probs.copy()
    order = np.argsort(-probs)
    probs[order[0]] -= bias
    probs[order[1]] += bias
    picks = rng.choice(len(probs), size=n, p=probs / probs.sum())
    return [law.decode(int(law.codes[i])) for i in picks]


def test_verdicts_on_exact_and_biased_samples(tiny):
    """Samples drawn by numpy from the exact law PASS; with the likeliest sequence's mass moved by
    0.1 they FAIL: the test sized for power 0.99 against that transfer rejects it."""
    from hsd_fast.audit.run import judge_cell

    law = build_law(prefix_logits(tiny, PROMPT, ALLOWED, 2), ALLOWED, 3)
    cell = Cell("hsd", "tokenwise", "tiny")
    rng = np.random.default_rng(5)
    good = judge_cell(cell, _law_samples(law, 3000, rng), law, 0.1, seed=1)
    assert good["power"] >= 0.99 and good["verdict"] == "PASS", good
    assert good["planted_rejected"]
    bad = judge_cell(cell, _law_samples(law, 3000, rng, bias=0.1), law, 0.1, seed=2)
    assert bad["verdict"] == "FAIL", bad
    off = judge_cell(cell, _law_samples(law, 2999, rng) + [(40, 41, 99)], law, 0.1, seed=3)
    assert off["off_support"] == 1 and off["verdict"] == "FAIL"


def test_hsd_cell_passes_and_lossy_control_fails_on_tiny_models(tmp_path):
    """Our engine on the tiny pair passes; the accept-everything verifier through the same engine
    is rejected, and the report's power against the control's own law is >= 0.99.  A second run
    over the same sample directory re-judges the stored samples instead of drawing new ones."""
    from hsd_fast.audit.run import run_audit

    report = run_audit(["hsd/tokenwise/tiny/T=1", "control"], tv=0.2, quick=True, sample_dir=tmp_path)
    rows = {r["cell"]: r for r in report["results"]}
    hsd = rows["hsd/tokenwise/tiny/T=1"]
    ctrl = rows["control/accept_all/tiny/T=1"]
    assert hsd["verdict"] == "PASS" and hsd["power"] >= 0.99 and hsd["off_support"] == 0, hsd
    assert ctrl["verdict"] == "REJECTED (as required)" and ctrl["control_power"] >= 0.99, ctrl
    assert report["ok"]
    assert {"torch", "transformers", "hsd_commit"} <= set(report["versions"])
    again = run_audit(["hsd/tokenwise/tiny/T=1", "control"], tv=0.2, quick=True, sample_dir=tmp_path)
    for first, second in zip(report["results"], again["results"]):
        assert "cached" in second["info"] and "cached" not in first["info"]
        assert (second["statistic"], second["observed"]) == (first["statistic"], first["observed"])


def test_hf_assisted_generation_applies_the_mask_in_the_assistant(tiny):
    """What the report states about transformers: the user's processor list (mask, then the target's
    top-p) reaches the assistant's generate, which adds its own top-p again."""
    from hsd_fast.audit.engines import hf_processor_lists

    draft, _ = tiny_llama(2, tokenizer="chars")
    got = hf_processor_lists(tiny, draft, PROMPT, ALLOWED, 3, top_p=0.9)
    assert got["target_processors"][0] == ["AllowedIdsMaskProcessor", "TopPLogitsWarper"]
    assistant = got["assistant_processors"][0]
    assert "AllowedIdsMaskProcessor" in assistant and got["mask_calls_inside_assistant"] > 0
    assert assistant.count("TopPLogitsWarper") == 2


@pytest.mark.slow
def test_hf_assisted_cell_passes_on_tiny_models():
    from hsd_fast.audit.run import run_audit

    report = run_audit(["hf/assisted/tiny/T=1"], tv=0.2, quick=True)
    (row,) = report["results"]
    assert row["verdict"] == "PASS" and row["power"] >= 0.99, row


def test_select_cells():
    names = [c.name for c in select_cells(["hf/assisted"], quick=True)]
    assert names == ["hf/assisted/tiny/T=1", "hf/assisted/tiny/top_p=0.9"]
    assert any(c.engine == "control" for c in select_cells(["hsd"]))
    assert all(c.engine == "vllm" for c in select_cells(["vllm"]))
    with pytest.raises(ValueError, match="cells: unknown cell 'hff'"):
        select_cells(["hff"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["audit-engine", "sglang", "--out", "OUT"], "engines: unknown engine 'sglang'"),
        (["audit-engine", "--cells", "hf/nope", "--out", "OUT"], "cells: unknown cell 'hf/nope'"),
        (["audit-engine", "--samples", "hf=0", "--out", "OUT"], "--samples: expected N"),
        (["audit-engine", "--tv", "1.5", "--out", "OUT"], "--tv: expected a number in (0, 1)"),
        (["audit-engine", "--tokens", "7", "--out", "OUT"], "--tokens: expected an int in 1..4"),
        (["audit-engine", "hf", "--cells", "hsd", "--out", "OUT"], "cells: pass engines or --cells, not both"),
    ],
)
def test_cli_argument_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    from hsd_fast.cli import main

    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hsd-fast audit-engine: error: ") and message in err[0], err


def test_vllm_cells_report_not_run_without_vllm(tmp_path):
    from hsd_fast.audit.engines import NotRun, sample_vllm, vllm_available

    with pytest.raises(NotRun, match="no vLLM Python"):
        vllm_available(tmp_path / "missing" / "python")
    with pytest.raises(NotRun, match="no vLLM Python"):
        sample_vllm({"target": "x"}, python=tmp_path / "missing" / "python")


def test_vllm_runner_rejects_bad_json(capsys):
    from hsd_fast.audit.vllm_runner import main

    assert main(["--json", "{not json"]) == 2
    assert "--json: not JSON" in capsys.readouterr().err
    assert main(["--json", "[1, 2]"]) == 2
