"""The GPU check (issue 13): what this project wants measured on a CUDA machine, in one run (docs/gpu.md).

    python benchmarks/gpu_check.py [--quick] [--out out/gpu_check.json]
    python benchmarks/gpu_check.py --compile --skip-pytest --out out/gpu_check_compiled.json

No network, no cached weights; under 8 minutes (``--quick``: about 2), each phase within its budget
(:data:`MODES`): (a) ``pytest -q tests/gpu`` in a subprocess; (b) ``hsd_fast.verify`` micro-benchmarks,
every scheme, float32 and float64; (c) ``CachedLM.logits`` cost curves of random-weight bf16 models
built from the real Qwen2.5-Coder-0.5B / 1.5B configurations (benchmarks/qwen_configs); (d) the
latency model's predicted speed-ups from those costs; (e) all of it as JSON (``--out``), rewritten
after every phase.  Without CUDA it prints one line and exits 0.  ``--device cpu --tiny`` is the smoke
mode of tests/fast/test_gpu_check.py (tiny configurations, small V and B, pytest only collecting).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # import hsd_fast / hsd_ref from this checkout, installed or not
    sys.path.insert(0, str(ROOT))
CONFIGS = Path(__file__).resolve().parent / "qwen_configs"
MODELS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")  # draft, target
NO_CUDA = "no CUDA device: the GPU check needs one; nothing was run"
SINGLE = ("tokenwise", "greedy", "block", "hsd_capped")
MULTI = ("rrs", "rrs_without_replacement", "spectr_kseq")
NOISE = 0.4  # draft logits = target logits + N(0, 0.4^2): E[sum min(p, q)] ~ 0.85 (as benchmarks/bench_verify.py)
# Token-wise acceptance of Qwen2.5-Coder-0.5B drafting for 1.5B, measured on the project's CPU.
ALPHA = 0.856
ALPHA_SOURCE = ("Qwen2.5-Coder 0.5B -> 1.5B, alpha = E[sum min(p, q)] at T=1 over 576 HumanEval positions, bf16, "
                "measured on the project's CPU: /work/shared/research/llm-weights.md (section 'Measured on the "
                "project's CPU machine'), quoted in docs/kernels.md")
# Tiny stand-ins of the two configurations (smoke mode): Qwen2 layout, 512 tokens.
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 512, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
TINY_LAYERS = {MODELS[0]: 2, MODELS[1]: 3}

_COMMON = dict(K=4, N=2, positions=(1, 2, 3, 5, 9), max_k=8)
MODES = {  # sizes, repetitions and time budgets (seconds) per mode
    "full": dict(_COMMON, B=64, V=151936, multi_B=64, kernel_reps=20, batches=(1, 8, 32), prompt=128,
                 engine_reps=20, warmup=3, pytest_s=180, kernels_s=60, engine_s=150, deadline_s=450),
    "quick": dict(_COMMON, B=64, V=151936, multi_B=16, kernel_reps=7, batches=(1, 8, 32), prompt=128,
                  engine_reps=6, warmup=2, pytest_s=60, kernels_s=15, engine_s=40, deadline_s=140),
    "tiny": dict(_COMMON, B=4, V=256, multi_B=2, kernel_reps=3, batches=(1, 2), prompt=16,
                 engine_reps=3, warmup=1, pytest_s=90, kernels_s=60, engine_s=120, deadline_s=300),
}


class Clock:
    """Wall time since the start, and timestamped progress lines."""

    def __init__(self):
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{self.elapsed():6.1f}s] {msg}", flush=True)


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device, reps: int, warmup: int, until: float) -> dict:
    """Seconds per ``step()`` call: ``warmup`` untimed calls, then up to ``reps`` timed ones (at least
    3, fewer when the monotonic clock passes ``until``), each bracketed by device synchronisations."""
    for _ in range(warmup):
        step()
    times = []
    while len(times) < reps and (len(times) < 3 or time.monotonic() < until):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": len(times)}


# ------------------------------------------------------------------------------------------ (a) pytest

def phase_pytest(clock: Clock, limit: float, collect_only: bool) -> dict:
    """``pytest -q tests/gpu`` in its own process group, streamed with a prefix, killed at ``limit``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    if collect_only:
        cmd.append("--collect-only")
    env = dict(os.environ)
    for key in ("HSD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # no network: fail fast, never wait
        env.setdefault(key, "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    clock.log(f"pytest: {' '.join(cmd[1:])} (limit {limit:.0f} s)")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"    | {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc, timed_out = proc.wait(timeout=limit), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's group (pytest and anything it started)
        rc, timed_out = proc.wait(), True
    reader.join(timeout=10)
    summary = next((ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ \w+", ln)), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary) if word not in ("in",)}
    out = {"command": cmd[1:], "rc": rc, "timed_out": timed_out, "seconds": time.monotonic() - t0,
           "limit_s": limit, "summary": summary, "counts": counts, "tail": lines[-40:]}
    clock.log(f"pytest: rc {rc}{' (timed out)' if timed_out else ''}: {summary}")
    return out


# ----------------------------------------------------------------------------------------- (b) kernels

def kernel_inputs(B: int, K: int, V: int, N: int | None, dtype, device, seed: int):
    """Target/draft rows as in benchmarks/bench_verify.py, built on the device. N=None: single draft."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    lead = (B,) if N is None else (B, N)
    logits = torch.randn((*lead, K + 1, V), generator=gen, device=device, dtype=dtype) * 3
    target = torch.softmax(logits, dim=-1)  # [*lead, K+1, V]
    noise = torch.randn((*lead, K, V), generator=gen, device=device, dtype=dtype)
    draft = torch.softmax(logits[..., :K, :] + NOISE * noise, dim=-1)  # [*lead, K, V]
    del logits, noise
    tokens = torch.multinomial(draft.reshape(-1, V), 1, generator=gen).reshape(*lead, K)
    greedy_tokens = draft.argmax(dim=-1)  # greedy drafts are the draft's argmaxes
    return gen, target, draft, tokens, greedy_tokens


def phase_kernels(cfg: dict, clock: Clock, device, until: float) -> dict:
    import torch

    import hsd_fast
    from hsd_fast import KERNELS, draws_needed

    B, K, V, N, MB = cfg["B"], cfg["K"], cfg["V"], cfg["N"], cfg["multi_B"]
    cases = [(n, False) for n in SINGLE] + [("tokenwise", True)] + [(n, False) for n in MULTI if n in KERNELS]
    per_case = (until - time.monotonic()) / (2 * len(cases))
    results, skipped = [], []
    for dtype in (torch.float32, torch.float64):
        dname = str(dtype).replace("torch.", "")
        for multi in (False, True):
            group = [(n, v) for n, v in cases if (n in MULTI) == multi]
            if time.monotonic() > until:
                skipped += [f"kernels {n} {dname}" for n, _ in group]
                continue
            rows = MB if multi else B
            gen, target, draft, tokens, greedy_tokens = kernel_inputs(rows, K, V, N if multi else None, dtype, device, 7)
            for name, validate in group:
                label = name + ("+validate" if validate else "")
                if time.monotonic() > until:
                    skipped.append(f"kernels {label} {dname}")
                    continue
                D = draws_needed(name, K, N if multi else 1)
                draws = torch.rand((rows, D), generator=gen, device=device, dtype=torch.float64) if D else None
                toks = greedy_tokens if name == "greedy" else tokens

                def step():
                    hsd_fast.verify(name, target, draft, toks, draws=draws, validate=validate)

                r = timed(step, device, cfg["kernel_reps"], 2, min(until, time.monotonic() + per_case))
                r.update(scheme=label, dtype=dname, B=rows, K=K, V=V, N=N if multi else 1)
                results.append(r)
                clock.log(f"kernels: {label:<24} {dname:<7} B={rows} K={K} V={V} N={r['N']}: "
                          f"median {r['median_s'] * 1e3:8.3f} ms, min {r['min_s'] * 1e3:8.3f} ms ({r['reps']} calls)")
            target = draft = tokens = greedy_tokens = None  # free them before the next inputs
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return {"validate": "False except the tokenwise+validate rows", "noise": NOISE, "results": results,
            "skipped": skipped}


# --------------------------------------------------------------------------------- (c) engine costs

def load_config(name: str, tiny: bool):
    """The stored configuration of ``name`` (benchmarks/qwen_configs), shrunk in the smoke mode."""
    import transformers

    with open(CONFIGS / name / "config.json") as fh:
        d = json.load(fh)
    if tiny:
        d.update(TINY, num_hidden_layers=TINY_LAYERS[name])
        d["layer_types"] = d["layer_types"][: TINY_LAYERS[name]]
    return transformers.AutoConfig.for_model(d.pop("model_type"), **d)


def build_model(name: str, tiny: bool, device, dtype):
    """A random-weight model of the configuration (HF's own initialisation, run on the device)."""
    import torch
    import transformers

    config = load_config(name, tiny)
    torch.manual_seed(0)
    with torch.device(device):  # parameters are allocated and initialised there
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()  # a no-op unless some buffer was made elsewhere


def measure_costs(model, B: int, cfg: dict, device, until: float, compile: bool = False) -> dict:
    """Seconds per ``CachedLM.logits`` call by positions scored, after a prefill of ``prompt`` tokens
    (``compile``: the layers through ``torch.compile``; the untimed first prefill compiles)."""
    import torch

    from hsd_fast.engine.backend import CachedLM

    be = CachedLM(model, compile=compile)
    depth, P, reps, warm = be.n_layers, cfg["prompt"], cfg["engine_reps"], cfg["warmup"]
    width = P + max(cfg["positions"]) * (reps + warm)
    gen = torch.Generator(device=device).manual_seed(B)
    seq = torch.randint(0, be.vocab_size, (B, width), generator=gen, device=device)  # [B, width]

    def lens(n: int):
        return torch.full((B,), n, dtype=torch.int64, device=device)

    be.prefill(seq, lens(P))  # untimed: the first call of a shape pays one-time kernel set-up
    be.reset()
    _sync(device)
    t = time.perf_counter()
    be.prefill(seq, lens(P))
    _sync(device)
    out = {"prefill_s": time.perf_counter() - t, "by_positions": {}, "skipped": []}
    be.logits(depth, seq, lens(width), 1)  # size the cache once for the longest rows: no resize is timed
    per = max((until - time.monotonic()) / len(cfg["positions"]), 0.0)
    for m in cfg["positions"]:
        if time.monotonic() > until:
            out["skipped"].append(m)
            continue
        be.logits(depth, seq, lens(P), 1)  # roll back to the prompt: the valid lengths drop to P
        state = {"n": P}

        def step():
            state["n"] += m  # decode-like: the rows grow by m tokens and m positions are scored
            be.logits(depth, seq, lens(state["n"]), m)

        out["by_positions"][m] = timed(step, device, reps, warm, min(until, time.monotonic() + per))
    out["context"] = [P, P + max(cfg["positions"]) * (reps + warm)]
    return out


def phase_engine(cfg: dict, clock: Clock, device, dtype, tiny: bool, until: float, compile: bool = False) -> dict:
    import torch

    res = {"dtype": str(dtype).replace("torch.", ""), "prompt": cfg["prompt"], "models": {}, "results": [],
           "skipped": [], "compile": compile}
    for i, name in enumerate(MODELS):
        if time.monotonic() > until:
            res["skipped"].append(name)
            continue
        t = time.perf_counter()
        model = build_model(name, tiny, device, dtype)
        _sync(device)
        c = model.config
        res["models"][name] = {
            "config": str((CONFIGS / name / "config.json").relative_to(ROOT)), "tiny": tiny,
            "params": sum(p.numel() for p in model.parameters()), "build_s": time.perf_counter() - t,
            **{k: getattr(c, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "num_key_value_heads", "intermediate_size", "tie_word_embeddings")}}
        clock.log(f"engine: built {name} ({res['models'][name]['params'] / 1e6:.1f}M parameters, "
                  f"{res['models'][name]['build_s']:.1f} s)")
        batches = cfg["batches"]
        for j, B in enumerate(batches):
            # the time left, shared among the (model, B) pairs still to run
            share = (until - time.monotonic()) / ((len(MODELS) - i) * len(batches) - j)
            if share <= 0:
                res["skipped"].append(f"{name} B={B}")
                continue
            r = measure_costs(model, B, cfg, device, time.monotonic() + share, compile)
            for m, t_m in r["by_positions"].items():
                res["results"].append({"model": name, "B": B, "positions": m, "total_positions": B * m, **t_m})
            res["skipped"] += [f"{name} B={B} positions={m}" for m in r["skipped"]]
            curve = ", ".join(f"{m}: {v['median_s'] * 1e3:.2f}" for m, v in r["by_positions"].items())
            clock.log(f"engine: {name} B={B}: prefill {r['prefill_s'] * 1e3:.1f} ms; ms per call by positions {curve}")
        del model
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return res


def cost_table(rows: list[dict]) -> str:
    lines = ["| model | B | positions | B*positions | s per call (median) | min | calls |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['B']} | {r['positions']} | {r['total_positions']} | {r['median_s']:.6f} | "
                     f"{r['min_s']:.6f} | {r['reps']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ (d) latency model

def phase_latency(engine: dict, cfg: dict, alpha: float) -> dict:
    """Predicted speed-up of draft -> target at each B and K (i.i.d. token-wise acceptance ``alpha``)."""
    from hsd_ref.latency import CostCurve, fhierarchy_speedup

    out = {"alpha": alpha, "alpha_source": ALPHA_SOURCE if alpha == ALPHA else "--alpha", "draft": MODELS[0],
           "target": MODELS[1], "by_batch": {}}
    for B in cfg["batches"]:
        pts = {name: {r["positions"]: r["median_s"] for r in engine["results"] if r["model"] == name and r["B"] == B}
               for name in MODELS}
        if 1 not in pts[MODELS[0]] or 1 not in pts[MODELS[1]]:
            continue  # a model's single step was not measured at this B
        draft, target = CostCurve.points(pts[MODELS[0]]), CostCurve.points(pts[MODELS[1]])
        ks = [k for k in range(1, cfg["max_k"] + 1) if k + 1 <= max(pts[MODELS[1]])]  # no extrapolation
        speedups = {k: fhierarchy_speedup([draft, target], [alpha], [k]) for k in ks}
        if not speedups:
            continue
        best = max(speedups, key=speedups.get)
        out["by_batch"][B] = {"c": pts[MODELS[0]][1] / pts[MODELS[1]][1], "speedup_by_k": speedups, "best_k": best,
                              "best_speedup": speedups[best]}
    return out


def latency_table(lat: dict, max_k: int) -> str:
    head = "| B | c | " + " | ".join(f"K={k}" for k in range(1, max_k + 1)) + " | best K |"
    lines = [head, "|---:" * (max_k + 3) + "|"]
    for B, r in lat["by_batch"].items():
        cells = [f"{r['speedup_by_k'][k]:.3f}x" if k in r["speedup_by_k"] else "" for k in range(1, max_k + 1)]
        lines.append(f"| {B} | {r['c']:.3f} | " + " | ".join(cells) + f" | {r['best_k']} ({r['best_speedup']:.3f}x) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- driver

def _device_info(device) -> dict:
    import torch
    import transformers

    info = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the ~2-minute version (fewer calls, shorter budgets)")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny configurations, small V and B, pytest only collects")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu only makes sense with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", help="dtype of the engine-cost models (default bfloat16)")
    ap.add_argument("--alpha", type=float, default=ALPHA, help=f"acceptance rate for the latency model (default {ALPHA})")
    ap.add_argument("--skip-pytest", action="store_true", help="skip phase (a)")
    ap.add_argument("--compile", action="store_true", help="phase (c) with SpeculativeDecoder(compile=True)'s compiled layers "
                                                             "(compare with a run without it; the first calls compile)")
    ap.add_argument("--out", default="out/gpu_check.json", help="JSON output (default out/gpu_check.json)")
    args = ap.parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        ap.error(f"--dtype: unknown torch dtype {args.dtype!r}")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    cfg = MODES[mode]
    clock = Clock()
    deadline = time.monotonic() + cfg["deadline_s"]
    out_path = Path(args.out)
    report = {"schema": 1, "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg,
              "info": _device_info(device), "phases_s": {}, "errors": {}}

    def save():
        report["elapsed_s"] = clock.elapsed()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")

    def run(key: str, budget: float, fn):
        """One phase within ``budget`` seconds and the overall deadline; its error is recorded, not raised."""
        until = min(time.monotonic() + budget, deadline)
        if until - time.monotonic() < 1:
            report["errors"][key] = "not run: the overall deadline has passed"
            return None
        clock.log(f"== {key} (budget {until - time.monotonic():.0f} s)")
        t = time.monotonic()
        try:
            report[key] = fn(until)
        except Exception as exc:  # keep going: the later phases are independent
            report["errors"][key] = f"{type(exc).__name__}: {exc}"
            clock.log(f"{key}: FAILED: {report['errors'][key]}")
        report["phases_s"][key] = time.monotonic() - t
        save()
        return report.get(key)

    clock.log(f"GPU check, mode {mode}, device {report['info'].get('name', device)}, overall deadline "
              f"{cfg['deadline_s']} s; JSON -> {out_path}")
    save()
    if not args.skip_pytest:
        run("pytest", cfg["pytest_s"], lambda until: phase_pytest(clock, until - time.monotonic(), args.tiny))
    run("kernels", cfg["kernels_s"], lambda until: phase_kernels(cfg, clock, device, until))
    engine = run("engine", cfg["engine_s"], lambda until: phase_engine(cfg, clock, device, dtype, args.tiny, until, args.compile))
    if engine is not None:
        print("\nEngine cost per CachedLM.logits call (seconds; decode-like, after a "
              f"{cfg['prompt']}-token prefill, {engine['dtype']}{', compiled layers' if args.compile else ''}):\n"
              + cost_table(engine["results"]), flush=True)
        lat = run("latency", 30, lambda until: phase_latency(engine, cfg, args.alpha))
        if lat is not None:
            print(f"\nPredicted speed-up of {MODELS[0]} -> {MODELS[1]} over the target alone (alpha {args.alpha}; "
                  "c = draft step / target step, same B):\n" + latency_table(lat, cfg["max_k"]), flush=True)
    save()
    failed = dict(report["errors"])
    pytest_rc = report.get("pytest", {}).get("rc", 0)
    if pytest_rc != 0:
        failed["pytest"] = f"rc {pytest_rc}"
    clock.log(f"done in {clock.elapsed():.0f} s; JSON written to {out_path}" +
              (f"; problems: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
