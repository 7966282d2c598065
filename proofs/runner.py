"""``python -m proofs``: compile every Coq proof, run every z3 query, print one table.

* **Coq** (proofs/coq/*.v, standard library only): the files are copied into a temporary directory
  and compiled there with ``coqc -Q <dir> HSD`` in dependency order (nothing is written into the
  source tree).  Then ``Print Assumptions`` runs for every main theorem; its output is printed, and a
  theorem fails unless its axioms are among those the standard library's real numbers themselves
  rest on (checked against ``Print Assumptions Rle_dec`` and against :data:`ALLOWED_AXIOMS`).  Any
  ``Admitted``/``admit``/``Axiom``/``Parameter`` in a source file fails the run as well.
* **z3** (proofs/smt): every theorem of :data:`proofs.smt.theorems.THEOREMS` for draft length 1 at
  each vocabulary size of ``--vocab-k1`` and draft length 2 at each of ``--vocab-k2``, in worker
  processes with a wall-clock limit (``--timeout``); every lossy control of
  :data:`proofs.smt.controls.CONTROLS` must give a counterexample that hsd_ref confirms; every
  mirrored encoding must agree exactly with hsd_ref (:mod:`proofs.smt.crosscheck`).

Exit status 0 iff every row is ``proved`` / ``refuted`` (controls) / ``agrees`` (cross-checks).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALLOWED_AXIOMS",
    "COQ_FILES",
    "COQ_THEOREMS",
    "Row",
    "check_sources",
    "coq_rows",
    "main",
    "parse_assumptions",
    "smt_rows",
]

COQ_DIR = Path(__file__).resolve().parent / "coq"
COQ_FILES = ("Common", "SpecLossless", "Block", "HsdCapped", "Compose", "Adaptive", "Latency", "RRS")  # dependency order

# file -> its main theorems (each gets a table row and a Print Assumptions check)
COQ_THEOREMS = {
    "Common": ("decode_lossless", "target_explicit", "target_prob"),
    "SpecLossless": ("spec_step_lossless", "tokenwise_iteration_lossless", "spec_decoding_lossless", "spec_decoding_lossless_prob"),
    "Block": ("block_iteration_lossless", "block_lossless", "block_lossless_prob"),
    "HsdCapped": ("hsd_eq_block", "hsd_iteration_lossless", "hsd_capped_lossless"),
    "Compose": ("level_exact", "hierarchy_lossless", "hierarchy_tokenwise_block_lossless"),
    "Adaptive": (
        "optional_stopping", "adaptive_iteration_lossless", "tw_prefix_consistent", "blk_prefix_consistent",
        "hsd_eq_block_draft", "adaptive_tokenwise_lossless", "adaptive_block_lossless", "adaptive_hsd_capped_lossless",
    ),
    "Latency": (
        "geom_closed", "geom_at_one", "scan_tokens_geom", "scan_tokens_prefix", "tokens_law_total", "tokens_law_mean",
        "walltime_factor_closed", "ops_factor_closed", "walltime_factor_k1", "speedup_iff",
    ),
    "RRS": (
        "rrs_step_lossless", "rrs_without_replacement_step_lossless", "rrs_iteration_lossless",
        "rrs_without_replacement_iteration_lossless", "rrs_lossless", "rrs_without_replacement_lossless",
        "rrs_lossless_prob", "rrs_without_replacement_lossless_prob", "rrs_upfront_eq_tree", "rrs_upfront_lossless",
    ),
}

# The axioms of Coq 8.16's standard-library real numbers (Reals is built on them): the runner also
# checks that they are exactly what `Print Assumptions Rle_dec` reports.
ALLOWED_AXIOMS = frozenset(
    {
        "ClassicalDedekindReals.sig_forall_dec",
        "ClassicalDedekindReals.sig_not_dec",
        "FunctionalExtensionality.functional_extensionality_dep",
    }
)

FORBIDDEN = re.compile(r"\b(Admitted|admit|Axiom|Axioms|Parameter|Parameters|Conjecture)\b")


@dataclass
class Row:
    theorem: str
    tool: str
    status: str  # proved / refuted / agrees / FAILED / TIMEOUT / SKIPPED
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("proved", "refuted", "agrees")


# ------------------------------------------------------------------------------------------ Coq


def check_sources(files) -> list[str]:
    """Lines that use a forbidden command (comments stripped)."""
    bad = []
    for f in files:
        text = re.sub(r"\(\*.*?\*\)", "", Path(f).read_text(), flags=re.S)
        for i, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                bad.append(f"{Path(f).name}:{i}: {line.strip()}")
    return bad


def parse_assumptions(output: str) -> dict[str, list[str]]:
    """Parse the output of a file of marker-separated (``=== name``) ``Print Assumptions`` commands into
    ``{theorem: [axiom names]}`` ([] = closed under the global context)."""
    result: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        m = re.match(r"^=== (\S+)$", line.strip())
        if m:
            current = m.group(1)
            result[current] = []
            continue
        if current is None:
            continue
        m = re.match(r"^([A-Za-z_][\w.']*)\s*$", line) or re.match(r"^([A-Za-z_][\w.']*)\s*:", line)
        if m and not line.startswith(" ") and m.group(1) not in ("Axioms", "Closed"):
            result[current].append(m.group(1))
    return result


def coq_rows(coqc: str | None = None, timeout: float = 300.0, verbose: bool = True, out=sys.stdout, jobs: int = 1) -> list[Row]:
    """Compile proofs/coq/*.v in a temporary directory and check the assumptions of every main theorem."""
    coqc = coqc or os.environ.get("HSD_COQC") or shutil.which("coqc")
    if not coqc:
        return [Row("coqc", "coq", "SKIPPED", 0.0, "coqc not found (install Debian's coq package)")]
    rows: list[Row] = []
    sources = [COQ_DIR / f"{name}.v" for name in COQ_FILES]
    bad = check_sources(sources)
    if bad:
        rows.append(Row("no Admitted/admit/Axiom/Parameter in proofs/coq", "coq", "FAILED", 0.0, "; ".join(bad)))
    with tempfile.TemporaryDirectory(prefix="hsd-coq-") as tmp:
        tmpdir = Path(tmp)
        for src in sources:
            shutil.copy(src, tmpdir / src.name)
        times: dict[str, float] = {}
        failed: dict[str, str] = {}
        for name in COQ_FILES:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run([coqc, "-Q", str(tmpdir), "HSD", f"{name}.v"], cwd=tmpdir, capture_output=True, text=True, timeout=timeout)
                ok, msg = proc.returncode == 0, (proc.stdout + proc.stderr).strip()
            except subprocess.TimeoutExpired:
                ok, msg = False, f"coqc timed out after {timeout}s"
            times[name] = time.perf_counter() - t0
            if not ok:
                failed[name] = msg
                break
        # Print Assumptions for every main theorem (and the baseline: the real numbers themselves),
        # split over `jobs` concurrent coqc processes (each command re-walks the Reals library)
        marker = lambda thm: f'Goal True. idtac "=== {thm}". Abort.'
        names = ["Rle_dec"] + [thm for name in COQ_FILES if name not in failed for thm in COQ_THEOREMS[name]]
        header = ["From Coq Require Import Reals.", "From HSD Require Import " + " ".join(COQ_FILES) + "."]
        assumptions: dict[str, list[str]] = {}
        if not failed:
            procs = []
            for j in range(max(1, jobs)):
                chunk = names[j :: max(1, jobs)]
                if not chunk:
                    continue
                body = [line for thm in chunk for line in (marker(thm), f"Print Assumptions {thm}.")]
                (tmpdir / f"Assumptions{j}.v").write_text("\n".join(header + body) + "\n")
                procs.append(subprocess.Popen([coqc, "-Q", str(tmpdir), "HSD", f"Assumptions{j}.v"], cwd=tmpdir,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            for proc in procs:
                try:
                    output, _ = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    output = f"coqc timed out after {timeout}s"
                if proc.returncode != 0:
                    failed["Assumptions"] = output.strip()
                else:
                    assumptions.update(parse_assumptions(output))
            if verbose and "Assumptions" not in failed:
                print("Print Assumptions (Coq):", file=out)
                for thm in names:
                    axioms = assumptions.get(thm, [])
                    print(f"  {thm}: {', '.join(axioms) if axioms else 'closed under the global context'}", file=out)
    baseline = set(assumptions.get("Rle_dec", []))
    allowed = ALLOWED_AXIOMS
    if assumptions and not baseline <= ALLOWED_AXIOMS:
        rows.append(Row("stdlib reals baseline (Print Assumptions Rle_dec)", "coq", "FAILED", 0.0, f"unexpected: {sorted(baseline - ALLOWED_AXIOMS)}"))
    for name in COQ_FILES:
        for thm in COQ_THEOREMS[name]:
            label = f"{name}.v: {thm}"
            if name in failed:
                rows.append(Row(label, "coq", "FAILED", times.get(name, 0.0), failed[name][-400:]))
            elif name not in times or "Assumptions" in failed:
                rows.append(Row(label, "coq", "FAILED", 0.0, failed.get("Assumptions", "an earlier file failed")[-400:]))
            elif thm not in assumptions:
                rows.append(Row(label, "coq", "FAILED", times[name], "no Print Assumptions output (theorem missing?)"))
            else:
                extra = sorted(set(assumptions[thm]) - allowed)
                if extra:
                    rows.append(Row(label, "coq", "FAILED", times[name], f"axioms beyond the stdlib reals: {extra}"))
                else:
                    rows.append(Row(label, "coq", "proved", times[name], "axioms: stdlib reals only"))
    return rows


# ------------------------------------------------------------------------------------------ z3


def _smt_worker(task, conn) -> None:
    kind, name, k, V, query_timeout = task
    t0 = time.perf_counter()
    try:
        if kind == "theorem":
            from .smt.theorems import THEOREMS

            S = THEOREMS[name](V, k, query_timeout)
            conn.send(("proved", f"{len(S.queries)} queries, z3 {S.seconds:.2f}s"))
        elif kind == "control":
            from .smt.controls import find_counterexample

            r = find_counterexample(name, V, query_timeout)
            if r.status == "sat" and r.confirmed:
                cex = r.report.counterexample
                conn.send(("refuted", f"z3 sat; hsd_ref confirms: P{cex.sequence} = {cex.scheme_prob} != {cex.target_prob}"))
            else:
                conn.send(("FAILED", f"z3 {r.status}, confirmed by hsd_ref: {r.confirmed}"))
        else:
            from .smt.crosscheck import crosscheck

            r = crosscheck(name)
            conn.send(("agrees" if r.ok else "FAILED", f"{r.checked} instances, {len(r.mismatches)} mismatches"))
    except Exception as exc:  # a failed query (ProofFailed) or a bug: reported as a failed row
        conn.send(("FAILED", f"{type(exc).__name__}: {exc}"[:400]))
    finally:
        conn.send(("_time", time.perf_counter() - t0))
        conn.close()


def _label(task) -> tuple[str, str]:
    kind, name, k, V, _ = task
    if kind == "theorem":
        return f"{name} lossless (k={k}, V={V})", "z3"
    if kind == "control":
        return f"{name} LOSSY: counterexample (k={k}, V={V})", "z3+hsd_ref"
    return f"encode.{name} == hsd_ref {name} (exact)", "python"


def smt_tasks(vocab_k1, vocab_k2, query_timeout: float, controls: bool = True, crosscheck: bool = True, schemes=None) -> list[tuple]:
    """The z3-side tasks; ``schemes`` (a collection of names) restricts every kind of task."""
    from .smt.controls import CONTROLS
    from .smt.crosscheck import CROSSCHECKED
    from .smt.theorems import THEOREMS

    keep = (lambda name: True) if schemes is None else (lambda name: name in schemes)
    tasks = []
    if crosscheck:
        tasks += [("crosscheck", n, 0, 0, query_timeout) for n in CROSSCHECKED if keep(n)]
    for name in THEOREMS:
        if keep(name):
            tasks += [("theorem", name, 1, V, query_timeout) for V in vocab_k1]
            tasks += [("theorem", name, 2, V, query_timeout) for V in vocab_k2]
    if controls:
        tasks += [("control", name, CONTROLS[name][0], 2, query_timeout) for name in CONTROLS if keep(name)]
    return tasks


def smt_rows(tasks, timeout: float, jobs: int = 1, progress=None) -> list[Row]:
    """Run the tasks in worker processes (at most ``jobs`` at once), each under ``timeout`` seconds."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pending = list(enumerate(tasks))
    running: dict[int, dict] = {}
    results: dict[int, Row] = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            i, task = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_smt_worker, args=(task, child), daemon=True)
            proc.start()
            child.close()
            running[i] = {"proc": proc, "conn": parent, "t0": time.perf_counter(), "task": task, "msgs": []}
        time.sleep(0.01)
        for i, st in list(running.items()):
            label, tool = _label(st["task"])
            elapsed = time.perf_counter() - st["t0"]
            try:
                while st["conn"].poll():
                    st["msgs"].append(st["conn"].recv())
            except (EOFError, OSError):
                pass
            status = next((m for m in st["msgs"] if m[0] != "_time"), None)
            spent = next((m[1] for m in st["msgs"] if m[0] == "_time"), None)
            if status is not None and spent is not None:
                results[i] = Row(label, tool, status[0], spent, status[1])
            elif elapsed > timeout:
                st["proc"].kill()
                results[i] = Row(label, tool, "TIMEOUT", elapsed, f"over the {timeout:g}s limit")
            elif not st["proc"].is_alive() and elapsed > 1.0 and status is None:
                results[i] = Row(label, tool, "FAILED", elapsed, f"worker exited with code {st['proc'].exitcode}")
            else:
                continue
            st["proc"].join(timeout=5)
            st["conn"].close()
            del running[i]
            if progress:
                progress(results[i])
    return [results[i] for i in range(len(tasks))]


# ------------------------------------------------------------------------------------------ CLI


def _vocab_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    for v in out:
        if v < 2:
            raise argparse.ArgumentTypeError(f"vocabulary sizes must be >= 2, got {v}")
    return out


def format_table(rows: list[Row]) -> str:
    w1 = max([len("theorem")] + [len(r.theorem) for r in rows])
    w2 = max([len("tool")] + [len(r.tool) for r in rows])
    w3 = max([len("status")] + [len(r.status) for r in rows])
    lines = [f"{'theorem':<{w1}}  {'tool':<{w2}}  {'status':<{w3}}  {'seconds':>8}  detail", "-" * (w1 + w2 + w3 + 30)]
    for r in rows:
        lines.append(f"{r.theorem:<{w1}}  {r.tool:<{w2}}  {r.status:<{w3}}  {r.seconds:8.2f}  {r.detail}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proofs", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("coq", "smt"), help="run only the Coq proofs or only the z3 side")
    p.add_argument("--timeout", type=float, default=300.0, help="wall-clock limit per Coq file / per z3 theorem, in seconds (default 300)")
    p.add_argument("--query-timeout", type=float, default=60.0, help="limit per z3 query, in seconds (default 60)")
    p.add_argument("--vocab-k1", type=_vocab_list, default=list(range(2, 9)), metavar="LIST", help="vocabulary sizes for draft length 1 (default 2-8)")
    p.add_argument("--vocab-k2", type=_vocab_list, default=[2, 3, 4], metavar="LIST", help="vocabulary sizes for draft length 2 (default 2-4)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="z3 worker processes (default: min(2, CPUs))")
    p.add_argument("--schemes", type=lambda t: {x.strip() for x in t.split(",") if x.strip()}, metavar="NAMES",
                   help="comma-separated scheme names: restrict the z3 theorems, controls and cross-checks to them")
    p.add_argument("--no-controls", action="store_true", help="skip the lossy controls")
    p.add_argument("--no-crosscheck", action="store_true", help="skip the encoding/hsd_ref cross-checks")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return p


def main(argv: list[str] | None = None, out=sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0 or args.query_timeout <= 0:
        print("python -m proofs: --timeout and --query-timeout must be positive", file=sys.stderr)
        return 2
    rows: list[Row] = []
    t0 = time.perf_counter()
    if args.only in (None, "coq"):
        rows += coq_rows(timeout=args.timeout, verbose=not args.quiet, out=out, jobs=args.jobs)
    if args.only in (None, "smt"):
        tasks = smt_tasks(args.vocab_k1, args.vocab_k2, args.query_timeout, not args.no_controls, not args.no_crosscheck, args.schemes)
        if args.schemes is not None:
            from .smt.controls import CONTROLS
            from .smt.crosscheck import CROSSCHECKED
            from .smt.theorems import THEOREMS

            unknown = sorted(args.schemes - set(THEOREMS) - set(CONTROLS) - set(CROSSCHECKED))
            if unknown:
                print(f"python -m proofs: --schemes: unknown scheme(s) {', '.join(unknown)}", file=sys.stderr)
                return 2
        progress = None if args.quiet else (lambda r: print(f"  {r.status:8s} {r.seconds:7.2f}s  {r.theorem}", file=out, flush=True))
        if not args.quiet:
            print(f"z3: {len(tasks)} tasks on {args.jobs} worker(s)", file=out, flush=True)
        rows += smt_rows(tasks, args.timeout, args.jobs, progress)
    print(format_table(rows), file=out)
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} ok in {time.perf_counter() - t0:.1f}s wall" + (f"; {len(bad)} FAILED/TIMEOUT/SKIPPED" if bad else ""), file=out)
    return 1 if bad else 0
