"""The memory guard: available memory per device, and the parameter count of a model folder."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from .cache import _offline
from .errors import InsufficientMemoryError


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
