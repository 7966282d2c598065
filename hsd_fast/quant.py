"""Weight-only int8 quantization for draft models.

A draft may be any model: verification reproduces the target's law whatever distribution the draft
tokens were sampled from, as long as the draft rows handed to the verifier are the rows the tokens
were drawn from (the engine guarantees that).  A quantized draft is therefore exact; only its
acceptance rate can change.  The target is never quantized by this module's callers: its law is
the reference.

On a CPU, batch-1 decoding is bound by the bytes of weights read per step, so halving them (int8
instead of bfloat16) nearly halves the draft's step time (docs/benchmarks.md).  The scheme is the
simplest one that keeps the acceptance rate: symmetric, one scale per output channel,
``w ~= scale[n] * q[n, k]`` with ``q`` in ``[-127, 127]`` and ``scale[n] = max_k |w[n, k]| / 127``
(gpt-fast's ``WeightOnlyInt8QuantHandler``).

The product runs in ``torch._weight_int8pack_mm`` (a fused CPU kernel that dequantizes in registers)
when the activations are bfloat16 or float16 on a CPU and at most :data:`FUSED_MAX_ROWS` positions
are scored: that is a decode step, where the bytes read decide the time.  For more positions (a
prefill, a verification) that kernel is slower than a dense product on this machine (docs/
benchmarks.md), so the layer multiplies by the dequantized weight ``scale[:, None] * q`` instead,
kept after its first use (the same values, in the activations' dtype: memory for speed).  On other
CPU dtypes it dequantizes per call.  On CUDA it is refused (:func:`check_device`): with no int8
kernel there it would dequantize every weight on every call, slower than the bfloat16 draft it
replaces; use that draft on a GPU.
"""

from __future__ import annotations

import torch

__all__ = ["Int8Linear", "check_device", "quantize_int8", "is_quantized", "QUANTIZATIONS"]

QUANTIZATIONS = ("int8",)
FUSED_MAX_ROWS = 4  # positions per call up to which the fused int8 kernel beats a dense product (CPU)
_FUSED_DTYPES = (torch.bfloat16, torch.float16)


def check_device(device: torch.device | str, what: str = "an int8 model") -> None:
    """Refuse CUDA for the weight-only int8 layers (module docstring): a ``ValueError`` naming ``what``."""
    if torch.device(device).type == "cuda":
        raise ValueError(f"{what}: weight-only int8 (hsd_fast.quant) has no CUDA kernel and would dequantize every weight on "
                         "every call, slower than the bfloat16 model; use the bfloat16 draft on CUDA")


class Int8Linear(torch.nn.Module):
    """``y = x @ (scale[:, None] * q).T + bias`` with int8 ``q`` [N, K] and per-row ``scale`` [N]."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        dtype = w.dtype
        w32 = w.float()
        scale = w32.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())  # [N, K] int8
        self.register_buffer("scale", scale.to(dtype))  # [N], the activations' dtype
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight this module multiplies by, ``scale[:, None] * q``.  # [N, K]"""
        dtype = dtype or self.scale.dtype
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    @classmethod
    def from_parts(cls, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        """An Int8Linear over given int8 weights [N, K], per-row scales [N] and bias [N] (or ``None``)."""
        out = cls.__new__(cls)
        torch.nn.Module.__init__(out)
        out.register_buffer("qweight", qweight.contiguous())
        out.register_buffer("scale", scale)
        out.register_buffer("bias", bias)
        out.out_features, out.in_features = qweight.shape
        return out

    def rows(self, ids: torch.Tensor) -> "Int8Linear":
        """A copy computing only the output channels ``ids`` (in that order): a restricted LM head."""
        return Int8Linear.from_parts(self.qweight[ids], self.scale[ids], None if self.bias is None else self.bias[ids])

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.__dict__.get("_dense_weight")
        if w is None or w.dtype != dtype or w.device != self.qweight.device:
            w = self.dequantized(dtype)
            self.__dict__["_dense_weight"] = w  # a plain attribute: not a buffer, not in the state dict
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":
            check_device(x.device, "Int8Linear")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        fused = x2.device.type == "cpu" and x2.dtype in _FUSED_DTYPES
        if fused and x2.shape[0] <= FUSED_MAX_ROWS:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scale.to(x2.dtype))
        elif fused:
            y = torch.nn.functional.linear(x2, self._dense(x2.dtype))
        else:
            y = torch.nn.functional.linear(x2, self.dequantized(x2.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (LM head included) by an :class:`Int8Linear`, in place.

    Embeddings and norms stay in their dtype.  A head tied to the input embedding gets its own int8
    copy (the embedding is untouched).  Returns ``model``.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, torch.nn.Linear)]
    if not targets:
        raise ValueError("model: has no nn.Linear layers to quantize")
    with torch.no_grad():
        for parent, name, child in targets:
            setattr(parent, name, Int8Linear(child))
    model.hsd_quantization = "int8"
    return model


def is_quantized(model: object) -> str | None:
    """The quantization :func:`quantize_int8` applied to ``model`` (``"int8"``), else ``None``."""
    return getattr(model, "hsd_quantization", None)
