"""Calibration: measured cost curves and acceptance rates, and the plans the latency model makes of them.

Costs.  Every model level is timed the way the engine calls it (``ModelLevel.probs``: forward on a
position-indexed cache, final norm, LM head, float64 warp) scoring ``m`` new positions after a
prefilled prompt, for ``m`` in :data:`POSITIONS`; the median of a few repetitions is the point
``c(m)`` of its :class:`hsd_ref.latency.CostCurve`.  An early exit of the target is not timed: the
latency model prices it as ``CostCurve.early_exit(d / L)`` of the target's curve, with the shared
KV cache and hidden states that the engine implements (docs/latency.md).  A trained exit
(``exit:D:trained``) is priced the same: its linear head is one ``hidden x hidden`` product per
position, about 0.1% of a Qwen2.5-1.5B token's FLOPs, within the noise of the measured exit costs
(docs/early-exit.md).  The n-gram drafter's cost
is its proposal time per proposed token.

Acceptance.  Teacher-forced along the target's own continuations of the calibration prompts (sampled
at the suite's temperature, greedy at 0; a trained exit read through its head): for every pair of levels ``(i, j)`` the mean over positions
of ``sum_v min(p_i(v), p_j(v))`` (Leviathan et al.'s ``alpha = E[beta]``), with the n-gram drafter's
point mass on its proposal (so its rate is ``E[p_j(proposal)]``).  All pairs come from one forward per
model over each continuation.

Plans.  ``hsd_ref.optimize.optimal_hierarchy`` over a :class:`PlanSpec`'s candidates; a required
level is enforced by dropping every acceptance pair that jumps over it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from .suites import PlanSpec, RunSpec, parse_exit_key

__all__ = ["Calibration", "POSITIONS", "calibrate", "make_plan"]

POSITIONS = (1, 2, 3, 5, 7, 9, 13, 17)  # positions scored per call: a step, and verifications of K = 1..16
REPS = 3


@dataclass
class Calibration:
    temperature: float
    costs: dict[str, dict[int, float]]  # level key -> {positions: seconds per call}
    acceptance: dict[tuple[str, str], float]  # (lower key, upper key) -> alpha
    n_layers: int
    positions: int = 0  # teacher-forced positions behind the acceptance rates
    plans: dict[str, dict] = field(default_factory=dict)  # plan name -> chain, thresholds, predictions
    heads: dict[str, str] = field(default_factory=dict)  # "exit:D:trained" -> the head folder's name

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "costs": {k: {str(m): v for m, v in c.items()} for k, c in self.costs.items()},
            "acceptance": [[a, b, v] for (a, b), v in sorted(self.acceptance.items())],
            "n_layers": self.n_layers,
            "positions": self.positions,
            "plans": self.plans,
            "heads": self.heads,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(
            temperature=float(d["temperature"]),
            costs={k: {int(m): float(v) for m, v in c.items()} for k, c in d["costs"].items()},
            acceptance={(a, b): float(v) for a, b, v in d["acceptance"]},
            n_layers=int(d["n_layers"]),
            positions=int(d.get("positions", 0)),
            plans=dict(d.get("plans", {})),
            heads=dict(d.get("heads", {})),
        )

    def curves(self, keys):
        """CostCurve per key (exits, trained or not, derived from the target's curve)."""
        from hsd_ref.latency import CostCurve

        target = CostCurve.points(self.costs["target"])
        out = {}
        for key in keys:
            if key == "target":
                out[key] = target
            elif parse_exit_key(key) is not None:
                out[key] = target.early_exit(parse_exit_key(key)[0] / self.n_layers)
            else:
                out[key] = CostCurve.points(self.costs[key])
        return out


def _model_keys(keys) -> list[str]:
    return [k for k in keys if k != "ngram" and parse_exit_key(k) is None]


@torch.no_grad()
def _time_level(level, ctx: list[int], warp, positions, reps, vocab_size, device, gen) -> dict[int, float]:
    L = len(ctx)
    seq = torch.zeros(1, L + max(positions) + 1, dtype=torch.int64, device=device)
    seq[0, :L] = torch.tensor(ctx, dtype=torch.int64)
    lens = torch.tensor([L], device=device)
    level.backend.prefill(seq, lens)
    out = {}
    for m in positions:
        times = []
        for _ in range(reps + 1):  # the first call of each size is a warm-up
            seq[0, L : L + m] = torch.randint(0, vocab_size, (m,), generator=gen).to(device)
            t0 = time.perf_counter()
            level.probs(seq, lens + m, m, warp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        out[m] = statistics.median(times[1:])
    return out


def _ngram_cost(ctx: list[int], device) -> float:
    from ..drafters import NGramDrafter

    drafter = NGramDrafter()
    seq = torch.tensor([ctx], dtype=torch.int64, device=device)
    lens = torch.tensor([len(ctx)], device=device)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        drafter.propose(seq, lens, 4)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / 4


@torch.no_grad()
def calibrate(models, keys, prompts: list[list[int]], temperature: float, *, new_tokens: int, seed: int = 0,
              positions=POSITIONS, reps: int = REPS) -> Calibration:
    """Costs of ``keys`` (level keys, the target included) and acceptance of every pair of them."""
    from ..drafters import NGramDrafter, fill_placeholders
    from ..engine import CachedLM, SpeculativeDecoder
    from ..engine.levels import ModelLevel
    from ..warp import Warp

    device = next(models.target.parameters()).device
    warp = Warp(temperature)
    gen = torch.Generator().manual_seed(seed)
    V = models.target.config.vocab_size
    # costs: one fresh backend per model, no exits registered (exits are priced from the target's curve)
    costs: dict[str, dict[int, float]] = {}
    ctx = prompts[0]
    for key in _model_keys(keys):
        be = CachedLM(models.model(key), key)
        costs[key] = _time_level(ModelLevel(be, be.n_layers, key), ctx, warp, positions, reps, V, device, gen)
    if "ngram" in keys:
        costs["ngram"] = {1: _ngram_cost(ctx + ctx[-64:], device)}

    # acceptance: teacher-forced along the target's own continuations
    target_be = CachedLM(models.target, "target")
    levels, heads = {}, {}
    for key in keys:
        exit_key = parse_exit_key(key)
        if key == "target":
            levels[key] = ModelLevel(target_be, target_be.n_layers, key)
        elif exit_key is not None:
            spec = models.level(key)  # EarlyExit(target, D, head=None or the cached head)
            head = None if spec.head is None else spec.head.to(device).eval()
            levels[key] = ModelLevel(target_be, spec.layers, key, head=head)
            if exit_key[1]:
                heads[key] = models.trained_head(exit_key[0])[0].name
        elif key != "ngram":
            be = CachedLM(models.model(key), key)
            levels[key] = ModelLevel(be, be.n_layers, key)
    ar = SpeculativeDecoder([models.level("target")], temperature=temperature, eos_token_id=models.eos_ids or None)
    drafter = NGramDrafter()
    overlap: dict[tuple[str, str], float] = {}
    rows = 0
    for i, ids in enumerate(prompts):
        y = ar.generate([ids], max_new_tokens=new_tokens, seeds=[seed + i]).tokens[0]
        n, L = len(y), len(ids)
        if n == 0:
            continue
        seq = torch.tensor([ids + y[:-1]], dtype=torch.int64, device=device)
        lens = torch.tensor([L + n - 1], device=device)
        probs = {}
        for key, lvl in levels.items():
            lvl.backend.reset()
            probs[key] = lvl.probs(seq, lens, n, warp)[0]  # [n, V]: the laws of y_1 .. y_n
        if "ngram" in keys:  # the drafter's first proposal after every prefix (-1: the last token, as the engine)
            full = torch.tensor([ids + y], dtype=torch.int64, device=device)
            prop = [fill_placeholders(drafter.propose(full[:, : L + t], torch.tensor([L + t], device=device), 1), full[:, L + t - 1])[0, 0]
                    for t in range(n)]
            probs["ngram"] = torch.nn.functional.one_hot(torch.stack(prop), V).to(torch.float64)
        order = [k for k in keys if k in probs]
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                pair = (order[a], order[b])
                overlap[pair] = overlap.get(pair, 0.0) + float(torch.minimum(probs[order[a]], probs[order[b]]).sum())
        rows += n
    acceptance = {pair: v / rows for pair, v in overlap.items()} if rows else {}
    return Calibration(temperature, costs, acceptance, int(models.target.config.num_hidden_layers), rows, heads=heads)


def _restricted(acceptance: dict, names: list[str], required: set[str]) -> dict:
    """Drop every pair that jumps over a required key, so that any chain must pass through it."""
    pos = {n: i for i, n in enumerate(names)}
    return {(a, b): v for (a, b), v in acceptance.items()
            if not any(pos[a] < pos[r] < pos[b] for r in required)}


def make_plan(spec: PlanSpec, calib: Calibration, max_threshold: int) -> tuple[list[RunSpec], dict]:
    """The runs of a plan (one per scheme) and what the latency model predicted for it."""
    from hsd_ref.optimize import optimal_hierarchy

    names = [k for k in spec.candidates if k in calib.costs or parse_exit_key(k) is not None] + ["target"]
    curves = calib.curves(names)
    acc = {pair: v for pair, v in calib.acceptance.items() if pair[0] in names and pair[1] in names}
    options = [set(spec.candidates)] if spec.through_all else ([{r} for r in spec.through_any] or [set()])
    info = {"candidates": list(spec.candidates), "chain": None, "thresholds": None}
    best = None  # (latency, chain, thresholds, plan or None)
    for required in options:
        sub = _restricted(acc, names, required)
        if not sub:
            continue
        plan = optimal_hierarchy(names, [curves[n] for n in names], sub, max_threshold=max_threshold, exact=False)
        if len(plan.chain) > 1 and required <= set(plan.chain):
            cand = (float(plan.latency), plan.chain, plan.thresholds, plan)
        elif required:
            # the optimiser prefers fewer levels (or the target alone): the best chain that keeps the
            # required levels anyway, by exhaustive search (a forced configuration, reported as such)
            cand = _forced(names, curves, sub, required, max_threshold)
            if cand is not None:
                info["forced"] = True
        else:
            info["reason"] = "the latency model predicts no speed-up for any chain"
            cand = None
        if cand is not None and (best is None or cand[0] < best[0]):
            best = cand
    if best is None:
        info.setdefault("reason", "no chain has measured acceptance on every edge")
        return [], info
    latency, chain, thresholds, plan = best
    target_latency = float(curves["target"](1))
    info.update(chain=list(chain), thresholds=list(thresholds), predicted_speedup=target_latency / latency)
    if plan is not None and plan.best_single is not None:
        info["best_single"] = {"draft": plan.best_single.draft, "k": plan.best_single.k,
                               "predicted_speedup": float(plan.best_single.speedup)}
    runs = [RunSpec(f"{spec.name} ({s})", "engine", tuple(chain), s, tuple(thresholds), spec.group, plan=spec.name)
            for s in spec.schemes]
    return runs, info


def _forced(names, curves, acc, required, max_threshold, max_drafts: int = 3, cap: int = 8):
    """``(latency, chain, thresholds, None)`` of the fastest chain through ``required`` (exhaustive
    over chains of at most ``max_drafts`` draft levels and thresholds up to ``min(max_threshold, cap)``)."""
    import itertools

    from hsd_ref.latency import fhierarchy_latency

    max_threshold = min(max_threshold, cap)
    drafts = names[:-1]
    best = None
    for n in range(1, min(max_drafts, len(drafts)) + 1):
        for sub in itertools.combinations(drafts, n):
            chain = (*sub, names[-1])
            if not required <= set(chain) or any((a, b) not in acc for a, b in zip(chain, chain[1:])):
                continue
            costs = [curves[c] for c in chain]
            law = [acc[(a, b)] for a, b in zip(chain, chain[1:])]
            for ts in itertools.product(range(1, max_threshold + 1), repeat=n):
                lat = fhierarchy_latency(costs, law, list(ts))
                if best is None or lat < best[0]:
                    best = (lat, chain, ts, None)
    return best
