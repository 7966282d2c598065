"""``hsd-fast fidelity``: the engine users run, under the statistical test, for every cell.

One run tests (docs/fidelity.md):

* every **engine cell** -- each single-draft scheme of the engine x each level kind of
  :mod:`hsd_fast.fidelity.cells` -- by sampling :class:`hsd_fast.engine.SpeculativeDecoder` over
  exact toy models and G-testing the output against the exact law, at false-failure probability
  ``ALPHA_PER_TEST = 1e-6``; each cell's sample size is the smallest at which the test rejects a
  planted transfer of total variation ``PLANTED_TV = 0.005`` (between the two likeliest sequences of
  one prompt, the least detectable transfer; a point mass: to a sequence off the support) with
  probability ``>= 0.99`` (:func:`hsd_fast.fidelity.stats.samples_for_power`);
* the **planted bias itself** in every cell: the cell's own engine samples, with each occurrence of
  the likeliest sequence moved to the second likeliest with probability ``d / p1`` (their law is
  exactly the planted alternative), G-tested at the same level (each is rejected with probability
  >= 0.99; the run fails if fewer than half are);
* the **lossy controls** through the same engine (``verify_fn``): a token-wise kernel whose
  acceptance is 2% too lenient, Zhou et al.'s released HSD rule and resampling from the target,
  each rejected as required, with the power against its exact law (``hsd_ref.sequence_law``);
* the **multi-draft schemes** through the small multi-draft sampler (:mod:`hsd_fast.fidelity.
  multidraft`; the engine has no multi-draft levels yet), sized the same way.
* with ``vocab=True`` (``hsd-fast fidelity --vocab``; minutes per scheme, so not in CI), each sampling
  scheme at the **real vocabulary size** V = 151936 with the engine's default float32 rows
  (:mod:`hsd_fast.fidelity.vocab`), sized and planted the same way.

Every seed is derived from the run's ``--seed`` and the row's label (:func:`derive_seed`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from hsd_ref.enumerate import sequence_law
from hsd_ref.exact import HSDInputError

from . import cells as C
from . import vocab as VC
from .controls import CONTROLS, control_scheme, control_verify
from .multidraft import ToyTables, multidraft_sample
from .plots import plot_name, plot_row
from .stats import ALPHA_PER_TEST, PLANTED_TV, TARGET_POWER, derive_seed, encode, g_test, law_arrays, power, samples_for_power

__all__ = ["MULTI_DRAFT_SCHEMES", "CONTROL_SCHEMES", "LOSSLESS_SCHEMES", "planted_alternative", "run_fidelity", "report_markdown", "write_report", "add_cli"]

MULTI_DRAFT_SCHEMES = ("rrs", "rrs_without_replacement", "spectr_kseq")
LOSSLESS_SCHEMES = C.ENGINE_SCHEMES + MULTI_DRAFT_SCHEMES
CONTROL_SCHEMES = tuple(CONTROLS)
CONTROL_CELL = ("tokenwise", "draft")  # the cell whose levels and sample size the controls use
MULTI = dict(vocab_size=3, toy_seed=3, n_tokens=6, k=3, n_drafts=2, prompt=())  # the multi-draft instance


def planted_alternative(codes: np.ndarray, probs: np.ndarray, strata: np.ndarray, tv: float = PLANTED_TV) -> tuple[dict[int, float], int, int]:
    """The least detectable transfer of mass ``tv`` inside one stratum (one prompt): from the most to
    the second most probable sequence of the stratum minimising ``1/p1 + 1/p2``; where no stratum
    has two sequences, to a code off the support (``-1``).  Returns ``(law, source, destination)``."""
    best = None
    for s in np.unique(strata):
        idx = np.nonzero(strata == s)[0]
        if len(idx) >= 2:
            top = idx[np.argsort(-probs[idx], kind="stable")[:2]]
            score = 1 / probs[top[0]] + 1 / probs[top[1]]
            if best is None or score < best[0]:
                best = (score, int(codes[top[0]]), int(codes[top[1]]))
    alt = {int(c): float(p) for c, p in zip(codes, probs)}
    if best is None:
        src, dst = int(codes[np.argmax(probs)]), -1
    else:
        _, src, dst = best
    if not 0 < tv <= alt[src]:
        raise HSDInputError(f"tv: must lie in (0, {alt[src]}], got {tv!r}")
    alt[src] -= tv
    alt[dst] = alt.get(dst, 0.0) + tv
    return alt, src, dst


def _plant(sample_codes: np.ndarray, src: int, dst: int, p_src: float, tv: float, seed: int) -> np.ndarray:
    """The samples with each ``src`` moved to ``dst`` with probability ``tv / p_src`` (law: the
    planted alternative, when the samples follow the null law)."""
    u = np.random.default_rng(seed).random(len(sample_codes))
    out = sample_codes.copy()
    out[(out == src) & (u < tv / p_src)] = dst
    return out


def _test_row(label: str, kind: str, sample_codes: np.ndarray, codes, probs, seconds: float) -> dict:
    res = g_test(sample_codes, codes, probs, ALPHA_PER_TEST)
    uniq, counts = np.unique(sample_codes, return_counts=True)
    return {"label": label, "kind": kind, **asdict(res), "sample_seconds": seconds,
            "law": {str(int(c)): float(p) for c, p in zip(codes, probs)}, "observed": {str(int(c)): int(k) for c, k in zip(uniq, counts)}}


def _lossless_row(label: str, kind: str, sample_codes: np.ndarray, codes, probs, planted: tuple, row_seed: int, seconds: float, **fields) -> dict:
    """A lossless row: the G test of the samples, its power against the planted transfer ``planted``
    (``(alt, src, dst)``), that transfer applied to the samples and tested, and the verdict."""
    alt, src, dst = planted
    row = _test_row(label, kind, sample_codes, codes, probs, seconds)
    pw = power(codes, probs, alt, len(sample_codes), ALPHA_PER_TEST, mc_reps=200, seed=row_seed)
    moved = g_test(_plant(sample_codes, src, dst, alt[src] + PLANTED_TV, PLANTED_TV, row_seed), codes, probs, ALPHA_PER_TEST)
    row.update(**fields, seed=row_seed, power=pw.power, mc_power=pw.mc_power, planted_rejected=moved.rejected, planted_statistic=moved.statistic)
    row["verdict"] = "FAIL" if row["rejected"] else ("PASS" if pw.power >= TARGET_POWER else "LOW POWER")
    return row


def _engine_cell(scheme: str, kind: str, seed: int, scale: float, bar) -> dict:
    setup = C.build(scheme, kind)
    codes, probs = C.law_codes(setup, C.exact_law(setup))
    strata = codes // (setup.vocab_size + 1) ** setup.n_tokens
    alt, src, dst = planted_alternative(codes, probs, strata)
    n = max(1000, int(samples_for_power(codes, probs, alt) * scale))
    row_seed = derive_seed(seed, f"{scheme}/{kind}")
    start = time.perf_counter()
    sample_codes = C.sample_cell(setup, n, row_seed)
    row = _lossless_row(f"{scheme} / {kind}", "engine", sample_codes, codes, probs, (alt, src, dst), row_seed, time.perf_counter() - start,
                        scheme=scheme, level_kind=kind, levels=setup.decoder().describe())
    bar(n)
    return row


def _control_row(name: str, seed: int, scale: float, bar) -> dict:
    setup = C.build(*CONTROL_CELL)
    codes, probs = C.law_codes(setup, C.exact_law(setup))
    strata = codes // (setup.vocab_size + 1) ** setup.n_tokens
    n = max(1000, int(samples_for_power(codes, probs, planted_alternative(codes, probs, strata)[0]) * scale))
    row_seed = derive_seed(seed, f"control/{name}")
    start = time.perf_counter()

    def verify_fn(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        return control_verify(name, target_probs, draft_probs, draft_tokens, draws=draws)

    sample_codes = C.sample_cell(setup, n, row_seed, verify_fn=verify_fn)
    row = _test_row(f"{name} (control) / {CONTROL_CELL[1]}", "control", sample_codes, codes, probs, time.perf_counter() - start)
    exact, draft = setup.exact[-1], setup.exact[0]
    law = sequence_law(control_scheme(name), exact, draft, setup.prompts[0], setup.thresholds[-1], setup.n_tokens)
    alt_codes, alt_probs = C.law_codes(setup, {(0, *k): v for k, v in law.items()})
    pw = power(codes, probs, dict(zip(alt_codes.tolist(), alt_probs.tolist())), n, ALPHA_PER_TEST, mc_reps=200, seed=row_seed)
    row.update(scheme=name, level_kind=CONTROL_CELL[1], seed=row_seed, power=pw.power, mc_power=pw.mc_power, exact_tv=pw.tv)
    row["verdict"] = "REJECTED (as required)" if row["rejected"] else ("NOT REJECTED (power failure)" if pw.power >= TARGET_POWER else "not rejected (low power)")
    bar(n)
    return row


def _multidraft_row(name: str, seed: int, scale: float, bar) -> dict:
    from hsd_ref.registry import get_scheme
    from hsd_ref.strategies import toy_pair

    target, draft = toy_pair(MULTI["vocab_size"], MULTI["toy_seed"])
    V, n_tok, k = MULTI["vocab_size"], MULTI["n_tokens"], MULTI["k"]
    codes, probs = law_arrays(target.sequence_law(n_tok, MULTI["prompt"]), V)
    alt, src, dst = planted_alternative(codes, probs, np.zeros_like(codes))
    n = max(1000, int(samples_for_power(codes, probs, alt) * scale))
    row_seed = derive_seed(seed, f"multidraft/{name}")
    scheme = get_scheme(name).with_drafts(MULTI["n_drafts"])
    tables = ToyTables.build(target, draft, len(MULTI["prompt"]) + n_tok - 1 + k)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(row_seed)
    samples = multidraft_sample(tables, name, k, MULTI["n_drafts"], n_tok, n, generator=gen, prefix=MULTI["prompt"], replacement=getattr(scheme, "replacement", True))
    sample_codes = encode(samples, V)
    row = _lossless_row(f"{name} / multi-draft sampler", "multidraft", sample_codes, codes, probs, (alt, src, dst), row_seed,
                        time.perf_counter() - start, scheme=name, level_kind="multi-draft sampler",
                        levels=f"toy_pair({V}, {MULTI['toy_seed']}), K={k}, N={MULTI['n_drafts']} drafts")
    bar(n)
    return row


def _vocab_row(scheme: str, seed: int, scale: float, bar) -> dict:
    cell = VC.VocabCell(scheme)
    codes, probs = cell.exact_law()
    alt, src, dst = planted_alternative(codes, probs, np.zeros_like(codes))
    n = max(1000, int(samples_for_power(codes, probs, alt) * scale))
    row_seed = derive_seed(seed, f"{scheme}/vocab")
    start = time.perf_counter()
    tenth = max(1, n // 10)
    sample_codes = cell.sample(n, row_seed, chunk=16, progress=lambda done: bar(done) if done % tenth < 16 or done == n else None)
    return _lossless_row(f"{scheme} / vocab {VC.VOCAB_SIZE} ({cell.probs_dtype})", "vocab", sample_codes, codes, probs, (alt, src, dst),
                         row_seed, time.perf_counter() - start, scheme=scheme, level_kind=f"vocab{VC.VOCAB_SIZE}", levels=cell.decoder().describe())


def run_fidelity(
    schemes: Sequence[str] = LOSSLESS_SCHEMES,
    kinds: Sequence[str] = C.LEVEL_KINDS,
    seed: int = 0,
    *,
    controls: bool = True,
    vocab: bool = False,
    scale: float = 1.0,
    progress: Callable[[str, int], None] | None = None,
) -> dict:
    """Run the fidelity test (module docstring) and return the report dict.

    ``scale`` multiplies every sample size (``< 1`` for a quick look: the power claim then no longer
    holds and the rows say so).  ``vocab``: add the V = 151936 cell of every sampling scheme among
    ``schemes``.  ``progress(label, samples)`` is called after every row (and during a vocab row)."""
    schemes, kinds = list(schemes), list(kinds)
    for s in schemes:
        if s not in LOSSLESS_SCHEMES:
            raise HSDInputError(f"schemes: {s!r} is not a lossless scheme of the fidelity test; known: {', '.join(LOSSLESS_SCHEMES)}")
    for k in kinds:
        if k not in C.LEVEL_KINDS:
            raise HSDInputError(f"kinds: unknown level kind {k!r}; known: {', '.join(C.LEVEL_KINDS)}")
    if not schemes:
        raise HSDInputError("schemes: name at least one scheme")
    if not (isinstance(scale, (int, float)) and 0 < scale and math.isfinite(scale)):
        raise HSDInputError(f"scale: expected a positive number, got {scale!r}")
    rows = []

    def bar(label):
        return lambda n: progress(label, n) if progress else None

    for s in schemes:
        if s in C.ENGINE_SCHEMES:
            rows += [_engine_cell(s, k, seed, scale, bar(f"{s}/{k}")) for k in kinds]
        else:
            rows.append(_multidraft_row(s, seed, scale, bar(s)))
    if vocab:
        rows += [_vocab_row(s, seed, scale, bar(f"{s}/vocab")) for s in schemes if s in C.ENGINE_SCHEMES and s != "greedy"]
    if controls:
        rows += [_control_row(c, seed, scale, bar(c)) for c in CONTROL_SCHEMES]
    tested = [r for r in rows if r["kind"] != "control"]
    planted = sum(bool(r["planted_rejected"]) for r in tested)
    ok = all(r["verdict"] in ("PASS", "REJECTED (as required)") for r in rows) and 2 * planted >= len(tested)
    return {
        "instance": {**asdict(C.DEFAULT_INSTANCE), "models": f"hsd_ref.strategies.toy_pair({C.DEFAULT_INSTANCE.vocab_size}, {C.DEFAULT_INSTANCE.toy_seed})"},
        "multidraft_instance": MULTI,
        "vocab_instance": {"vocab_size": VC.VOCAB_SIZE, "head_ids": VC.HEAD_IDS, "segments": VC.N_SEGMENTS, "n_tokens": VC.N_TOKENS} if vocab else None,
        "seed": seed,
        "scale": scale,
        "alpha_per_test": ALPHA_PER_TEST,
        "planted_tv": PLANTED_TV,
        "target_power": TARGET_POWER,
        "planted_rejected": planted,
        "planted_rows": len(tested),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ok": ok,
        "results": rows,
    }


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and x != 0 and abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report_markdown(report: dict) -> str:
    """The ``fidelity.md`` text of a report dict."""
    inst = report["instance"]
    n_tests = len(report["results"])
    lines = [
        "# hsd-fast fidelity: the engine against hsd_ref's exact law",
        "",
        f"Engine cells: `SpeculativeDecoder` over exact `TableModel` levels built from `{inst['models']}`, prompt "
        f"{tuple(inst['prompt'])} (the batch cell: three ragged prompts, EOS id 2), {inst['n_tokens']} new tokens per row, "
        f"one batch per cell; run seed {report['seed']}, sample scale {report['scale']:g}, torch {report['torch']} on {report['torch_threads']} threads.",
        f"G test per row at false-failure probability {report['alpha_per_test']:g} (the {n_tests} tests of a run together: <= {n_tests * report['alpha_per_test']:.2g}). "
        f"Samples per row: the fewest at which a planted transfer of TV {report['planted_tv']:g} is rejected with probability >= {report['target_power']:g}.",
    ]
    if report.get("vocab_instance"):
        vi = report["vocab_instance"]
        lines += [
            f"Vocab rows: `SpeculativeDecoder` with its default float32 rows over two {vi['vocab_size']}-id models (`hsd_fast.fidelity.vocab`: "
            f"{len(vi['head_ids'])} head ids, {vi['segments']} tail segments, the row chosen by the last token's class), draft length 3; "
            f"the law of the first {vi['n_tokens']} tokens' bins (head id or tail segment).",
        ]
    lines += [
        "",
        "| scheme / level kind | samples | cells (pooled) | G | dof | p-value | TV estimate [95% CI] | power vs TV " + f"{report['planted_tv']:g}" + " | planted bias rejected | verdict | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        planted = "—" if "planted_rejected" not in r else ("yes" if r["planted_rejected"] else "no")
        power_col = f"{r['power']:.4f}" + (f" (vs its law, TV {r['exact_tv']:.4f})" if r["kind"] == "control" else "")
        lines.append(
            f"| {r['label']} | {r['n_samples']} | {r['cells']} ({r['pooled_cells']}) | {_fmt(r['statistic'], 1)} | {r['dof']} | {_fmt(r['p_value'])} "
            f"| {r['tv']:.4f} [{r['tv_low']:.4f}, {r['tv_high']:.4f}] | {power_col} | {planted} | {r['verdict']} | {r['sample_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Planted TV-{report['planted_tv']:g} biases (each row's own samples, transferred): rejected in {report['planted_rejected']} of {report['planted_rows']} rows.",
        "",
        f"Overall: {'OK' if report['ok'] else 'FAILED'}.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write ``fidelity.md``, ``fidelity.json`` and (``plots``) one PNG per row into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "fidelity.md", out_dir / "fidelity.json"]
    paths[0].write_text(report_markdown(report))
    paths[1].write_text(json.dumps(report, indent=1))
    for row in report["results"] if plots else ():
        paths.append(out_dir / plot_name(row))
        plot_row(row, paths[-1])
    return paths


def add_cli(subparsers) -> None:
    """Register ``hsd-fast fidelity``."""
    p = subparsers.add_parser(
        "fidelity",
        help="statistical equivalence of the engine with hsd_ref's exact law (every scheme x level kind, power checks)",
        description="Decode with SpeculativeDecoder over exact toy models for every scheme x level kind and G-test the output "
        "against hsd_ref's exact law; plant TV-0.005 biases and run lossy kernels to show the test's power. "
        "Writes fidelity.md, fidelity.json and one PNG per row.",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--schemes", nargs="+", default=list(LOSSLESS_SCHEMES), choices=LOSSLESS_SCHEMES, metavar="SCHEME", help="lossless schemes to test (default: all)")
    p.add_argument("--kinds", nargs="+", default=list(C.LEVEL_KINDS), choices=C.LEVEL_KINDS, metavar="KIND", help="engine level kinds (default: all)")
    p.add_argument("--seed", type=int, default=0, help="run seed (per-row seeds are derived from it; default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every sample size (default 1; below 1 the power claim does not hold)")
    p.add_argument("--no-controls", action="store_true", help="skip the lossy controls")
    p.add_argument("--vocab", action="store_true", help=f"add the V={VC.VOCAB_SIZE} cell (float32 rows) of every sampling scheme: minutes per scheme")
    p.add_argument("--no-plots", action="store_true", help="no PNG per row")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)  # before the run: an unwritable --out fails now, in one line
    start = time.perf_counter()

    def progress(label, n):
        print(f"  {label}: {n} samples, {time.perf_counter() - start:.0f} s", flush=True)

    report = run_fidelity(args.schemes, args.kinds, args.seed, controls=not args.no_controls, vocab=args.vocab, scale=args.scale, progress=None if args.quiet else progress)
    report["total_seconds"] = time.perf_counter() - start
    paths = write_report(report, args.out, plots=not args.no_plots)
    print(paths[0].read_text())
    print(f"wrote {paths[0]}, {paths[1]} and {len(paths) - 2} plots in {args.out} ({report['total_seconds']:.0f} s)")
    return 0 if report["ok"] else 1
