"""``hsd-fast audit-engine``: an exact-law audit of speculative sampling in peer engines (docs/peer-audit.md).

Each engine's OWN speculative sampling -- ours (:class:`hsd_fast.engine.SpeculativeDecoder`),
transformers' assisted generation and prompt lookup, vLLM's rejection sampler (standard, block,
with our plugin) -- samples the first few tokens after a fixed prompt on real models, with the
vocabulary restricted to a few ids; the samples are G-tested against the exact law of the target's
own conditionals (:mod:`.law`) with the fidelity report's statistics.  A deliberately lossy
control must be rejected.

Modules: :mod:`.law` (the exact law), :mod:`.cells` (setups and cells), :mod:`.engines` (the
samplers), :mod:`.vllm_runner` (run with vLLM's Python), :mod:`.run` (:func:`run_audit`),
:mod:`.report` (the report and the CLI).
"""

from .report import add_cli, audit_markdown, write_audit

__all__ = ["add_cli", "audit_markdown", "write_audit", "run_audit"]


def __getattr__(name):
    if name == "run_audit":  # imported on use: the CLI's help needs no torch models
        from .run import run_audit

        return run_audit
    raise AttributeError(name)
