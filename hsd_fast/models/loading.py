"""Load a fetched model, or any local Hugging Face folder, offline and checked against its manifest."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .cache import MANIFEST, _check_folder, _model_dir, _offline
from .errors import ModelFetchError
from .fetching import fetch
from .memory import _require_memory, estimate_params
from .registry import MODELS


def _resolve(name_or_path: str | os.PathLike, cache_dir, *, fetch_missing: bool) -> tuple[Path, str | None]:
    """(folder, registry name or None) for a registered name or a local Hugging Face model folder."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        folder = _model_dir(name_or_path, cache_dir)
        if not (folder / MANIFEST).is_file():
            if not fetch_missing:
                raise ModelFetchError(f"model {name_or_path!r} is not fetched into {folder.parent.parent}; "
                                      f"run `python -m hsd_fast models fetch {name_or_path}`")
            folder = fetch(name_or_path, cache_dir=cache_dir)
        return folder, name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path must be a model name or a folder, got {type(name_or_path).__name__}")
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"name_or_path: {folder} is not a Hugging Face model folder (no config.json)")
        return folder.resolve(), None
    raise ValueError(f"name_or_path: {str(name_or_path)!r} is neither a known model ({', '.join(MODELS)}) "
                     f"nor an existing local model folder")


def load_tokenizer(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """The tokenizer alone of a fetched model or a local folder (never downloads)."""
    folder, _ = _resolve(name_or_path, cache_dir, fetch_missing=False)
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load(name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         cache_dir: str | os.PathLike | None = None, verify_full: bool = False, quantize: str | None = None):
    """``(model, tokenizer)`` of a registered model (fetched first if needed) or of a local HF folder.

    The model is an ``AutoModelForCausalLM`` in eval mode, with weights in ``dtype``, on ``device``.
    Sealed folders (every fetched model) are checked first, as described in :mod:`.cache`, and
    ``verify_full`` re-hashes every file.  Raises :class:`InsufficientMemoryError` before loading when
    parameters x dtype size exceed the memory available on ``device``.  ``quantize="int8"`` replaces
    every linear layer by a weight-only int8 one (:func:`hsd_fast.quant.quantize_int8`; for drafts).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    from ..quant import QUANTIZATIONS, quantize_int8

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize: expected None or one of {QUANTIZATIONS}, got {quantize!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
    folder, name = _resolve(name_or_path, cache_dir, fetch_missing=True)
    if (folder / MANIFEST).is_file():
        _check_folder(folder, name, full=verify_full)
    params = estimate_params(folder)
    itemsize = torch.empty((), dtype=dtype).element_size()
    _require_memory(params * itemsize, dev, f"{name or folder} in {str(dtype).removeprefix('torch.')} "
                    f"({params:,} parameters x {itemsize} bytes)",
                    "use a smaller dtype (torch.bfloat16 halves float32), another device, or a smaller model")
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    model = model.to(dev).eval()
    if quantize == "int8":
        quantize_int8(model)
    return model, tokenizer
