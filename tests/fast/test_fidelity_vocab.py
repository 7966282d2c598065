"""The fidelity cell at the real vocabulary size (hsd_fast.fidelity.vocab): V = 151936, float32 rows.

The full-strength cell (power 0.99 against TV 0.005, about 51,000 samples per scheme, minutes each)
runs in ``hsd-fast fidelity --vocab`` and its figures are in docs/fidelity.md.  Here, in CI's budget:
the exact law and the binning by hand, and the engine's samples of the FIRST token's bin G-tested at
false-failure probability 1e-6 per test with enough samples to reject a TV-0.1 transfer with
probability >= 0.99 (``samples_for_power``), together with that planted transfer on the same samples
(which must be rejected: the power check of this module).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from hsd_fast.fidelity import vocab as VC
from hsd_fast.fidelity.report import _plant
from hsd_fast.fidelity.stats import ALPHA_PER_TEST, g_test, planted_bias_law, samples_for_power

pytestmark = pytest.mark.usefixtures("one_thread")

CI_TV = 0.1


def test_bins_by_hand():
    # head ids are bins 0..3 in HEAD_IDS order; every other id is 4 + its segment, the segments
    # starting at the truncated multiples of V / 6: 0, 25322, 50645, 75968, 101290, 126613
    rows = [[17, 0, 151934], [40_000, 25_321, 151_935], [75_011, 25_322, 126_612]]
    codes = VC.encode(rows)
    assert codes.tolist() == [0 * 100 + 4 * 10 + 9, 1 * 100 + 4 * 10 + 3, 2 * 100 + 5 * 10 + 8]


def test_rows_and_exact_law():
    for row in VC.TARGET + VC.DRAFT:
        p = row.probs()
        assert p.shape == (VC.VOCAB_SIZE,) and abs(p.sum() - 1) < 1e-12 and p.min() > 0
        assert [p[h] for h in VC.HEAD_IDS] == [float(m) for m in row.head]
        assert p.max() <= 0.3 and p[p < 1e-4].sum() > 0.05  # peaked, with a long tail of tiny entries
    codes, probs = VC.VocabCell("block").exact_law()
    assert len(codes) == 1000 and abs(probs.sum() - 1) < 1e-12
    # P(head 0, then segment 0, then head 1) by hand: target after a head, after a tail, after a tail
    seg0 = VC.TARGET[0].segments[0]
    want = VC.TARGET[0].head[0] * seg0 * VC.TARGET[1].head[1]
    assert probs[codes.tolist().index(0 * 100 + 4 * 10 + 1)] == float(want)
    with pytest.raises(ValueError, match="Row"):
        VC.Row((Fraction(1, 2),) * 4, (Fraction(0),) * VC.N_SEGMENTS)


def test_the_engine_uses_float32_rows_at_this_vocabulary():
    seen = []
    cell = VC.VocabCell("block", n_tokens=1)

    def spy(scheme, target_probs, draft_probs, draft_tokens, *, draws):
        from hsd_fast.kernels import verify

        seen.append((target_probs.dtype, tuple(target_probs.shape)))
        return verify(scheme, target_probs, draft_probs, draft_tokens, draws=draws)

    cell.decoder(verify_fn=spy).generate([list(cell.prompt)] * 2, max_new_tokens=1, seeds=[0, 1])
    assert seen == [(torch.float32, (2, 4, VC.VOCAB_SIZE))]


def test_float32_running_sum_bias_is_what_float64_accumulation_avoids():
    """The measured cost of a float32 running sum on these rows: a real bias, below the cell's TV."""
    tvs = [VC.float32_cumsum_tv(r) for r in VC.TARGET + VC.DRAFT]
    assert all(5e-4 < tv < 5e-3 for tv in tvs)


@pytest.mark.parametrize("scheme", ["tokenwise", "block", "hsd_capped"])
def test_first_token_law_at_vocab_151936(scheme):
    cell = VC.VocabCell(scheme, n_tokens=1)
    codes, probs = cell.exact_law()
    alt, src, dst = planted_bias_law(codes, probs, CI_TV)
    n = samples_for_power(codes, probs, alt, lo=100)
    assert n <= 2000  # the CI budget: about 6 ms a sample
    samples = cell.sample(n, seed=12_345, chunk=16)
    assert not g_test(samples, codes, probs, ALPHA_PER_TEST).rejected
    planted = _plant(samples, src, dst, float(probs[codes == src][0]), CI_TV, seed=7)
    assert g_test(planted, codes, probs, ALPHA_PER_TEST).rejected
