"""Statistical equivalence of the engine users run with ``hsd_ref``'s exact laws (docs/fidelity.md).

* :mod:`.cells`: every (scheme, level kind) of :class:`hsd_fast.engine.SpeculativeDecoder` over
  exact toy models (:class:`hsd_fast.engine.tables.TableModel`), with its exact law;
* :mod:`.stats`: the G test, its power, sample sizing and planted biases;
* :mod:`.controls`: lossy kernels (2% too lenient, Zhou et al.'s released rule, resampling from
  the target) that the test must reject through the same engine;
* :mod:`.multidraft`: the small sampler the multi-draft schemes use until the engine has
  multi-draft levels;
* :mod:`.report`: ``hsd-fast fidelity`` (the run, its report, the CLI).
"""

from .report import CONTROL_SCHEMES, LOSSLESS_SCHEMES, MULTI_DRAFT_SCHEMES, add_cli, planted_alternative, report_markdown, run_fidelity, write_report
from .stats import (
    ALPHA_PER_TEST,
    MIN_EXPECTED,
    PLANTED_TV,
    TARGET_POWER,
    GTest,
    Power,
    derive_seed,
    encode,
    encode_sequence,
    g_test,
    law_arrays,
    null_calibration,
    planted_bias_law,
    pool_cells,
    power,
    samples_for_power,
    williams_q,
)

__all__ = [
    "ALPHA_PER_TEST",
    "CONTROL_SCHEMES",
    "LOSSLESS_SCHEMES",
    "MIN_EXPECTED",
    "MULTI_DRAFT_SCHEMES",
    "PLANTED_TV",
    "TARGET_POWER",
    "GTest",
    "Power",
    "add_cli",
    "derive_seed",
    "encode",
    "encode_sequence",
    "g_test",
    "law_arrays",
    "null_calibration",
    "planted_alternative",
    "planted_bias_law",
    "pool_cells",
    "power",
    "report_markdown",
    "run_fidelity",
    "samples_for_power",
    "williams_q",
    "write_report",
]
