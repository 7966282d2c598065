"""CPU benchmarks of ``hsd_fast.verify``: each scheme's vectorised kernel against its loop twin.

Run (the suite's addopts skip benchmarks, ``--benchmark-only`` turns them back on)::

    python -m pytest benchmarks/bench_verify.py --benchmark-only -p no:cacheprovider \\
        --benchmark-json=/tmp/bench_verify.json
    python benchmarks/bench_verify.py /tmp/bench_verify.json     # the markdown table of docs/kernels.md

Grid: B in {1, 64}, K in {4, 8}, V in {32000, 151936} (Llama-2 and Qwen2.5 vocabularies), every
scheme, multi-draft schemes with N = 2 drafts; float32 probabilities (softmax of N(0, 3^2) logits for
the target, the draft's logits perturbed by N(0, 0.4^2), so that the acceptance rate
E[sum min(p, q)] is about 0.85 as for Qwen2.5-Coder 0.5B -> 1.5B), draft tokens sampled from the draft
rows (greedy: the draft rows' argmaxes), explicit float64 draws, ``validate=False`` (the data checks
are timed separately for tokenwise).  ``torch.set_num_threads(2)`` (``HSD_BENCH_THREADS`` overrides);
every call is timed once per round (``pedantic``) after 1 warm-up round.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from hsd_fast.kernels import KERNELS, draws_needed, verify

THREADS = int(os.environ.get("HSD_BENCH_THREADS", "2"))
N_DRAFTS = 2
NOISE = 0.4  # draft logits = target logits + N(0, 0.4^2): E[sum min(p, q)] ~ 0.85, like Qwen2.5 0.5B -> 1.5B
GRID = [(B, K, V) for B in (1, 64) for K in (4, 8) for V in (32000, 151936)]
_cache: dict = {}


def make_inputs(B: int, K: int, V: int, multi: bool, name: str = "tokenwise"):
    """Benchmark inputs (one cached config at a time: the largest take ~1.5 GB)."""
    key = (B, K, V, multi)
    if key not in _cache:
        _cache.clear()
        gen = torch.Generator().manual_seed(B * 1_000_003 + K * 1009 + V)
        lead = (B, N_DRAFTS) if multi else (B,)
        logits = torch.randn((*lead, K + 1, V), generator=gen) * 3
        target = torch.softmax(logits, dim=-1)
        draft = torch.softmax(logits[..., :K, :] + NOISE * torch.randn((*lead, K, V), generator=gen), dim=-1)
        del logits
        tokens = torch.multinomial(draft.reshape(-1, V), 1, generator=gen).reshape(*lead, K)
        greedy_tokens = draft.argmax(dim=-1)  # greedy drafts are the draft model's argmaxes
        n = N_DRAFTS if multi else 1
        draws = {name: torch.rand((B, draws_needed(name, K, n)), generator=gen, dtype=torch.float64) for name in KERNELS}
        _cache[key] = (target, draft, tokens, greedy_tokens, draws)
    target, draft, tokens, greedy_tokens, draws = _cache[key]
    return target, draft, (greedy_tokens if name == "greedy" else tokens), draws


def rounds_for(B: int, V: int, impl: str) -> int:
    return 3 if (B * V > 10**6 or impl == "loop") else 10


CASES = [(cfg, name, impl) for cfg in GRID for name in KERNELS for impl in ("kernel", "loop")]


@pytest.mark.parametrize(
    "cfg, name, impl", CASES, ids=[f"{n}-{i}-B{c[0]}-K{c[1]}-V{c[2]}" for c, n, i in CASES]
)
def test_verify(benchmark, cfg, name, impl):
    torch.set_num_threads(THREADS)
    B, K, V = cfg
    multi = KERNELS[name].multi_draft
    target, draft, tokens, draws = make_inputs(B, K, V, multi, name)
    benchmark.group = f"B={B} K={K} V={V}"
    benchmark.extra_info.update(scheme=name, impl=impl, B=B, K=K, V=V, N=N_DRAFTS if multi else 1, threads=THREADS)
    out = benchmark.pedantic(
        verify,
        args=(name, target, draft, tokens),
        kwargs=dict(draws=draws[name], impl=impl, validate=False),
        rounds=rounds_for(B, V, impl),
        iterations=1,
        warmup_rounds=1,
    )
    assert out.tokens.shape == (B, K + 1)


@pytest.mark.parametrize("cfg", GRID, ids=[f"B{c[0]}-K{c[1]}-V{c[2]}" for c in GRID])
def test_validation_overhead(benchmark, cfg):
    """tokenwise kernel with ``validate=True``: the cost of the data checks (token range, finite,
    non-negative, row sums) on top of the kernel."""
    torch.set_num_threads(THREADS)
    B, K, V = cfg
    target, draft, tokens, draws = make_inputs(B, K, V, False)
    benchmark.group = f"B={B} K={K} V={V}"
    benchmark.extra_info.update(scheme="tokenwise", impl="kernel+validate", B=B, K=K, V=V, N=1, threads=THREADS)
    benchmark.pedantic(
        verify,
        args=("tokenwise", target, draft, tokens),
        kwargs=dict(draws=draws["tokenwise"], validate=True),
        rounds=rounds_for(B, V, "kernel"),
        iterations=1,
        warmup_rounds=1,
    )


def markdown(path: str) -> str:
    """The results table from a ``--benchmark-json`` file: min and median ms per call (the min is the
    robust figure on a shared machine, the median shows the interference)."""
    with open(path) as fh:
        data = json.load(fh)
    rows: dict = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        key = (info["scheme"], info["B"], info["K"], info["V"])
        rows.setdefault(key, {})[info["impl"]] = (bench["stats"]["min"] * 1000, bench["stats"]["median"] * 1000)
    order = list(KERNELS)
    lines = [
        "| scheme | B | K | V | kernel min / median (ms) | loop twin min / median (ms) | loop / kernel (min) | kernel + validation min (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(t):
        return "" if t is None else f"{t[0]:.2f} / {t[1]:.2f}"

    for (name, B, K, V), t in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:])):
        kern, loop, val = t.get("kernel"), t.get("loop"), t.get("kernel+validate")
        ratio = f"{loop[0] / kern[0]:.1f}x" if kern and loop else ""
        lines.append(f"| {name} | {B} | {K} | {V} | {fmt(kern)} | {fmt(loop)} | {ratio} | {'' if val is None else f'{val[0]:.2f}'} |")
    threads = {b["extra_info"].get("threads") for b in data["benchmarks"]}
    lines.append("")
    lines.append(
        f"torch threads {sorted(threads)}; pytest-benchmark {data.get('version', '?')}; "
        f"python {data.get('machine_info', {}).get('python_version', '?')}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(sys.argv[1]))
