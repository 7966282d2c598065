"""Model families of the decoding benchmark: which models, how prompts are encoded, which ids stop.

A family names a target, an optional draft model and the early-exit depths worth trying.  Its
:meth:`Family.load` returns a :class:`Models` holding every model object once, so that every
configuration of a suite runs on the same weights in one process, and the *level keys* the run
specifications use:

* ``"ngram"``: the prompt-lookup drafter (``NGramDrafter(3, 1)``);
* ``"draft"``: the draft model; ``"draft@int8"``: a separate copy with weight-only int8 linear layers
  (:mod:`hsd_fast.quant`; bfloat16 activations, whatever the suite's dtype, since that is where the
  int8 kernel is fast on a CPU);
* ``"exit:D"``: the target's first ``D`` layers + final norm + LM head (sharing its cache);
* ``"exit:D:trained"``: the same exit read through the linear head that ``hsd-fast train-exit TARGET
  --layer D`` trained and cached (``EarlyExit(target, D, head=...)``; the newest linear head of the
  target's sha256 and layer ``D`` in ``<cache>/exits``, checked against its manifest; docs/early-exit.md);
* ``"target"``: the target.

Keys are parsed by :func:`hsd_fast.bench.suites.parse_exit_key`: a malformed key (``exit:x:trained``,
``exit:3:foo``, ``draft2``) is a ``ValueError`` naming it, raised when the run or plan is built.  A
well-formed key that a family cannot provide (no draft model, no int8 kernel on the device, no trained
head in the cache) raises :class:`LevelUnavailable` (a ``ValueError``): the runner skips the runs and
plans that need it and says why (for a missing head: the ``hsd-fast train-exit`` command that makes it).
A head that is cached but corrupt is a ``CorruptCacheError``, which stops the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .suites import parse_exit_key

__all__ = ["Family", "Models", "FAMILIES", "LevelUnavailable", "get_family"]


class LevelUnavailable(ValueError):
    """A well-formed level key that this family cannot provide (module docstring): skipped, not fatal."""


@dataclass(frozen=True)
class Family:
    name: str
    target: str  # hsd_fast.models registry name ("tiny" builds random models in code)
    draft: str | None
    exits: tuple[int, ...] = ()  # untrained exit depths of the target (exit:D)
    trained_exits: tuple[int, ...] = ()  # depths whose trained heads the suites use (exit:D:trained); only
    # for targets whose heads hsd-fast train-exit makes and the engine decodes (Llama-style, cached backend)
    description: str = ""

    def load(self, dtype: torch.dtype, device: torch.device, *, quantized_draft: bool = True) -> "Models":
        if self.target == "tiny":
            return _tiny_models(dtype, device)
        from .. import models as registry
        from ..quant import quantize_int8

        target, tok = registry.load(self.target, dtype=dtype, device=device)
        draft = draft8 = None
        if self.draft is not None:
            draft, _ = registry.load(self.draft, dtype=dtype, device=device)
            if quantized_draft and device.type != "cuda":  # no int8 kernel on CUDA (hsd_fast.quant): no int8 runs there
                base, _ = registry.load(self.draft, dtype=torch.bfloat16, device=device)
                draft8 = quantize_int8(base)
        return Models(self, target, tok, draft, draft8, _eos_ids(target, tok))


@dataclass
class Models:
    family: Family
    target: torch.nn.Module
    tokenizer: object
    draft: torch.nn.Module | None
    draft_int8: torch.nn.Module | None
    eos_ids: tuple[int, ...]
    _exits: dict = field(default_factory=dict)

    def level(self, key: str):
        """The level spec for ``hsd_fast.engine.SpeculativeDecoder`` behind a level key."""
        from ..engine import EarlyExit

        if key == "ngram":
            return "ngram"
        if key == "target":
            return (self.target, self.tokenizer)
        if key == "draft" and self.draft is not None:
            return (self.draft, self.tokenizer)
        if key == "draft@int8" and self.draft_int8 is not None:
            return (self.draft_int8, self.tokenizer)
        parsed = parse_exit_key(key)  # ValueError naming a malformed key
        if parsed is not None:
            depth, trained = parsed
            n_layers = int(self.target.config.num_hidden_layers)
            if not 1 <= depth < n_layers:
                raise ValueError(f"level key {key!r}: the {self.family.name} target has {n_layers} layers; "
                                 f"an exit needs 1 <= D < {n_layers}")
            return EarlyExit(self.target, depth, head=self.trained_head(depth)[1] if trained else None)
        raise LevelUnavailable(f"level key {key!r} is not available in family {self.family.name}")

    def trained_head(self, depth: int):
        """``(folder, head)``: the newest cached linear head of the target at ``depth``, loaded once
        (manifest checked).  :class:`LevelUnavailable` naming the command that trains it when there is none."""
        if depth not in self._exits:
            from ..exits import find_head, load_head
            from ..exits.store import exits_root

            try:
                folder = find_head(self.target, depth, "linear")
            except ValueError:
                raise LevelUnavailable(f"level key 'exit:{depth}:trained': no trained exit head for the "
                                       f"{self.family.name} target at layer {depth} in {exits_root()}; "
                                       f"{_train_hint(self.family, depth)}") from None
            self._exits[depth] = (folder, load_head(folder, self.target, depth))
        return self._exits[depth]

    def model(self, key: str) -> torch.nn.Module:
        spec = self.level(key)
        return spec[0] if isinstance(spec, tuple) else spec

    def encode(self, prompt) -> list[int]:
        """HumanEval prompts as raw text (code completion); chat prompts through the chat template."""
        tok = self.tokenizer
        if prompt.source != "humaneval" and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt.text}], tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return [int(x) for x in ids]
        return [int(x) for x in tok(prompt.text, add_special_tokens=False)["input_ids"]]


def _train_hint(family: Family, depth: int) -> str:
    if family.target == "tiny":
        return (f"the tiny models are built in code, so train it with hsd_fast.exits.train_exit(target, tokenizer, "
                f"TrainConfig(layer={depth})) on the family's float64 target (as tests/fast/test_exits.py does)")
    return f"create it with `hsd-fast train-exit {family.target} --layer {depth}`"


def _eos_ids(model, tok) -> tuple[int, ...]:
    """Every id that ends a turn or a document: the tokenizer's EOS, the generation config's EOS ids
    and, for Qwen2.5, ``<|endoftext|>`` too (its GGUF config names only ``<|im_end|>``, and a raw code
    completion ends with ``<|endoftext|>``)."""
    ids = set()
    for src in (getattr(tok, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    for special in ("<|endoftext|>", "<|im_end|>"):
        if special in vocab:
            ids.add(int(vocab[special]))
    return tuple(sorted(ids))


def _tiny_models(dtype, device) -> Models:
    """Random tiny Llama models with the character tokenizer: the smoke-test family (no download)."""
    from ..quant import quantize_int8
    from ..tiny import tiny_pair

    draft, target, tok = tiny_pair(0, target_layers=4, draft_layers=4, noise=0.05, hidden=64, tokenizer="chars", dtype=dtype)
    draft8 = None
    if torch.device(device).type != "cuda":  # no int8 kernel on CUDA (hsd_fast.quant): no int8 runs there
        draft8, _, _ = tiny_pair(0, target_layers=4, draft_layers=4, noise=0.05, hidden=64, tokenizer="chars", dtype=torch.bfloat16)
        draft8 = quantize_int8(draft8).to(device)
    return Models(FAMILIES["tiny"], target.to(device), tok, draft.to(device), draft8, ())


FAMILIES = {
    f.name: f
    for f in (
        Family("qwen", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", exits=(24, 26), trained_exits=(14,),
               description="Qwen2.5-Coder-1.5B-Instruct target, Qwen2.5-Coder-0.5B-Instruct draft (one tokenizer)"),
        Family("smollm2", "smollm2-135m", None, description="SmolLM2-135M-Instruct alone, with the n-gram drafter"),
        Family("tiny", "tiny", "tiny", exits=(2,), trained_exits=(2,), description="random tiny Llama models (smoke test; no download)"),
    )
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"family: unknown {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
