"""The cache: where it lives, its lock, and the manifest that seals each model folder.

A sealed folder is checked before every load: a file whose size and mtime still equal those recorded
at its last successful hash is trusted, and any other file is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CorruptCacheError, ModelFetchError
from .registry import _spec

MANIFEST = "hsd_manifest.json"   # sha256 + size of every file of a cached model folder
STAMPS = ".hsd_verified.json"    # (size, mtime_ns) of each file when its sha256 last matched
MANIFEST_FORMAT = 1
_CHUNK = 1 << 22                 # 4 MiB read size for hashing and assembling



def default_cache_dir() -> Path:
    """``$HSD_CACHE``, else ``$XDG_CACHE_HOME/hsd``, else ``~/.cache/hsd``."""
    env = os.environ.get("HSD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hsd"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _model_dir(name: str, cache_dir) -> Path:
    return _cache_root(cache_dir) / "models" / name


def is_cached(name: str, *, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``fetch(name)`` has completed in this cache (the files are not re-hashed here)."""
    return (_model_dir(_spec(name).name, cache_dir) / MANIFEST).is_file()


def model_info(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """Facts about a registered model (pins, sizes, shape) and whether and where it is cached."""
    spec = _spec(name)
    folder = _model_dir(spec.name, cache_dir)
    cached = (folder / MANIFEST).is_file()
    return {
        "name": spec.name,
        "upstream": spec.upstream,
        "description": spec.description,
        "license": spec.license,
        "quantization": spec.quantization,
        "packages": [p.requirement for p in spec.parts],
        "gguf_size": spec.gguf_size,
        "gguf_sha256": spec.gguf_sha256,
        "params": spec.params,
        "vocab_size": spec.vocab_size,
        "n_layers": spec.n_layers,
        "hidden": spec.hidden,
        "float32_bytes": spec.params * 4,
        "bfloat16_bytes": spec.params * 2,
        "cached": cached,
        "path": str(folder) if cached else None,
    }


def _offline() -> None:
    """Keep transformers / huggingface_hub away from any hub (loads also pass local_files_only=True)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def _lock(cache: Path, name: str) -> Iterator[None]:
    """An exclusive advisory lock, so that concurrent fetches of one model do not race (POSIX only)."""
    folder = cache / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _share(path: Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _sha256_file(path: Path, *, progress: bool = False, desc: str | None = None) -> str:
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with open(path, "rb") as src, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                       desc=desc or f"sha256 {path.name}", disable=not progress) as bar:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        _share(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def seal(directory: str | os.PathLike, **meta: Any) -> dict:
    """Write ``hsd_manifest.json`` (size + sha256 of every file) into a model folder.

    :func:`load` and :func:`verify` then check the folder against the manifest.  ``fetch`` seals every
    folder it builds.  You can also seal a local Hugging Face folder yourself.  ``meta`` is stored in the
    manifest as it is.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"directory: {folder} is not a directory")
    files, stamps = {}, {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in (MANIFEST, STAMPS):
            continue
        stat = path.stat()
        files[rel] = {"size": stat.st_size, "sha256": _sha256_file(path)}
        stamps[rel] = [stat.st_size, stat.st_mtime_ns]
    manifest = {"format": MANIFEST_FORMAT, "files": files, **meta}
    _write_json_atomic(folder / MANIFEST, manifest)
    _write_json_atomic(folder / STAMPS, stamps)
    return manifest


def _refetch_hint(name: str | None, folder: Path) -> str:
    if name is None:
        return f"rebuild the folder {folder} (or delete its {MANIFEST} to skip the check)"
    return (f"re-fetch it with `python -m hsd_fast models fetch {name} --force` "
            f"(or hsd_fast.models.fetch({name!r}, force=True)), or delete {folder}")


def _check_folder(folder: Path, name: str | None, *, full: bool = False) -> dict:
    """Check a sealed folder against its manifest; raise :class:`CorruptCacheError` on any difference.

    To keep repeated loads cheap, a file is re-hashed only when its (size, mtime_ns) differs from the
    stamp written at its last successful check, or when ``full`` is set.
    """
    label = f"cached model {name!r}" if name else "model folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        records = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"{label} at {folder}: its {MANIFEST} is missing or unreadable ({exc}); "
                                f"{_refetch_hint(name, folder)}") from None
    try:
        stamps = json.loads((folder / STAMPS).read_text())
    except (OSError, ValueError):
        stamps = {}
    changed = False
    for rel, record in records.items():
        path = folder / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise CorruptCacheError(f"{label} at {folder} is incomplete: {rel} is missing; "
                                    f"{_refetch_hint(name, folder)}") from None
        why = None
        if stat.st_size != record["size"]:
            why = f"{rel} has {stat.st_size} bytes, {record['size']} were written"
        elif full or stamps.get(rel) != [stat.st_size, stat.st_mtime_ns]:
            actual = _sha256_file(path)
            if actual != record["sha256"]:
                why = f"{rel} has sha256 {actual}, {record['sha256']} was written"
            else:
                stamps[rel] = [stat.st_size, stat.st_mtime_ns]
                changed = True
        if why:
            raise CorruptCacheError(f"{label} at {folder} is corrupted: {why}; {_refetch_hint(name, folder)}")
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache is still usable, just re-hashed each time
            _write_json_atomic(folder / STAMPS, stamps)
    return manifest


def verify(name: str, *, cache_dir: str | os.PathLike | None = None, full: bool = True) -> Path:
    """Re-hash a fetched model's files against its manifest (all of them when ``full``); return its folder."""
    spec = _spec(name)
    folder = _model_dir(spec.name, cache_dir)
    if not (folder / MANIFEST).is_file():
        raise ModelFetchError(f"model {name!r} is not fetched into {folder.parent.parent}; "
                              f"run `python -m hsd_fast models fetch {name}`")
    _check_folder(folder, spec.name, full=full)
    return folder
