"""Running the suites: models loaded once per process, configurations interleaved prompt by prompt.

For every suite: load the family's models in the suite's dtype; per temperature, calibrate (costs
and acceptance on prompts disjoint from the measured ones) and turn the plans into runs; warm every
run up once; then, for every prompt and temperature, run every configuration in an order rotated by
the prompt's index, so that no configuration is always first after a model switch and slow drift of
the machine spreads over all of them.  Each result is appended to ``runs.jsonl`` as soon as it
exists, so an interrupted benchmark resumes where it stopped (``resume=True``) and nothing measured
is lost.  Every random draw is seeded: the engine by per-row seeds, transformers' sampling by
``torch.manual_seed`` right before ``generate``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .calibrate import Calibration, calibrate, make_plan
from .families import LevelUnavailable, Models, get_family
from .suites import RunSpec, Suite, parse_exit_key

__all__ = ["Settings", "run_suites", "suite_prompts", "hf_generate", "record_key", "for_temperature"]


@dataclass
class Settings:
    work: Path  # runs.jsonl and calibration.json live here
    max_new_tokens: int = 128
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    progress: bool = True
    log: callable = field(default=print)


def record_key(rec: dict) -> tuple:
    return (rec["suite"], float(rec["temperature"]), rec["prompt_id"], rec["run"])


def suite_prompts(suite: Suite):
    """``(measured, calibration)`` prompt lists, disjoint."""
    from ..prompts import SPEC_BENCH_CATEGORIES, humaneval_prompts, spec_bench_prompts

    if suite.prompts == "humaneval":
        allp = humaneval_prompts(suite.n_prompts + suite.calibration_prompts)
        return allp[: suite.n_prompts], allp[suite.n_prompts :]
    if suite.prompts != "spec_bench":
        raise ValueError(f"prompts: unknown prompt set {suite.prompts!r}")
    cats = suite.categories or SPEC_BENCH_CATEGORIES
    allp = spec_bench_prompts(cats, per_category=suite.n_prompts + 1)
    by_cat: dict = {}
    for p in allp:
        by_cat.setdefault(p.category, []).append(p)
    measured = [p for c in cats for p in by_cat.get(c, [])[: suite.n_prompts]]
    spare = [by_cat[c][suite.n_prompts] for c in cats if len(by_cat.get(c, [])) > suite.n_prompts]
    step = max(1, len(spare) // max(1, suite.calibration_prompts))
    return measured, spare[::step][: suite.calibration_prompts]


@torch.no_grad()
def hf_generate(target, ids: list[int], *, max_new_tokens: int, temperature: float, eos_ids, seed: int, assistant=None,
                prompt_lookup: int | None = None):
    """transformers ``generate`` (assisted when ``assistant`` is given, prompt lookup with
    ``prompt_lookup`` tokens per draft): ``(new token ids, seconds)``.

    Sampling is pure (``top_k=0``, ``top_p=1``), as in the engine; the assistant keeps transformers'
    defaults (``num_assistant_tokens=20``, constant schedule, confidence threshold 0.4)."""
    from transformers import GenerationConfig

    eos = list(eos_ids) or None
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=(eos[0] if eos else 0))
    if prompt_lookup is not None:
        kw["prompt_lookup_num_tokens"] = prompt_lookup
    if temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    cfg = GenerationConfig(**kw)
    dev = next(target.parameters()).device
    x = torch.tensor([ids], dtype=torch.int64, device=dev)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    out = target.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg, assistant_model=assistant)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out[0, len(ids):].tolist(), time.perf_counter() - t0


class _Executor:
    """Runs one RunSpec on one prompt; engine decoders are built once per (run, temperature)."""

    def __init__(self, models: Models, settings: Settings):
        self.models = models
        self.settings = settings
        self._decoders: dict = {}

    def decoder(self, run: RunSpec, temperature: float):
        from ..engine import SpeculativeDecoder

        key = (run, temperature)
        if key not in self._decoders:
            m = self.models
            self._decoders[key] = SpeculativeDecoder(
                [m.level(k) for k in _engine_levels(run.levels)],
                scheme=run.scheme,
                thresholds=run.thresholds or None,
                temperature=temperature,
                tokenizer=m.tokenizer,
                eos_token_id=list(m.eos_ids) or None,
                timing=True,  # per-level call times by positions scored: the costs and shares of the report
            )
        return self._decoders[key]

    def __call__(self, run: RunSpec, ids: list[int], temperature: float, seed: int, max_new_tokens: int) -> dict:
        m = self.models
        if run.kind == "engine":
            res = self.decoder(run, temperature).generate([ids], max_new_tokens=max_new_tokens, seeds=[seed])
            toks = res.tokens[0]
            met = res.metrics.as_dict()
            return {"tokens": toks, "wall_s": met["wall_time_s"], "prefill_s": met["prefill_s"],
                    "decode_s": met["decode_s"], "finish": res.finish_reasons[0], "metrics": met}
        assistant = m.model("draft") if run.kind == "hf_assisted" else None
        lookup = run.thresholds[0] if run.kind == "hf_lookup" else None
        toks, wall = hf_generate(m.target, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                 eos_ids=m.eos_ids, seed=seed, assistant=assistant, prompt_lookup=lookup)
        finish = "eos" if toks and toks[-1] in m.eos_ids else "length"
        return {"tokens": toks, "wall_s": wall, "prefill_s": None, "decode_s": None, "finish": finish, "metrics": None}


def _load_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption: it is measured again
                continue
    return out


def _calibration_keys(suite: Suite) -> list[str]:
    keys = []
    for plan in suite.plans:
        for k in plan.candidates:
            if k not in keys:
                keys.append(k)
    return keys + ["target"]


def _suite_runs(suite: Suite, models: Models, calib: Calibration, temperature: float) -> list[RunSpec]:
    """The suite's fixed runs and its plans' runs at one temperature; a plan that lands on a
    configuration already in the list is run (and reported) once, and its plan says so."""
    runs = [r for r in for_temperature(list(suite.runs), temperature) if r.kind != "engine" or not any(_missing(models, k) for k in r.levels)]
    seen = {(r.levels, r.scheme, r.thresholds): r.name for r in runs if r.kind == "engine"}
    for spec in suite.plans:
        why = next((w for k in spec.candidates if (w := _missing(models, k))), None)
        if why:
            calib.plans[spec.name] = {"candidates": list(spec.candidates), "chain": None, "reason": why}
            continue
        planned, info = make_plan(spec, calib, suite.max_threshold)
        calib.plans[spec.name] = info
        for r in for_temperature(planned, temperature):
            sig = (r.levels, r.scheme, r.thresholds)
            if sig in seen:
                info.setdefault("same_as", []).append(seen[sig])
                continue
            seen[sig] = r.name
            runs.append(r)
    return runs


def for_temperature(runs: list[RunSpec], temperature: float) -> list[RunSpec]:
    """At temperature 0 every scheme verifies greedily (the engine's ``greedy``): configurations that
    differ only in their scheme are one configuration, run once and named for ``greedy``."""
    if temperature > 0:
        return list(runs)
    out, seen = [], set()
    for r in runs:
        if r.kind != "engine" or r.levels == ("target",) or r.scheme == "greedy":
            out.append(r)
            continue
        sig = (r.levels, r.thresholds)
        if sig not in seen:
            seen.add(sig)
            out.append(replace(r, name=r.name.replace(r.scheme, "greedy"), scheme="greedy"))
    return out


def _engine_levels(levels: tuple[str, ...]) -> tuple[str, ...]:
    """Level keys with the target last (records of earlier versions left it implicit)."""
    return levels if levels[-1:] == ("target",) else (*levels, "target")


def _missing(models: Models, key: str) -> str | None:
    """Why the family cannot provide the level ``key`` (no draft model, no trained head: the runs and
    plans that need it are skipped), or ``None``.  A malformed key is a ``ValueError``, and a corrupt
    cached head a ``CorruptCacheError``: both stop the benchmark."""
    try:
        models.level(key)
    except LevelUnavailable as exc:
        return str(exc)
    return None


def _suite_keys(suite: Suite) -> list[str]:
    """Every level key of the suite's engine runs and plans (in order, once each)."""
    keys = [k for r in suite.runs if r.kind == "engine" for k in r.levels] + [k for p in suite.plans for k in p.candidates]
    return list(dict.fromkeys(keys))


def _trained_heads(models: Models, keys) -> dict[str, str]:
    """``{"exit:D:trained": head folder name}`` of the (available) trained-exit keys among ``keys``."""
    out = {}
    for key in keys:
        parsed = parse_exit_key(key)
        if parsed is not None and parsed[1] and not _missing(models, key):
            out[key] = models.trained_head(parsed[0])[0].name
    return out


def run_suites(suites: list[Suite], settings: Settings) -> list[dict]:
    """Run every suite; returns all records (those of earlier, resumed runs included)."""
    from tqdm.auto import tqdm

    torch.set_num_threads(settings.threads)
    work = Path(settings.work)
    work.mkdir(parents=True, exist_ok=True)
    runs_path, calib_path = work / "runs.jsonl", work / "calibration.json"
    records = _load_jsonl(runs_path) if settings.resume else []
    # rewrite what is kept: a line cut by an interruption is dropped (and measured again), not extended
    runs_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = {record_key(r) for r in records}
    calibs = json.loads(calib_path.read_text()) if settings.resume and calib_path.exists() else {}
    device = torch.device(settings.device)
    loaded = models = execute = None  # loaded: the (family, dtype) of models
    for suite in suites:
        family = get_family(suite.family)
        if loaded != (suite.family, suite.dtype):
            models = execute = None  # free the previous models (and their decoders) first
            gc.collect()
            settings.log(f"[bench] loading {family.description} in {suite.dtype}")
            models = family.load(getattr(torch, suite.dtype), device)
            execute = _Executor(models, settings)
            loaded = (suite.family, suite.dtype)
        heads = _trained_heads(models, _suite_keys(suite))
        for key in _suite_keys(suite):
            why = _missing(models, key)
            if why and parse_exit_key(key) is not None:
                settings.log(f"[bench] {suite.name}: skipping the runs and plans with {key}: {why}")
        for key, name in heads.items():
            settings.log(f"[bench] {suite.name}: {key} is the trained head {name}")
        measured, calib_prompts = suite_prompts(suite)
        calib_ids = [models.encode(p) for p in calib_prompts] or [models.encode(measured[0])]
        plan_runs = {}
        for temp in suite.temperatures:
            ck = f"{suite.name}@{temp}"
            keys = [k for k in _calibration_keys(suite) if not _missing(models, k)] if suite.plans else ["target"]
            calib = Calibration.from_dict(calibs[ck]) if ck in calibs else None
            if calib is not None and calib.heads != {k: heads[k] for k in keys if k in heads}:
                settings.log(f"[bench] {suite.name} T={temp}: the stored calibration used other trained heads; recalibrating")
                calib = None
            if calib is None:
                settings.log(f"[bench] {suite.name} T={temp}: calibrating costs and acceptance on {len(calib_ids)} prompt(s)")
                calib = calibrate(models, keys, calib_ids, temp,
                                  new_tokens=suite.calibration_tokens, seed=settings.seed)
            plan_runs[temp] = _suite_runs(suite, models, calib, temp)
            calibs[ck] = calib.as_dict()
            calib_path.write_text(json.dumps(calibs, indent=1))
        todo = [(i, p, t, r) for i, p in enumerate(measured) for t in suite.temperatures for r in _rotate(plan_runs[t], i)
                if (suite.name, float(t), p.id, r.name) not in done]
        if not todo:
            continue
        settings.log(f"[bench] {suite.name}: {len(todo)} runs ({len(measured)} prompts x {len(suite.temperatures)} temperatures)")
        for temp in suite.temperatures:  # warm-up: first calls allocate caches and kernels
            for run in plan_runs[temp]:
                execute(run, calib_ids[0], temp, settings.seed, 4)
        bar = tqdm(todo, desc=suite.name, unit="run", disable=not settings.progress, dynamic_ncols=True)
        with runs_path.open("a") as fh:
            for i, prompt, temp, run in bar:
                bar.set_postfix_str(f"T={temp} {prompt.id} {run.name}")
                ids = models.encode(prompt)
                seed = settings.seed + i
                res = execute(run, ids, temp, seed, settings.max_new_tokens)
                rec = _record(suite, run, prompt, ids, temp, seed, res)
                if any(k in heads for k in run.levels):
                    rec["heads"] = {k: heads[k] for k in run.levels if k in heads}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                records.append(rec)
    return records


def _rotate(runs: list, i: int) -> list:
    if not runs:
        return runs
    k = i % len(runs)
    return runs[k:] + runs[:k]


def _record(suite: Suite, run: RunSpec, prompt, ids, temp: float, seed: int, res: dict) -> dict:
    toks = res["tokens"]
    return {
        "suite": suite.name, "family": suite.family, "dtype": suite.dtype, "prompts": suite.prompts,
        "temperature": float(temp), "prompt_id": prompt.id, "category": prompt.category, "prompt_tokens": len(ids),
        "run": run.name, "kind": run.kind, "group": run.group, "plan": run.plan, "levels": list(run.levels),
        "scheme": run.scheme, "thresholds": list(run.thresholds), "k": run.k, "seed": seed,
        "new_tokens": len(toks), "tokens_sha1": hashlib.sha1(json.dumps(toks).encode()).hexdigest()[:16], "tokens": toks,
        "wall_s": res["wall_s"], "prefill_s": res["prefill_s"], "decode_s": res["decode_s"], "finish": res["finish"],
        "metrics": res["metrics"], "time": time.time(),
    }
