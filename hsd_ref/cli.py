"""``hsd-ref`` command line (also ``python -m hsd_ref``).

``hsd-ref audit`` is the main job: every registered scheme, its losslessness claim against exact
verification over a fixed seeded family, the largest TV error, E[accepted] on the toy example and the
coupling-bound check.  ``--markdown`` writes the table used in ``docs/audit.md``.

Every error (a bad option, an unwritable output file) is one line ``hsd-ref <command>: error: ...`` on
stderr and exit status 2, never a traceback; output paths are checked before any work is done.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

from .check import check_lossless
from .exact import HSDInputError
from .models import TableLM
from .registry import SCHEMES
from .stats import coupling_bound_applies, coupling_check, expected_accepted

TOY_P = (Fraction(1, 3), Fraction(2, 3))
TOY_Q = (Fraction(2, 3), Fraction(1, 3))
TOY_KS = (1, 2, 3, 4)
# the audit family: V in {2, 3, 4}, k in {1..4}; the multi-iteration horizon shrinks with V so the
# whole audit stays within a minute on 2 cores
AUDIT_FAMILY = ((2, 5, 3), (3, 4, 2), (4, 3, 1))  # (vocab size, n_tokens, random instances)
AUDIT_KS = (1, 2, 3, 4)

# subcommands implemented in other modules; each defines add_cli(subparsers)
SUBCOMMAND_MODULES = ("hsd_ref.plan",)


def audit_row(name: str) -> dict:
    """Audit one registered scheme (a top-level function so that it can run in a worker process)."""
    scheme = SCHEMES[name]
    start = time.perf_counter()
    reports = [
        check_lossless(scheme, vocab_sizes=(V,), ks=AUDIT_KS, n_tokens=n, instances=inst, seed=0)
        for V, n, inst in AUDIT_FAMILY
    ]
    failing = [r for r in reports if not r.lossless]
    p, q = TableLM.context_free(TOY_P), TableLM.context_free(TOY_Q)
    e_acc = [expected_accepted(scheme, p, q, (), k) for k in TOY_KS]
    coupling = "n/a (not single-draft)"
    if coupling_bound_applies(scheme):
        checks = [coupling_check(scheme, p, q, (), k) for k in TOY_KS]
        over = [k for k, c in zip(TOY_KS, checks) if not c.ok]
        coupling = "within" if not over else f"EXCEEDED at k={over}"
    return {
        "scheme": name,
        "claimed": bool(scheme.lossless),
        "lossless": not failing,
        "instances": sum(r.instances_checked for r in reports),
        "max_tv": max(r.tv for r in reports),
        "max_error": max(r.max_error for r in reports),
        "e_accepted": e_acc,
        "coupling": coupling,
        "theorem": getattr(scheme, "theorem", ""),
        "counterexample": str(failing[0].counterexample) if failing else "",
        "seconds": time.perf_counter() - start,
    }


def verdict(row: dict) -> str:
    if row["claimed"] and row["lossless"]:
        return "verified lossless"
    if not row["claimed"] and not row["lossless"]:
        return "lossy, caught"
    if row["claimed"]:
        return "FAILED: claimed lossless, counterexample found"
    return "FAILED: control not caught"


def audit_ok(row: dict) -> bool:
    ok = row["claimed"] == row["lossless"]
    if row["claimed"] and row["coupling"].startswith("EXCEEDED"):
        ok = False
    return ok


def show(x: Fraction) -> str:
    """A Fraction as text; long ones (K-SEQ's bisected rho) as a 6-digit decimal marked approximate."""
    text = str(x)
    return text if len(text) <= 12 else f"≈{float(x):.6f}"


def format_table(rows: list[dict], markdown: bool) -> str:
    head = ["scheme", "claim", "verdict", "instances", "max TV", "E[accepted] toy k=1..4", "coupling bound", "covered by"]
    body = []
    for r in rows:
        body.append([
            r["scheme"],
            "lossless" if r["claimed"] else "lossy",
            verdict(r),
            str(r["instances"]),
            show(r["max_tv"]),
            ", ".join(show(x) for x in r["e_accepted"]),
            r["coupling"],
            r["theorem"],
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head[:-1])]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(head[:-1]), fmt(["-" * w for w in widths])] + [fmt(row[:-1]) for row in body])


def check_writable(path: str, option: str) -> None:
    """Refuse, before any work is done, an output file that cannot be written; ``option`` (the flag)
    starts the message."""
    if not path:
        raise HSDInputError(f"{option}: empty path")
    if os.path.isdir(path):
        raise HSDInputError(f"{option}: cannot write {path!r}: it is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise HSDInputError(f"{option}: cannot write {path!r}: the directory {parent!r} does not exist")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise HSDInputError(f"{option}: cannot write {path!r}: permission denied")


def run_audit(args: argparse.Namespace) -> int:
    """The ``audit`` subcommand; a bad option raises ``HSDInputError`` naming it, before the audit runs."""
    if args.jobs < 1:
        raise HSDInputError(f"--jobs: must be >= 1, got {args.jobs}")
    names = args.schemes or list(SCHEMES)
    for n in names:
        if n not in SCHEMES:
            raise HSDInputError(f"--schemes: unknown scheme {n!r}; known: {', '.join(SCHEMES)}")
    if args.output is not None:
        check_writable(args.output, "--output")
    start = time.perf_counter()
    if args.jobs > 1 and len(names) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = []
            for row in pool.map(audit_row, names):
                rows.append(row)
                if not args.quiet:
                    print(f"  audited {row['scheme']:<28} {row['seconds']:6.1f} s", file=sys.stderr)
    else:
        rows = []
        for n in names:
            rows.append(audit_row(n))
            if not args.quiet:
                print(f"  audited {n:<28} {rows[-1]['seconds']:6.1f} s", file=sys.stderr)
    elapsed = time.perf_counter() - start
    family = "; ".join(f"V={V}: n_tokens={n}, {i} random pairs" for V, n, i in AUDIT_FAMILY)
    intro = (
        f"Exact audit of {len(rows)} schemes over a fixed seeded family (k in {{1..4}}; {family}; plus the toy pair, "
        f"draft == target and a point-mass draft for every (V, k)). Each instance is checked twice: one iteration "
        f"extended to k+1 tokens, and the multi-iteration decoding loop. E[accepted] is on the toy pair "
        f"p=(1/3,2/3), q=(2/3,1/3)."
    )
    table = format_table(rows, args.markdown)
    if args.markdown:
        out = ["# Audit of the registered schemes", "", "Generated by `hsd-ref audit --markdown`; do not edit by hand.", "", intro, "", table, ""]
        cex = [r for r in rows if r["counterexample"]]
        if cex:
            out += ["## Counterexamples (smallest found)", ""]
            for r in cex:
                out += [f"### {r['scheme']}", "", "```", r["counterexample"], "```", ""]
        text = "\n".join(out)
    else:
        text = intro + "\n\n" + table + "\n"
        for r in rows:
            if r["counterexample"] and args.verbose:
                text += "\n" + r["counterexample"] + "\n"
    if args.output is not None:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise HSDInputError(f"--output: cannot write {args.output!r}: {exc.strerror or exc}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    ok = all(audit_ok(r) for r in rows)
    print(f"audit: {sum(audit_ok(r) for r in rows)}/{len(rows)} schemes as claimed in {elapsed:.1f} s", file=sys.stderr)
    return 0 if ok else 1


class UsageError(Exception):
    """A command-line usage error, already formatted as ``<prog>: error: <message>``."""


class Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line (raised as :class:`UsageError`, not printed with
    the usage text and ``sys.exit``); the subcommand parsers inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hsd-ref", description="hsd exact reference: audits and latency planning")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="verify every registered scheme's losslessness claim exactly")
    audit.add_argument("--markdown", action="store_true", help="print the markdown report used in docs/audit.md")
    audit.add_argument("--output", "-o", help="write the report to this file instead of stdout")
    audit.add_argument("--schemes", nargs="+", metavar="NAME", help="audit only these schemes")
    audit.add_argument("--jobs", "-j", type=int, default=2, help="worker processes (default 2)")
    audit.add_argument("--verbose", "-v", action="store_true", help="print counterexamples in the plain table")
    audit.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    audit.set_defaults(func=run_audit)
    for mod_name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue
            raise
        mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hsd-ref``; an expected error (a usage error, ``ValueError``, ``OSError``) prints one line
    ``hsd-ref <command>: error: ...`` on stderr and returns 2."""
    prog = "hsd-ref"
    try:
        args, extra = build_parser().parse_known_args(argv)
        prog = f"hsd-ref {args.command}"
        if extra:
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(exc, file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
