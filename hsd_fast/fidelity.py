"""Statistical equivalence of the fast engine's full decoding loop with ``hsd_ref``'s exact law.

For every lossless scheme the fast kernels (``hsd_fast.verify``) drive the whole decoding loop on a
seeded toy model pair (:func:`hsd_ref.strategies.toy_pair`: context-dependent rows that are peaked,
near-flat, with zeros, random, point masses), vectorised over samples (:mod:`hsd_fast.toy`).  The
first ``n_tokens`` tokens of each sample (several iterations, recovered and bonus tokens included)
are one observation of a multinomial over token sequences, compared with the exact law of
``hsd_ref`` by a G test (likelihood-ratio chi-square test, Wilks 1938):

* the null law is the reference model's law of ``n_tokens`` tokens (the target's; greedy's is the
  argmax model's, ``hsd_ref.enumerate.reference_model``), which equals ``hsd_ref.sequence_law`` of
  every lossless scheme (exactly, in ``Fraction``: :func:`exact_scheme_law`, and the proofs named in
  each ``hsd_ref.schemes`` module);
* a sample outside the null law's support fails the test outright (no false failure possible);
* cells with expected count < 5 are pooled into one cell (merged with the smallest cell if the pool
  itself is still below 5); ``G = 2 sum O ln(O / E)``, divided by Williams' (1976) correction
  ``q = 1 + (sum_cells 1/p - 1) / (6 N (cells - 1))``, is referred to chi-square with
  ``cells - 1`` degrees of freedom (the correction brings the simulated null tail onto the
  chi-square tail: docs/fidelity.md);
* the false-failure probability is ``FAMILY_ALPHA = 1e-6`` for the whole family of lossless schemes
  in a run, split by Bonferroni: each scheme is tested at ``1e-6 / (number of lossless schemes)``
  (``1e-6 / 7 = 1.43e-7`` by default), so every single test also has false-failure probability
  <= 1e-6 (under the usual chi-square approximation of G; the approximation's tail is checked by
  Monte Carlo in docs/fidelity.md).

Power (the same module, the same threshold, the same sample size):

* the LOSSY CONTROLS ``hsd_released``, ``lenience`` and ``resample_from_target`` (torch versions in
  :mod:`hsd_fast.toy`) must be rejected: their exact laws (``hsd_ref.sequence_law``) give the
  noncentrality and the power by ``scipy.stats.ncx2`` at the actual pooled cells and sample size;
* a PLANTED BIAS of total variation ``PLANTED_TV = 0.01``: mass 0.01 moved from the most probable
  sequence to the second most probable one.  Among all transfers of mass 0.01 from one unpooled
  sequence to another this is the least detectable one (noncentrality
  ``N * d**2 * (1/p1 + 1/p2)`` is smallest for the two largest cells), so its power bounds the power
  against every such transfer.  :func:`planted_bias_samples` runs it: the target's own sampler, with
  each sample equal to the top sequence replaced by the second one with probability ``d / p1``;
* :func:`power` computes ``P(reject)`` with the smaller of the Pearson noncentrality
  ``N chi2(r || p)`` and the G noncentrality ``2 N KL(r || p)`` on the pooled cells, and a Monte
  Carlo check of it (multinomial draws of G under the alternative).

Not covered by the TV-0.01 claim: a bias spread proportionally over half of the law has
noncentrality only ``4 N d**2`` (40 at N = 1e5), so this test detects it with power 0.02 at 1e5
samples; it needs about 3.5e5 (docs/fidelity.md).

Determinism: every random draw comes from a ``torch.Generator`` (or numpy ``Generator``) seeded by
:func:`derive_seed` from the run's ``--seed`` and the scheme name; the report lists every seed.

Losslessness proofs behind the null law: tokenwise/greedy proofs/coq/SpecLossless.v
``spec_decoding_lossless``; block/hsd_capped proofs/coq/Block.v ``block_lossless``; the multi-draft
schemes as named by the ``theorem`` attribute of hsd_ref.schemes.rrs, rrs_without_replacement and
spectr_kseq.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats

from hsd_ref.enumerate import reference_model, sequence_law
from hsd_ref.exact import HSDInputError
from hsd_ref.models import TableLM
from hsd_ref.strategies import toy_pair

from . import toy

__all__ = [
    "FAMILY_ALPHA",
    "MIN_EXPECTED",
    "PLANTED_TV",
    "TARGET_POWER",
    "LOSSLESS_SCHEMES",
    "CONTROL_SCHEMES",
    "ToyConfig",
    "DEFAULT_CONFIG",
    "Pooling",
    "GTest",
    "Power",
    "derive_seed",
    "null_law",
    "exact_scheme_law",
    "law_arrays",
    "encode",
    "encode_sequence",
    "pool_cells",
    "williams_q",
    "g_test",
    "null_calibration",
    "power",
    "planted_bias_law",
    "planted_bias_samples",
    "sample_scheme",
    "run_fidelity",
    "report_markdown",
    "plot_scheme",
    "write_report",
    "add_cli",
]

FAMILY_ALPHA = 1e-6  # false-failure probability of a whole run (Bonferroni over its lossless schemes)
MIN_EXPECTED = 5.0  # cells with a smaller expected count are pooled
PLANTED_TV = 0.01
TARGET_POWER = 0.99
TV_CONFIDENCE = 0.95
LOSSLESS_SCHEMES = ("tokenwise", "greedy", "block", "hsd_capped", "rrs", "rrs_without_replacement", "spectr_kseq")
CONTROL_SCHEMES = ("hsd_released", "lenience", "resample_from_target")
DEFAULT_SAMPLES = 100_000


@dataclass(frozen=True)
class ToyConfig:
    """The toy instance: ``toy_pair(vocab_size, toy_seed)``, draft length ``k``, ``n_drafts`` drafts
    for multi-draft schemes, horizon ``n_tokens`` after ``prefix``.

    The default (V = 3, seed 3, 6 tokens, K = 3) was chosen for power: its law has 85 sequences, 71
    cells after pooling at N = 1e5, and its two most probable sequences have probability 0.12 and
    0.086, so the planted TV-0.01 transfer is rejected with probability > 0.99 (docs/fidelity.md).
    """

    vocab_size: int = 3
    toy_seed: int = 3
    n_tokens: int = 6
    k: int = 3
    n_drafts: int = 2
    prefix: tuple[int, ...] = ()

    def models(self) -> tuple[TableLM, TableLM]:
        return toy_pair(self.vocab_size, self.toy_seed)


DEFAULT_CONFIG = ToyConfig()


def derive_seed(seed: int, label: str) -> int:
    """The seed of one sampler: a hash of the run's seed and a label (the scheme name), so that a
    scheme's samples do not depend on which other schemes are in the run."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HSDInputError(f"seed: expected an int, got {seed!r}")
    digest = hashlib.sha256(f"hsd-fast/fidelity/{seed}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _scheme(name: str, cfg: ToyConfig):
    from hsd_ref.registry import get_scheme

    scheme = get_scheme(name)
    if _is_multi(scheme):
        scheme = scheme.with_drafts(cfg.n_drafts)
    return scheme


def _is_multi(scheme) -> bool:
    return hasattr(scheme, "with_drafts")


# ------------------------------------------------------------------------------------ exact laws


def null_law(name: str, cfg: ToyConfig = DEFAULT_CONFIG) -> dict[tuple[int, ...], Fraction]:
    """The law the fidelity test checks against: the reference model's law of ``n_tokens`` tokens
    (the target's; the argmax model's for greedy)."""
    target, _ = cfg.models()
    return reference_model(_scheme(name, cfg), target).sequence_law(cfg.n_tokens, cfg.prefix)


def exact_scheme_law(name: str, cfg: ToyConfig = DEFAULT_CONFIG) -> dict[tuple[int, ...], Fraction]:
    """``hsd_ref.sequence_law`` of the scheme itself (the decoding loop, enumerated exactly)."""
    target, draft = cfg.models()
    return sequence_law(_scheme(name, cfg), target, draft, cfg.prefix, cfg.k, cfg.n_tokens)


def law_arrays(law: dict[tuple[int, ...], Fraction], V: int) -> tuple[np.ndarray, np.ndarray]:
    """A law over equal-length sequences as ``(codes, probs)``: base-V codes in increasing order
    (:func:`encode_sequence`) and float64 probabilities."""
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


# ------------------------------------------------------------------------------------ the test


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


def planted_bias_samples(cfg: ToyConfig, n_samples: int, seed: int, tv: float = PLANTED_TV) -> np.ndarray:
    """Run the planted-bias sampler: ``n_samples`` draws of ``n_tokens`` tokens from the target
    itself (:func:`hsd_fast.toy.sample_model`), then each sample equal to the most probable sequence
    is replaced by the second most probable one with probability ``tv / p1``.  Returns base-V codes
    whose law is exactly :func:`planted_bias_law`."""
    target, draft = cfg.models()
    codes, probs = law_arrays(target.sequence_law(cfg.n_tokens, cfg.prefix), cfg.vocab_size)
    _, src, dst = planted_bias_law(codes, probs, tv)
    p_src = float(probs[codes == src][0])
    tables = toy.ToyTables.build(target, draft, len(cfg.prefix) + cfg.n_tokens)
    gen = torch.Generator().manual_seed(seed)
    samples = toy.sample_model(tables.target_rows, tables.child, tables.state_of(cfg.prefix), cfg.n_tokens, n_samples, generator=gen)
    out = encode(samples, cfg.vocab_size)
    u = torch.rand(n_samples, dtype=torch.float64, generator=gen).numpy()
    out[(out == src) & (u < tv / p_src)] = dst
    return out


# ------------------------------------------------------------------------------------ sampling


def sample_scheme(name: str, cfg: ToyConfig, n_samples: int, seed: int, *, verify_fn: toy.VerifyFn | None = None, tables: dict | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``n_samples`` runs of the full decoding loop of scheme ``name`` on the toy instance.

    ``verify_fn`` defaults to the engine's kernels for lossless schemes and to the torch controls for
    the lossy controls.  ``tables`` is an optional cache ``{proposal id: ToyTables}``.
    Returns ``[n_samples, n_tokens]`` int64.
    """
    scheme = _scheme(name, cfg)
    target, draft = cfg.models()
    if verify_fn is None:
        verify_fn = toy.control_verify if name in toy.CONTROLS else toy.fast_verify
    proposal = scheme.proposal(draft) if hasattr(scheme, "proposal") else draft
    greedy = proposal is not draft  # greedy drafts the argmax model
    key = "argmax" if greedy else "draft"
    cache = tables if tables is not None else {}
    if key not in cache:
        cache[key] = toy.ToyTables.build(target, proposal, len(cfg.prefix) + cfg.n_tokens - 1 + cfg.k)
    multi = _is_multi(scheme)
    gen = torch.Generator().manual_seed(seed)
    return toy.speculative_sample(
        cache[key],
        name,
        cfg.k,
        cfg.n_tokens,
        n_samples,
        generator=gen,
        verify_fn=verify_fn,
        n_draws=scheme.draws_needed(cfg.k),
        prefix=cfg.prefix,
        n_drafts=cfg.n_drafts if multi else None,
        replacement=getattr(scheme, "replacement", True),
        greedy_draft=greedy,
        progress=progress,
    )


# ------------------------------------------------------------------------------------ the report


def run_fidelity(
    schemes: Sequence[str] = LOSSLESS_SCHEMES,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    *,
    cfg: ToyConfig = DEFAULT_CONFIG,
    controls: bool = True,
    check_exact: bool = True,
    progress: bool = False,
) -> dict:
    """Run the fidelity tests (and, with ``controls``, the power checks); return the report dict.

    Each lossless scheme is tested at ``FAMILY_ALPHA / len(schemes)``; controls and the planted bias
    are tested at the same level (that is what their power is about).  ``check_exact`` also
    enumerates ``hsd_ref.sequence_law`` of each scheme and records whether it equals the null law.
    """
    schemes = list(schemes)
    if not schemes:
        raise HSDInputError("schemes: name at least one scheme")
    for s in schemes:
        if s not in LOSSLESS_SCHEMES:
            raise HSDInputError(f"schemes: {s!r} is not a lossless scheme of the fidelity test; known: {', '.join(LOSSLESS_SCHEMES)}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise HSDInputError(f"n_samples: expected an int >= 1, got {n_samples!r}")
    alpha = FAMILY_ALPHA / len(schemes)
    V = cfg.vocab_size
    tables: dict = {}
    rows = []
    bar = _progress_bar(progress, total=n_samples * (len(schemes) + (len(CONTROL_SCHEMES) + 1 if controls else 0)))
    jobs = [(s, "lossless") for s in schemes] + ([(c, "control") for c in CONTROL_SCHEMES] if controls else [])
    for name, kind in jobs:
        law = null_law(name, cfg)
        codes, probs = law_arrays(law, V)
        row = {"scheme": name, "kind": kind, "seed": derive_seed(seed, name)}
        start, cpu = time.perf_counter(), time.process_time()
        try:
            samples = sample_scheme(name, cfg, n_samples, row["seed"], tables=tables, progress=bar.update if bar else None)
            row["sample_seconds"] = time.perf_counter() - start
            row["sample_cpu_seconds"] = time.process_time() - cpu
            sample_codes = encode(samples, V)
            res = g_test(sample_codes, codes, probs, alpha)
            row.update(asdict(res))
            row["observed"] = _observed(sample_codes)
            row["error"] = ""
        except (toy.KernelOutputError, ImportError, NotImplementedError, ValueError) as exc:
            row.update({"error": f"{type(exc).__name__}: {exc}", "rejected": True, "sample_seconds": time.perf_counter() - start, "sample_cpu_seconds": time.process_time() - cpu})
        row["law"] = {str(int(c)): float(p) for c, p in zip(codes, probs)}
        if kind == "lossless":
            row["exact_law_equals_null"] = (exact_scheme_law(name, cfg) == law) if check_exact else None
            row["verdict"] = "FAIL" if row["rejected"] else "PASS"
        else:
            alt_law = exact_scheme_law(name, cfg)
            alt = {encode_sequence(s, V): float(m) for s, m in alt_law.items()}
            pw = power(codes, probs, alt, n_samples, alpha, seed=derive_seed(seed, name + "/mc"))
            row["power"] = asdict(pw)
            row["verdict"] = _power_verdict(row["rejected"], pw.power)
        rows.append(row)
    if controls:
        name = "planted_bias"
        law = null_law("tokenwise", cfg)
        codes, probs = law_arrays(law, V)
        row = {"scheme": name, "kind": "planted", "seed": derive_seed(seed, name)}
        start, cpu = time.perf_counter(), time.process_time()
        sample_codes = planted_bias_samples(cfg, n_samples, row["seed"])
        row["sample_seconds"] = time.perf_counter() - start
        row["sample_cpu_seconds"] = time.process_time() - cpu
        if bar:
            bar.update(n_samples)
        res = g_test(sample_codes, codes, probs, alpha)
        row.update(asdict(res))
        alt, src, dst = planted_bias_law(codes, probs)
        pw = power(codes, probs, alt, n_samples, alpha, seed=derive_seed(seed, name + "/mc"))
        row.update({"power": asdict(pw), "planted": {"tv": PLANTED_TV, "from": _decode(src, V, cfg.n_tokens), "to": _decode(dst, V, cfg.n_tokens)}})
        row["observed"] = _observed(sample_codes)
        row["law"] = {str(int(c)): float(p) for c, p in zip(codes, probs)}
        row["error"] = ""
        row["verdict"] = _power_verdict(row["rejected"], pw.power)
        rows.append(row)
    if bar:
        bar.close()
    ok = all(r["verdict"] in ("PASS", "REJECTED (as required)", "not rejected (power < 0.99 at this N)") for r in rows)
    target, draft = cfg.models()
    return {
        "config": {**asdict(cfg), "prefix": list(cfg.prefix), "models": f"hsd_ref.strategies.toy_pair({cfg.vocab_size}, {cfg.toy_seed})"},
        "n_samples": n_samples,
        "seed": seed,
        "family_alpha": FAMILY_ALPHA,
        "alpha_per_test": alpha,
        "min_expected": MIN_EXPECTED,
        "planted_tv": PLANTED_TV,
        "target_power": TARGET_POWER,
        "torch": torch.__version__,
        "ok": ok,
        "results": rows,
    }


def _power_verdict(rejected: bool, pw: float) -> str:
    if rejected:
        return "REJECTED (as required)"
    return "NOT REJECTED (power failure)" if pw >= TARGET_POWER else "not rejected (power < 0.99 at this N)"


def _observed(sample_codes: np.ndarray) -> dict[str, int]:
    uniq, counts = np.unique(sample_codes, return_counts=True)
    return {str(int(c)): int(n) for c, n in zip(uniq, counts)}


def _decode(code: int, V: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(code % V)
        code //= V
    return out[::-1]


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", unit_scale=True, desc="hsd-fast fidelity")


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report_markdown(report: dict) -> str:
    """The ``fidelity.md`` text of a report dict."""
    cfg = report["config"]
    lines = [
        "# hsd-fast fidelity: the fast decoding loop against hsd_ref's exact law",
        "",
        f"Toy instance: `{cfg['models']}`, K = {cfg['k']}, N = {cfg['n_drafts']} drafts (multi-draft schemes), "
        f"{cfg['n_tokens']} tokens after prefix {tuple(cfg['prefix'])}; {report['n_samples']} samples per scheme; run seed {report['seed']}.",
        f"G test (cells with expected count < {report['min_expected']:g} pooled); false-failure probability "
        f"{report['family_alpha']:g} for the run, Bonferroni: {report['alpha_per_test']:.3g} per scheme.",
        "",
        "| scheme | samples | cells (pooled) | G | dof | p-value | threshold | TV estimate [95% CI] | verdict | seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"| {r['scheme']} | {report['n_samples']} | — | — | — | — | — | — | {r['verdict']}: {r['error']} | {r['seed']} |")
            continue
        lines.append(
            f"| {r['scheme']}{' (control)' if r['kind'] == 'control' else ''}{' (TV 0.01)' if r['kind'] == 'planted' else ''} "
            f"| {r['n_samples']} | {r['cells']} ({r['pooled_cells']}) | {_fmt(r['statistic'], 1)} | {r['dof']} | {_fmt(r['p_value'])} "
            f"| {_fmt(r['threshold'], 1)} | {r['tv']:.4f} [{r['tv_low']:.4f}, {r['tv_high']:.4f}] | {r['verdict']} | {r['seed']} |"
        )
    power_rows = [r for r in report["results"] if "power" in r]
    if power_rows:
        lines += [
            "",
            "Power at this sample size and threshold (noncentral chi-square, `scipy.stats.ncx2`, at the pooled cells; Monte Carlo check):",
            "",
            "| alternative | exact TV | lambda (Pearson) | lambda (G) | dof | power (ncx2) | power (Monte Carlo) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in power_rows:
            pw = r["power"]
            lines.append(
                f"| {r['scheme']} | {pw['tv']:.4f} | {pw['lambda_pearson']:.1f} | {pw['lambda_g']:.1f} | {pw['dof']} "
                f"| {pw['power']:.6f} | {pw['mc_power']:.4f} ({pw['mc_reps']} reps) |"
            )
    exact = [r for r in report["results"] if r.get("exact_law_equals_null") is not None]
    if exact:
        lines += ["", "hsd_ref.sequence_law of each scheme equals the null law (exact, Fraction ==): " + ", ".join(f"{r['scheme']} {'yes' if r['exact_law_equals_null'] else 'NO'}" for r in exact) + "."]
    secs = ", ".join(f"{r['scheme']} {r['sample_seconds']:.1f}s ({r['sample_cpu_seconds']:.1f}s CPU)" for r in report["results"])
    lines += ["", f"Sampling time (wall, and CPU of this process): {secs}.", "", f"Overall: {'OK' if report['ok'] else 'FAILED'}.", ""]
    return "\n".join(lines)


def plot_scheme(row: dict, path: Path) -> None:
    """Two panels: observed frequency against exact probability per sequence (log-log, with the
    3-sigma binomial band), and the standardised residual ``(O - E) / sqrt(E)`` per sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = {int(c): p for c, p in row["law"].items()}
    obs = {int(c): k for c, k in row.get("observed", {}).items()}
    n = max(row.get("n_samples", 1), 1)
    x = np.array(list(law.values()))
    counts = np.array([obs.get(c, 0) for c in law], dtype=np.float64)
    y = counts / n
    floor = 0.5 / n
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 4))
    seen = counts > 0
    ax.scatter(x[seen], y[seen], s=12, label="observed sequences")
    if (~seen).any():
        ax.scatter(x[~seen], np.full((~seen).sum(), floor), s=12, facecolors="none", edgecolors="C0", label="never observed (at 0.5/N)")
    off = [c for c in obs if c not in law]
    lo = min(x.min(), floor) / 3
    if off:
        ax.scatter([lo] * len(off), [obs[c] / n for c in off], s=28, c="red", marker="x", label="outside the support")
    grid = np.geomspace(lo, 1.0, 200)
    ax.plot(grid, grid, "k-", lw=0.8, label="exact law (hsd_ref)")
    band = 3 * np.sqrt(grid * (1 - grid) / n)
    ax.plot(grid, grid + band, "k:", lw=0.6, label="±3σ")
    ax.plot(grid, np.maximum(grid - band, floor / 2), "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("exact probability")
    ax.set_ylabel(f"observed frequency (N = {n})")
    ax.legend(fontsize=7, loc="upper left")
    z = (counts - n * x) / np.sqrt(n * x)
    ax2.scatter(x, z, s=12)
    for level in (-3, 0, 3):
        ax2.axhline(level, color="k", lw=0.8 if level == 0 else 0.6, ls="-" if level == 0 else ":")
    ax2.set_xscale("log")
    ax2.set_xlabel("exact probability")
    ax2.set_ylabel("(observed - expected) / sqrt(expected)")
    title = f"{row['scheme']}: {row.get('verdict', '')}"
    if "statistic" in row:
        title += f"   (G = {row['statistic']:.1f}, dof {row['dof']}, p = {row['p_value']:.3g})"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write ``fidelity.md``, ``fidelity.json`` and one PNG per tested sampler into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "fidelity.md", out_dir / "fidelity.json"]
    paths[0].write_text(report_markdown(report))
    paths[1].write_text(json.dumps(report, indent=1))
    for row in report["results"]:
        if row.get("error"):
            continue
        p = out_dir / f"fidelity_{row['scheme']}.png"
        plot_scheme(row, p)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------ CLI


def add_cli(subparsers) -> None:
    """Register ``hsd-fast fidelity``."""
    p = subparsers.add_parser(
        "fidelity",
        help="statistical equivalence of the fast decoding loop with hsd_ref's exact law (G test, power checks)",
        description="Sample the full decoding loop of every lossless scheme on a seeded toy pair and G-test it "
        "against hsd_ref's exact law; run the lossy controls and a planted TV-0.01 bias to show the test's power. "
        "Writes fidelity.md, fidelity.json and PNG plots.",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"samples per scheme (default {DEFAULT_SAMPLES})")
    p.add_argument("--schemes", nargs="+", default=list(LOSSLESS_SCHEMES), choices=LOSSLESS_SCHEMES, metavar="SCHEME", help="lossless schemes to test (default: all)")
    p.add_argument("--seed", type=int, default=0, help="run seed (per-scheme seeds are derived from it; default 0)")
    p.add_argument("--no-controls", action="store_true", help="skip the lossy controls and the planted bias")
    p.add_argument("--no-exact-check", action="store_true", help="skip enumerating hsd_ref.sequence_law of each scheme")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.samples < 1:
        raise SystemExit("hsd-fast fidelity: error: --samples must be >= 1")
    start = time.perf_counter()
    report = run_fidelity(args.schemes, args.samples, args.seed, controls=not args.no_controls, check_exact=not args.no_exact_check, progress=not args.quiet)
    report["total_seconds"] = time.perf_counter() - start
    paths = write_report(report, args.out)
    print(paths[0].read_text())
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0 if report["ok"] else 1
