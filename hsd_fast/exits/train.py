"""Self-distillation of a model's final-layer distribution onto an exit head (``hsd-fast train-exit``).

The teacher is the model itself: its next-token law ``p`` after the full stack.  The student is the
exit at layer ``d``, ``lm_head(norm(head(h_d)))`` with the model frozen and only the head trained
(:mod:`.heads`).  Teacher-forced on stdlib sources (:mod:`.text`).

**Loss: top-k-coarsened KL.**  Storing ``p`` over a 152k vocabulary costs 0.6 MB per token in
float32 (20k tokens: 12 GB), so the teacher pass keeps, per position, its top ``k`` ids and
log-probabilities and the log of its remaining mass.  The loss is the exact KL between the two laws
coarsened to ``k + 1`` cells (the teacher's top ``k`` ids, and one "tail" cell holding everything
else)::

    KL_k(p || q) = sum_{i in top_k(p)} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)

It is a lower bound of ``KL(p || q)`` (the log-sum inequality) and equals it when the tail holds
nothing.  The student side is exact: ``q`` is normalised over the FULL vocabulary (one LM-head
product per position, at most about a third of the teacher forward's cost on the Qwen models), so
``q_tail`` is the student's true mass outside the teacher's top ``k``.  (A sampled softmax would
also cut the student's product, but its normaliser misses wherever the untrained exit piles mass on
tokens the teacher ranks low, which is exactly what training has to remove.)

**Deterministic and resumable.**  The run directory ``<cache>/exits/tmp/run-<hash>`` holds the
teacher features (one file per chunk of sequences, written atomically as they finish) and a
checkpoint (head, optimizer state, step) every ``checkpoint_every`` steps.  A rerun with the same
arguments computes the same hash, reuses the features and continues from the checkpoint; the
shuffling of epoch ``e`` is a function of ``(seed, e)`` only, so an interrupted and resumed run
takes the same steps as an uninterrupted one.  A finished run seals its head (:mod:`.store`) and
deletes the run directory; a rerun then returns the sealed head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.errors import InsufficientMemoryError
from ..models.memory import _gb, available_memory_bytes
from .evaluate import exit_logits, layer_hidden
from .heads import HEAD_KINDS, BlockHead, make_head
from .store import exits_root, head_dir_name, load_head, model_label, model_sha256, now, save_head
from .text import token_sequences

__all__ = ["TrainConfig", "train_exit", "coarse_kl", "teacher_targets", "training_hash"]

TRAIN_FORMAT = 1
_TEACHER_CHUNK = 8  # sequences per teacher feature file


@dataclass(frozen=True)
class TrainConfig:
    """Every training input except the model.  ``tokens``: training tokens (``tokens // seq_len``
    sequences of ``seq_len``); ``batch``: positions per optimiser step (a block head takes whole
    sequences: ``max(1, batch // seq_len)`` per step); ``top_k``: the teacher ids kept per position;
    ``epochs`` passes of Adam at ``lr``; ``heldout``: stdlib held-out tokens for the validation numbers
    (0: none); ``checkpoint_every``: optimiser steps between checkpoints."""

    layer: int
    head: str = "linear"
    tokens: int = 20_000
    seq_len: int = 256
    per_module: int = 512
    top_k: int = 64
    epochs: int = 2
    lr: float = 1e-3
    batch: int = 256
    seed: int = 0
    heldout: int = 2048
    checkpoint_every: int = 25

    def check(self, n_layers: int) -> None:
        """``ValueError`` naming the first bad field."""
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head: expected one of {HEAD_KINDS}, got {self.head!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or not 1 <= self.layer < n_layers:
            raise ValueError(f"layer: expected an int in [1, {n_layers - 1}] (below the full depth {n_layers}), got {self.layer!r}")
        for name, low in (("tokens", 1), ("seq_len", 2), ("per_module", 1), ("top_k", 1), ("epochs", 1),
                          ("batch", 1), ("seed", 0), ("heldout", 0), ("checkpoint_every", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")


def training_hash(inputs: dict) -> str:
    """sha256 of the canonical JSON of every training input (:func:`train_exit` lists them)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def coarse_kl(student_logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor, tail_logp: torch.Tensor) -> torch.Tensor:
    """The top-k-coarsened KL (module docstring), per position.

    student_logits [P, V] (any float dtype; computed in float32), top_ids [P, k] int64, top_logp
    [P, k] and tail_logp [P] the teacher's log-probabilities of its top ids and of the rest
    (``-inf`` for an empty tail).  -> [P] float32, >= 0 up to rounding."""
    logq = student_logits.float().log_softmax(-1)
    q_top = logq.gather(1, top_ids)
    q_tail = logq.scatter(1, top_ids, -math.inf).logsumexp(-1)  # the student's mass outside the top ids
    kl_top = (top_logp.exp() * (top_logp - q_top)).sum(-1)
    p_tail = tail_logp.exp()
    kl_tail = torch.where(p_tail > 0, p_tail * (tail_logp - q_tail), torch.zeros_like(p_tail))
    return kl_top + kl_tail


def teacher_targets(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top_ids [P, k] int32, top_logp [P, k] float32, tail_logp [P] float32)`` of the full
    model's logits [P, V] (``k`` is capped at ``V``)."""
    logp = logits.float().log_softmax(-1)
    top_logp, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    tail = logp.scatter(1, top_ids, -math.inf).logsumexp(-1)
    return top_ids.to(torch.int32), top_logp, tail


def _save_atomic(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_memory(model, cfg: TrainConfig, n_seq: int) -> None:
    """InsufficientMemoryError when the features + the teacher and student workspaces would not fit."""
    hidden = int(model.config.hidden_size)
    V = int(model.lm_head.weight.shape[0])
    item = next(model.parameters()).element_size()
    feats = n_seq * cfg.seq_len * (hidden * item + cfg.top_k * 8 + 4)
    teacher = cfg.seq_len * V * 4 * 4  # logits, log-softmax, scatter copy, top-k scratch
    positions = cfg.seq_len * max(1, cfg.batch // cfg.seq_len) if cfg.head == "block" else cfg.batch
    student = positions * V * 4 * 6  # logits (model dtype and float32), log-softmax, scatter copy, gradients
    head = hidden * hidden * 4 * 4 if cfg.head == "linear" else sum(p.numel() for p in model.model.layers[-1].parameters()) * 4 * 4
    needed = feats + max(teacher, student) + head
    avail = available_memory_bytes("cpu")
    if avail is not None and needed > avail:
        raise InsufficientMemoryError(
            f"training a {cfg.head} exit head at layer {cfg.layer} on {cfg.tokens:,} tokens needs about {_gb(needed)} "
            f"beyond the loaded model (features {_gb(feats)}, workspace {_gb(max(teacher, student))}), but only "
            f"{_gb(avail)} is available; lower --tokens or --batch, or free memory")


@torch.no_grad()
def _teacher_pass(model, cfg: TrainConfig, ids: torch.Tensor, run: Path, progress: bool) -> dict:
    """The features of every sequence: ``h`` [N, S, hidden] (model dtype), ``top_ids``, ``top_logp``,
    ``tail_logp`` (:func:`teacher_targets`), computed chunk by chunk, each chunk file reused if present."""
    from tqdm.auto import tqdm

    dev = next(model.parameters()).device
    parts = []
    with tqdm(total=ids.shape[0], desc=f"teacher pass (layer {cfg.layer})", unit="seq", file=sys.stderr, disable=not progress) as bar:
        for c, lo in enumerate(range(0, ids.shape[0], _TEACHER_CHUNK)):
            path = run / f"teacher-{c:04d}.pt"
            chunk = ids[lo : lo + _TEACHER_CHUNK]
            if path.is_file():
                parts.append(torch.load(path))
                bar.update(chunk.shape[0])
                continue
            got = {"h": [], "top_ids": [], "top_logp": [], "tail_logp": []}
            for row in chunk:
                h, logits = layer_hidden(model, cfg.layer, row[None].to(dev))
                top_ids, top_logp, tail = teacher_targets(logits[0], cfg.top_k)
                for key, val in (("h", h[0]), ("top_ids", top_ids), ("top_logp", top_logp), ("tail_logp", tail)):
                    got[key].append(val.cpu())
                bar.update(1)
            part = {key: torch.stack(vals) for key, vals in got.items()}
            _save_atomic(part, path)
            parts.append(part)
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _student_loss(model, head, feats: dict, index: torch.Tensor, block: bool) -> torch.Tensor:
    """Mean coarsened KL over the positions ``index`` (a block head: over the sequences ``index``)."""
    dev = next(model.parameters()).device
    if block:
        h = feats["h"][index].to(dev)  # [b, S, hidden]
        logits = exit_logits(model, head, h).flatten(0, 1)
        sel = lambda x: x[index].flatten(0, 1).to(dev)  # noqa: E731
    else:
        hidden = feats["h"].shape[-1]
        h = feats["h"].view(-1, hidden)[index].to(dev)  # [P, hidden]
        logits = model.lm_head(model.model.norm(head(h)))
        sel = lambda x: x.flatten(0, 1)[index].to(dev)  # noqa: E731
    loss = coarse_kl(logits, sel(feats["top_ids"]).long(), sel(feats["top_logp"]), sel(feats["tail_logp"]))
    return loss.mean()


def train_exit(model, tokenizer, cfg: TrainConfig, *, cache_dir=None, progress: bool = True,
               stop_after: int | None = None, log=None) -> Path:
    """Train (or resume, or find already trained) the head ``cfg`` of ``model``; return its sealed folder.

    ``model``: a Llama-style HF causal LM (weights frozen here; its dtype is the teacher's);
    ``tokenizer``: its tokenizer (training text, :mod:`.text`).  The training hash covers the model's
    sha256, every field of ``cfg`` but ``checkpoint_every``, the token ids (hence the tokenizer), the
    text's fingerprint (Python version, module names, text sha256), the teacher's dtype and the
    format version.  ``stop_after``: stop after that many optimiser steps in all (checkpoint kept,
    nothing sealed; returns the run directory), to split a long run.  ``log(str)``: progress lines."""
    log = log or (lambda msg: print(f"[hsd train-exit] {msg}", file=sys.stderr, flush=True) if progress else None)
    n_layers = int(model.config.num_hidden_layers)
    cfg.check(n_layers)
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 0):
        raise ValueError(f"stop_after: expected None or an int >= 0, got {stop_after!r}")
    model.eval().requires_grad_(False)
    ids, text = token_sequences(tokenizer, cfg.tokens, seq_len=cfg.seq_len, per_module=cfg.per_module)
    sha = model_sha256(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"}
    inputs = {"format": TRAIN_FORMAT, "model_sha256": sha, "teacher_dtype": dtype, **fields, "text": text,
              "token_ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(), "loss": f"top{cfg.top_k}+tail KL"}
    thash = training_hash(inputs)
    root = exits_root(cache_dir)
    final = root / model_label(model) / head_dir_name(sha, cfg.layer, cfg.head, thash)
    if final.is_dir():
        load_head(final, model, cfg.layer)  # checks the manifest and the metadata
        log(f"already trained: {final}")
        return final
    _check_memory(model, cfg, ids.shape[0])
    run = root / "tmp" / f"run-{thash[:32]}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    feats = _teacher_pass(model, cfg, ids, run, progress)
    timings["teacher_s"] = round(time.perf_counter() - start, 1)

    head = make_head(cfg.head, model, cfg.layer).to(next(model.parameters()).device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    block = isinstance(head, BlockHead)
    units = ids.shape[0] if block else ids.numel()  # sequences or positions
    per_step = max(1, cfg.batch // cfg.seq_len) if block else cfg.batch
    steps_per_epoch = math.ceil(units / per_step)
    total = steps_per_epoch * cfg.epochs
    step, losses = 0, []
    state_path = run / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step, losses = state["step"], state["losses"]
        log(f"resuming at step {step} of {total} from {state_path}")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    head.train()
    with tqdm(total=total, initial=step, desc=f"train {cfg.head} head", unit="step", file=sys.stderr, disable=not progress) as bar:
        while step < total and (stop_after is None or step < stop_after):
            epoch, offset = divmod(step, steps_per_epoch)
            order = torch.randperm(units, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            index = order[offset * per_step : (offset + 1) * per_step]
            loss = _student_loss(model, head, feats, index, block)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(round(float(loss.detach()), 6))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step % cfg.checkpoint_every == 0 or step == total or step == stop_after:
                _save_atomic({"head": head.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses}, state_path)
    timings["train_s"] = round(time.perf_counter() - start, 1)
    if step < total:
        log(f"stopped after step {step} of {total}; rerun with the same arguments to resume ({run})")
        return run
    head.eval().requires_grad_(False)
    metrics = {"train_loss_first": losses[0], "train_loss_last_epoch": sum(losses[-steps_per_epoch:]) / steps_per_epoch}
    if cfg.heldout >= cfg.seq_len:
        metrics["heldout"] = heldout_metrics(model, tokenizer, head, cfg)
        log(f"stdlib held-out: {json.dumps(metrics['heldout'])}")
    meta = {"model_sha256": sha, "model": model_label(model), "train_hash": thash, "inputs": inputs,
            "metrics": metrics, "timings": timings, "created": now(), "versions": _versions()}
    save_head(head, meta, final)
    for path in run.iterdir():
        path.unlink()
    run.rmdir()
    log(f"sealed {final}")
    return final


def heldout_metrics(model, tokenizer, head, cfg: TrainConfig) -> dict:
    """:func:`~hsd_fast.exits.evaluate.exit_agreement` of the untrained exit and ``head`` on the
    first ``cfg.heldout`` tokens of the stdlib held-out split (sequences of ``cfg.seq_len``)."""
    from .evaluate import exit_agreement

    rows, _ = token_sequences(tokenizer, cfg.heldout, seq_len=cfg.seq_len, per_module=cfg.per_module, split="heldout")
    return exit_agreement(model, cfg.layer, rows.tolist(), {"untrained": None, "trained": head})


def _versions() -> dict:
    from importlib import metadata

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
