"""Level specifications: turn what a user passes as levels into :mod:`hsd_fast.engine.levels` objects.

:func:`resolve_levels` accepts, bottom-up (target last):

* a :class:`hsd_fast.drafters.Drafter` (e.g. ``NGramDrafter()``), or the strings ``"ngram"`` /
  ``"ngram:N"`` (prompt lookup with n-grams ``N..1``);
* a Hugging Face causal LM (``torch.nn.Module``), or a ``(model, tokenizer)`` pair;
* :class:`EarlyExit` ``(model, layers)``: the first ``layers`` decoder layers of ``model`` plus its
  final norm and LM head (HiSpec's virtual models; the full model shares the KV cache and hidden
  states of those layers); ``EarlyExit(model, layers, head="trained")`` (or a head folder, or an
  :class:`hsd_fast.exits.ExitHead`) inserts a trained linear head before the final norm;
* a model name or local directory, loaded with ``hsd_fast.models.load(name, dtype=, device=)``;
  ``"NAME@int8"`` loads a separate copy with weight-only int8 linear layers
  (:func:`hsd_fast.quant.quantize_int8`, for drafts);
* a :class:`hsd_fast.engine.tables.TableModel` (exact ``hsd_ref.TableLM`` conditionals per depth:
  the level kind of the engine's exact and statistical checks), alone or inside :class:`EarlyExit`;
* any object that meets :class:`Level` (a custom level): ``vocab_size`` and
  ``probs(seq, lens, n_out, warp) -> [B, n_out, V]`` float32 or float64 rows.  The engine calls exactly that
  signature, checks the shape and dtype of every answer, and checks that every row of an active
  batch row is finite, non-negative and sums to 1 (docs/engine.md).  A custom level always sees the
  full vocabulary (``allowed_ids`` is applied by ``warp``, which it should call on its logits).

The same model object used twice (e.g. ``EarlyExit(m, 4)`` and ``m``) is driven by ONE backend, so
its views share their cache.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ..drafters import Drafter, NGramDrafter
from ..quant import QUANTIZATIONS, check_device, is_quantized, quantize_int8
from .backend import CachedLM, RecomputeLM, supports_cached
from .levels import DrafterLevel, EarlyExit, Level, ModelLevel, level_name
from .tables import TableBackend, TableModel

__all__ = ["resolve_levels"]


def _is_drafter(spec: object) -> bool:
    return isinstance(spec, Drafter) and not isinstance(spec, torch.nn.Module)


def _parse_ngram(spec: str) -> NGramDrafter | None:
    if spec == "ngram":
        return NGramDrafter()
    if spec.startswith("ngram:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"levels: bad n-gram spec {spec!r}; expected 'ngram' or 'ngram:N'") from None
        return NGramDrafter(max_ngram=n)
    return None


def _split_quantization(name: str) -> tuple[str, str | None]:
    """``"NAME@int8"`` -> ``("NAME", "int8")``; a name without ``@`` -> ``(name, None)``."""
    base, sep, quant = name.rpartition("@")
    if not sep:
        return name, None
    if quant not in QUANTIZATIONS or not base:
        raise ValueError(f"levels: bad quantized model spec {name!r}; expected NAME@{'|'.join(QUANTIZATIONS)}")
    return base, quant


def _model_name(model) -> str:
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or type(model).__name__
    name = str(name).rstrip("/").split("/")[-1] or type(model).__name__
    quant = is_quantized(model)
    return f"{name}@{quant}" if quant else name


def _resolve_head(head, model, layers: int, backend, i: int):
    """The exit head object of ``EarlyExit(model, layers, head)`` on ``backend`` (None: no head).

    ``"trained"``: the newest verified cached head of this model and layer (:func:`hsd_fast.exits.find_head`);
    a path: that head folder; an :class:`hsd_fast.exits.ExitHead`: itself.  Only linear heads on a
    :class:`CachedLM` are decoded (a block head needs cache positions of its own)."""
    if head is None:
        return None
    if not isinstance(backend, CachedLM):
        raise ValueError(f"levels[{i}]: an EarlyExit head needs a Llama-style model on the cached backend, not {backend.name}")
    from ..exits import ExitHead, find_head, load_head

    if isinstance(head, str) and head == "trained":
        head = load_head(find_head(model, layers), model, layers)
    elif isinstance(head, (str, os.PathLike)):
        head = load_head(head, model, layers)
    elif not isinstance(head, ExitHead):
        raise ValueError(f"levels[{i}]: EarlyExit head must be None, 'trained', a head folder or an ExitHead, got {head!r}")
    if head.layer != layers or head.hidden != backend.hidden:
        raise ValueError(f"levels[{i}]: the head was made for layer {head.layer} and hidden size {head.hidden}, "
                         f"not layer {layers} of {backend.name} (hidden {backend.hidden})")
    if head.kind != "linear":
        raise ValueError(f"levels[{i}]: the engine decodes linear exit heads only; a {head.kind!r} head needs cache "
                         f"positions of its own (docs/early-exit.md, what is left)")
    return head.to(backend.device).eval()


def resolve_levels(
    specs: Sequence[object],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    loader=None,
    cache: str = "auto",
    compile: bool = False,
    vocab_size: int | None = None,
):
    """Turn level specs (bottom-up, target last) into level objects (``compile``: the cached
    backends run their layers through ``torch.compile``, :class:`CachedLM`).

    ``vocab_size``: the shared vocabulary when the levels' vocabularies differ only by padding rows
    (Qwen2.5 0.5B's 151936 vs 7B's 152064): every model level works on ids ``< vocab_size``
    (:meth:`ModelLevel.shrink`), every other level must have exactly that size.  ``None``: every
    level must have the target's size.

    Returns ``(levels, tokenizer)``; the tokenizer is the first one found (loaded names and
    ``(model, tokenizer)`` pairs carry one), preferring the target's.
    """
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence):
        raise ValueError(f"levels: expected a sequence of level specs (bottom-up, target last), got {specs!r}")
    if len(specs) < 1:
        raise ValueError("levels: at least the target is needed")
    if cache not in ("auto", "cached", "recompute"):
        raise ValueError(f"cache: expected 'auto', 'cached' or 'recompute', got {cache!r}")
    loaded: dict[str, tuple] = {}
    backends: dict[int, Any] = {}
    tokenizers: list = []

    def load(name: str):
        if name not in loaded:
            if loader is None:
                try:
                    from ..models import load as loader_fn
                except ModuleNotFoundError as exc:  # the registry module is not installed
                    raise ValueError(f"levels: cannot load model {name!r}: hsd_fast.models is unavailable ({exc})") from None
            else:
                loader_fn = loader
            kwargs = {}
            if dtype is not None:
                kwargs["dtype"] = dtype
            if device is not None:
                kwargs["device"] = device
            base, quant = _split_quantization(name)
            if quant is None:
                loaded[name] = loader_fn(base, **kwargs)
            else:  # a quantized copy: loaded separately from the plain model of the same name
                model, tok = loader_fn(base, **kwargs)
                loaded[name] = (quantize_int8(model), tok)
        return loaded[name]

    def prepare(model):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"levels: expected a torch causal LM, got {type(model).__name__}")
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    def backend_for(model):
        key = id(model)
        if key not in backends and isinstance(model, TableModel):
            backends[key] = TableBackend(model, device=device)
        if key not in backends:
            model = prepare(model)
            if is_quantized(model):
                check_device(next(model.parameters()).device, f"levels: {_model_name(model)}")
            if cache == "recompute" or (cache == "auto" and supports_cached(model) is not None):
                backends[key] = RecomputeLM(model, _model_name(model))
            else:
                backends[key] = CachedLM(model, _model_name(model), compile=compile)
        return backends[key]

    levels: list = []
    pending_drafter = None
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            ng = _parse_ngram(spec)
            if ng is not None:
                spec = ng
            else:
                model, tok = load(spec)
                tokenizers.append((i, tok))
                spec = model
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], torch.nn.Module):
            tokenizers.append((i, spec[1]))
            spec = spec[0]
        if _is_drafter(spec):
            if i != 0:
                raise ValueError(f"levels[{i}]: a model-free drafter can only be level 0 (the bottom); it has no distribution to verify with")
            if len(specs) == 1:
                raise ValueError("levels: a model-free drafter cannot be the target")
            pending_drafter = spec
            levels.append(None)
            continue
        if isinstance(spec, EarlyExit):
            model = spec.model
            if isinstance(model, str):
                model, tok = load(model)
                tokenizers.append((i, tok))
            be = backend_for(model)
            layers = spec.layers
            if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= be.n_layers:
                raise ValueError(f"levels[{i}]: EarlyExit layers must be an int in [1, {be.n_layers}], got {layers!r}")
            head = _resolve_head(spec.head, model, layers, be, i)
            name = f"{be.name}[:{layers}]" + ("" if head is None else f"+{head.kind}")
            levels.append(ModelLevel(be, layers, name, head=head))
            continue
        if isinstance(spec, (torch.nn.Module, TableModel)):
            be = backend_for(spec)
            levels.append(ModelLevel(be, be.n_layers, be.name))
            continue
        if isinstance(spec, Level):
            if not isinstance(spec.vocab_size, int) or isinstance(spec.vocab_size, bool) or spec.vocab_size < 1:
                raise ValueError(f"levels[{i}]: a custom level's vocab_size must be an int >= 1, got {spec.vocab_size!r}")
            if not callable(spec.probs):
                raise ValueError(f"levels[{i}]: a custom level's probs must be callable")
            levels.append(spec)
            continue
        raise ValueError(f"levels[{i}]: cannot interpret {spec!r} as a level (drafter, model, EarlyExit, name or custom level)")
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size: expected None or an int >= 1, got {vocab_size!r}")
        for i, lvl in enumerate(levels):
            if lvl is None:
                continue
            if isinstance(lvl, ModelLevel):
                if lvl.vocab_size < vocab_size:
                    raise ValueError(f"vocab_size: {vocab_size} exceeds the vocabulary {lvl.vocab_size} of levels[{i}] ({level_name(lvl)})")
                lvl.shrink(vocab_size)
            elif lvl.vocab_size != vocab_size:
                raise ValueError(f"vocab_size: {vocab_size} differs from the vocabulary {lvl.vocab_size} of levels[{i}] ({level_name(lvl)}), a custom level whose rows cannot be cut")
    vocab = levels[-1].vocab_size
    if pending_drafter is not None:
        levels[0] = DrafterLevel(pending_drafter, vocab)
    for i, lvl in enumerate(levels):
        if lvl.vocab_size != vocab:
            raise ValueError(
                f"levels[{i}]: vocabulary size {lvl.vocab_size} of {level_name(lvl)} differs from the target's {vocab}; "
                "every level must share the target's vocabulary (if they differ only by padding rows, ids no "
                "tokenizer produces, pass vocab_size= the shared size, e.g. len(tokenizer))"
            )
    tokenizer = None
    if tokenizers:
        tokenizer = sorted(tokenizers, key=lambda t: -t[0])[0][1]
    return levels, tokenizer
