"""A lean forward for the Llama-family decoder layers that :class:`~hsd_fast.engine.backend.CachedLM`
drives: the Hugging Face layer's computation without its per-call overhead.

A batch-1 decode step on a CPU reads every weight once, and the rest of its time is per-call overhead:
module dispatch, small products, reshapes.  :class:`FusedLayer` calls the layer's own norms,
``o_proj``, ``down_proj`` and activation, computes q/k/v and gate/up itself, applies the rotary
embedding with the same formula, and calls ``scaled_dot_product_attention`` directly (grouped-query
heads without copying keys and values).  For weight-only int8 layers (:class:`Int8Linear`) q/k/v
and gate/up each run as ONE product over a concatenated copy of the int8 weights (small int8 products
are slow; the copy costs ~5% of the model's bytes); dense layers multiply by their own weights, so
nothing is copied and the HF model is untouched.  The function is the layer's, up to the rounding of
the fused products (the engine tests compare it with the HF forward to 1e-10 in float64).

If the model's int8 weights are replaced after fusing (``quantize_int8`` again), :meth:`FusedLayer.check`
raises instead of computing with a stale copy.
"""

from __future__ import annotations

import torch

from ..quant import Int8Linear

__all__ = ["FusedLayer", "fusable", "layer_forward", "pre_attention", "post_attention"]

_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj", "act_fn")


def fusable(layer) -> str | None:
    """``None`` if :class:`FusedLayer` can run ``layer``, else the reason it cannot."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or not all(hasattr(attn, a) for a in _ATTN) or not all(hasattr(mlp, a) for a in _MLP):
        return "not a Llama-style attention + gated MLP layer"
    for name in ("input_layernorm", "post_attention_layernorm"):
        if not hasattr(layer, name):
            return f"no {name}"
    for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)):
        kinds = {type(m) for m in group}
        if len(kinds) != 1 or not issubclass(kinds.pop(), (torch.nn.Linear, Int8Linear)):
            return "its q/k/v or gate/up products are not all nn.Linear or all Int8Linear"
    return None


class _Products:
    """The products of ``mods`` on one input: one int8 product over a concatenated copy, or each
    dense module's own weight."""

    def __init__(self, mods):
        self.mods = tuple(mods)
        self.sizes = [m.out_features for m in mods]
        self.fused = None
        self.ptrs = None
        if isinstance(mods[0], Int8Linear) and len({m.bias is None for m in mods}) == 1:
            with torch.no_grad():
                self.fused = Int8Linear.from_parts(torch.cat([m.qweight for m in mods]), torch.cat([m.scale for m in mods]),
                                                   None if mods[0].bias is None else torch.cat([m.bias for m in mods]))
            self.ptrs = [m.qweight.data_ptr() for m in mods]

    def intact(self, mods) -> bool:
        return tuple(mods) == self.mods and (self.ptrs is None or [m.qweight.data_ptr() for m in mods] == self.ptrs)

    def __call__(self, x):
        if self.fused is not None:
            return self.fused(x).split(self.sizes, dim=-1)
        return tuple(_linear(m, x) for m in self.mods)


def _linear(m, x):
    """``m(x)`` without nn.Module's call machinery for a plain nn.Linear."""
    if type(m) is torch.nn.Linear:
        return torch.nn.functional.linear(x, m.weight, m.bias)
    return m(x)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FusedLayer:
    """``layer``'s forward with fused q/k/v and gate/up products (module docstring)."""

    def __init__(self, layer):
        reason = fusable(layer)
        if reason is not None:
            raise ValueError(f"layer: cannot fuse it ({reason})")
        self.layer = layer
        attn, mlp = layer.self_attn, layer.mlp
        cfg = attn.config
        self.idx = attn.layer_idx
        self.head_dim = attn.head_dim
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.scaling = attn.scaling
        self.q_norm = getattr(attn, "q_norm", None)  # Qwen3: RMSNorm over each head
        self.k_norm = getattr(attn, "k_norm", None)
        self.qkv = _Products((attn.q_proj, attn.k_proj, attn.v_proj))
        self.gate_up = _Products((mlp.gate_proj, mlp.up_proj))

    @classmethod
    def of(cls, layer) -> "FusedLayer":
        """The FusedLayer of ``layer``, shared by every backend over the same model (one int8 copy)."""
        fl = layer.__dict__.get("_hsd_fused")
        if type(fl) is not cls or fl.layer is not layer or not fl.intact():  # another version's FusedLayer, or stale
            fl = cls(layer)
            layer.__dict__["_hsd_fused"] = fl  # a plain attribute: not a submodule, not in the state dict
        return fl

    def intact(self) -> bool:
        attn, mlp = self.layer.self_attn, self.layer.mlp
        return self.qkv.intact((attn.q_proj, attn.k_proj, attn.v_proj)) and self.gate_up.intact((mlp.gate_proj, mlp.up_proj))

    def check(self) -> None:
        if not self.intact():
            raise RuntimeError("the model's layers were replaced after its CachedLM was built (quantize_int8?): "
                               "build a new backend (a new SpeculativeDecoder)")

    def __call__(self, x, mask, cos_sin, cache, forward=None):
        """x [B, M, hidden] -> [B, M, hidden]; ``cache`` (the backend's slot cache) holds this layer's
        key/value buffers at ``cache.kv[idx]``; ``forward``: :func:`layer_forward` or a compiled copy."""
        keys, values = cache.kv[self.idx]  # outside the compiled region: the layer index is not a guard
        return (forward or layer_forward)(self, x, mask, cos_sin[0], cos_sin[1], keys, values, cache.index, cache.kv_len)


def pre_attention(fl: FusedLayer, x, cos, sin):
    """The layer up to attention: x [B, M, hidden], cos/sin [B, M, D] -> q [B, heads, M, D], k, v
    [B, H_kv, M, D] (normed, projected, rotated).  Pure: no buffer is written, so it compiles cleanly."""
    B, M, _ = x.shape
    D = fl.head_dim
    q, k, v = fl.qkv(fl.layer.input_layernorm(x))
    q, k, v = q.view(B, M, -1, D), k.view(B, M, -1, D), v.view(B, M, -1, D)
    if fl.q_norm is not None:
        q, k = fl.q_norm(q), fl.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, M, D]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def post_attention(fl: FusedLayer, x, o):
    """The layer after attention: x [B, M, hidden], o [B, heads, M, D] -> [B, M, hidden] (output
    projection, residual, MLP).  Pure, like :func:`pre_attention`."""
    B, M, _ = x.shape
    layer, mlp = fl.layer, fl.layer.mlp
    x = x + _linear(layer.self_attn.o_proj, o.to(x.dtype).transpose(1, 2).reshape(B, M, fl.n_heads * fl.head_dim))
    gate, up = fl.gate_up(layer.post_attention_layernorm(x))
    return x + _linear(mlp.down_proj, mlp.act_fn(gate) * up)


def layer_forward(fl: FusedLayer, x, mask, cos, sin, keys_buf, values_buf, index, kv_len: int, parts=(pre_attention, post_attention)):
    """One decoder layer: x [B, M, hidden], mask None or additive [B or 1, 1, M, kv_len], cos/sin
    [B, M, D], the layer's cache buffers keys_buf/values_buf [B, H_kv, capacity, D] (the new keys and
    values are written at slots ``index`` [B, M]; attention reads the first ``kv_len`` slots and runs
    in the buffers' dtype, the mask's too).  ``parts``: :func:`pre_attention` and
    :func:`post_attention`, or compiled copies (:class:`~hsd_fast.engine.backend.CachedLM`'s
    ``compile``); the cache writes and the attention stay eager either way."""
    pre, post = parts
    q, k, v = pre(fl, x, cos, sin)
    B, _, M, D = k.shape
    slots = index[:, None, :, None].expand(B, k.shape[1], M, D)
    keys_buf.scatter_(2, slots, k.to(keys_buf.dtype))
    values_buf.scatter_(2, slots, v.to(values_buf.dtype))
    keys, values = keys_buf[:, :, :kv_len], values_buf[:, :, :kv_len]
    if fl.n_heads != fl.n_kv and not _SDPA_GQA:
        rep = fl.n_heads // fl.n_kv
        keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
    gqa = {"enable_gqa": True} if fl.n_heads != fl.n_kv and _SDPA_GQA else {}
    # attention in the cache's dtype (float32 for half-precision models on a CPU, CachedLM.kv_dtype)
    o = torch.nn.functional.scaled_dot_product_attention(q.to(keys.dtype), keys, values, attn_mask=mask, scale=fl.scaling, **gqa)
    return post(fl, x, o)
