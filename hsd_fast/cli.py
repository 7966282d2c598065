"""``hsd-fast`` command line.  Each subcommand lives in its own module, which exposes
``add_cli(subparsers)`` registering a parser whose ``func(args) -> int`` runs it."""

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
