"""The cells of the peer audit and the model setups they run on.

A **setup** is a target (and a draft model, or none where the cell drafts by n-gram / prompt
lookup), a fixed prompt, and the allowed set ``A``: the target's ``k`` likeliest next ids at the
prompt, special tokens excluded (so no cell can stop early at EOS), sorted.  Setups:

* ``qwen``: Qwen2.5-Coder-1.5B (target) with Qwen2.5-Coder-0.5B (draft), a code prompt, ``k = 5``;
* ``smollm2``: SmolLM2-135M with no draft model (n-gram drafting / prompt lookup), a prompt that
  repeats itself so that lookups find matches, ``k = 4``;
* ``tiny``: :func:`hsd_fast.tiny.tiny_pair` on the character tokenizer (``--quick`` and the tests).

A **cell** is one engine x one method x one setup x one top-p.  ``CELLS`` is the full audit;
``QUICK_CELLS`` the same engines on the ``tiny`` setup (``smollm2`` cells keep SmolLM2, which is
small).  The ``control`` cell runs our engine with a deliberately lossy ``verify_fn``
(:data:`CONTROL_VERIFIERS`): the audit must reject it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["Cell", "Setup", "CELLS", "QUICK_CELLS", "ENGINES", "SETUPS", "TOP_P", "select_cells", "load_setup", "choose_allowed"]

ENGINES = ("hsd", "hf", "vllm")
TOP_P = 0.9  # the top-p of the top-p cells


@dataclass(frozen=True)
class Cell:
    """One audited configuration.  ``method``: ``hsd``: the scheme; ``hf``: ``assisted`` or
    ``lookup``; ``vllm``: ``standard`` (vLLM's default greedy drafts: one-hot ``q``),
    ``probabilistic`` (``draft_sample_method="probabilistic"``: sampled drafts, full ``q``), ``block``,
    ``plugin`` or ``ngram``; ``control``: the lossy
    verifier's name.  ``threshold``: draft tokens per round (our ``thresholds``, vLLM's
    ``num_speculative_tokens``, transformers' prompt-lookup tokens; the assistant's is its own)."""

    engine: str
    method: str
    setup: str
    top_p: float | None = None
    threshold: int = 4
    lossless: bool = True

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.method}/{self.setup}/" + ("T=1" if self.top_p is None else f"top_p={self.top_p:g}")


def _cells(setup_pair: str, setup_ngram: str) -> tuple[Cell, ...]:
    out = []
    for top_p in (None, TOP_P):
        out += [Cell("hsd", "tokenwise", setup_pair, top_p, 3), Cell("hsd", "block", setup_pair, top_p, 3), Cell("hf", "assisted", setup_pair, top_p),
                Cell("vllm", "standard", setup_pair, top_p), Cell("vllm", "probabilistic", setup_pair, top_p), Cell("vllm", "block", setup_pair, top_p),
                Cell("vllm", "plugin", setup_pair, top_p)]
    out += [Cell("hsd", "tokenwise", setup_ngram, None, 3), Cell("hf", "lookup", setup_ngram, None, 3), Cell("vllm", "ngram", setup_ngram, None, 3)]
    out.append(Cell("control", "accept_all", setup_pair, None, 4, lossless=False))
    return tuple(out)


CELLS = _cells("qwen", "smollm2")
QUICK_CELLS = _cells("tiny", "smollm2")


def select_cells(names: Sequence[str] | None, quick: bool = False) -> list[Cell]:
    """The cells whose engine (``hsd``, ``hf``, ``vllm``), ``engine/method`` or full name is in
    ``names`` (``None``: all), in audit order; the control runs whenever ``hsd`` cells do or when
    named ``control``.  Unknown names raise ValueError."""
    pool = QUICK_CELLS if quick else CELLS
    if names is None:
        return list(pool)
    names = list(names)
    known = set(ENGINES) | {"control"} | {f"{c.engine}/{c.method}" for c in pool} | {c.name for c in pool}
    for nm in names:
        if nm not in known:
            raise ValueError(f"cells: unknown cell {nm!r}; known: {', '.join(ENGINES)}, control, or ENGINE/METHOD such as hf/assisted, or a full cell name")
    chosen = [c for c in pool if c.engine in names or f"{c.engine}/{c.method}" in names or c.name in names
              or (c.engine == "control" and ("hsd" in names or "control" in names))]
    return chosen


@dataclass
class Setup:
    """Models, prompt and allowed set of one setup (module docstring)."""

    name: str
    target: object
    draft: object | None
    tokenizer: object
    prompt_text: str
    prompt: list[int]
    allowed: tuple[int, ...]
    target_name: str
    draft_name: str | None
    target_path: str | None = None
    draft_path: str | None = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The setup as JSON-able facts for the report."""
        tok = self.tokenizer
        return {"name": self.name, "target": self.target_name, "draft": self.draft_name, "prompt_text": self.prompt_text, "prompt_ids": self.prompt,
                "allowed": list(self.allowed), "allowed_text": [tok.decode([a]) for a in self.allowed]}

    def release(self) -> None:
        """Drop the models (before a vLLM subprocess needs the memory)."""
        self.target = self.draft = None


SETUPS = {
    "qwen": dict(target="qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b", prompt="def fibonacci(n):\n    if n", k=5),
    "smollm2": dict(target="smollm2-135m", draft=None, prompt="red green blue red green blue red green blue red", k=4),
    "tiny": dict(target="tiny", draft="tiny", prompt="abcab abcab abcab ab", k=4),
}


@torch.no_grad()
def choose_allowed(target, prompt: Sequence[int], k: int, exclude: Sequence[int]) -> tuple[int, ...]:
    """The target's ``k`` likeliest next ids after ``prompt`` (ids in ``exclude`` skipped), sorted."""
    logits = target(torch.tensor([list(prompt)], dtype=torch.int64)).logits[0, -1]
    ranked = torch.argsort(logits, descending=True, stable=True).tolist()
    drop = set(exclude)
    return tuple(sorted([t for t in ranked if t not in drop][:k]))


def _special_ids(tok, model) -> set[int]:
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            v = getattr(cfg, key, None)
            ids |= set(v) if isinstance(v, (list, tuple)) else ({v} if isinstance(v, int) else set())
    return ids


def load_setup(name: str, cache_dir=None) -> Setup:
    """Load the models of setup ``name`` (float32, CPU) and choose its allowed set."""
    if name not in SETUPS:
        raise ValueError(f"setup: unknown setup {name!r}; known: {', '.join(SETUPS)}")
    spec = SETUPS[name]
    if name == "tiny":
        from ..tiny import tiny_pair

        draft, target, tok = tiny_pair(0, tokenizer="chars", noise=0.2)
        t_path = d_path = None
    else:
        from .. import models

        target, tok = models.load(spec["target"], cache_dir=cache_dir)
        t_path = str(models.fetch(spec["target"], cache_dir=cache_dir))
        draft, d_path = None, None
        if spec["draft"]:
            draft, _ = models.load(spec["draft"], cache_dir=cache_dir)
            d_path = str(models.fetch(spec["draft"], cache_dir=cache_dir))
    prompt = list(tok(spec["prompt"], add_special_tokens=False)["input_ids"])
    allowed = choose_allowed(target, prompt, spec["k"], sorted(_special_ids(tok, target)))
    return Setup(name, target, draft, tok, spec["prompt"], prompt, allowed, spec["target"], spec["draft"], t_path, d_path)
