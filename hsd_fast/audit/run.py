"""``run_audit``: sample every selected cell and G-test it against the exact law (docs/peer-audit.md).

Per cell, with the statistics of :mod:`hsd_fast.fidelity.stats` (the fidelity report's standard):

* the exact law of the first ``n`` tokens (:mod:`hsd_fast.audit.law`) for the cell's setup and top-p;
* the sample size: ``--samples`` or the fewest at which the G test at false-failure probability
  ``ALPHA_PER_TEST = 1e-6`` rejects the planted transfer of mass ``tv`` (likeliest sequence ->
  second likeliest) with probability ``>= 0.99`` (``samples_for_power``);
* the G test of the cell's samples (a sample off the support -- a token outside ``A`` or fewer
  than ``n`` tokens -- rejects outright), its power against that transfer (``scipy`` noncentral
  chi-square and a Monte Carlo re-estimate), and the transfer applied to the cell's own samples
  (each likeliest sequence moved to the second likeliest with probability ``tv / p1``, whose law
  is exactly the planted alternative), which the test must reject;
* verdict: a lossless cell ``PASS`` (not rejected, power ``>= 0.99``), ``FAIL`` (rejected) or
  ``LOW POWER``; the control ``REJECTED (as required)`` or ``NOT REJECTED``, with its power against
  its own exact law (the draft's law: :func:`accept_all_verify` accepts every drafted token);
  a cell that cannot run here is ``not run: <reason>``.

vLLM cells run first for a setup, in a subprocess, after the setup's models are released (vLLM
loads its own copies).  ``ok`` is false when a lossless cell fails or has low power, or when the
control is not rejected; cells not run do not change it.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..fidelity.report import _plant  # the planted transfer of the fidelity report, the same rule
from ..fidelity.stats import ALPHA_PER_TEST, TARGET_POWER, derive_seed, g_test, planted_bias_law, power, samples_for_power
from . import engines as E
from .cells import Cell, Setup, load_setup, select_cells
from .law import AuditLaw, build_law, encode_samples, prefix_logits

__all__ = ["run_audit", "accept_all_verify", "judge_cell", "tv_at_power", "versions", "DEFAULT_TV", "N_TOKENS"]

DEFAULT_TV = 0.1  # the planted transfer every cell must detect with probability TARGET_POWER
N_TOKENS = 3


def accept_all_verify(scheme, target_probs, draft_probs, draft_tokens, *, draws):
    """A deliberately lossy verifier with ``hsd_fast.verify``'s engine signature: every drafted
    token is accepted, and the bonus token is drawn from the target's last row with the row's
    uniform ``draws[:, K]``.  With ``K >= n`` the first ``n`` tokens follow the draft's law."""
    from ..schemes import sample_inverse_cdf

    B, K = draft_tokens.shape
    bonus = sample_inverse_cdf(target_probs[:, K].to(torch.float64), draws[:, K].to(torch.float64))
    return torch.cat([draft_tokens, bonus.unsqueeze(1)], 1), torch.full((B,), K, dtype=torch.int64, device=draft_tokens.device)


def versions() -> dict:
    """torch, transformers and the hsd git commit (with ``+dirty`` when the work tree has changes)."""
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        out["hsd_commit"] = (head or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["hsd_commit"] = "unknown"
    return out


def planted(law: AuditLaw, tv: float) -> tuple[dict, int, int, float]:
    """The planted transfer of ``tv`` (capped at the likeliest sequence's mass) on ``law``:
    ``(alternative, source code, destination code, tv used)``."""
    tv = min(tv, float(law.probs.max()))
    alt, src, dst = planted_bias_law(law.codes, law.probs, tv)
    return alt, src, dst, tv


def judge_cell(cell: Cell, samples: Sequence[Sequence[int]], law: AuditLaw, tv: float, seed: int, alt_law: AuditLaw | None = None) -> dict:
    """The statistics and verdict of one cell (module docstring) as a dict; ``alt_law``: the
    control's own exact law."""
    sample_codes = encode_samples(samples, law.allowed, law.n)
    res = g_test(sample_codes, law.codes, law.probs, ALPHA_PER_TEST)
    alt, src, dst, tv_used = planted(law, tv)
    n = len(sample_codes)
    row = {**asdict(res), "planted_tv": tv_used}
    pw = power(law.codes, law.probs, alt, n, ALPHA_PER_TEST, mc_reps=500, seed=seed)
    moved = g_test(_plant(sample_codes, src, dst, alt[src] + tv_used, tv_used, seed), law.codes, law.probs, ALPHA_PER_TEST)
    row.update(power=pw.power, mc_power=pw.mc_power, planted_rejected=moved.rejected, planted_statistic=moved.statistic, tv_at_power=tv_at_power(law, n))
    if cell.lossless:
        row["verdict"] = "FAIL" if res.rejected else ("PASS" if pw.power >= TARGET_POWER else "LOW POWER")
    else:
        alt_c = {int(c): float(p) for c, p in zip(alt_law.codes, alt_law.probs)}
        cp = power(law.codes, law.probs, alt_c, n, ALPHA_PER_TEST, mc_reps=500, seed=seed)
        row.update(control_power=cp.power, control_mc_power=cp.mc_power, control_exact_tv=cp.tv)
        row["verdict"] = "REJECTED (as required)" if res.rejected else "NOT REJECTED"
    uniq, counts = np.unique(sample_codes, return_counts=True)
    row["observed"] = {str(int(c)): int(k) for c, k in zip(uniq, counts)}
    return row


def tv_at_power(law: AuditLaw, n_samples: int, target: float = TARGET_POWER) -> float:
    """The smallest planted transfer (likeliest -> second likeliest sequence) that the G test with
    ``n_samples`` samples rejects with probability ``>= target`` (bisection to 1e-3 on the
    noncentral chi-square power; the likeliest sequence's mass when even that is not enough: then ``nan``)."""
    top = float(law.probs.max())

    def enough(tv: float) -> bool:
        alt, _, _ = planted_bias_law(law.codes, law.probs, tv)
        return power(law.codes, law.probs, alt, n_samples, ALPHA_PER_TEST, mc_reps=1).power >= target

    if not enough(top):
        return float("nan")
    lo, hi = 0.0, top
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def _n_samples(law: AuditLaw, tv: float, samples: dict | None, cell: Cell) -> int:
    """The cell's sample size: ``samples["ENGINE/METHOD"]``, else ``samples[ENGINE]``, else
    ``samples["*"]``, else sized for power."""
    samples = samples or {}
    for key in (f"{cell.engine}/{cell.method}", cell.engine, "*"):
        if key in samples:
            return samples[key]
    alt, _, _, _ = planted(law, tv)
    return samples_for_power(law.codes, law.probs, alt)


def _sample_file(sample_dir: Path, cell: Cell) -> Path:
    return Path(sample_dir) / (cell.name.replace("/", "_").replace("=", "") + ".json")


def _load_samples(sample_dir: Path | None, cell: Cell, n: int, N: int, base: int) -> tuple | None:
    """``(samples, info, seconds, base)`` stored for ``cell`` with these ``n``, ``N`` and ``base`` (and,
    for a vLLM cell, the same extra environment), else None."""
    if sample_dir is None or not _sample_file(sample_dir, cell).is_file():
        return None
    got = json.loads(_sample_file(sample_dir, cell).read_text())
    if (got.get("n"), got.get("N"), got.get("base")) != (n, N, base):
        return None
    if cell.engine == "vllm" and got["info"].get("env") != _vllm_env(cell):
        return None
    return got["samples"], {**got["info"], "cached": str(_sample_file(sample_dir, cell))}, got["seconds"], base


def _save_samples(sample_dir: Path | None, cell: Cell, n: int, N: int, entry: tuple) -> None:
    if sample_dir is None:
        return
    Path(sample_dir).mkdir(parents=True, exist_ok=True)
    out, info, secs, base = entry
    _sample_file(sample_dir, cell).write_text(json.dumps({"cell": cell.name, "n": n, "N": N, "base": base, "seconds": secs, "info": info, "samples": out},
                                                         default=str))


def _vllm_env(cell: Cell) -> dict:
    """The extra environment of a vLLM cell: our plugin's block verification, or (vLLM's own cells)
    the plugin's CPU fix only (HSD_VLLM_VERIFY=vllm: vLLM's verifier with the temperatures of random
    requests initialised; vLLM #55005, docs/vllm.md).  Without it vLLM 0.32 on CPU divides
    speculative rows by uninitialised temperatures (docs/peer-audit.md §6)."""
    return {"HSD_VLLM_VERIFY": "block" if cell.method == "plugin" else "vllm"}


def _vllm_spec(cell: Cell, setup: Setup, n: int, seeds: list[int]) -> tuple[dict, dict]:
    """The runner's ``--json`` object and extra environment of a vLLM cell."""
    if cell.method == "ngram":
        spec_cfg = {"method": "ngram", "num_speculative_tokens": cell.threshold, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    else:
        spec_cfg = {"method": "draft_model", "model": setup.draft_path, "num_speculative_tokens": cell.threshold}
        if cell.method == "block":
            spec_cfg["rejection_sample_method"] = "block"
        if cell.method == "probabilistic":
            spec_cfg["draft_sample_method"] = "probabilistic"
    env = _vllm_env(cell)
    spec = {"target": setup.target_path, "speculative_config": spec_cfg, "prompt_ids": setup.prompt, "allowed": list(setup.allowed), "n": n,
            "seeds": seeds, "temperature": 1.0, "top_p": cell.top_p}
    return spec, env


def _sample(cell: Cell, setup: Setup, n: int, seeds: list[int], bar) -> tuple[list, dict]:
    if cell.engine in ("hsd", "control"):
        levels = ["ngram:3" if setup.draft is None else setup.draft, setup.target]
        verify_fn = accept_all_verify if cell.engine == "control" else None
        scheme = "tokenwise" if cell.engine == "control" else cell.method
        return E.sample_hsd(levels, setup.prompt, setup.allowed, n, seeds, scheme=scheme, thresholds=cell.threshold, top_p=cell.top_p, verify_fn=verify_fn,
                            progress=bar)
    if cell.engine == "hf":
        draft = setup.draft if cell.method == "assisted" else None
        lookup = cell.threshold if cell.method == "lookup" else None
        samples, info = E.sample_hf(setup.target, draft, setup.prompt, setup.allowed, n, seeds, top_p=cell.top_p, lookup_tokens=lookup, progress=bar)
        info["processors"] = E.hf_processor_lists(setup.target, draft, setup.prompt, setup.allowed, n, top_p=cell.top_p, lookup_tokens=lookup)
        return samples, info
    raise ValueError(f"cells: engine {cell.engine!r} is not sampled in-process")


def run_audit(cells: Sequence[str] | None = None, *, tv: float = DEFAULT_TV, samples: int | dict | None = None, n: int = N_TOKENS, seed: int = 0, quick: bool = False,
              log_dir: Path | None = None, sample_dir: Path | None = None, progress: Callable[[str, int, int], None] | None = None, cache_dir=None) -> dict:
    """Run the audit (module docstring); returns the report dict.  ``progress(cell, done, total)``.

    ``sample_dir``: each cell's samples are saved there as ``<cell>.json`` once drawn, and a cell
    whose file holds the same token count, sample size and seed is not sampled again (a rerun
    resumes, and re-judges what is stored).  ``log_dir``: vLLM's log per cell."""
    if not (isinstance(tv, (int, float)) and 0 < tv < 1 and math.isfinite(tv)):
        raise ValueError(f"tv: expected a number in (0, 1), got {tv!r}")
    if isinstance(samples, int) and not isinstance(samples, bool):
        samples = {"*": samples}
    for key, val in (samples or {}).items():
        if key.split("/")[0] not in ("*", "hsd", "hf", "vllm", "control") or isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"samples: expected an int >= 1 or {{ENGINE or ENGINE/METHOD or '*': int >= 1}}, got {samples!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4:
        raise ValueError(f"n: expected an int in 1..4, got {n!r}")
    chosen = select_cells(cells, quick)
    start_all = time.perf_counter()
    rows, setups, laws_info = [], {}, {}
    for setup_name in dict.fromkeys(c.setup for c in chosen):
        group = [c for c in chosen if c.setup == setup_name]
        setup = load_setup(setup_name, cache_dir)
        setups[setup_name] = setup.describe()
        t0 = time.perf_counter()
        logits = prefix_logits(setup.target, setup.prompt, setup.allowed, n - 1)
        draft_logits = prefix_logits(setup.draft, setup.prompt, setup.allowed, n - 1) if any(c.engine == "control" for c in group) else None
        laws = {tp: build_law(logits, setup.allowed, n, 1.0, tp) for tp in dict.fromkeys(c.top_p for c in group)}
        for tp, law in laws.items():
            laws_info[f"{setup_name}/{tp}"] = {"sequences": len(law.codes), "top_p_margin": law.top_p_margin, "max_prob": float(law.probs.max()),
                                               "law_seconds": time.perf_counter() - t0}
        sampled: dict[str, tuple] = {}
        vllm_cells = [c for c in group if c.engine == "vllm"]
        if all(_load_samples(sample_dir, c, n, _n_samples(laws[c.top_p], tv, samples, c), derive_seed(seed, c.name) % (1 << 31)) is not None for c in vllm_cells):
            for cell in vllm_cells:
                N = _n_samples(laws[cell.top_p], tv, samples, cell)
                sampled[cell.name] = _load_samples(sample_dir, cell, n, N, derive_seed(seed, cell.name) % (1 << 31))
            vllm_cells = []
        if vllm_cells:
            setup.release()
            gc.collect()
            for cell in vllm_cells:
                law = laws[cell.top_p]
                N = _n_samples(law, tv, samples, cell)
                base = derive_seed(seed, cell.name) % (1 << 31)
                cached = _load_samples(sample_dir, cell, n, N, base)
                if cached is not None:
                    sampled[cell.name] = cached
                    continue
                t1 = time.perf_counter()
                try:
                    if setup.target_path is None:
                        raise E.NotRun("the tiny setup has no model folder for vLLM")
                    E.plugin_available()  # every vLLM cell: the plugin, or its CPU fix (_vllm_spec)
                    spec, env = _vllm_spec(cell, setup, n, [base + i for i in range(N)])
                    log = None if log_dir is None else Path(log_dir) / f"vllm_{cell.name.replace('/', '_')}.log"
                    tokens, info = E.sample_vllm(spec, env=env, log=log)
                    sampled[cell.name] = (tokens, {**info, "env": env}, time.perf_counter() - t1, base)
                    _save_samples(sample_dir, cell, n, N, sampled[cell.name])
                except E.NotRun as exc:
                    sampled[cell.name] = ("not run", str(exc))
                if progress:
                    progress(cell.name, N, N)
            setup = load_setup(setup_name, cache_dir)
        for cell in group:
            if cell.engine == "vllm":
                continue
            law = laws[cell.top_p]
            N = _n_samples(law, tv, samples, cell)
            if cell.engine == "control":
                ctrl_law = build_law(draft_logits, setup.allowed, n, 1.0, cell.top_p)
                alt_c = {int(c): float(p) for c, p in zip(ctrl_law.codes, ctrl_law.probs)}
                need = N
                while need < 64 * N and power(law.codes, law.probs, alt_c, need, ALPHA_PER_TEST, mc_reps=1).power < TARGET_POWER:
                    need *= 2
                N = need
            base = derive_seed(seed, cell.name) % (1 << 31)
            done = [0]

            def bar(k, _name=cell.name, _N=N):
                done[0] += k
                if progress:
                    progress(_name, done[0], _N)

            cached = _load_samples(sample_dir, cell, n, N, base)
            if cached is not None:
                sampled[cell.name] = cached
                bar(N)
                continue
            t1 = time.perf_counter()
            try:
                out, info = _sample(cell, setup, n, [base + i for i in range(N)], bar)
                sampled[cell.name] = (out, info, time.perf_counter() - t1, base)
                _save_samples(sample_dir, cell, n, N, sampled[cell.name])
            except E.NotRun as exc:
                sampled[cell.name] = ("not run", str(exc))
        for cell in group:
            got = sampled[cell.name]
            entry = {"cell": cell.name, "engine": cell.engine, "method": cell.method, "setup": cell.setup, "top_p": cell.top_p, "threshold": cell.threshold,
                     "lossless": cell.lossless}
            if got[0] == "not run":
                rows.append({**entry, "verdict": f"not run: {got[1]}"})
                continue
            out, info, secs, base = got
            law = laws[cell.top_p]
            ctrl = build_law(draft_logits, setup.allowed, n, 1.0, cell.top_p) if cell.engine == "control" else None
            rows.append({**entry, **judge_cell(cell, out, law, tv, base, ctrl), "info": info, "sample_seconds": secs, "seed_base": base})
        setup.release()
        gc.collect()
    ran = [r for r in rows if not r["verdict"].startswith("not run")]
    ok = all(r["verdict"] in ("PASS", "REJECTED (as required)") for r in ran)
    ver = versions()
    vllm_versions = {r["info"]["vllm"] for r in ran if r["engine"] == "vllm"}
    if vllm_versions:
        ver["vllm"] = ", ".join(sorted(vllm_versions))
    return {"cells": [c.name for c in chosen], "tv": tv, "samples": samples, "n_tokens": n, "seed": seed, "quick": quick, "alpha_per_test": ALPHA_PER_TEST,
            "target_power": TARGET_POWER, "setups": setups, "laws": laws_info, "versions": ver, "ok": ok, "results": rows,
            "total_seconds": time.perf_counter() - start_all}
