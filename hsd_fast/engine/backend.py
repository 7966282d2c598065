"""Model backends: next-token logits of a causal LM at the last positions of ragged token rows.

The one call every backend answers is ``logits(depth, seq, lens, n_out) -> [B, n_out, V]``: for row
``b`` whose context is ``seq[b, :lens[b]]``, the logits that predict tokens ``lens[b] - n_out + 1 ..
lens[b]`` (i.e. computed at positions ``lens[b] - n_out .. lens[b] - 1``).  Caching is an internal
matter: a backend may reuse any work whose token prefix is unchanged, so callers never roll back.

:class:`CachedLM` (Llama / Qwen2 / Mistral / Qwen3-style decoders)
    gpt-fast-style *position-indexed* KV cache (STYLE.md §1): per layer a ``[B, H_kv, capacity, D]``
    buffer where slot ``j`` of row ``b`` holds the key/value of that row's token at position ``j``.
    There are no holes and no per-row crops: the cache remembers the tokens it was fed
    (``tok [B, capacity]``) and how many leading slots are valid per row; a new request compares its
    tokens with ``tok`` (one vectorised ``cumprod`` of equalities), lowers the valid length of each
    row to the common prefix, and recomputes only from there.  Rejected positions are simply
    overwritten by the next forward.  A forward over ragged per-row ranges ``[start_b, end_b)`` runs
    ``M = max(end - start)`` positions for every row; a row's surplus positions (``>= end_b``) all
    write one scratch slot, ``E = max(end)``, which no row holds and attention never reads.
    Attention reads the first ``E`` slots only, with explicit ``position_ids`` and an additive mask
    ``key_slot <= query_position``: per row when rows are ragged, one shared ``[1, 1, M, E]`` mask
    when every row runs the same positions, none for one query per row (SDPA's efficient kernels).

    Memory and per-call work follow the positions in use, never the width of the caller's buffer:
    the capacity (``capacity``, slots per row) is allocated lazily, starts at 16 and at least
    doubles whenever the longest row (plus the scratch slot when rows are ragged) outgrows it; only
    the first ``max(lens)`` tokens of a request are compared with ``tok``.  :meth:`CachedLM.select_rows`
    copies only the occupied slots, and shrinks the capacity when the kept rows use at most a
    quarter of it.

    Early-exit views (HiSpec, Kumar et al. arXiv 2510.01336, papers.md §5): ``view(depth)`` is the
    model truncated to its first ``depth`` decoder layers followed by the final norm and the LM head.
    The layers are cut into *segments* at the registered exit depths; each segment has its own valid
    length per row and stores its output hidden states per slot.  A deeper view therefore reuses the
    KV cache AND the hidden states of the shallower segments for every position they already hold,
    and runs only the upper layers there (a manual loop over the HF decoder layers).

:class:`RecomputeLM` (any Hugging Face causal LM)
    no cache: one full forward over the right-padded rows per call.  Exact but quadratic; the
    fallback for architectures :class:`CachedLM` does not support.
"""

from __future__ import annotations

import functools
import inspect
from typing import Protocol

import torch

from ..quant import Int8Linear
from .fused import FusedLayer, fusable, layer_forward, post_attention, pre_attention

__all__ = ["Backend", "CachedLM", "RecomputeLM", "supports_cached", "SUPPORTED_TYPES"]

# decoder-only architectures whose modules follow the Llama layout (embed_tokens, layers, norm,
# rotary_emb; layers called as layer(h, attention_mask, position_ids, cache (or past_key_values),
# position_embeddings) and calling cache.update(k, v, layer_idx))
SUPPORTED_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class Backend(Protocol):
    vocab_size: int
    n_layers: int
    device: torch.device
    max_positions: int | None  # the model's context length (config.max_position_embeddings), None if unknown

    def logits(self, depth: int, seq: torch.Tensor, lens: torch.Tensor, n_out: int, vocab_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def add_exit(self, depth: int) -> None: ...

    def reset(self) -> None: ...


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and isinstance(getattr(head, "out_features", None), int):
        return int(head.out_features)
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def _param(model) -> torch.Tensor:
    return next(model.parameters())


def _max_positions(model) -> int | None:
    """``config.max_position_embeddings`` (the positions the model was built for), ``None`` if absent."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _pow2(n: int) -> int:
    """The least power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


_MIN_CAPACITY = 16


def supports_cached(model) -> str | None:
    """``None`` if :class:`CachedLM` can drive ``model``, else the reason it cannot."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_TYPES}"
    inner = getattr(model, "model", None)
    for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, attr):
            return f"model.model has no {attr!r}"
    if getattr(model, "lm_head", None) is None:
        return "model has no lm_head"
    layer_types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "sliding_window", None) is not None and (layer_types is None or any(t != "full_attention" for t in layer_types)):
        return "sliding-window attention layers are not supported by the position-indexed cache"
    return None


class _SlotCache:
    """The cache object handed to HF decoder layers during one segment forward:
    ``update`` writes the new keys/values at their slots and returns the first ``kv_len`` slots."""

    def __init__(self, kv: list, index: torch.Tensor, kv_len: int):
        self.kv = kv  # per global layer index: (keys, values) [B, H_kv, capacity, D]
        self.index = index  # [B, M] slots of the new tokens (their positions; surplus ones: the scratch slot)
        self.kv_len = kv_len

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.kv[layer_idx]
        B, H, M, D = key_states.shape
        idx = self.index[:, None, :, None].expand(B, H, M, D)
        keys.scatter_(2, idx, key_states.to(keys.dtype))
        values.scatter_(2, idx, value_states.to(values.dtype))
        return keys[:, :, : self.kv_len], values[:, :, : self.kv_len]


@functools.lru_cache(maxsize=1)
def compiled_layer_forward():
    """:func:`layer_forward` with its pure parts (before and after attention) through
    ``torch.compile(dynamic=True)``, one compilation per process: every layer of every model of one
    architecture shares it (the layer index and the weights are not guards), and the batch and the
    positions per call vary without recompiling.  The cache writes and the attention stay eager: a
    compiled in-place write into the cache buffer (a graph input) and a compiled attention measured
    0.4-0.8x eager on this CPU (docs/engine.md, "Compiled layers")."""
    parts = (torch.compile(pre_attention, dynamic=True), torch.compile(post_attention, dynamic=True))
    return functools.partial(layer_forward, parts=parts)


class CachedLM:
    """A Llama-style HF causal LM behind a position-indexed, segment-split KV cache (module doc).

    ``compile=True`` runs each layer through :func:`compiled_layer_forward` (needs the fused layer
    forward; the first calls compile, about a minute on a CPU)."""

    def __init__(self, model, name: str | None = None, layers: str = "auto", compile: bool = False):
        if layers not in ("auto", "fused", "hf"):
            raise ValueError(f"layers: expected 'auto', 'fused' or 'hf', got {layers!r}")
        if not isinstance(compile, bool):
            raise ValueError(f"compile: expected True or False, got {compile!r}")
        reason = supports_cached(model)
        if reason is not None:
            raise ValueError(f"model: CachedLM cannot drive this model ({reason}); use RecomputeLM")
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):  # flash / flex kernels do not take our additive mask
            if not hasattr(model, "set_attn_implementation"):
                raise ValueError(f"model: attention implementation {impl!r} is not supported; load it with attn_implementation='sdpa'")
            model.set_attn_implementation("sdpa")
        self.model = model.eval()
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.lm_head
        self.n_layers = len(self.layers)
        self.vocab_size = _vocab_size(model)
        p = _param(model)
        self.device, self.dtype = p.device, p.dtype
        self.hidden = int(model.config.hidden_size)
        self.max_positions = _max_positions(model)
        self.exits: set[int] = {self.n_layers}
        # recent transformers name the layers' cache argument ``cache`` (``past_key_values`` is deprecated)
        params = inspect.signature(self.layers[0].forward).parameters if self.layers else {}
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # the lean layer forward (hsd_fast.engine.fused) where every layer allows it, else HF's layers
        why = next((r for r in map(fusable, self.layers) if r is not None), None)
        if layers == "fused" and why is not None:
            raise ValueError(f"layers: 'fused' needs Llama-style layers ({why})")
        self._fused = [FusedLayer.of(layer) for layer in self.layers] if layers != "hf" and why is None else None
        if compile and self._fused is None:
            raise ValueError(f"compile: needs the fused layer forward, which {self.name} cannot use ({why or 'layers=hf'})")
        self._forward = compiled_layer_forward() if compile else layer_forward
        # keys and values in float32 on a CPU for half-precision models (fused layers only): this torch's
        # CPU attention with one query per row is 4-8x slower in bfloat16 than in float32 (docs/engine.md)
        half = self.dtype in (torch.bfloat16, torch.float16)
        self.kv_dtype = torch.float32 if half and self.device.type == "cpu" and self._fused is not None else self.dtype
        self.reset()

    def add_exit(self, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.n_layers:
            raise ValueError(f"depth: expected an int in [1, {self.n_layers}], got {depth!r}")
        if depth not in self.exits:
            self.exits.add(depth)
            self.reset()

    def reset(self) -> None:
        """Forget every cached position and free the buffers (the next call allocates for its batch)."""
        self.bounds = sorted(self.exits)  # segment s covers layers [bounds[s-1], bounds[s])
        self._free()

    @property
    def capacity(self) -> int:
        """Slots per row currently allocated in every layer's key/value buffer (0 before the first call)."""
        return self._cap

    # ------------------------------------------------------------------ state

    def _free(self) -> None:
        self._B = None
        self._cap = 0
        self.tok = None  # [B, capacity] the tokens fed, by position (-1: never fed)
        self.kv = []  # per layer (keys, values) [B, H_kv, capacity, D]
        self.hid = []  # per segment [B, capacity, hidden]: its output hidden state at each slot
        self.seg_len = []  # per segment [B]: its leading valid slots

    def _used(self, rows: torch.Tensor | None = None) -> int:
        """Slots holding valid state in some row (of ``rows``, default all) and segment (a host sync)."""
        if self._B is None:
            return 0
        seg = torch.stack(self.seg_len)  # [segments, B]
        if rows is not None:
            seg = seg.index_select(1, rows)
        return int(seg.max()) if seg.numel() else 0

    def _buffers(self, B: int, cap: int):
        dev, dt = self.device, self.dtype
        tok = torch.full((B, cap), -1, dtype=torch.int64, device=dev)
        kv = []
        for layer in self.layers:
            attn = layer.self_attn
            shape = (B, attn.config.num_key_value_heads, cap, attn.head_dim)
            # zeros, not empty: masked slots still enter the attention products, so they must be finite
            kv.append((torch.zeros(shape, dtype=self.kv_dtype, device=dev), torch.zeros(shape, dtype=self.kv_dtype, device=dev)))
        hid = [torch.zeros((B, cap, self.hidden), dtype=dt, device=dev) for _ in self.bounds]
        return tok, kv, hid

    def _resize(self, cap: int, rows: torch.Tensor | None = None) -> None:
        """Reallocate with ``cap`` slots per row, keeping ``rows`` (default: all, in order) and copying
        only the occupied slots."""
        n = min(self._used(rows), cap)
        B = self._B if rows is None else int(rows.shape[0])
        tok, kv, hid = self._buffers(B, cap)

        def take(x):
            return x if rows is None else x.index_select(0, rows)

        tok[:, :n] = take(self.tok[:, :n])
        for (k, v), (ko, vo) in zip(kv, self.kv):
            k[:, :, :n] = take(ko[:, :, :n])
            v[:, :, :n] = take(vo[:, :, :n])
        for h, ho in zip(hid, self.hid):
            h[:, :n] = take(ho[:, :n])
        self.seg_len = [take(sl).clamp(max=n) for sl in self.seg_len]
        self.tok, self.kv, self.hid = tok, kv, hid
        self._B, self._cap = B, cap

    def _ensure(self, B: int, needed: int) -> None:
        """Make room for ``needed`` slots per row of a batch of ``B`` rows (a new batch size starts afresh)."""
        if self._B != B:
            self._free()
            self.tok, self.kv, self.hid = self._buffers(B, max(_MIN_CAPACITY, _pow2(max(needed, 1))))
            self.seg_len = [torch.zeros(B, dtype=torch.int64, device=self.device) for _ in self.bounds]
            self._B, self._cap = B, self.tok.shape[1]
        elif needed > self._cap:
            self._resize(max(2 * self._cap, _pow2(needed)))

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (in that order; repeats allowed), e.g. to drop finished
        requests.  Copies the occupied slots only; shrinks the capacity when they fill at most a
        quarter of it."""
        if self._B is None:
            return
        rows = rows.to(device=self.device, dtype=torch.int64)
        used = self._used(rows)
        cap = self._cap
        if 4 * used <= cap:
            cap = max(_MIN_CAPACITY, min(cap, _pow2(max(2 * used, 1))))
        self._resize(cap, rows)

    def prefill(self, seq: torch.Tensor, lens: torch.Tensor) -> None:
        """Run every segment over each row's tokens ``seq[b, :lens[b]]`` (then copy rows with
        :meth:`select_rows` to share one prefill between identical prompts).

        On a CPU, prompts of different lengths are run one at a time and their slots gathered into
        the batch's buffers: one batched forward would run every row to the longest prompt (on
        HumanEval 100-107, 1.8x the positions) and a CPU forward is compute-bound, while a copy of a
        row's prefix is cheap next to its forward.  Elsewhere (a GPU runs the padded batch in parallel,
        and B sequential forwards would leave it idle) the prompts run as one batch."""
        depth, n = max(self.exits), lens.tolist()
        if len(set(n)) <= 1 or self.device.type != "cpu":
            self.logits(depth, seq, lens, 1)
            return
        single = []
        for b in range(len(n)):
            self._free()
            self.logits(depth, seq[b : b + 1], lens[b : b + 1], 1)
            single.append((self.tok, self.kv, self.hid, self.seg_len))
        self._free()
        self._ensure(len(n), max(n))
        for b, (tok, kv, hid, seg_len) in enumerate(single):
            m = n[b]
            self.tok[b, :m] = tok[0, :m]
            for (k, v), (k1, v1) in zip(self.kv, kv):
                k[b, :, :m], v[b, :, :m] = k1[0, :, :m], v1[0, :, :m]
            for h, h1 in zip(self.hid, hid):
                h[b, :m] = h1[0, :m]
            for sl, sl1 in zip(self.seg_len, seg_len):
                sl[b] = sl1[0]

    # ------------------------------------------------------------------ forward

    def _head(self, h: torch.Tensor, vocab_ids: torch.Tensor | None) -> torch.Tensor:
        if vocab_ids is None:
            return self.lm_head(h)
        cached = getattr(self, "_head_cache", None)
        if cached is None or cached[0] is not vocab_ids:  # the cache holds the ids tensor itself
            if isinstance(self.lm_head, Int8Linear):
                cached = (vocab_ids, self.lm_head.rows(vocab_ids))
            else:
                bias = self.lm_head.bias
                weight = self.lm_head.weight[vocab_ids]
                cached = (vocab_ids, lambda x: torch.nn.functional.linear(x, weight, None if bias is None else bias[vocab_ids]))
            self._head_cache = cached
        return cached[1](h)

    @torch.no_grad()
    def logits(self, depth: int, seq: torch.Tensor, lens: torch.Tensor, n_out: int, vocab_ids: torch.Tensor | None = None,
               head=None) -> torch.Tensor:
        """Logits of the ``depth``-layer view at the last ``n_out`` positions of each row.

        seq [B, S] int64 (entries past lens are ignored, so S may be any width >= max(lens)), lens [B]
        int64 >= n_out.  -> [B, n_out, V] (only the columns ``vocab_ids``, in that order, when given:
        the LM head computes just those rows).  Memory and work depend on ``lens``, not on ``S``.

        ``head``: a trained exit head (:class:`hsd_fast.exits.LinearHead`), a map of each position's
        layer-``depth`` hidden state alone, ``[B, n_out, hidden] -> [B, n_out, hidden]`` in the model's
        dtype, applied to the gathered hidden states before the final norm.  The stored hidden states
        (what deeper segments read) are never changed, so the views keep sharing the cache.
        """
        if depth not in self.exits:
            raise ValueError(f"depth: {depth} is not a registered exit of {self.name} (exits {sorted(self.exits)})")
        B, S = seq.shape
        top = self.bounds.index(depth)
        if self._B == B:
            # common prefix of the cached tokens and the request, per row (the cache holds at most
            # capacity positions, so only that many columns can match)
            W = min(S, self._cap)
            same = (self.tok[:, :W] == seq[:, :W]).to(torch.int64).cumprod(1).sum(1)
            common = torch.minimum(same, lens)
            self.seg_len = [torch.minimum(sl, common) for sl in self.seg_len]
            seg = self.seg_len
        else:  # a new batch: nothing is cached for it
            seg = [torch.zeros_like(lens)] * len(self.bounds)
        # the call's one host read: the longest row, and per segment to run the most positions a row
        # needs and whether rows are ragged
        todo = lens[None, :] - torch.stack(seg[: top + 1])  # [top + 1, B]
        L, L_min, *stats = torch.cat([lens.amax()[None], lens.amin()[None], todo.amax(1), todo.amin(1)]).tolist() if B else [0, 0] + [0] * (2 * top + 2)
        stats = list(zip(stats[: top + 1], stats[top + 1 :]))
        if L > S:
            raise ValueError(f"lens: a row length {L} exceeds the width {S} of seq")
        self._ensure(B, L)
        if any(m > 0 and lo < m for m, lo in stats):
            self._ensure(B, L + 1)  # the scratch slot of the surplus positions
        self.tok[:, :L] = seq[:, :L]
        for s in range(top + 1):
            # the top segment recomputes nothing it already holds: its stored hidden states are read
            M, lo = stats[s]
            self._run_segment(s, self.seg_len[s], lens, seq, int(M), L, uniform=L == L_min and M == lo)
            self.seg_len[s] = lens.clone()
        pos = lens[:, None] - n_out + torch.arange(n_out, device=lens.device)  # [B, n_out]
        h = self.hid[top].gather(1, pos[..., None].expand(B, n_out, self.hidden))
        if head is not None:
            h = head(h)
        return self._head(self.norm(h), vocab_ids)

    def _run_segment(self, s: int, start: torch.Tensor, end: torch.Tensor, seq: torch.Tensor, M: int, E: int, uniform: bool = False) -> None:
        """Run segment ``s`` over positions ``[start_b, end_b)`` of each row: ``M = max(end - start)``
        positions per row, ``E = max(end)``.  Surplus positions (``>= end_b``) read and write slot ``E``.
        ``uniform``: every row runs exactly positions ``E - M .. E - 1`` (no surplus)."""
        if M <= 0:
            return
        B, S = seq.shape
        pos = start[:, None] + torch.arange(M, device=start.device)  # [B, M]
        slot = torch.where(pos < end[:, None], pos, E)  # [B, M]; E < capacity when some row has surplus
        # no position past the longest row reaches the model (its rotary tables, a context-length
        # check): surplus queries are discarded, so any position serves them
        pos = pos.clamp(max=E - 1)
        if s == 0:
            ids = seq.gather(1, slot.clamp(max=S - 1)).clamp(min=0)
            x = self.embed(ids)
        else:
            x = self.hid[s - 1].gather(1, slot[..., None].expand(B, M, self.hidden))
        # attention reads the first E slots: every valid key; a query at position p sees keys <= p.
        # Uniform rows share one mask ([1, 1, M, E], broadcast), and a single query per row sees every
        # key, so it needs none (SDPA's efficient kernels serve it).
        if uniform and M == 1:
            mask = None
        else:
            keys = torch.arange(E, device=pos.device)
            allowed = keys[None, None, None, :] <= (pos[:1] if uniform else pos)[:, None, :, None]  # [B or 1, 1, M, E]
            mask = torch.zeros(allowed.shape, dtype=self.kv_dtype, device=x.device).masked_fill_(~allowed, torch.finfo(self.kv_dtype).min)
        cos_sin = self.rotary(x, pos)
        cache = _SlotCache(self.kv, slot, E)
        lo = 0 if s == 0 else self.bounds[s - 1]
        if self._fused is not None:
            for fl in self._fused[lo : self.bounds[s]]:
                fl.check()
                x = fl(x, mask, cos_sin, cache, self._forward)
        else:
            for layer in self.layers[lo : self.bounds[s]]:
                x = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin, use_cache=True, **{self._cache_kw: cache})
                if isinstance(x, tuple):
                    x = x[0]
        self.hid[s].scatter_(1, slot[..., None].expand(B, M, self.hidden), x)


class RecomputeLM:
    """Any HF causal LM, no cache: each call runs the model over the right-padded rows."""

    def __init__(self, model, name: str | None = None):
        self.model = model.eval()
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.vocab_size = _vocab_size(model)
        p = _param(model)
        self.device, self.dtype = p.device, p.dtype
        self.n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        self.max_positions = _max_positions(model)
        self.exits = {self.n_layers}

    def add_exit(self, depth: int) -> None:
        if depth != self.n_layers:
            raise ValueError(f"depth: early exit needs CachedLM (a Llama-style model); {self.name} only offers the full depth {self.n_layers}")

    def reset(self) -> None:
        pass

    def select_rows(self, rows: torch.Tensor) -> None:
        pass

    @torch.no_grad()
    def logits(self, depth: int, seq: torch.Tensor, lens: torch.Tensor, n_out: int, vocab_ids: torch.Tensor | None = None) -> torch.Tensor:
        L = int(lens.max())  # the call's one host read
        ids = seq[:, :L].clamp(min=0)
        mask = (torch.arange(L, device=seq.device)[None, :] < lens[:, None]).to(torch.int64)
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # [B, L, V]
        pos = lens[:, None] - n_out + torch.arange(n_out, device=lens.device)
        res = out.gather(1, pos[..., None].expand(-1, -1, out.shape[-1]))
        if vocab_ids is not None:
            res = res.index_select(-1, vocab_ids)
        return res
