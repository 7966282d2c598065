"""Training text for exit heads: the Python standard library's own sources.

They ship with every Python, they are real code and prose (docstrings, comments), and they are not a
benchmark: HumanEval and Spec-Bench prompts never enter training (they are the held-out evaluation,
docs/early-exit.md).

The modules are the top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]``, sorted by name,
without the machine-specific ``_sysconfigdata*`` files.  Every tenth module (sorted index ``% 10 ==
9``) is held out of training for the validation loss.  A module contributes its first
``per_module`` tokens, cut into sequences of ``seq_len`` tokens (a shorter tail is dropped), until
``n_tokens`` tokens are collected.  :func:`text_fingerprint` names what was read, for the training
hash: the Python version, the module names and the sha256 of the text actually used.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import torch

__all__ = ["stdlib_modules", "token_sequences", "text_fingerprint"]

_READ_CHARS_PER_TOKEN = 8  # a module's first per_module * 8 characters are enough for per_module tokens


def stdlib_modules(split: str = "train") -> list[Path]:
    """The stdlib source files of ``split`` (``"train"`` or ``"heldout"``), in name order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_sysconfigdata"))
    if not files:
        raise OSError(f"no Python standard-library sources in {root} (a Python without its .py files?)")
    keep = (lambda i: i % 10 != 9) if split == "train" else (lambda i: i % 10 == 9)
    return [p for i, p in enumerate(files) if keep(i)]


def token_sequences(tokenizer, n_tokens: int, *, seq_len: int = 256, per_module: int = 512,
                    split: str = "train") -> tuple[torch.Tensor, dict]:
    """``(ids [N, seq_len] int64, fingerprint)``: ``N = n_tokens // seq_len`` sequences (module docstring).

    Raises ``ValueError`` naming ``n_tokens`` when the split has fewer tokens than asked."""
    for name, value, low in (("n_tokens", n_tokens, 1), ("seq_len", seq_len, 2), ("per_module", per_module, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if n_tokens < seq_len:
        raise ValueError(f"n_tokens: {n_tokens} is less than one sequence of seq_len={seq_len} tokens")
    want = n_tokens // seq_len
    rows: list[list[int]] = []
    used: list[str] = []
    digest = hashlib.sha256()
    for path in stdlib_modules(split):
        text = path.read_text(encoding="utf-8", errors="replace")[: per_module * _READ_CHARS_PER_TOKEN]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:per_module]
        n = len(ids) // seq_len
        if n == 0:
            continue
        n = min(n, want - len(rows))
        rows.extend(ids[i * seq_len : (i + 1) * seq_len] for i in range(n))
        used.append(path.name)
        digest.update(path.name.encode() + b"\0" + text.encode("utf-8", errors="replace") + b"\0")
        if len(rows) == want:
            break
    if len(rows) < want:
        raise ValueError(f"n_tokens: the stdlib {split} split gives only {len(rows) * seq_len} tokens "
                         f"in sequences of {seq_len} (asked {n_tokens}); raise per_module or lower n_tokens")
    fingerprint = text_fingerprint(split, used, digest.hexdigest(), seq_len, per_module)
    return torch.tensor(rows, dtype=torch.int64), fingerprint


def text_fingerprint(split: str, modules: list[str], text_sha256: str, seq_len: int, per_module: int) -> dict:
    """What a training run read, as recorded in the training hash and the head's metadata."""
    return {
        "source": "python-stdlib",
        "python": ".".join(map(str, sys.version_info[:3])),
        "split": split,
        "modules": modules,
        "text_sha256": text_sha256,
        "seq_len": seq_len,
        "per_module": per_module,
    }
