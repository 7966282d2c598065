"""Samplers of the audited engines: each returns the first ``n`` tokens of one generation per seed.

* :func:`sample_hsd`: our :class:`hsd_fast.engine.SpeculativeDecoder` (``allowed_ids``, temperature,
  top-p; one batched ``generate`` per chunk of rows, row ``b`` seeded ``seeds[b]``); with a lossy
  ``verify_fn`` it is the negative control.
* :func:`sample_hf`: transformers' own ``generate`` on the target with ``do_sample=True``, the allowed
  set as a user ``LogitsProcessor`` (:class:`AllowedIdsMask`), ``top_k=0``, and either
  ``assistant_model=draft`` (assisted generation: ``_speculative_sampling``) or
  ``prompt_lookup_num_tokens`` (prompt lookup: candidates verified by sampling the target and
  matching).  Assisted generation refuses batches, so one call per sample, with
  ``torch.manual_seed(seed)`` before it.  :func:`hf_processor_lists` records which logits
  processors the target and the assistant each build (what the report says about the assistant).
* :func:`sample_vllm`: a subprocess running :mod:`hsd_fast.audit.vllm_runner` with vLLM's own
  Python; :class:`NotRun` when that Python, vLLM or the requested plugin is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

__all__ = ["AllowedIdsMask", "NotRun", "sample_hsd", "sample_hf", "hf_processor_lists", "sample_vllm", "vllm_available", "plugin_available", "VLLM_PYTHON", "RESULT_MARKER"]

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
RESULT_MARKER = "HSD_AUDIT_RESULT "  # the runner's result line: this prefix, then one JSON object
RUNNER = Path(__file__).resolve().with_name("vllm_runner.py")


class NotRun(Exception):
    """A cell that cannot run here; the message is the reason the report prints."""


def sample_hsd(levels: Sequence[object], prompt: Sequence[int], allowed: Sequence[int], n: int, seeds: Sequence[int], *, scheme: str = "tokenwise",
               thresholds: int | Sequence[int] | None = None, temperature: float = 1.0, top_p: float | None = None, verify_fn: Callable | None = None,
               chunk: int = 128, progress: Callable[[int], None] | None = None) -> tuple[list[list[int]], dict]:
    """``len(seeds)`` generations of ``n`` tokens by ``SpeculativeDecoder(levels, ...)`` with
    ``allowed_ids=allowed`` and no EOS; returns ``(token lists, info)``.  ``progress(k)`` after each
    chunk of ``k`` rows."""
    from ..engine import SpeculativeDecoder

    dec = SpeculativeDecoder(list(levels), scheme=scheme, thresholds=thresholds, temperature=temperature, top_p=top_p,
                             allowed_ids=list(allowed), eos_token_id=None, verify_fn=verify_fn)
    out: list[list[int]] = []
    drafted = accepted = 0
    for start in range(0, len(seeds), chunk):
        part = list(seeds[start : start + chunk])
        res = dec.generate([list(prompt)] * len(part), max_new_tokens=n, seeds=part)
        out.extend(res.tokens)
        for lv in res.metrics.levels:
            drafted += getattr(lv, "drafted", 0) or 0
            accepted += getattr(lv, "accepted", 0) or 0
        if progress:
            progress(len(part))
    return out, {"levels": dec.describe(), "scheme": scheme, "verify_fn": None if verify_fn is None else getattr(verify_fn, "__name__", repr(verify_fn))}


class AllowedIdsMask:
    """A transformers ``LogitsProcessor``: every id outside ``allowed`` gets ``-inf``.  ``calls``
    counts its calls (``(input_ids, scores)`` signature); ``assistant_calls`` those made while
    ``inside_assistant`` is set (:func:`hf_processor_lists` sets it around the assistant's ``generate``)."""

    def __init__(self, allowed: Sequence[int], vocab_size: int):
        self.allowed = tuple(sorted(allowed))
        self.mask = torch.ones(vocab_size, dtype=torch.bool)
        self.mask[list(self.allowed)] = False
        self.calls = self.assistant_calls = 0
        self.inside_assistant = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.assistant_calls += int(self.inside_assistant)
        return scores.masked_fill(self.mask.to(scores.device)[: scores.shape[-1]], float("-inf"))


def _processor_class():
    """:class:`AllowedIdsMask` as a subclass of transformers' ``LogitsProcessor`` (so that
    ``generate`` accepts it in a ``LogitsProcessorList``)."""
    from transformers import LogitsProcessor

    return type("AllowedIdsMaskProcessor", (AllowedIdsMask, LogitsProcessor), {})


def _hf_kwargs(draft, lookup_tokens: int | None, temperature: float, top_p: float | None) -> dict:
    if (draft is None) == (lookup_tokens is None):
        raise ValueError("draft: pass exactly one of draft (assisted generation) and lookup_tokens (prompt lookup)")
    kw = dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0 if top_p is None else float(top_p), repetition_penalty=1.0)
    if draft is not None:
        kw["assistant_model"] = draft
    else:
        kw["prompt_lookup_num_tokens"] = int(lookup_tokens)
    return kw


@torch.no_grad()
def sample_hf(target, draft, prompt: Sequence[int], allowed: Sequence[int], n: int, seeds: Sequence[int], *, temperature: float = 1.0,
              top_p: float | None = None, lookup_tokens: int | None = None, progress: Callable[[int], None] | None = None) -> tuple[list[list[int]], dict]:
    """``len(seeds)`` generations of ``n`` new tokens by ``target.generate`` (module docstring): with
    ``draft`` (assisted generation) or ``lookup_tokens`` (prompt lookup).  Returns ``(token lists,
    info)``; ``progress(1)`` after each sample."""
    from transformers import LogitsProcessorList

    mask = _processor_class()(allowed, target.config.get_text_config().vocab_size)
    kw = _hf_kwargs(draft, lookup_tokens, temperature, top_p)
    ids = torch.tensor([list(prompt)], dtype=torch.int64, device=target.device)
    attn = torch.ones_like(ids)
    out = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        gen = target.generate(ids, attention_mask=attn, max_new_tokens=n, logits_processor=LogitsProcessorList([mask]),
                              pad_token_id=0, **kw)
        out.append(gen[0, ids.shape[1] :].tolist())
        if progress:
            progress(1)
    info = {"generate_kwargs": {k: (v if not hasattr(v, "config") else type(v).__name__) for k, v in kw.items()}, "mask_calls": mask.calls}
    if draft is not None:
        import copy

        cfg = copy.deepcopy(draft.generation_config)  # what AssistedCandidateGenerator reads: the assistant's config, library defaults filled in
        cfg.update(**cfg._get_default_generation_params(), defaults_only=True)
        info["assistant_config"] = {k: getattr(cfg, k, None) for k in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
    return out, info


@torch.no_grad()
def hf_processor_lists(target, draft, prompt: Sequence[int], allowed: Sequence[int], n: int, *, temperature: float = 1.0, top_p: float | None = None,
                       lookup_tokens: int | None = None) -> dict:
    """One assisted (or prompt-lookup) generation with each model's ``_get_logits_processor``
    wrapped: the class names of the processors the target's ``generate`` and (when there is one) the
    assistant's ``generate`` built, in application order, and how often the user mask ran inside the
    assistant's ``generate``."""
    from transformers import LogitsProcessorList

    mask = _processor_class()(allowed, target.config.get_text_config().vocab_size)
    seen: dict[str, list[list[str]]] = {"target": [], "assistant": []}
    patched = []

    def wrap(model, role):
        build = model._get_logits_processor

        def recording(*a, **k):
            procs = build(*a, **k)
            seen[role].append([type(p).__name__ for p in procs])
            return procs

        model._get_logits_processor = recording
        patched.append((model, "_get_logits_processor"))
        if role == "assistant":
            gen = model.generate

            def flagged(*a, **k):
                mask.inside_assistant = True
                try:
                    return gen(*a, **k)
                finally:
                    mask.inside_assistant = False

            model.generate = flagged
            patched.append((model, "generate"))

    wrap(target, "target")
    if draft is not None:
        wrap(draft, "assistant")
    try:
        torch.manual_seed(0)
        ids = torch.tensor([list(prompt)], dtype=torch.int64, device=target.device)
        target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, logits_processor=LogitsProcessorList([mask]), pad_token_id=0,
                        **_hf_kwargs(draft, lookup_tokens, temperature, top_p))
    finally:
        for model, name in patched:
            del model.__dict__[name]
    return {"target_processors": seen["target"][:1], "assistant_processors": seen["assistant"][:1],
            "mask_calls_inside_assistant": mask.assistant_calls, "mask_calls_total": mask.calls}


def vllm_available(python: Path = VLLM_PYTHON) -> str:
    """vLLM's version string when ``python`` imports vllm; raises :class:`NotRun` with the reason otherwise."""
    if not Path(python).is_file():
        raise NotRun(f"no vLLM Python at {python}")
    try:
        res = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, timeout=300, cwd="/")
    except subprocess.TimeoutExpired:
        raise NotRun(f"{python} -c 'import vllm' took over 300 s") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotRun(f"{python} cannot import vllm: {last}")
    return res.stdout.strip().splitlines()[-1]


def plugin_available(python: Path = VLLM_PYTHON) -> None:
    """Raises :class:`NotRun` unless vLLM's Python imports our plugin ``hsd_fast.vllm`` from a neutral
    directory (i.e. it is installed in that environment, not just present in this checkout)."""
    res = subprocess.run([str(python), "-c", "import hsd_fast.vllm"], capture_output=True, text=True, timeout=300, cwd="/")
    if res.returncode != 0:
        raise NotRun("plugin not installed (vLLM's Python cannot import hsd_fast.vllm)")


def sample_vllm(spec: dict, *, python: Path = VLLM_PYTHON, env: dict | None = None, timeout: float = 7200, log: Path | None = None) -> tuple[list[list[int]], dict]:
    """Run :mod:`hsd_fast.audit.vllm_runner` with ``python`` on ``spec`` (its ``--json`` argument) and
    return ``(token lists, info)`` from its result line.  The environment adds
    ``OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=4`` and ``env``; stderr (and stdout) go to ``log``.
    Raises :class:`NotRun` when vLLM is missing or the run fails (the reason: its last error line)."""
    version = vllm_available(python)
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "VLLM_CPU_KVCACHE_SPACE": "4", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    with open(log if log else os.devnull, "w") as err:
        try:
            res = subprocess.run([str(python), str(RUNNER), "--json", json.dumps(spec)], stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout,
                                 env=full_env, cwd="/")
        except subprocess.TimeoutExpired:
            raise NotRun(f"vLLM run exceeded {timeout:.0f} s") from None
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if res.returncode != 0 or not lines:
        reason = "no result line"
        if log and Path(log).is_file():
            errs = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if "Error" in ln or "error" in ln]
            reason = errs[-1][:300] if errs else reason
        raise NotRun(f"vLLM run failed (exit {res.returncode}): {reason}")
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    info = {k: v for k, v in result.items() if k != "tokens"}
    info.update(vllm=version, wall_seconds=time.perf_counter() - start, python=str(python))
    return result["tokens"], info


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run hsd-fast audit-engine instead")
