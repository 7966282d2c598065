"""Adaptive draft length in the engine: stopping rules for the bottom level's draft.

Exact twin: :mod:`hsd_ref.schemes.adaptive` (``AdaptiveLength``), whose iteration the engine
reproduces draw for draw (tests/fast/test_engine_adaptive.py).  After ``t`` drafted tokens
(``t = 0 .. T_0 - 1``) the rule is asked whether row ``b`` stops; it sees the drafted
``x_1..x_t``, their draft rows ``q_1..q_t`` and a coin of its own, and nothing the verifier will use.
The token that triggered a stop is kept.  The draft length is then a stopping time, and every
single-draft scheme the engine runs (token-wise, block, HSD capped; greedy is token-wise on point
masses) stays lossless: proofs/coq/Adaptive.v ``adaptive_tokenwise_lossless``,
``adaptive_block_lossless``, ``adaptive_hsd_capped_lossless`` (prefix-consistency + optional
stopping).  The verifier is :func:`hsd_fast.kernels.verify` with ``draft_lens`` (ragged drafts).

Draw layout per row and iteration (hsd_ref.schemes.adaptive): ``3 T_0 + 1`` uniforms;
``u[2t]`` is the rule's coin at length ``t``, ``u[2t + 1]`` drafts ``x_{t+1}``, and
``u[2 T_0 : 2 T_0 + L + 1]`` are the verifier's for a draft of length ``L``.  Rules that need no
coin still consume it, so a row's stream does not depend on the rule.

A rule that reads the past (:class:`LearnedConfidenceStop`) stays lossless: its threshold for an
iteration is fixed before the iteration's draws, by earlier iterations only (the plan depends on the
past, the argument of docs/latency.md's re-planning).  It pools the batch's rows, so with it a
row's draft lengths (never its law) depend on the other rows.
"""

from __future__ import annotations

import math
from collections import deque

import torch

__all__ = ["StopRule", "ConfidenceStop", "RandomisedStop", "LearnedConfidenceStop", "check_stop_rule"]

HF_THRESHOLD = 0.4  # transformers' assistant_confidence_threshold


class StopRule:
    """Base class: ``stop(t, tokens, probs, coin)`` -> [B] bool, with ``tokens`` [B, t] the drafted
    ids, ``probs`` [B, t, V] their draft rows and ``coin`` [B] float64 the rule's own uniforms.
    ``observe(conf, accepted)`` is called after each verification of the bottom level with the
    drafted tokens' draft probabilities and whether each was accepted (both [n] over the drafted
    positions of active rows) when ``learns`` is True; rules that learn set it and override
    ``observe``."""

    name = "stop"
    learns = False  # True: observe() uses what it is given (the engine gathers it only then)

    def stop(self, t: int, tokens: torch.Tensor, probs: torch.Tensor, coin: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, conf: torch.Tensor, accepted: torch.Tensor) -> None:
        return None

    def reset(self) -> None:
        """Forget what was learned (called at the start of every ``generate``)."""
        return None

    def __repr__(self) -> str:
        return self.name


def _last_prob(tokens: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """q_t(x_t) of each row.  tokens [B, t], probs [B, t, V] -> [B] (t >= 1)."""
    return probs[:, -1].gather(-1, tokens[:, -1:].clamp(min=0))[:, 0]


def _check_unit(name: str, v: object, cls: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError(f"{name}: {cls} expects a number in [0, 1], got {v!r}")
    return float(v)


class ConfidenceStop(StopRule):
    """transformers' ``ConfidenceCriteria``: stop once ``q_t(x_t) < threshold`` (the token kept);
    never before the first token.  hsd_ref twin: ``ConfidenceStop(threshold)``."""

    def __init__(self, threshold: float = HF_THRESHOLD):
        self.threshold = _check_unit("threshold", threshold, "ConfidenceStop")
        self.name = f"confidence<{self.threshold:g}"

    def stop(self, t, tokens, probs, coin):
        if t == 0:
            return torch.zeros(coin.shape, dtype=torch.bool, device=coin.device)
        return _last_prob(tokens, probs) < self.threshold


class RandomisedStop(StopRule):
    """Stop with chance ``scale * (1 - q_t(x_t))`` after a token and ``at_start`` before any, by the
    rule's own coin.  hsd_ref twin: ``RandomisedStop(scale, at_start)``."""

    def __init__(self, scale: float = 1.0, at_start: float = 0.0):
        self.scale = _check_unit("scale", scale, "RandomisedStop")
        self.at_start = _check_unit("at_start", at_start, "RandomisedStop")
        self.name = f"randomised(scale={self.scale:g}, at_start={self.at_start:g})"

    def stop(self, t, tokens, probs, coin):
        if t == 0:
            return coin < self.at_start
        return coin < self.scale * (1 - _last_prob(tokens, probs).to(torch.float64))


class LearnedConfidenceStop(StopRule):
    """A confidence stop whose threshold is learned online from past rounds (SpecDec++'s idea with
    transformers' signal): over the last ``window`` drafted tokens, the threshold is the confidence
    ``c`` maximising (rejected tokens with ``q < c``) - (accepted tokens with ``q < c``), i.e. the cut
    that drops the most rejections for the fewest acceptances (0: never stop until there is evidence).
    Starts at ``threshold``; re-fitted after every verification, so each iteration's threshold is a
    function of earlier iterations only."""

    def __init__(self, threshold: float = HF_THRESHOLD, window: int = 512, max_threshold: float = 0.9):
        self.start = _check_unit("threshold", threshold, "LearnedConfidenceStop")
        self.max_threshold = _check_unit("max_threshold", max_threshold, "LearnedConfidenceStop")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: LearnedConfidenceStop expects an int >= 1, got {window!r}")
        self.window = window
        self.name = f"learned-confidence(start={self.start:g}, window={window})"
        self.learns = True
        self.reset()

    def reset(self) -> None:
        self.threshold = self.start
        self.history: deque[tuple[float, bool]] = deque(maxlen=self.window)

    def stop(self, t, tokens, probs, coin):
        if t == 0:
            return torch.zeros(coin.shape, dtype=torch.bool, device=coin.device)
        return _last_prob(tokens, probs) < self.threshold

    def observe(self, conf, accepted):
        self.history.extend(zip(conf.tolist(), accepted.tolist()))
        best, best_gain = 0.0, 0
        gain = 0
        for c, ok in sorted(self.history):  # cut just above c: every token with q <= c stops
            gain += -1 if ok else 1
            if gain > best_gain and c < self.max_threshold:
                best, best_gain = c, gain
        self.threshold = math.nextafter(best, 2.0) if best_gain else 0.0  # just above c: q <= c stops


def check_stop_rule(rule: object) -> StopRule | None:
    """``draft_stop``: None, a :class:`StopRule`, or a float (a :class:`ConfidenceStop` threshold)."""
    if rule is None or isinstance(rule, StopRule):
        return rule
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return ConfidenceStop(rule)
    raise ValueError(f"draft_stop: expected None, a threshold in [0, 1] or a hsd_fast.engine.stopping.StopRule, got {type(rule).__name__}")
