"""hsd_ref.optimize (latency-optimal hierarchy) against brute force, and the ``hsd-ref plan`` CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
from fractions import Fraction as F

import pytest

from hsd_ref.latency import AcceptanceLaw, CostCurve, _shares, hierarchy_latency, optimal_draft_length, walltime_factor
from hsd_ref.optimize import optimal_hierarchy
from hsd_ref.plan import add_cli, main_plan, parse_inputs, run_plan

QWEN = {1: 1, 5: 1, 9: F(176, 100)}  # measured target curve (brief): 5 positions ~ 1 step, 9 ~ 1.76


# ---------------------------------------------------------------------------------------------------
# brute force: every chain, every threshold vector, each evaluated with hierarchy_latency
# ---------------------------------------------------------------------------------------------------

def brute_force(names, curves, laws, tmax, batch=1):
    """Minimal latency over all chains ending at the target and all thresholds in 1..tmax."""
    m = len(names)
    best = curves[-1](batch)  # the target alone: one position per row
    for r in range(1, m):
        for sub in itertools.combinations(range(m - 1), r):
            chain = list(sub) + [m - 1]
            if any((x, y) not in laws for x, y in zip(chain, chain[1:])):
                continue
            edge_laws = [laws[(x, y)] for x, y in zip(chain, chain[1:])]
            for ths in itertools.product(range(1, tmax + 1), repeat=r):
                best = min(best, hierarchy_latency([curves[i] for i in chain], edge_laws, list(ths), batch=batch))
    return best


def random_instance(rng: random.Random, m: int, *, exits: bool, drop: float):
    """Models of increasing quality (cheapest first): acceptance falls with the quality gap and cost
    grows like quality^3, so cascades often win; optional early exits of the target (HiSpec-style),
    dropped pairs, and sometimes a non-geometric accepted-count law on one edge."""
    names = [f"m{i}" for i in range(m)]
    target = CostCurve.points(QWEN) if rng.random() < 0.5 else CostCurve.constant(1)
    quality = sorted(F(rng.randint(1, 9), 10) for _ in range(m - 1)) + [F(1)]
    curves = []
    for i in range(m - 1):
        if exits and rng.random() < 0.5:
            curves.append(target.early_exit(max(quality[i] - F(rng.randint(1, 4), 10), F(1, 20))))
        else:
            curves.append(CostCurve.constant(quality[i] ** 3 / rng.randint(1, 4)))
    curves.append(target)
    laws = {}
    for i in range(m):
        for j in range(i + 1, m):
            if rng.random() < drop and not (j == m - 1 and i == 0):
                continue
            alpha = min(max(1 - (quality[j] - quality[i]) + F(rng.randint(-1, 1), 10), F(0)), F(19, 20))
            laws[(i, j)] = AcceptanceLaw.tokenwise(alpha)
    if rng.random() < 0.3:
        key = rng.choice(sorted(laws))
        w = rng.randint(1, 3)  # all accepted with weight w, each shorter count with weight 1
        laws[key] = AcceptanceLaw.function(lambda bb, w=w: {j: F(w if j == bb else 1, bb + w) for j in range(bb + 1)})
    return names, curves, laws


def _check_against_brute_force(names, curves, laws, tmax, batch=1):
    acc = {(names[i], names[j]): law for (i, j), law in laws.items()}
    plan = optimal_hierarchy(names, curves, acc, max_threshold=tmax, batch=batch)
    assert plan.exact and isinstance(plan.latency, F) and plan.batch == batch
    assert plan.latency == brute_force(names, curves, laws, tmax, batch)
    # the reported chain and thresholds achieve the reported value
    idx = [names.index(x) for x in plan.chain]
    assert idx[-1] == len(names) - 1 and idx == sorted(idx)
    assert all(1 <= t <= tmax for t in plan.thresholds) and len(plan.thresholds) == len(idx) - 1
    again = hierarchy_latency([curves[i] for i in idx], [laws[(x, y)] for x, y in zip(idx, idx[1:])], list(plan.thresholds), batch=batch)
    assert again == plan.latency
    assert plan.speedup == curves[-1](batch) / plan.latency
    return plan, idx


def test_optimiser_matches_brute_force_on_random_instances():
    rng = random.Random(20260515)
    levels, shared = [], 0
    for m, exits in [(5, True), (5, False)] * 5 + [(4, True), (4, False)] * 4 + [(3, True), (3, False)] * 3:
        names, curves, laws = random_instance(rng, m, exits=exits, drop=0.15)
        plan, idx = _check_against_brute_force(names, curves, laws, 8)
        levels.append(len(plan.chain))
        shared += any(_shares(curves[x], curves[y]) for x, y in zip(idx, idx[1:]))
    # the instances exercise deep chains and shared computation, not only single drafts
    assert max(levels) >= 4 and shared >= 1, (levels, shared)


def test_optimiser_matches_brute_force_on_hispec_like_exits():
    # M0 = exit at 1/8, middle = exit at 1/4, target = full model (HiSpec's three virtual models)
    rng = random.Random(5)
    for _ in range(3):
        target = CostCurve.points(QWEN)
        curves = [CostCurve.constant(F(rng.randint(1, 4), 100)), target.early_exit(F(1, 8)), target.early_exit(F(1, 4)), target]
        names = ["tiny", "L4", "L8", "full"]
        laws = {(i, j): AcceptanceLaw.tokenwise(F(rng.randint(3, 9), 10)) for i in range(4) for j in range(i + 1, 4)}
        _check_against_brute_force(names, curves, laws, 8)


def test_optimiser_matches_brute_force_at_batch_sizes():
    # measured / affine curves (batch changes them) and early exits; the plans move with the batch
    rng = random.Random(20260601)
    chains = set()
    for bb, m, exits in [(2, 4, True), (4, 4, False), (8, 3, True), (16, 4, True), (32, 3, False)] * 2:
        names, curves, laws = random_instance(rng, m, exits=exits, drop=0.1)
        curves = [CostCurve.function(lambda n, c=c: c(1) * (1 + F(n, 24))) if c.root is None and i < m - 1 else c
                  for i, c in enumerate(curves)]
        plan, idx = _check_against_brute_force(names, curves, laws, 6, batch=bb)
        chains.add(len(plan.chain))
    assert 1 in chains and max(chains) >= 3, chains


def test_single_draft_plan_is_leviathans_optimal_k():
    # two models, constant costs: the optimum is the integer argmax of S(alpha, k, c) (closed form)
    for alpha, cc in [(F(8, 10), F(1, 10)), (F(6, 10), F(5, 100)), (F(9, 10), F(2, 10)), (F(1, 2), F(3, 10))]:
        plan = optimal_hierarchy(["d", "t"], {"d": cc, "t": 1}, {("d", "t"): alpha}, max_threshold=16)
        k_star, s = optimal_draft_length(alpha, cc, max_k=16)
        assert plan.chain == ("d", "t") and plan.thresholds == (k_star,) and plan.speedup == s
        assert plan.best_single.k == k_star and plan.speedup_over_single == 1


def test_useless_drafts_leave_the_target_alone():
    plan = optimal_hierarchy(["d", "t"], [F(1, 2), 1], {("d", "t"): F(1, 4)})  # alpha <= c: Cor. 3.9
    assert plan.chain == ("t",) and plan.thresholds == () and plan.speedup == 1
    assert plan.best_single.speedup == walltime_factor(F(1, 4), 1, F(1, 2)) < 1 and plan.speedup_over_single > 1
    plan = optimal_hierarchy(["d", "m", "t"], [F(1, 10), F(1, 5), 1], {("d", "m"): F(1, 2)})
    assert plan.chain == ("t",) and plan.best_single is None and plan.speedup_over_single is None


def test_hierarchy_beats_single_draft_and_reports_both():
    # a very cheap but weak draft and a strong middle model: the cascade wins
    costs = {"d": F(1, 100), "m": F(1, 5), "t": CostCurve.points(QWEN)}
    acc = {("d", "t"): F(3, 10), ("d", "m"): F(8, 10), ("m", "t"): F(9, 10)}
    plan = optimal_hierarchy(["d", "m", "t"], costs, acc)
    assert plan.chain == ("d", "m", "t")
    single = min(
        hierarchy_latency([costs[d], costs["t"]], [acc[(d, "t")]], [kk]) for d in ("d", "m") for kk in range(1, 9)
    )
    assert plan.best_single.latency == single and plan.speedup_over_single == single / plan.latency > 1
    text = plan.describe()
    assert "d [T=" in text and "m [T=" in text and "best single draft: m" in text


def test_float_mode_agrees_with_exact_mode():
    rng = random.Random(99)
    for _ in range(4):
        names, curves, laws = random_instance(rng, 4, exits=True, drop=0.1)
        acc = {(names[i], names[j]): law for (i, j), law in laws.items()}
        exact = optimal_hierarchy(names, curves, acc)
        fast = optimal_hierarchy(names, curves, acc, exact=False)
        assert not fast.exact and isinstance(fast.latency, float)
        assert math.isclose(fast.latency, float(exact.latency), rel_tol=1e-12)
    # float inputs switch to float arithmetic automatically; exact=True refuses them
    plan = optimal_hierarchy(["d", "t"], {"d": 0.1, "t": 1}, {("d", "t"): 0.8})
    assert not plan.exact and plan.thresholds == (6,)
    with pytest.raises(ValueError, match=r"acceptance\[\('d', 't'\)\]"):
        optimal_hierarchy(["d", "t"], {"d": F(1, 10), "t": 1}, {("d", "t"): 0.8}, exact=True)


def test_optimiser_input_errors_name_the_argument():
    ok = dict(models=["d", "t"], costs={"d": F(1, 10), "t": 1}, acceptance={("d", "t"): F(1, 2)})
    cases = [
        (dict(models=[]), "models"),
        (dict(models=["d", "d"]), "models"),
        (dict(costs={"d": F(1, 10)}), "costs"),
        (dict(costs={"d": F(1, 10), "t": 1, "x": 1}), "costs"),
        (dict(costs=[F(1, 10)]), "costs"),
        (dict(costs={"d": -1, "t": 1}), "costs"),
        (dict(acceptance={("t", "d"): F(1, 2)}), "acceptance"),
        (dict(acceptance={("d", "x"): F(1, 2)}), "acceptance"),
        (dict(acceptance={"d": F(1, 2)}), "acceptance"),
        (dict(acceptance={("d", "t"): F(3, 2)}), "acceptance"),
        (dict(costs={"d": F(1, 10), "t": 0}), "costs"),
    ]
    for change, name in cases:
        with pytest.raises(ValueError, match=name):
            optimal_hierarchy(**{**ok, **change})
    with pytest.raises(ValueError, match="max_threshold"):
        optimal_hierarchy(**ok, max_threshold=0)
    # indices work as model references too
    assert optimal_hierarchy(["d", "t"], [F(1, 10), 1], {(0, 1): F(4, 5)}).thresholds == (6,)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

def parse(argv):
    parser = argparse.ArgumentParser(prog="hsd-ref")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    return parser.parse_args(argv)


def test_cli_single_draft_prints_leviathans_optimum(capsys):
    args = parse(["plan", "--costs", "draft=0.1", "target=1", "--acceptance", "draft:target=0.8"])
    assert args.func is main_plan and args.func(args) == 0
    out = capsys.readouterr().out
    s = walltime_factor(F(8, 10), 6, F(1, 10))  # k* = 6 for alpha 0.8, c 0.1 (max_threshold 8)
    assert "optimal hierarchy: draft [T=6] -> target" in out
    assert f"predicted speed-up over the target alone: {float(s):.4f}x" in out
    assert "predicted speed-up over the best single draft: 1.0000x" in out


def test_cli_hierarchy_with_measured_curve_exit_and_plot(tmp_path, capsys):
    png = tmp_path / "speedup.png"
    argv = ["plan", "--costs", "d=1/100", "L8=exit:t:1/4", "t=1:1,5:1,9:1.76",
            "--acceptance", "d:t=0.3", "d:L8=0.8", "L8:t=0.9", "--plot", str(png)]
    args = parse(argv)
    assert main_plan(args) == 0
    out = capsys.readouterr().out
    models, curves, acc = parse_inputs(costs=args.costs, acceptance=args.acceptance)
    assert models == ["d", "L8", "t"] and _shares(curves[1], curves[2]) and curves[1].depth == F(1, 4)
    assert acc == {("d", "t"): F(3, 10), ("d", "L8"): F(4, 5), ("L8", "t"): F(9, 10)}
    plan = run_plan(args)
    assert plan.chain == ("d", "L8", "t") and plan.exact
    assert f"{float(plan.speedup):.4f}x" in out and f"{float(plan.speedup_over_single):.4f}x" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_json_config_equals_inline(tmp_path, capsys):
    cfg = tmp_path / "plan.json"
    cfg.write_text(json.dumps({
        "costs": {"d": 0.05, "m": "0.3", "t": {"1": 1, "5": 1, "9": 1.76}},
        "acceptance": {"d:t": 0.6, "d:m": 0.8, "m:t": 0.8},
    }))
    a = run_plan(parse(["plan", "--config", str(cfg)]))
    b = run_plan(parse(["plan", "--costs", "d=0.05", "m=0.3", "t=1:1,5:1,9:1.76", "--acceptance", "d:t=0.6", "d:m=0.8", "m:t=0.8"]))
    assert (a.chain, a.thresholds, a.latency) == (b.chain, b.thresholds, b.latency) and a.exact


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--costs", "d=x", "t=1", "--acceptance", "d:t=0.5"], "--costs d"),
        (["--costs", "d", "t=1", "--acceptance", "d:t=0.5"], "--costs"),
        (["--costs", "d=0.1", "t=1:1,5:oops", "--acceptance", "d:t=0.5"], "--costs t"),
        (["--costs", "d=0.1", "t=1", "--acceptance", "d:u=0.5"], "--acceptance"),
        (["--costs", "d=0.1", "t=1", "--acceptance", "t:d=0.5"], "--acceptance"),
        (["--costs", "d=0.1", "t=1", "--acceptance", "d:t=1.5"], "--acceptance d:t"),
        (["--costs", "d=0.1", "t=1", "--acceptance", "dt=0.5"], "--acceptance"),
        (["--costs", "d=0.1", "t=1"], "--acceptance"),
        (["--acceptance", "d:t=0.5"], "--costs"),
        (["--costs", "e=exit:x:1/4", "t=1", "--acceptance", "e:t=0.5"], "--costs e"),
        (["--costs", "e=exit:t:3/2", "t=1", "--acceptance", "e:t=0.5"], "--costs e"),
        (["--costs", "d=0.1", "t=1", "--acceptance", "d:t=0.5", "--max-threshold", "0"], "--max-threshold"),
        (["--config", "/nonexistent/plan.json"], "--config"),
    ],
)
def test_cli_errors_name_the_argument(argv, name, capsys):
    args = parse(["plan", *argv])
    with pytest.raises(ValueError, match=re.escape(name)):
        run_plan(args)
    assert main_plan(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hsd-ref plan: ") and name in err and "Traceback" not in err
