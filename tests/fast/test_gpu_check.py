"""benchmarks/gpu_check.py without a GPU: its smoke mode (``--device cpu --tiny``) runs every phase's
code path in seconds and writes the JSON the real check writes; without CUDA the default invocation
prints one line and exits 0; the stored Qwen configurations hold the real sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_CUDA = "no CUDA device: the GPU check needs one; nothing was run"


def _run(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_smoke_mode_writes_every_phase(tmp_path):
    out = tmp_path / "check.json"
    proc = _run("--device", "cpu", "--tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"schema", "mode", "config", "info", "phases_s", "errors", "elapsed_s", "pytest", "kernels", "engine",
            "latency"} <= set(report)
    assert report["mode"] == "tiny" and report["errors"] == {}
    assert set(report["phases_s"]) == {"pytest", "kernels", "engine", "latency"}

    # (a) pytest only collects in the smoke mode
    assert report["pytest"]["rc"] == 0 and not report["pytest"]["timed_out"]
    assert report["pytest"]["counts"].get("tests", 0) >= 1, report["pytest"]["summary"]

    # (b) every scheme in both dtypes, plus tokenwise with validation
    kernels = report["kernels"]["results"]
    seen = {(r["scheme"], r["dtype"]) for r in kernels}
    for scheme in ("tokenwise", "greedy", "block", "hsd_capped", "tokenwise+validate", "rrs", "rrs_without_replacement",
                   "spectr_kseq"):
        assert {(scheme, "float32"), (scheme, "float64")} <= seen
    assert all(_positive(r["median_s"]) and _positive(r["min_s"]) and r["reps"] >= 3 for r in kernels)
    assert {r["N"] for r in kernels if r["scheme"] == "rrs"} == {2}

    # (c) both models, B in {1, 2}, positions {1, 2, 3, 5, 9}
    engine = report["engine"]
    assert set(engine["models"]) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert all(_positive(m["params"]) for m in engine["models"].values())
    cells = {(r["model"], r["B"], r["positions"]) for r in engine["results"]}
    assert cells == {(m, B, n) for m in engine["models"] for B in (1, 2) for n in (1, 2, 3, 5, 9)}
    for r in engine["results"]:
        assert _positive(r["median_s"]) and r["total_positions"] == r["B"] * r["positions"]

    # (d) predicted speed-ups for K = 1..8 at each B, and the best K
    lat = report["latency"]
    assert lat["alpha"] == 0.856 and "llm-weights.md" in lat["alpha_source"]
    assert set(lat["by_batch"]) == {"1", "2"}
    for row in lat["by_batch"].values():
        assert set(row["speedup_by_k"]) == {str(k) for k in range(1, 9)}
        assert all(_positive(v) for v in row["speedup_by_k"].values())
        assert row["speedup_by_k"][str(row["best_k"])] == row["best_speedup"] == max(row["speedup_by_k"].values())
        assert _positive(row["c"])
    assert "Predicted speed-up" in proc.stdout and "| qwen2.5-coder-1.5b | 2 | 9 | 18 |" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the default invocation runs the whole check")
def test_without_cuda_the_default_invocation_says_so_and_exits_0(tmp_path):
    out = tmp_path / "check.json"
    proc = _run("--out", str(out), timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip() == NO_CUDA
    assert not out.exists()


def test_the_stored_configurations_are_the_real_ones():
    want = {"qwen2.5-coder-0.5b": (896, 24, 14, 2, 4864), "qwen2.5-coder-1.5b": (1536, 28, 12, 2, 8960)}
    for name, (hidden, layers, heads, kv, inter) in want.items():
        cfg = json.loads((ROOT / "benchmarks" / "qwen_configs" / name / "config.json").read_text())
        assert cfg["model_type"] == "qwen2" and cfg["vocab_size"] == 151936
        assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                cfg["intermediate_size"]) == (hidden, layers, heads, kv, inter)
        assert cfg["rope_parameters"]["rope_theta"] == 1e6 and cfg["max_position_embeddings"] == 32768
        assert cfg["tie_word_embeddings"] is False and cfg["use_sliding_window"] is False


@pytest.mark.slow
def test_smoke_mode_with_compiled_layers(tmp_path):
    """``--compile`` measures the cost curves with SpeculativeDecoder(compile=True)'s layers (the first
    calls compile: minutes on a CPU, hence slow)."""
    out = tmp_path / "check.json"
    proc = _run("--device", "cpu", "--tiny", "--skip-pytest", "--compile", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["engine"]["compile"] is True
    assert report["engine"]["results"] and all(_positive(r["median_s"]) for r in report["engine"]["results"])
    assert "compiled layers" in proc.stdout
