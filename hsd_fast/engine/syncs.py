"""Count the host synchronisations a piece of PyTorch code would make on a GPU, on any device.

On CUDA a host read of device data blocks until the device has caught up.  The operations that do
it are the same on every device, so they can be counted on a CPU: :func:`count_syncs` watches the
aten operators whose output size or value the host must read (``_local_scalar_dense``, behind
``item()``, ``int()``, ``bool()`` and ``if tensor:``; ``nonzero``; boolean-mask indexing and
assignment; ``masked_select``; ``unique``; ``bincount``; ``repeat_interleave`` without an output
size; ``equal``; ``allclose``) and the tensor methods that copy to host memory (``tolist``,
``numpy``).  ``torch.cuda.synchronize`` calls are counted too.  Copies from a CUDA tensor to the CPU
with ``.cpu()`` / ``.to("cpu")`` are not seen on a CPU (there they are no copy); on CUDA
``torch.cuda.set_sync_debug_mode`` reports those as well.

>>> import torch
>>> with count_syncs() as syncs:
...     x = torch.arange(4)
...     y = x[x > 1]  # boolean-mask indexing: the host needs the output size
...     n = int(x.sum())
>>> syncs.total, sorted(syncs.by_op)
(2, ['_local_scalar_dense', 'index (bool mask)'])
"""

from __future__ import annotations

import collections
import contextlib
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCount", "count_syncs"]

_aten = torch.ops.aten
_ALWAYS = {
    _aten._local_scalar_dense.default: "_local_scalar_dense",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.bincount.default: "bincount",
    _aten.equal.default: "equal",
    _aten.allclose.default: "allclose",
}
_HOST_METHODS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy"}


class SyncCount:
    """What :func:`count_syncs` saw: ``total``, a ``by_op`` counter and ``by_line``, the innermost
    ``hsd_fast`` source line of each (``"engine/backend.py:301"``)."""

    def __init__(self):
        self.by_op: collections.Counter = collections.Counter()
        self.by_line: collections.Counter = collections.Counter()

    def add(self, name: str) -> None:
        self.by_op[name] += 1
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = frame.filename.replace("\\", "/")
            if "/hsd_fast/" in path and not path.endswith("engine/syncs.py"):
                self.by_line[f"{path.split('/hsd_fast/', 1)[1]}:{frame.lineno}"] += 1
                break

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __repr__(self) -> str:
        return f"SyncCount({self.total}: {dict(self.by_op)})"


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None)


class _Ops(TorchDispatchMode):
    def __init__(self, count: SyncCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _ALWAYS.get(func)
        if name is None and func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default) and _bool_index(args[1]):
            name = "index (bool mask)"
        if name is None and func.overloadpacket is _aten.repeat_interleave and kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) and len(args) == 1:
            name = "repeat_interleave"
        if name is not None:
            self.count.add(name)
        return func(*args, **kwargs)


class _Methods(TorchFunctionMode):
    def __init__(self, count: SyncCount):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _HOST_METHODS.get(func)
        if name is not None:
            self.count.add(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs():
    """Count host synchronisations inside the ``with`` block (module docstring).  Slow: every
    operator goes through Python; for tests and diagnosis."""
    count = SyncCount()
    real_sync = torch.cuda.synchronize

    def sync(*a, **k):
        count.add("cuda.synchronize")
        return real_sync(*a, **k)

    torch.cuda.synchronize = sync
    try:
        with _Methods(count), _Ops(count):
            yield count
    finally:
        torch.cuda.synchronize = real_sync
