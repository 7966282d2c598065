"""hsd_fast.engine: batched speculative and hierarchical decoding on Hugging Face causal LMs.

Owns models, KV caches and batching (STYLE.md §11); verification itself is ``hsd_fast.verify``.
See docs/engine.md.
"""

from .backend import CachedLM, RecomputeLM, supports_cached
from .decoder import ENGINE_SCHEMES, GenerationResult, SpeculativeDecoder, default_thresholds, generate
from .levels import DrafterLevel, EarlyExit, Level, ModelLevel
from .specs import resolve_levels
from .metrics import LevelMetrics, Metrics
from .plan import Plan

__all__ = [
    "CachedLM",
    "RecomputeLM",
    "supports_cached",
    "ENGINE_SCHEMES",
    "GenerationResult",
    "SpeculativeDecoder",
    "default_thresholds",
    "generate",
    "DrafterLevel",
    "EarlyExit",
    "Level",
    "ModelLevel",
    "resolve_levels",
    "LevelMetrics",
    "Metrics",
    "Plan",
]
