"""Trained early-exit heads (issue 16; docs/early-exit.md).

An exit at layer ``d`` reads the model's layer-``d`` hidden state through a cheap trained head and
the model's own frozen final norm and LM head.  Trained by self-distillation of the model's final
distribution on Python standard-library sources, cached beside the model as sealed folders, and
decoded with ``EarlyExit(model, d, head="trained")`` (``exit:D:trained`` on the command line).

Modules: :mod:`.heads` (the head kinds), :mod:`.text` (the training text), :mod:`.train` (the
loss and the resumable loop), :mod:`.store` (names, atomic sealed writes, find / load / verify),
:mod:`.evaluate` (agreement measures), :mod:`.cli` (``hsd-fast train-exit``).
"""

from .cli import add_cli
from .evaluate import exit_agreement
from .heads import HEAD_KINDS, BlockHead, ExitHead, LinearHead, make_head
from .store import find_head, list_heads, load_head, model_sha256, verify_heads
from .train import TrainConfig, coarse_kl, train_exit

__all__ = [
    "HEAD_KINDS", "BlockHead", "ExitHead", "LinearHead", "TrainConfig", "add_cli", "coarse_kl", "exit_agreement",
    "find_head", "list_heads", "load_head", "make_head", "model_sha256", "train_exit", "verify_heads",
]
