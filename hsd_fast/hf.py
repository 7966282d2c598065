"""A drop-in for transformers' ``model.generate`` that decodes speculatively and losslessly.

``hsd_fast.hf.generate(model, inputs, assistant_model=draft, ...)`` takes the caller's own
``AutoModelForCausalLM`` objects and transformers' own generation options, and returns what
``model.generate`` returns (the prompts followed by the new tokens, one row per sequence), decoded by
:class:`hsd_fast.engine.SpeculativeDecoder` with one of our lossless schemes (``scheme=``, default
``"block"``).  Unlike transformers' assisted generation it takes batches (rows of any lengths) and a
seed per row, and it runs hierarchies: ``assistant_model`` may be a list of drafts (bottom-up), and
``prompt_lookup_num_tokens`` puts an n-gram drafter below them.

The law.  transformers' own logits processors for the merged generation config (repetition
penalty, no-repeat-n-gram, bad words, ...; with ``do_sample`` also its temperature, top-k and top-p
warpers, in transformers' order) and the caller's ``logits_processor`` list are built by the target's
``GenerationMixin._get_logits_processor`` and applied at EVERY level, at every drafted position,
with that position's own context (:class:`hsd_fast.warp.Warp`'s ``context_processor``).  So every
draft samples from and reports its processed law, and the output law is the target's processed
law: exactly what ``model.generate(do_sample=True)`` samples from for one unpadded prompt.
(transformers runs a padded batch through the processors with its padding in ``input_ids``; here
each row is its own prompt without padding, so a repetition penalty never sees pad tokens.)
Without ``do_sample`` the law is the argmax of the processed scores (ties to the lowest id, as
``torch.argmax``): greedy decoding, verified by the ``greedy`` scheme.

Stopping.  ``eos_token_id`` and ``max_new_tokens`` (or ``max_length``) as transformers reads them;
``stop_strings`` (transformers' ``StopStringCriteria``, needs ``tokenizer=``) and ``stopping_criteria``
are evaluated after every emitted token on the row's own sequence (prompt + tokens, batch of one;
``scores`` is passed as ``None``) and cut the output there: a stopping time of the output stream, so
the law stays exact.  ``streamer`` (``TextStreamer``, ``TextIteratorStreamer``) receives the prompt,
then each iteration's kept tokens, then ``end()`` (also when decoding fails, so a consumer thread
never waits forever); like transformers, only for one sequence.

Vocabularies.  Draft and target vocabularies that differ only by padding rows (Qwen2.5 0.5B's 151936
vs 7B's 152064) are accepted when ``tokenizer=`` shows it: every real id (``len(tokenizer)``) lies in
the smaller vocabulary; the ids beyond it get probability 0 at every level
(``SpeculativeDecoder(vocab_size=...)``).  Anything else is a ``ValueError``.

Refused with a ``ValueError`` naming the option: beam search and the other non-sampling modes,
returning scores or hidden states, encoder-decoder models, model keyword arguments, assistants with
another tokenizer, and processors that read the prompt length (``min_new_tokens``,
``begin_suppress_tokens``, ``exponential_decay_length_penalty``) when the prompts' lengths differ.
Draft lengths are fixed per call (``num_assistant_tokens``, ``prompt_lookup_num_tokens`` or
``thresholds=``); transformers' adaptive schedule (``num_assistant_tokens_schedule``,
``assistant_confidence_threshold``) is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .engine import Metrics, SpeculativeDecoder
from .engine.config import as_int_list

__all__ = ["generate", "HFGenerateOutput"]

# generation-config fields this module refuses when set to anything but their neutral value
_UNSUPPORTED = {
    "num_beams": lambda v: v not in (None, 1),
    "num_beam_groups": lambda v: v not in (None, 1),
    "penalty_alpha": lambda v: v is not None,
    "dola_layers": lambda v: v is not None,
    "constraints": lambda v: v is not None,
    "force_words_ids": lambda v: v is not None,
    "guidance_scale": lambda v: v not in (None, 1),
    "output_scores": bool,
    "output_logits": bool,
    "output_attentions": bool,
    "output_hidden_states": bool,
    "max_time": lambda v: v is not None,
    "token_healing": bool,
    "use_mtp": bool,
    "assistant_early_exit": lambda v: v is not None,
    "encoder_repetition_penalty": lambda v: v not in (None, 1),
    "encoder_no_repeat_ngram_size": lambda v: v not in (None, 0),
    "num_assistant_tokens_schedule": lambda v: v not in (None, "constant", "heuristic"),
}
# processors that count from the prompt's length: one length for every row is needed
_PROMPT_LENGTH_FIELDS = ("min_new_tokens", "begin_suppress_tokens", "exponential_decay_length_penalty")


@dataclass
class HFGenerateOutput:
    """``return_dict_in_generate=True``: ``sequences`` as ``model.generate`` returns them, plus each
    sequence's new tokens, finish reason (``"eos"``, ``"stop"``, ``"length"``), texts (with a
    tokenizer) and the decoder's metrics."""

    sequences: torch.Tensor  # [B * num_return_sequences, L_prompt + max new]
    tokens: list[list[int]]
    finish_reasons: list[str]
    metrics: Metrics
    texts: list[str] | None = None


def _merged_config(model, generation_config, kwargs: dict):
    """transformers' own merge: explicit options > ``generation_config`` > ``model.generation_config``
    > global defaults.  -> (config, keyword arguments that are not generation options)"""
    prepare = getattr(model, "_prepare_generation_config", None)
    if prepare is None:
        raise ValueError(f"model: {type(model).__name__} is not a transformers generation model (no _prepare_generation_config)")
    config, model_kwargs = prepare(generation_config, **kwargs)
    extra = {k: v for k, v in model_kwargs.items() if k not in ("output_attentions", "output_hidden_states")}
    if extra:
        name = sorted(extra)[0]
        hint = " (an assistant with another tokenizer cannot be verified losslessly)" if "tokenizer" in name else ""
        raise ValueError(f"{name}: not a generation option hsd_fast.hf.generate understands{hint}")
    return config


def _check_config(config, prompt_lengths: list[int]) -> None:
    for name, is_set in _UNSUPPORTED.items():
        value = getattr(config, name, None)
        if is_set(value):
            raise ValueError(f"{name}={value!r}: not supported by hsd_fast.hf.generate (speculative sampling only)")
    if len(set(prompt_lengths)) > 1:
        for name in _PROMPT_LENGTH_FIELDS:
            if getattr(config, name, None) not in (None, 0):
                raise ValueError(f"{name}: reads the prompt length, so every prompt must have the same length here (got lengths {min(prompt_lengths)}..{max(prompt_lengths)})")


def _row_ids(inputs, attention_mask, tokenizer, pad_token_id, eos_ids, chat_template: bool) -> tuple[list[list[int]], torch.Tensor | None]:
    """Each row's prompt ids (padding removed) and, for tensor inputs, the tensor as given."""
    if inputs is None:
        raise ValueError("inputs: expected token ids (a LongTensor [B, L], a list of id lists) or text prompts")
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs)):
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if tokenizer is None:
            raise ValueError("tokenizer: text prompts need tokenizer=")
        rows = []
        for text in texts:
            if chat_template:
                text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
                rows.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
            else:
                rows.append(list(tokenizer(text)["input_ids"]))
        return rows, None
    if chat_template:
        raise ValueError("apply_chat_template: only text prompts can be wrapped in the chat template")
    if isinstance(inputs, torch.Tensor):
        ids = inputs[None] if inputs.dim() == 1 else inputs
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"inputs: expected an integer tensor [B, L], got {tuple(inputs.shape)} {inputs.dtype}")
        if attention_mask is not None:
            mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
            if tuple(mask.shape) != tuple(ids.shape):
                raise ValueError(f"attention_mask: shape {tuple(mask.shape)} differs from the inputs' {tuple(ids.shape)}")
            mask = mask.bool()
        elif pad_token_id is not None and pad_token_id not in eos_ids and bool((ids == pad_token_id).any()):
            mask = ids != pad_token_id  # transformers infers the same mask
        else:
            mask = torch.ones_like(ids, dtype=torch.bool)
        rows = [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        return rows, ids
    if isinstance(inputs, Sequence):
        return [as_int_list(x, f"inputs[{i}]") for i, x in enumerate(inputs)], None
    raise ValueError(f"inputs: expected token ids (a LongTensor [B, L], a list of id lists) or text prompts, got {type(inputs).__name__}")


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def _shared_vocab(models: list, tokenizer) -> int | None:
    """``None`` when every model has the target's vocabulary; the smaller size when they differ only
    by padding rows (module docstring); else a ``ValueError``."""
    sizes = [_vocab_size(m) for m in models]
    if len(set(sizes)) == 1:
        return None
    shared = min(sizes)
    if tokenizer is None:
        raise ValueError(f"assistant_model: vocabulary sizes {sizes} differ; pass tokenizer= to show they differ only by padding rows")
    if len(tokenizer) > shared:
        raise ValueError(f"assistant_model: vocabulary sizes {sizes} differ and the tokenizer has {len(tokenizer)} ids, more than the smaller vocabulary: not one vocabulary padded differently")
    for key in ("eos_token_id", "bos_token_id"):
        values = {str(getattr(m.config, key, None)) for m in models if getattr(m.config, key, None) is not None}
        if len(values) > 1:
            raise ValueError(f"assistant_model: the models disagree on {key} ({sorted(values)}): not one vocabulary")
    return shared


def _stop_rule(prompts: list[list[int]], criteria):
    """The engine's ``stop(b, tokens, n_new)`` from transformers stopping criteria: the first new
    position where any criterion fires on the row's own sequence."""

    def stop(b: int, tokens: list[int], n_new: int):
        for m in range(len(tokens) - n_new + 1, len(tokens) + 1):
            seq = torch.tensor([prompts[b] + tokens[:m]], dtype=torch.int64)
            if bool(torch.as_tensor(criteria(seq, None)).any()):
                return m
        return None

    return stop


def _sequences(rows: list[list[int]], given: torch.Tensor | None, tokens: list[list[int]], n_return: int, pad: int, device) -> torch.Tensor:
    """``model.generate``'s output: the prompts (the tensor as given, else left-padded with ``pad``)
    followed by the new tokens, right-padded with ``pad``."""
    if given is None:
        width = max(map(len, rows))
        given = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.int64)
    prompt = given.to(torch.int64).cpu().repeat_interleave(n_return, 0)
    width = max(map(len, tokens))
    new = torch.tensor([t + [pad] * (width - len(t)) for t in tokens], dtype=torch.int64).reshape(len(tokens), width)
    return torch.cat([prompt, new], 1).to(device)


@torch.no_grad()
def generate(
    model,
    inputs=None,
    *,
    assistant_model=None,
    generation_config=None,
    logits_processor=None,
    stopping_criteria=None,
    streamer=None,
    tokenizer=None,
    attention_mask: torch.Tensor | None = None,
    scheme: str = "block",
    thresholds: int | Sequence[int] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    apply_chat_template: bool = False,
    timing: bool = False,
    **kwargs: Any,
):
    """``model.generate(inputs, assistant_model=..., ...)``, decoded by our engine (module docstring).

    ``inputs``: a LongTensor [B, L] (with ``attention_mask`` for padded rows; also as ``input_ids=``,
    or a tokenizer's output with both), a list of id lists, or text (``tokenizer=``; ``apply_chat_template=True`` wraps each text as one user message with the
    generation prompt).  ``assistant_model``: a draft model, a list of drafts (bottom-up), or None.
    ``scheme``: the lossless verification scheme of every verifying level.  ``thresholds``: the draft
    lengths (:class:`SpeculativeDecoder`; default ``num_assistant_tokens`` or
    ``prompt_lookup_num_tokens`` when passed, else the engine's default).  ``seeds[b]``: sequence
    ``b``'s seed (default ``seed + b``; with ``num_return_sequences`` the sequences of prompt ``i`` are
    ``i * n .. i * n + n - 1``).  Every other keyword is a transformers generation option.

    Returns ``sequences`` [B * n, L + new] (a LongTensor on the model's device), or an
    :class:`HFGenerateOutput` with ``return_dict_in_generate=True``."""
    if inputs is None and "input_ids" in kwargs:  # model.generate(input_ids=..., attention_mask=...) / **tokenizer(...)
        inputs = kwargs.pop("input_ids")
    if isinstance(inputs, Mapping) and "input_ids" in inputs:  # a tokenizer's BatchEncoding
        if attention_mask is None:
            attention_mask = inputs.get("attention_mask")
        inputs = inputs["input_ids"]
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError("model: encoder-decoder models are not supported (decoder-only causal LMs)")
    raw_k = kwargs.get("num_assistant_tokens", getattr(generation_config, "num_assistant_tokens", None) if generation_config is not None else None)
    config = _merged_config(model, generation_config, kwargs)
    eos = config.eos_token_id
    eos_ids = tuple(as_int_list(eos if isinstance(eos, (list, tuple)) else [eos], "eos_token_id")) if eos is not None else ()
    pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    rows, given = _row_ids(inputs, attention_mask, tokenizer, config.pad_token_id, eos_ids, bool(apply_chat_template))
    if not rows or any(not r for r in rows):
        raise ValueError("inputs: every prompt needs at least one token")
    _check_config(config, [len(r) for r in rows])
    n_return = config.num_return_sequences or 1
    prompts = [r for r in rows for _ in range(n_return)]
    if streamer is not None and len(prompts) > 1:
        raise ValueError("streamer: streaming needs exactly one sequence (one prompt, num_return_sequences=1), as in transformers")

    padded_len = given.shape[1] if given is not None else max(map(len, rows))
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - padded_len
    if max_new is None or max_new < 1:
        raise ValueError(f"max_length: {config.max_length} leaves no room after the {padded_len}-token input; pass max_new_tokens")

    drafts: list = []
    if config.prompt_lookup_num_tokens:
        drafts.append(f"ngram:{config.max_matching_ngram_size or 2}")
        raw_k = raw_k or config.prompt_lookup_num_tokens
    if assistant_model is not None:
        drafts.extend(assistant_model if isinstance(assistant_model, (list, tuple)) else [assistant_model])
    models = [m for m in drafts if isinstance(m, torch.nn.Module)] + [model]
    shared = _shared_vocab(models, tokenizer)
    if thresholds is None and raw_k is not None and drafts:
        thresholds = int(raw_k)

    user = logits_processor if logits_processor is not None else []
    from transformers import LogitsProcessorList, StoppingCriteriaList

    device = next(model.parameters()).device
    model._prepare_special_tokens(config, True, device=device)  # the special-token tensors the processors read
    procs = model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=len(rows[0]),
        encoder_input_ids=torch.tensor([rows[0]]),
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(user),
        device=str(device),
        model_kwargs={},
    )
    criteria = StoppingCriteriaList(stopping_criteria if stopping_criteria is not None else [])
    if config.stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings: needs tokenizer= to match strings against tokens")
        from transformers import StopStringCriteria

        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=config.stop_strings))

    dec = SpeculativeDecoder(
        [*drafts, model],
        scheme=scheme,
        thresholds=thresholds,
        temperature=1.0 if config.do_sample else 0.0,
        context_processor=procs if len(procs) else None,
        vocab_size=shared,
        tokenizer=tokenizer,
        eos_token_id=list(eos_ids) or None,
        timing=timing,
    )
    if seeds is None:
        seeds = [seed + b for b in range(len(prompts))]

    on_tokens = None
    if streamer is not None:
        streamer.put(torch.tensor([prompts[0]], dtype=torch.int64))

        def on_tokens(new):
            if new[0]:
                streamer.put(torch.tensor(new[0], dtype=torch.int64))

    try:
        res = dec.generate(prompts, max_new_tokens=max_new, seeds=seeds, on_tokens=on_tokens, stop=_stop_rule(prompts, criteria) if len(criteria) else None)
    finally:
        if streamer is not None:
            streamer.end()
    sequences = _sequences(rows, given, res.tokens, n_return, pad, device)
    if config.return_dict_in_generate:
        return HFGenerateOutput(sequences, res.tokens, res.finish_reasons, res.metrics, res.texts)
    return sequences
