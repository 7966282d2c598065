"""vLLM plugin: vLLM's speculative decoding verified with :mod:`hsd_fast`'s kernels.

Installed with the ``[vllm]`` extra, the package registers :func:`register` under vLLM's
``vllm.general_plugins`` entry point, which vLLM calls in every process it starts (API server,
engine core, each tensor-parallel worker).  The plugin does nothing unless the one switch is set::

    HSD_VLLM_VERIFY=block      # or tokenwise, hsd_capped; or vllm (vLLM's own verifier, CPU fix only)

Then :func:`register` checks that vLLM is the tested version (:data:`TESTED_VLLM_VERSION`), that
the V1 model runner will run (the one whose sampler it replaces), and that each function it replaces
has the tested signature, and replaces, through vLLM's kernel-override registry
``vllm.triton_utils.dispatcher.register_kernels`` (which also rebinds every other module holding the
original):

* ``vllm.v1.sample.rejection_sampler.rejection_sample`` with
  :func:`hsd_fast.vllm.sampler.make_rejection_sample` ``(scheme)`` (not for ``vllm``);
* on the CPU platform only, ``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens`` with
  :func:`hsd_fast.vllm.sampler.expand_batch_to_tokens`, which fixes vLLM 0.32.0's CPU bug that
  leaves the per-token temperature, top-k and top-p of random requests uninitialised.

Any failed check raises at start-up; an empty or unset switch leaves vLLM untouched.  See
docs/vllm.md.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping

__all__ = ["ENV_VAR", "EXPAND_TARGET", "SCHEMES", "SWITCH_VALUES", "TARGET", "TESTED_VLLM_VERSION", "register", "selected_scheme"]

ENV_VAR = "HSD_VLLM_VERIFY"
TESTED_VLLM_VERSION = "0.32.0"
TARGET = "vllm.v1.sample.rejection_sampler.rejection_sample"
EXPAND_TARGET = "vllm.v1.sample.rejection_sampler.expand_batch_to_tokens"
EXPAND_PARAMETERS = ("x", "cu_num_tokens", "num_tokens", "replace_from", "replace_to")
SCHEMES = ("tokenwise", "block", "hsd_capped")  # equal to hsd_fast.vllm.layout.SCHEMES (kept import-free)
SWITCH_VALUES = (*SCHEMES, "vllm")  # "vllm": vLLM's own verifier, with only the CPU fix applied


def selected_scheme(environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``HSD_VLLM_VERIFY`` in ``environ`` (default ``os.environ``): one of
    :data:`SWITCH_VALUES`, or ``None`` when it is unset or empty.  Raises ``ValueError`` naming the
    variable on any other value."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if not value:
        return None
    if value not in SWITCH_VALUES:
        raise ValueError(f"{ENV_VAR}: {value!r} is not one of {', '.join(SWITCH_VALUES)} (unset it to leave vLLM untouched)")
    return value


def _check_vllm(version: str, use_v2_runner: bool | None, has_triton: bool, *, needs_v1: bool = True) -> None:
    """Raise ``RuntimeError`` unless vLLM is the tested version and, when ``needs_v1``, runs the V1
    model runner."""
    if version != TESTED_VLLM_VERSION:
        raise RuntimeError(
            f"{ENV_VAR} is set but vLLM is {version}; hsd_fast.vllm is tested with vLLM "
            f"{TESTED_VLLM_VERSION} only (pip install 'hsd[vllm]'), or unset {ENV_VAR}"
        )
    # vLLM 0.32 picks Model Runner V2 when VLLM_USE_V2_MODEL_RUNNER=1, or when it is unset and Triton
    # has a device (GPUs); V2 has its own rejection sampler, which this plugin does not replace.
    if needs_v1 and (use_v2_runner or (use_v2_runner is None and has_triton)):
        raise RuntimeError(
            f"{ENV_VAR} replaces the V1 model runner's rejection sampler, but vLLM would run Model "
            "Runner V2 here: set VLLM_USE_V2_MODEL_RUNNER=0"
        )


def _check_signature(fn: object, expected: tuple[str, ...], name: str) -> None:
    """Raise ``RuntimeError`` unless ``fn``'s parameters are ``expected``, in order."""
    params = tuple(inspect.signature(fn).parameters)
    if params != expected:
        raise RuntimeError(f"{ENV_VAR}: {name} has parameters {params}, expected {expected}")


def register() -> None:
    """The ``vllm.general_plugins`` entry point (module docstring).  Safe to call more than once."""
    scheme = selected_scheme()
    if scheme is None:
        return
    import vllm
    from vllm import envs
    from vllm.triton_utils import HAS_TRITON

    _check_vllm(vllm.__version__, envs.VLLM_USE_V2_MODEL_RUNNER, HAS_TRITON, needs_v1=scheme != "vllm")

    from vllm.logger import init_logger
    from vllm.platforms import current_platform
    from vllm.triton_utils.dispatcher import register_kernels
    from vllm.v1.sample import rejection_sampler as rs

    from .sampler import EXPECTED_PARAMETERS, STATS, expand_batch_to_tokens, make_rejection_sample

    logger = init_logger("vllm.plugins.hsd_fast")
    previous = STATS["scheme"]
    if previous is not None:  # already registered in this process
        if previous != scheme:
            raise RuntimeError(f"{ENV_VAR}: this process already verifies with {previous!r}, not {scheme!r}")
        return
    overrides = {}
    if current_platform.is_cpu():
        _check_signature(rs.expand_batch_to_tokens, EXPAND_PARAMETERS, EXPAND_TARGET)
        overrides[EXPAND_TARGET] = expand_batch_to_tokens
    if scheme != "vllm":
        _check_signature(rs.rejection_sample, EXPECTED_PARAMETERS, TARGET)
        overrides[TARGET] = make_rejection_sample(scheme)
    if overrides:
        register_kernels(overrides)
    STATS["scheme"] = scheme
    logger.info("hsd_fast.vllm (%s=%s): replaced %s", ENV_VAR, scheme, ", ".join(overrides) or "nothing")
