"""The engine's host-synchronisation budget (issue 13), counted with hsd_fast.engine.syncs on a CPU.

The budget, per target iteration: ONE host read (whether every row is still running, with the
row-check verdict), plus one per model forward (the position-indexed cache reads its lengths) and
one per middle-level round (plus the read that ends each middle-level loop).  Outside iterations:
one per prompt and backend in the prefill (prompts of different lengths are prefilled one at
a time), a few per retirement event (rows finishing), one per buffer growth
(a few per call), and the final read of the metrics.  The step, the verification kernels, the
warps and the drafter read nothing.  A planted ``.item()`` in the kernel path must break it.
"""

from __future__ import annotations

import math

import pytest
import torch

from hsd_fast.engine import EarlyExit, SpeculativeDecoder
from hsd_fast.engine.syncs import count_syncs
from hsd_fast.tiny import tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 5, 6], [11, 12, 13], [20, 21, 22, 23, 24]]
NEW = 14


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    draft = tiny_llama(1, n_layers=1)[0].to(torch.float64)
    target = tiny_llama(2, n_layers=2)[0].to(torch.float64)
    return draft, target


def _cases(draft, target):
    return {
        "autoregressive": dict(levels=[target]),
        "ngram tokenwise": dict(levels=["ngram", target], thresholds=4),
        "draft block": dict(levels=[draft, target], scheme="block", thresholds=4),
        "draft hsd_capped top-k": dict(levels=[draft, target], scheme="hsd_capped", thresholds=3, top_k=20),
        "greedy": dict(levels=[draft, target], temperature=0, thresholds=3),
        "three levels, early exit, top-p": dict(levels=[draft, EarlyExit(target, 1), target], thresholds=(2, 4), top_p=0.9),
        "restricted vocabulary": dict(levels=["ngram", draft, target], thresholds=(2, 3), allowed_ids=list(range(0, 100, 2))),
    }


def _budget(res, dec) -> tuple[int, dict]:
    """The budget of the module docstring for one finished call."""
    m = res.metrics
    iterations = m.target_calls
    forwards = sum(lv.calls for lv, lvl in zip(m.levels, dec.levels) if getattr(lvl, "kind", None) == "model")
    # a middle level i runs calls[i] rounds, and each of its loops (one per call of level i + 1) ends with one read
    middle = sum(m.levels[i].calls + m.levels[i + 1].calls for i in range(1, dec.n)) if dec.n > 1 else 0
    backends = len({id(lvl.backend) for lvl in dec.levels if hasattr(lvl, "backend")})
    retirements = len(PROMPTS)  # at most one event per row
    growth = 2 * math.ceil(math.log2(NEW * (dec.n + 1) + 2))
    parts = dict(iterations=iterations, forwards=forwards, middle=middle, prefill=backends * (len(PROMPTS) + 1), retire=retirements * (3 + backends), growth=growth, final=1)
    return sum(parts.values()), parts


@pytest.mark.parametrize("case", list(_cases(None, None)))
def test_host_syncs_stay_within_the_budget(models, case):
    draft, target = models
    kw = _cases(draft, target)[case]
    dec = SpeculativeDecoder(kw.pop("levels"), eos_token_id=[7], **kw)
    with count_syncs() as syncs:
        res = dec.generate(PROMPTS, max_new_tokens=NEW, seeds=[1, 2, 3])
    budget, parts = _budget(res, dec)
    assert syncs.total <= budget, (syncs, parts, syncs.by_line)
    # nothing in the step, the kernels, the warps, the drafters or the row checks reads the host
    quiet = ("engine/step.py", "schemes/", "kernels.py", "warp.py", "drafters.py", "engine/levels.py", "engine/vocab.py")
    assert not [line for line in syncs.by_line if line.startswith(quiet)], syncs.by_line
    # the per-iteration read is exactly one per iteration
    reads = sum(n for line, n in syncs.by_line.items() if line.startswith("engine/decoder.py"))
    assert reads <= parts["iterations"] + parts["retire"] + parts["growth"]


def test_a_planted_sync_in_the_kernel_path_breaks_the_budget(models):
    """Power check: one extra host read per verification (what an ``int()`` in a kernel costs) must
    push the count over the budget."""
    draft, target = models
    from hsd_fast.kernels import verify

    def leaky(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        out = verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws, validate=False)
        int(out.num_accepted.sum())  # the planted sync
        return out

    dec = SpeculativeDecoder([draft, EarlyExit(target, 1), target], thresholds=(2, 4), verify_fn=leaky, eos_token_id=None)
    with count_syncs() as syncs:
        res = dec.generate(PROMPTS, max_new_tokens=NEW, seeds=[1, 2, 3])
    budget, parts = _budget(res, dec)
    assert syncs.total > budget, (syncs, parts)


def test_the_counter_sees_the_usual_host_reads():
    x = torch.arange(6)
    with count_syncs() as syncs:
        x.tolist()
        bool(x.any())
        x[x > 2]
        torch.nonzero(x)
        y = x.clone()
        y[x > 3] = 0
        torch.bincount(x)
        x.sum() * 2  # no host read
    assert syncs.by_op == {"tolist": 1, "_local_scalar_dense": 1, "index (bool mask)": 2, "nonzero": 1, "bincount": 1}
    assert not syncs.by_line  # only hsd_fast source lines are attributed, and none ran here
