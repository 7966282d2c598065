"""The measurements of docs/early-exit.md: ``python -m hsd_fast.exits.measure DRAFT TARGET --layer D``.

1. **Agreement.**  On the first ``--prompts`` HumanEval and Spec-Bench prompts, each followed by
   ``--new-tokens`` tokens the TARGET samples at T = 1 (:func:`hsd_fast.exits.cli.eval_rows`), teacher
   forced: ``E[sum min(p, q)]`` and top-1 agreement at T = 1 of every ordered pair among the draft
   model, the target's untrained exit at ``D``, its trained exit at ``D`` (the newest cached head) and
   the target (full-vocabulary, float32 rows, float64 sums).
2. **Cost.**  Seconds per call of each level on the engine (B = 1, a warm cache after a HumanEval
   prompt, 1, 2, 4 and 8 new positions, median of ``--reps``): the draft, the exit (layers ``1..D``,
   the head, the final norm and the LM head) and the target; the exit's cost as a fraction of a
   target step at one position.
3. **Plans.**  The latency model (:mod:`hsd_ref.latency`, i.i.d. acceptance = the measured
   ``E[min(p, q)]`` on HumanEval) for: the draft alone, the trained exit alone as the draft
   (self-speculation), and the three levels draft -> trained exit -> target, each with its best
   thresholds in ``1..8``; and ``hsd_ref.optimal_hierarchy``'s choice among all chains of the three.
   The exit is priced ``CostCurve.early_exit(f)`` of the target's measured curve, ``f`` the measured
   fraction at one position (so the target's verification of exit drafts costs ``1 - f`` of a step).

Prints one JSON document.  Both models are loaded in ``--dtype`` (default bfloat16).
``--agreement-from REPORT`` takes step 1 from an earlier report and times the costs in this run's
dtype (on this project's CPU, bfloat16 one-row products are 4x slower than float32 ones).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

__all__ = ["pair_agreement", "level_costs", "plans"]


@torch.no_grad()
def pair_agreement(laws, rows, names: list[str]) -> dict[str, dict]:
    """``{"a>b": {"e_min", "top1"}}`` for every ordered pair of ``names``; ``laws(row) -> {name:
    logits [S, V]}`` (one call per row); T = 1."""
    sums = {(a, b): [0.0, 0.0] for a, b in itertools.permutations(names, 2) if a < b}
    n = 0
    for row in rows:
        logits = laws(row)
        logp = {k: v.float().log_softmax(-1) for k, v in logits.items()}
        for a, b in sums:
            sums[a, b][0] += float(torch.minimum(logp[a].exp(), logp[b].exp()).sum(-1, dtype=torch.float64).sum())
            sums[a, b][1] += float((logp[a].argmax(-1) == logp[b].argmax(-1)).sum())
        n += len(row)
    return {f"{a}|{b}": {"e_min": s[0] / n, "top1": s[1] / n, "positions": n} for (a, b), s in sums.items()}


@torch.no_grad()
def level_costs(levels: dict, ctx: list[int], *, positions=(1, 2, 4, 8), reps: int = 5) -> dict[str, dict[int, float]]:
    """Median seconds per ``probs`` call of each engine level (name -> level spec; each its own decoder)."""
    from ..bench.calibrate import _time_level
    from ..engine.specs import resolve_levels
    from ..warp import Warp

    out = {}
    for name, spec in levels.items():
        (level,), _ = resolve_levels([spec])
        gen = torch.Generator().manual_seed(0)
        out[name] = _time_level(level, ctx, Warp(1.0), positions, reps, level.vocab_size, level.device, gen)
    return out


def plans(costs: dict[str, dict[int, float]], alpha: dict[str, float], draft: str, exit_: str, target: str, tmax: int = 8) -> dict:
    """Predicted speed-ups of the three plans (module docstring) and optimal_hierarchy's choice."""
    from hsd_ref.latency import fhierarchy_speedup
    from hsd_ref.optimize import CostCurve, optimal_hierarchy

    tc = CostCurve.points(costs[target])
    frac = costs[exit_][1] / costs[target][1]
    curves = {draft: CostCurve.points(costs[draft]), exit_: tc.early_exit(frac), target: tc}
    a = lambda x, y: min(1.0, alpha[f"{min(x, y)}|{max(x, y)}"])  # noqa: E731  (float sums can pass 1 by rounding)
    best = lambda chain: max(  # noqa: E731
        ((fhierarchy_speedup([curves[m] for m in chain], [a(x, y) for x, y in zip(chain, chain[1:])], ts), ts)
         for ts in itertools.product(range(1, tmax + 1), repeat=len(chain) - 1)), key=lambda st: st[0])
    out = {"exit_cost_fraction": frac}
    for label, chain in (("draft alone", (draft, target)), ("trained exit alone (self-speculation)", (exit_, target)),
                         ("three levels (HiSpec)", (draft, exit_, target))):
        s, ts = best(chain)
        out[label] = {"chain": list(chain), "thresholds": list(ts), "predicted_speedup": s}
    plan = optimal_hierarchy([draft, exit_, target], curves,
                             {(draft, target): a(draft, target), (exit_, target): a(exit_, target), (draft, exit_): a(draft, exit_)},
                             max_threshold=tmax, exact=False)
    out["optimal_hierarchy"] = {"chain": list(plan.chain), "thresholds": list(plan.thresholds), "predicted_speedup": float(plan.speedup)}
    return out


def main(argv=None) -> int:
    from ..engine import EarlyExit
    from ..models import load
    from ..prompts import humaneval_prompts
    from .cli import eval_rows
    from .evaluate import exit_logits, layer_hidden
    from .store import find_head, load_head

    p = argparse.ArgumentParser(prog="python -m hsd_fast.exits.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("draft")
    p.add_argument("target")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--agreement-from", default=None, help="take the agreement from this earlier JSON report; time costs only")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    target, tok = load(args.target, dtype=dtype)
    draft, _ = load(args.draft, dtype=dtype)
    folder = find_head(target, args.layer)
    head = load_head(folder, target, args.layer)
    D, X, U, T = "draft", "exit_trained", "exit_untrained", "target"

    def laws(row):
        ids = torch.tensor([row])
        h, full = layer_hidden(target, args.layer, ids)
        return {T: full[0], X: exit_logits(target, head, h)[0], U: exit_logits(target, None, h)[0], D: draft(input_ids=ids).logits[0]}

    report = {"draft": args.draft, "target": args.target, "layer": args.layer, "head": str(folder), "dtype": args.dtype,
              "threads": torch.get_num_threads(), "prompts": args.prompts, "new_tokens": args.new_tokens}
    if args.agreement_from:  # reuse the agreement of an earlier report (e.g. measured in another dtype)
        with open(args.agreement_from) as src:
            earlier = json.load(src)
        report["agreement"], report["agreement_from"] = earlier["agreement"], {"file": args.agreement_from, "dtype": earlier["dtype"]}
        ctx = tok(humaneval_prompts(1)[0].text, add_special_tokens=False)["input_ids"][:160]
    else:
        rows = eval_rows(target, tok, args.prompts, args.new_tokens)
        report["agreement"] = {name: pair_agreement(laws, r, [D, X, U, T]) for name, r in rows.items()}
        ctx = rows["humaneval"][0][:160]
    costs = level_costs({D: draft, X: EarlyExit(target, args.layer, head=head), U: EarlyExit(target, args.layer), T: target},
                        ctx, reps=args.reps)
    report["costs_s"] = costs
    report["costs_over_target"] = {k: {m: c / costs[T][m] for m, c in v.items()} for k, v in costs.items()}
    alpha = {k: v["e_min"] for k, v in report["agreement"]["humaneval"].items()}
    report["plans_humaneval"] = plans(costs, alpha, D, X, T)
    print(json.dumps(report, indent=1, default=str))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
