"""Where trained heads live, how they are named, written, found, loaded and verified.

A head is a sealed folder beside the model cache (same root as :mod:`hsd_fast.models`)::

    <cache>/exits/<model label>/<model sha256[:16]>-L<layer>-<kind>-<training hash[:16]>/
        head.safetensors   the head's tensors (float32)
        head.json          model sha256 (full), layer, kind, training hash (full) and its inputs, metrics
        hsd_manifest.json  size + sha256 of both files (hsd_fast.models.seal), checked before every load

The folder is built under ``<cache>/exits/tmp/`` and renamed into place only once sealed, so no
partial head is ever found under a final name.  Loading checks the manifest (a file whose size or
mtime changed is re-hashed; :func:`verify_heads` re-hashes all), then that ``head.json`` names the
model being decoded (its sha256) and the layer asked for.

The model's sha256 (:func:`model_sha256`): for a model loaded from a sealed folder (every fetched
model: ``config._name_or_path`` is its folder) the sha256 of its weight files recorded in that
folder's manifest (the weights file's own sha256 when there is one file); for any other model, the
sha256 of its state dict (names, dtypes, shapes and bytes, in name order), so a float32 and a
bfloat16 copy of an in-memory model differ while a fetched model's heads serve every dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..models.cache import MANIFEST, _cache_root, _check_folder, _share, seal
from ..models.errors import CorruptCacheError
from .heads import HEAD_KINDS, BlockHead, ExitHead, LinearHead

__all__ = ["HEAD_FILE", "META_FILE", "model_sha256", "model_label", "exits_root", "head_dir_name",
           "save_head", "find_head", "load_head", "list_heads", "verify_heads"]

HEAD_FILE = "head.safetensors"
META_FILE = "head.json"
HEAD_FORMAT = 1


def exits_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/exits`` (the cache root of :func:`hsd_fast.models.default_cache_dir` unless given)."""
    return _cache_root(cache_dir) / "exits"


def _sealed_folder(model) -> Path | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    folder = Path(str(name)).expanduser() if name else None
    return folder if folder is not None and (folder / MANIFEST).is_file() else None


def model_sha256(model) -> str:
    """The model's sha256 (module docstring): from its sealed folder's manifest, else its state dict."""
    folder = _sealed_folder(model)
    if folder is not None:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        weights = sorted((rel, rec["sha256"]) for rel, rec in files.items() if rel.endswith((".safetensors", ".bin")))
        if len(weights) == 1:
            return weights[0][1]
        if weights:
            return hashlib.sha256("".join(f"{rel}\0{sha}\n" for rel, sha in weights).encode()).hexdigest()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_label(model) -> str:
    """The folder name of the model's heads: its cache folder's name, else its config's name."""
    folder = _sealed_folder(model)
    if folder is not None:
        return folder.name
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "").rstrip("/").split("/")[-1]
    return name or type(model).__name__


def head_dir_name(sha: str, layer: int, kind: str, train_hash: str) -> str:
    """``<sha[:16]>-L<layer>-<kind>-<train_hash[:16]>``."""
    return f"{sha[:16]}-L{layer}-{kind}-{train_hash[:16]}"


def save_head(head: ExitHead, meta: dict, folder: Path) -> Path:
    """Write ``head`` and ``meta`` as the sealed folder ``folder`` (atomically: built in
    ``<exits>/tmp``, sealed, then renamed; an existing folder of that name is replaced)."""
    from safetensors.torch import save_file

    staging_root = folder.parent.parent / "tmp"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"{folder.name}-"))
    try:
        tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in head.state_dict().items()}
        save_file(tensors, str(staging / HEAD_FILE), metadata={"format": "pt"})
        full = {"format": HEAD_FORMAT, "kind": head.kind, "layer": head.layer, "hidden": head.hidden, **meta}
        (staging / META_FILE).write_text(json.dumps(full, indent=1, sort_keys=True))
        for path in staging.iterdir():
            _share(path)
        seal(staging, kind="exit-head", model_sha256=meta.get("model_sha256"), layer=head.layer, head=head.kind,
             train_hash=meta.get("train_hash"))
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        _share(staging)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCacheError(f"exit head at {folder}: {META_FILE} is missing or unreadable ({exc}); "
                                f"delete the folder and train it again") from None


def list_heads(model=None, *, sha: str | None = None, cache_dir=None) -> list[tuple[Path, dict]]:
    """Sealed head folders (with their metadata), newest first; only those of ``model`` (or of the
    model sha256 ``sha``) when given.  Folders are not re-hashed here (:func:`verify_heads` does)."""
    root = exits_root(cache_dir)
    if model is not None:
        sha = model_sha256(model)
    out = []
    if not root.is_dir():
        return out
    for folder in root.glob("*/*"):
        if folder.parent.name == "tmp" or not (folder / MANIFEST).is_file():
            continue
        if sha is not None and not folder.name.startswith(sha[:16] + "-"):
            continue
        meta = _read_meta(folder)
        if sha is None or meta.get("model_sha256") == sha:
            out.append((folder, meta))
    out.sort(key=lambda fm: (fm[1].get("created", ""), fm[0].name), reverse=True)
    return out


def find_head(model, layer: int, kind: str | None = None, *, cache_dir=None) -> Path:
    """The newest trained head of ``model`` at ``layer`` (of ``kind`` when given), checked against its
    manifest.  ``ValueError`` naming the command that creates one when there is none."""
    sha = model_sha256(model)
    for folder, meta in list_heads(sha=sha, cache_dir=cache_dir):
        if meta.get("layer") == layer and (kind is None or meta.get("kind") == kind):
            _check_folder(folder, None)
            return folder
    label = model_label(model)
    raise ValueError(f"head: no trained exit head for {label} (sha256 {sha[:16]}...) at layer {layer} in "
                     f"{exits_root(cache_dir)}; create one with `hsd-fast train-exit {label} --layer {layer}"
                     f"{'' if kind in (None, 'linear') else f' --head {kind}'}`")


def load_head(path: str | os.PathLike, model=None, layer: int | None = None) -> ExitHead:
    """The head stored in the sealed folder ``path`` (manifest checked first).  With ``model`` (and
    ``layer``), its metadata must name that model's sha256 (and that layer), else ``ValueError``."""
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    if not (folder / MANIFEST).is_file() or not (folder / META_FILE).is_file():
        raise ValueError(f"head: {folder} is not a trained exit-head folder (no {MANIFEST} / {META_FILE})")
    _check_folder(folder, None)
    meta = _read_meta(folder)
    kind, at = meta.get("kind"), meta.get("layer")
    if kind not in HEAD_KINDS or meta.get("format") != HEAD_FORMAT:
        raise ValueError(f"head: {folder} holds an unknown head (kind {kind!r}, format {meta.get('format')!r})")
    if layer is not None and at != layer:
        raise ValueError(f"head: {folder} was trained for layer {at}, not layer {layer}")
    if model is not None:
        sha = model_sha256(model)
        if meta.get("model_sha256") != sha:
            raise ValueError(f"head: {folder} was trained on the model with sha256 {meta.get('model_sha256')}, "
                             f"not on this model ({sha})")
    tensors = load_file(str(folder / HEAD_FILE))
    if kind == "linear":
        head = LinearHead(at, int(meta["hidden"]))
    else:
        if model is None:
            raise ValueError(f"head: loading the block head {folder} needs its model (for the block's layout)")
        head = BlockHead.from_model(model, at)
    head.load_state_dict(tensors)
    return head.eval().requires_grad_(False)


def verify_heads(model=None, *, cache_dir=None) -> list[Path]:
    """Re-hash every file of every cached head (of ``model`` when given) against its manifest; return
    the folders.  Raises :class:`~hsd_fast.models.CorruptCacheError` at the first difference."""
    folders = [folder for folder, _ in list_heads(model, cache_dir=cache_dir)]
    for folder in folders:
        _check_folder(folder, None, full=True)
    return folders


def now() -> str:
    """The ``created`` stamp of a head: UTC ISO 8601 with microseconds (strings sort by time)."""
    return datetime.now(timezone.utc).isoformat()
