"""``hsd-fast`` command line.  Each subcommand lives in its own module, which exposes
``add_cli(subparsers)`` registering a parser whose ``func(args) -> int`` runs it.

Errors are reported here, once for every subcommand: a ``ValueError``, an ``OSError`` or an error of
:mod:`hsd_fast.models` escaping ``func`` (bad arguments, a missing model, an unreadable file) prints ONE line
``hsd-fast <subcommand>: error: <message>`` on stderr and exits with status 2, as argparse does for
usage errors.  Subcommands validate cheap arguments (:func:`check_device`, :func:`check_threads`)
before loading any model.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in help order; each defines add_cli(subparsers)
SUBCOMMAND_MODULES = (
    "hsd_fast.fidelity",
    "hsd_fast.models",
    "hsd_fast.generate_cli",
    "hsd_fast.bench",
    "hsd_fast.exits",
    "hsd_fast.audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsd-fast", description="hsd batched engine: fidelity reports, models, generation, benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod_name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # not written yet
                continue
            raise
        mod.add_cli(sub)
    return parser


def check_threads(n: int | None, name: str = "--threads") -> int | None:
    """``n`` if it is a usable torch CPU thread count (``None``: leave torch's), else ValueError."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"{name}: expected an int >= 1, got {n!r}")
    return n


def check_device(text: str | None, name: str = "--device") -> str | None:
    """``text`` if it names a torch device present on this machine (``None``: the default), else ValueError."""
    if text is None:
        return None
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: cannot interpret {text!r} as a torch device (cpu, cuda, cuda:0, ...)") from None
    if dev.type == "cpu":
        return text
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"{name}: {text!r}, but no {dev.type} device is available on this machine")
    count = getattr(getattr(torch, dev.type, None), "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(f"{name}: {text!r}, but this machine has {count()} {dev.type} device(s)")
    return text


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    from .models import CorruptCacheError, InsufficientMemoryError, ModelFetchError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ModelFetchError, CorruptCacheError, InsufficientMemoryError) as exc:
        sys.stdout.flush()
        print(f"hsd-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
