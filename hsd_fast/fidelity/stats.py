"""The fidelity test's statistics: the G test of sampled token sequences against an exact law, its
power, and planted biases (docs/fidelity.md).

A sample of token sequences is one observation of a multinomial over sequences, compared with the
exact law of ``hsd_ref`` by a G test (likelihood-ratio chi-square test, Wilks 1938):

* a sample outside the law's support fails the test outright (no false failure possible);
* cells with expected count < 5 are pooled into one cell (merged with the smallest cell if the pool
  itself is still below 5); ``G = 2 sum O ln(O / E)``, divided by Williams' (1976) correction
  ``q = 1 + (sum_cells 1/p - 1) / (6 N (cells - 1))``, is referred to chi-square with ``cells - 1``
  degrees of freedom (the correction brings the simulated null tail onto the chi-square tail:
  docs/fidelity.md, :func:`null_calibration`).

Power: :func:`power` computes ``P(reject)`` against an exact alternative law with the smaller of the
Pearson noncentrality ``N chi2(r || p)`` and the G noncentrality ``2 N KL(r || p)`` on the pooled
cells (``scipy.stats.ncx2``), plus a Monte Carlo check; :func:`samples_for_power` sizes a test for
it.  :func:`planted_bias_law` is the least detectable transfer of a given mass between two sequences
(from the most probable to the second most probable: the noncentrality ``N d**2 (1/p1 + 1/p2)`` is
smallest for the two largest cells).  A bias spread proportionally over much of the law is harder
to detect than any single transfer of the same total variation; the claim is about transfers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from hsd_ref.exact import HSDInputError

__all__ = [
    "ALPHA_PER_TEST",
    "MIN_EXPECTED",
    "PLANTED_TV",
    "TARGET_POWER",
    "Pooling",
    "GTest",
    "Power",
    "derive_seed",
    "law_arrays",
    "encode",
    "encode_sequence",
    "pool_cells",
    "williams_q",
    "g_test",
    "null_calibration",
    "power",
    "samples_for_power",
    "planted_bias_law",
]

ALPHA_PER_TEST = 1e-6  # false-failure probability of every single test
MIN_EXPECTED = 5.0  # cells with a smaller expected count are pooled
PLANTED_TV = 0.005  # the total variation every engine test must detect with probability TARGET_POWER
TARGET_POWER = 0.99
TV_CONFIDENCE = 0.95


def derive_seed(seed: int, label: str) -> int:
    """The seed of one sampler: a hash of the run's seed and a label (the scheme name), so that a
    scheme's samples do not depend on which other schemes are in the run."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    digest = hashlib.sha256(f"hsd-fast/fidelity/{seed}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1



def law_arrays(law: dict[tuple[int, ...], Fraction], V: int) -> tuple[np.ndarray, np.ndarray]:
    """A law over sequences as ``(codes, probs)``: base-V codes in increasing order
    (:func:`encode_sequence`) and float64 probabilities.  Sequences of different lengths need an
    injective code: pass ``V + 1`` and pad them to one length with the id ``V``."""
    seqs = sorted(law)
    codes = np.array([encode_sequence(s, V) for s in seqs], dtype=np.int64)
    probs = np.array([float(law[s]) for s in seqs], dtype=np.float64)
    return codes, probs


def encode_sequence(seq: Sequence[int], V: int) -> int:
    """Base-``V`` code of a token sequence, first token most significant."""
    code = 0
    for t in seq:
        code = code * V + t
    return code


def encode(samples: torch.Tensor, V: int) -> np.ndarray:
    """Base-``V`` code of each sample row (token-id order, first token most significant)."""
    codes = torch.zeros(samples.shape[0], dtype=torch.int64)
    for i in range(samples.shape[1]):
        codes = codes * V + samples[:, i]
    return codes.numpy()


@dataclass(frozen=True)
class Pooling:
    """Cells of the test: ``group[i]`` is the pooled cell of the law's ``i``-th sequence."""

    codes: np.ndarray  # [C] codes of the sequences with positive probability
    probs: np.ndarray  # [C]
    group: np.ndarray  # [C] pooled cell index
    group_probs: np.ndarray  # [G]

    @property
    def n_groups(self) -> int:
        return len(self.group_probs)


def pool_cells(codes: np.ndarray, probs: np.ndarray, n_samples: int, min_expected: float = MIN_EXPECTED) -> Pooling:
    """Pool every cell of expected count ``< min_expected`` into one cell; if that pool is itself
    below ``min_expected``, merge it with the smallest remaining cell."""
    order = np.argsort(-probs, kind="stable")
    group = np.empty(len(probs), dtype=np.int64)
    big = [i for i in order if probs[i] * n_samples >= min_expected]
    small = [i for i in order if probs[i] * n_samples < min_expected]
    for g, i in enumerate(big):
        group[i] = g
    if small:
        pool_mass = probs[small].sum()
        if pool_mass * n_samples >= min_expected or not big:
            group[small] = len(big)
        else:
            group[small] = len(big) - 1  # the smallest unpooled cell
    n_groups = int(group.max()) + 1
    group_probs = np.bincount(group, weights=probs, minlength=n_groups)
    return Pooling(codes, probs, group, group_probs)


@dataclass(frozen=True)
class GTest:
    """Result of :func:`g_test`."""

    n_samples: int
    cells: int  # sequences of positive probability
    pooled_cells: int
    off_support: int  # samples outside the law's support
    statistic: float  # G / q (Williams-corrected G)
    g_raw: float  # G before the correction
    dof: int
    p_value: float
    alpha: float
    threshold: float  # critical value of G at alpha (nan when dof == 0)
    tv: float  # plug-in TV(empirical, law), unpooled
    tv_low: float
    tv_high: float
    rejected: bool


def g_test(sample_codes: np.ndarray, codes: np.ndarray, probs: np.ndarray, alpha: float, min_expected: float = MIN_EXPECTED) -> GTest:
    """G test of the samples (base-V codes) against the law ``(codes, probs)`` at level ``alpha``.

    Rejects when a sample lies outside the support, or when ``G`` exceeds the chi-square critical
    value with ``pooled_cells - 1`` degrees of freedom.  Also returns the plug-in TV distance with an
    approximate ``TV_CONFIDENCE`` interval: ``TV +- w``, ``w = E_hat + sqrt(ln(1/0.05) / (2N))``, where
    ``E_hat = sum_i sqrt(f_i (1 - f_i) / N) / 2`` bounds the mean of TV(empirical, true law) (Jensen,
    with the observed frequencies ``f`` plugged in) and the second term is McDiarmid's deviation
    (one sample moves the empirical TV by at most 1/N).
    """
    if not 0 < alpha < 1:
        raise HSDInputError(f"alpha: must lie in (0, 1), got {alpha!r}")
    n = int(len(sample_codes))
    if n < 1:
        raise HSDInputError("sample_codes: no samples")
    pooling = pool_cells(codes, probs, n, min_expected)
    uniq, counts = np.unique(sample_codes, return_counts=True)
    pos = np.searchsorted(codes, uniq)
    pos_c = np.minimum(pos, len(codes) - 1)
    inside = codes[pos_c] == uniq
    off_support = int(counts[~inside].sum())
    cell_counts = np.zeros(len(codes), dtype=np.int64)
    cell_counts[pos_c[inside]] = counts[inside]
    observed = np.bincount(pooling.group, weights=cell_counts, minlength=pooling.n_groups)
    expected = pooling.group_probs * n
    nz = observed > 0
    dof = pooling.n_groups - 1
    g_raw = float(2.0 * np.sum(observed[nz] * np.log(observed[nz] / expected[nz])))
    g_stat = g_raw / williams_q(pooling.group_probs, n)
    if dof > 0:
        p_value = float(stats.chi2.sf(g_stat, dof))
        threshold = float(stats.chi2.isf(alpha, dof))
    else:
        g_stat, g_raw, p_value, threshold = 0.0, 0.0, 1.0, float("nan")
    if off_support:
        p_value = 0.0
    rejected = bool(off_support > 0 or (dof > 0 and g_stat > threshold))
    freq = cell_counts / n
    tv = 0.5 * (float(np.abs(freq - probs).sum()) + off_support / n)
    f_all = np.concatenate([freq[freq > 0], counts[~inside] / n])
    width = 0.5 * float(np.sum(np.sqrt(f_all * (1 - f_all) / n))) + math.sqrt(math.log(1 / (1 - TV_CONFIDENCE)) / (2 * n))
    return GTest(n, len(codes), pooling.n_groups, off_support, g_stat, g_raw, dof, p_value, alpha, threshold, tv, max(0.0, tv - width), min(1.0, tv + width), rejected)


def williams_q(group_probs: np.ndarray, n_samples: int) -> float:
    """Williams' correction factor of the G statistic: ``1 + (sum 1/p - 1) / (6 N (cells - 1))``."""
    dof = len(group_probs) - 1
    if dof < 1:
        return 1.0
    return 1.0 + (float(np.sum(1.0 / group_probs)) - 1.0) / (6.0 * n_samples * dof)


@dataclass(frozen=True)
class Power:
    """Power of :func:`g_test` at level ``alpha`` and ``n_samples`` against an alternative law."""

    n_samples: int
    alpha: float
    dof: int
    threshold: float
    tv: float  # exact TV(alternative, null)
    off_support_mass: float
    lambda_pearson: float  # N * chi2(r || p) on the pooled cells
    lambda_g: float  # 2 N KL(r || p) on the pooled cells
    power: float  # ncx2 power at the smaller noncentrality (1 - P(no off-support sample) if larger)
    mc_power: float  # Monte Carlo: fraction of simulated G tests that reject
    mc_reps: int


def power(codes: np.ndarray, probs: np.ndarray, alt: dict[int, float], n_samples: int, alpha: float, *, mc_reps: int = 2000, seed: int = 0, min_expected: float = MIN_EXPECTED) -> Power:
    """Power of the G test against the alternative law ``alt`` (``{code: probability}``).

    Computed with ``scipy.stats.ncx2`` at the test's own pooled cells, sample size and critical
    value, using the smaller of the Pearson and G noncentralities (they agree for small biases; the
    smaller is the conservative choice).  Mass of ``alt`` outside the null's support is detected by
    the support check with probability ``1 - (1 - mass)**N``; the larger of the two is reported.
    ``mc_power`` re-estimates it by ``mc_reps`` multinomial draws (numpy, seeded).
    """
    pooling = pool_cells(codes, probs, n_samples, min_expected)
    index = {int(c): i for i, c in enumerate(codes)}
    r_cells = np.zeros(len(codes))
    off = 0.0
    for c, m in alt.items():
        i = index.get(int(c))
        if i is None:
            off += m
        else:
            r_cells[i] += m
    r = np.bincount(pooling.group, weights=r_cells, minlength=pooling.n_groups)
    p = pooling.group_probs
    dof = pooling.n_groups - 1
    tv = 0.5 * (float(np.abs(r_cells - probs).sum()) + off)
    lam_p = float(n_samples * np.sum((r - p) ** 2 / p))
    rn = r / r.sum() if r.sum() > 0 else r
    nz = rn > 0
    lam_g = float(2 * n_samples * np.sum(rn[nz] * np.log(rn[nz] / p[nz])))
    support_power = 1.0 - (1.0 - off) ** n_samples if off < 1 else 1.0
    q = williams_q(p, n_samples)
    if dof > 0:
        threshold = float(stats.chi2.isf(alpha, dof))
        # the test compares G / q with the threshold: G / q ~ ncx2(dof, lambda / q) approximately
        chi_power = float(stats.ncx2.sf(threshold, dof, max(min(lam_p, lam_g) / q, 1e-12)))
    else:
        threshold, chi_power = float("nan"), 0.0
    pw = max(chi_power, support_power)
    # Monte Carlo: multinomial draws from the alternative, on the pooled cells plus an off-support cell
    rng = np.random.default_rng(seed)
    full = np.append(r, off)
    full = full / full.sum()
    draws = rng.multinomial(n_samples, full, size=mc_reps)
    obs, off_obs = draws[:, :-1].astype(np.float64), draws[:, -1]
    exp = p * n_samples
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(obs > 0, obs * np.log(obs / exp), 0.0)
    g = 2 * terms.sum(-1) / q
    rejects = (off_obs > 0) | ((g > threshold) if dof > 0 else np.zeros(mc_reps, dtype=bool))
    return Power(n_samples, alpha, dof, threshold, tv, off, lam_p, lam_g, pw, float(rejects.mean()), mc_reps)


def null_calibration(codes: np.ndarray, probs: np.ndarray, n_samples: int, alphas: Sequence[float], *, reps: int = 100_000, seed: int = 0, chunk: int = 20_000) -> dict[float, float]:
    """Monte Carlo check of the chi-square approximation: the fraction of ``reps`` multinomial
    samples of size ``n_samples`` drawn from the null law itself whose Williams-corrected G exceeds
    the chi-square critical value at each level in ``alphas`` (it should be close to the level)."""
    pooling = pool_cells(codes, probs, n_samples)
    p = pooling.group_probs
    dof = len(p) - 1
    if dof < 1:
        raise HSDInputError("probs: the pooled law has a single cell; nothing to calibrate")
    q = williams_q(p, n_samples)
    crit = np.array([stats.chi2.isf(a, dof) for a in alphas])
    exp = p * n_samples
    rng = np.random.default_rng(seed)
    exceed = np.zeros(len(crit))
    done = 0
    while done < reps:
        m = min(chunk, reps - done)
        obs = rng.multinomial(n_samples, p, size=m).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = 2 * np.where(obs > 0, obs * np.log(obs / exp), 0.0).sum(-1) / q
        exceed += (g[:, None] > crit[None, :]).sum(0)
        done += m
    return {float(a): float(e / reps) for a, e in zip(alphas, exceed)}


def planted_bias_law(codes: np.ndarray, probs: np.ndarray, tv: float = PLANTED_TV) -> tuple[dict[int, float], int, int]:
    """The law with mass ``tv`` moved from the most probable sequence to the second most probable
    one; returns ``(law as {code: prob}, source code, destination code)``."""
    if len(codes) < 2:
        raise HSDInputError("probs: a planted transfer needs at least two sequences of positive probability")
    order = np.argsort(-probs, kind="stable")
    src, dst = int(codes[order[0]]), int(codes[order[1]])
    if not 0 < tv <= probs[order[0]]:
        raise HSDInputError(f"tv: must lie in (0, {probs[order[0]]}], got {tv!r}")
    alt = {int(c): float(p) for c, p in zip(codes, probs)}
    alt[src] -= tv
    alt[dst] += tv
    return alt, src, dst



def samples_for_power(codes: np.ndarray, probs: np.ndarray, alt: dict[int, float], alpha: float = ALPHA_PER_TEST, target: float = TARGET_POWER, *, lo: int = 1000, cap: int = 10**8) -> int:
    """The smallest sample size (within 2%, rounded up to a thousand) at which :func:`g_test` at
    level ``alpha`` rejects ``alt`` with probability ``>= target`` by the noncentral chi-square
    approximation of :func:`power`.  Raises ``HSDInputError`` when even ``cap`` samples do not."""

    def enough(n: int) -> bool:
        return power(codes, probs, alt, n, alpha, mc_reps=1).power >= target

    hi = lo
    while not enough(hi):
        lo, hi = hi, 2 * hi
        if hi > cap:
            raise HSDInputError(f"alt: not detectable with power {target} within {cap} samples")
    while hi - lo > max(hi // 50, 1000):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return -(-hi // 1000) * 1000
