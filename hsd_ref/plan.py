"""``hsd-ref plan``: the latency-optimal speculative-decoding hierarchy for measured costs and rates.

Uses :func:`hsd_ref.optimize.optimal_hierarchy` (the i.i.d. latency model of :mod:`hsd_ref.latency`;
Leviathan et al. 2023 §3 for one draft, Globerson et al. arXiv 2510.19705 for hierarchies; derivation
in docs/latency.md).  Input format (docs/latency.md, "Command line")::

    hsd-ref plan --costs draft=0.39 target=1:1,5:1,9:1.76 --acceptance draft:target=0.7 --plot out.png

* ``--costs NAME=SPEC ...`` in model order, cheapest first, target LAST.  SPEC is
  ``NUMBER`` (cost of every call), ``M:COST,M:COST,...`` (measured cost of a call scoring M positions,
  piecewise-linear in between) or ``exit:BACKBONE:DEPTH`` (an early exit at depth fraction DEPTH of
  model BACKBONE, sharing its KV cache and hidden states).  Numbers are decimals or fractions
  (``0.39``, ``1/4``) and are read exactly.
* ``--acceptance DRAFT:VERIFIER=ALPHA ...``: the rate at which VERIFIER accepts DRAFT's tokens
  (i.i.d. token-wise).  Pairs left out cannot be used as edges.
* ``--config FILE.json`` instead of both: ``{"costs": {NAME: SPEC, ...}, "acceptance":
  {"DRAFT:VERIFIER": ALPHA, ...}}``; a SPEC may also be a JSON number or a ``{"M": COST}`` object.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction

from .exact import HSDInputError

__all__ = ["add_cli", "main_plan", "parse_inputs", "run_plan"]


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the ``plan`` subcommand on an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "plan",
        help="latency-optimal hierarchy (chain + thresholds) for measured costs and acceptance rates",
        description=("Latency-optimal speculative-decoding hierarchy under the i.i.d. model (docs/latency.md).\n\n"
                     + __doc__.split("Input format", 1)[1].split("::", 1)[1]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--costs", nargs="+", metavar="NAME=SPEC", help="per-model call cost, cheapest first, target last")
    p.add_argument("--acceptance", nargs="+", metavar="DRAFT:VERIFIER=ALPHA", help="acceptance rate of each usable pair")
    p.add_argument("--config", metavar="FILE.json", help="JSON file with 'costs' and 'acceptance' (instead of the two options)")
    p.add_argument("--max-threshold", type=int, default=8, metavar="T", help="largest threshold / draft length searched (default 8)")
    p.add_argument("--float", action="store_true", help="float arithmetic instead of exact fractions (faster for many models)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of predicted speed-up vs draft length")
    p.set_defaults(func=main_plan)
    return p


def main_plan(args: argparse.Namespace) -> int:
    """The registered entry point: prints the plan; a bad argument prints one clean line and returns 2."""
    try:
        plan = run_plan(args)
    except (ValueError, OSError) as exc:
        print(f"hsd-ref plan: error: {exc}", file=sys.stderr)
        return 2
    print(plan.describe())
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def run_plan(args: argparse.Namespace):
    """Parse, optimise and (with ``--plot``) draw; raises ``HSDInputError`` naming the bad argument."""
    from .cli import check_writable
    from .optimize import optimal_hierarchy

    if args.max_threshold < 1:
        raise HSDInputError(f"--max-threshold: must be >= 1, got {args.max_threshold}")
    if args.plot is not None:
        check_writable(args.plot, "--plot")
    models, costs, acceptance = parse_inputs(costs=args.costs, acceptance=args.acceptance, config=args.config)
    plan = optimal_hierarchy(models, costs, acceptance, max_threshold=args.max_threshold, exact=False if args.float else None)
    if args.plot:
        _plot(args.plot, models, costs, acceptance, plan)
    return plan


# ---------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------

def _number(text: object, where: str) -> Fraction:
    if isinstance(text, bool):
        raise HSDInputError(f"{where}: expected a number, got {text!r}")
    if isinstance(text, (int, Fraction)):
        return Fraction(text)
    if isinstance(text, float):  # a JSON number read without parse_float: keep its decimal text
        return Fraction(repr(text))
    try:
        return Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise HSDInputError(f"{where}: {text!r} is not a number (use decimals like 0.39 or fractions like 1/4)") from None


def _cost_spec(name: str, spec: object, where: str):
    """A parsed SPEC: ('const', x) | ('points', {m: x}) | ('exit', backbone, depth)."""
    if isinstance(spec, dict):
        pts = {}
        for m, v in spec.items():
            try:
                mi = int(m)
            except (TypeError, ValueError):
                raise HSDInputError(f"{where}: points key {m!r} is not an int number of positions") from None
            pts[mi] = _number(v, f"{where}: cost at {m} positions")
        return ("points", pts)
    if not isinstance(spec, str):
        return ("const", _number(spec, where))
    text = spec.strip()
    if text.startswith("exit:"):
        parts = text.split(":")
        if len(parts) != 3 or not parts[1]:
            raise HSDInputError(f"{where}: early exit must read exit:BACKBONE:DEPTH, got {spec!r}")
        return ("exit", parts[1], _number(parts[2], f"{where}: depth"))
    if ":" in text:
        pts = {}
        for item in text.split(","):
            m, sep, v = item.partition(":")
            if not sep:
                raise HSDInputError(f"{where}: points must read M:COST,M:COST,..., got {spec!r}")
            try:
                mi = int(m)
            except ValueError:
                raise HSDInputError(f"{where}: {m!r} is not an int number of positions in {spec!r}") from None
            if mi in pts:
                raise HSDInputError(f"{where}: {mi} positions given twice in {spec!r}")
            pts[mi] = _number(v, f"{where}: cost at {mi} positions")
        return ("points", pts)
    return ("const", _number(text, where))


def parse_inputs(*, costs=None, acceptance=None, config=None):
    """``(models, costs, acceptance)`` for :func:`optimal_hierarchy` from the CLI strings or a JSON file."""
    from .latency import CostCurve

    if config is not None:
        if costs or acceptance:
            raise HSDInputError("--config: give either --config or --costs/--acceptance, not both")
        try:
            with open(config, encoding="utf-8") as fh:
                data = json.load(fh, parse_float=Fraction)
        except OSError as exc:
            raise HSDInputError(f"--config: cannot read {config!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise HSDInputError(f"--config: {config!r} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("costs"), dict) or not isinstance(data.get("acceptance"), dict):
            raise HSDInputError("--config: expected an object with 'costs' and 'acceptance' objects")
        cost_items = list(data["costs"].items())
        acc_items = list(data["acceptance"].items())
        copt, aopt = "--config costs", "--config acceptance"
    else:
        if not costs:
            raise HSDInputError("--costs: required (or --config), e.g. --costs draft=0.39 target=1")
        if not acceptance:
            raise HSDInputError("--acceptance: required (or --config), e.g. --acceptance draft:target=0.7")
        cost_items = []
        for item in costs:
            name, sep, spec = item.partition("=")
            if not sep or not name.strip():
                raise HSDInputError(f"--costs: {item!r} must read NAME=SPEC")
            cost_items.append((name.strip(), spec))
        acc_items = []
        for item in acceptance:
            pair, sep, alpha = item.partition("=")
            if not sep:
                raise HSDInputError(f"--acceptance: {item!r} must read DRAFT:VERIFIER=ALPHA")
            acc_items.append((pair, alpha))
        copt, aopt = "--costs", "--acceptance"

    models = []
    parsed = {}
    for name, spec in cost_items:
        if name in parsed:
            raise HSDInputError(f"{copt}: model {name!r} given twice")
        models.append(name)
        parsed[name] = _cost_spec(name, spec, f"{copt} {name}")
    if len(models) < 1:
        raise HSDInputError(f"{copt}: no models")
    curves = {}
    for name in models:  # plain curves first, exits second (they refer to their backbone)
        kind = parsed[name]
        try:
            if kind[0] == "const":
                curves[name] = CostCurve.constant(kind[1])
            elif kind[0] == "points":
                curves[name] = CostCurve.points(kind[1])
        except HSDInputError as exc:
            raise HSDInputError(f"{copt} {name}: {exc}") from None
    for name in models:
        kind = parsed[name]
        if kind[0] != "exit":
            continue
        backbone = kind[1]
        if backbone not in curves:
            what = "an early exit itself" if backbone in parsed else "not a model in the list"
            raise HSDInputError(f"{copt} {name}: backbone {backbone!r} of the early exit is {what}")
        try:
            curves[name] = curves[backbone].early_exit(kind[2])
        except HSDInputError as exc:
            raise HSDInputError(f"{copt} {name}: {exc}") from None

    acc = {}
    for pair, alpha in acc_items:
        draft, sep, verifier = str(pair).partition(":")
        draft, verifier = draft.strip(), verifier.strip()
        if not sep or not draft or not verifier:
            raise HSDInputError(f"{aopt}: {pair!r} must read DRAFT:VERIFIER")
        for who in (draft, verifier):
            if who not in parsed:
                raise HSDInputError(f"{aopt}: {who!r} in {pair!r} is not a model given in {copt} ({', '.join(models)})")
        a = _number(alpha, f"{aopt} {pair}")
        if not 0 <= a <= 1:
            raise HSDInputError(f"{aopt} {pair}: acceptance rate {a} is outside [0, 1]")
        if (draft, verifier) in acc:
            raise HSDInputError(f"{aopt}: pair {pair!r} given twice")
        if models.index(draft) >= models.index(verifier):
            raise HSDInputError(f"{aopt}: in {pair!r} the verifier must come after the draft in {copt} (cheapest first, target last)")
        acc[(draft, verifier)] = a
    return models, [curves[n] for n in models], acc


# ---------------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------------

def _plot(path: str, models, costs, acceptance, plan) -> None:
    """Predicted speed-up vs draft length: every single draft, and the optimal hierarchy vs its T_0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .latency import fhierarchy_latency

    target = models[-1]
    tmax = plan.max_threshold
    ks = list(range(1, tmax + 1))
    t_lat = float(costs[-1](1))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(models[:-1]):
        if (d, target) not in acceptance:
            continue
        ys = [t_lat / fhierarchy_latency([costs[i], costs[-1]], [acceptance[(d, target)]], [k]) for k in ks]
        ax.plot(ks, ys, marker="o", label=f"{d} -> {target} (alpha={float(acceptance[(d, target)]):.2f})")
    if len(plan.chain) > 2:
        idx = [models.index(m) for m in plan.chain]
        chain_costs = [costs[i] for i in idx]
        chain_acc = [acceptance[(models[a], models[b])] for a, b in zip(idx, idx[1:])]
        ys = [t_lat / fhierarchy_latency(chain_costs, chain_acc, [k, *plan.thresholds[1:]]) for k in ks]
        rest = ", ".join(f"T{i}={t}" for i, t in enumerate(plan.thresholds) if i)
        ax.plot(ks, ys, marker="s", linewidth=2, color="black", label=f"{' -> '.join(plan.chain)} ({rest}), vs T0")
    ax.axhline(float(plan.speedup), color="black", linestyle="--", linewidth=1, label=f"optimum {float(plan.speedup):.3f}x")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("draft length k (T0 for the hierarchy)")
    ax.set_ylabel(f"predicted speed-up over {target} alone")
    ax.set_title("i.i.d. latency model (hsd_ref.latency)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=110)
    except OSError as exc:
        raise HSDInputError(f"--plot: cannot write {path!r}: {exc.strerror}") from None
    finally:
        plt.close(fig)
