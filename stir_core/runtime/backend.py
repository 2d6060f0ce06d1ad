"""The backend seam: the only module that touches transformers' or TransformerLens' internals.

Everything the engine, mining and the controller need from the model goes through `Backend`:

- `hook_name(layer, point)` — the TransformerLens hook name of a residual-stream point;
- `new_cache()` / `select_rows(cache, idx)` / `cache_length(cache)` — Hugging Face's KV cache;
- `forward(ids, mask, positions, cache, hooks, keep)` — one forward with the cache extended in place;
- `run_with_states(bridge, ids, names)` — a whole-sequence forward that returns named hook activations;
- `unembedding(bridge)` — the unembedding matrix and the final norm, for the logit lens.

The hook-name vocabulary lives here alone: `DEFAULT_HOOK_POINT` (what a library's manifest records as its
`hook_point`) and `hook_name(layer, point)`; nothing else spells `hook_resid_post`.

Why a seam: transformers 5.24 renamed the cache keyword (`past_key_values` → `cache`) in every model,
decoder layer and attention module, and the output field with it. TransformerLens 4.3 still speaks the old
name in two places: `return_type="logits_and_cache"` reads `output.past_key_values` (so it hands back
`None`), and its re-implemented attention modules read `kwargs["past_key_values"]` to extend the cache (so
on 5.24 they silently skip it). Every incremental step then ran without its prefix and the embedded model
decoded `111…`. Here (1) the cache is created by us and passed in by the keyword the installed model
accepts, and read back from nowhere (Hugging Face caches update in place); (2) on transformers that say
`cache`, a forward pre-hook on each re-implemented TransformerLens attention module hands it the cache
under the old name (`_install_cache_shim`). Both spellings live in this file alone.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

HOOK_POINTS = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid")
DEFAULT_HOOK_POINT = "blocks.{layer}.hook_resid_post"

Hook = tuple[str, Callable[[torch.Tensor, Any], torch.Tensor | None]]


class KVCache(Protocol):
    """What we rely on in a Hugging Face cache (`DynamicCache`): per-layer `keys`/`values`
    `[batch, kv_heads, slots, head_dim]`, updated in place by every forward."""

    layers: list

    def get_seq_length(self) -> int: ...


def hook_name(layer: int, point: str = DEFAULT_HOOK_POINT) -> str:
    """The hook name for `layer` under a manifest-style template, e.g. `blocks.3.hook_resid_post`.

    The hook sees (and may return a replacement for) the residual stream `[batch, pos, d_model]`.

    >>> hook_name(3), hook_name(0, "blocks.{layer}.hook_resid_pre")
    ('blocks.3.hook_resid_post', 'blocks.0.hook_resid_pre')
    """
    if "{layer}" not in point:
        raise ValueError(f"hook point template {point!r} has no '{{layer}}' field")
    name = point.format(layer=int(layer))
    if name.rsplit(".", 1)[-1] not in HOOK_POINTS:
        raise ValueError(f"hook point {point!r} is not a residual-stream point ({', '.join(HOOK_POINTS)})")
    return name


def cache_keyword(hf_model: torch.nn.Module) -> str:
    """`cache` on transformers ≥ 5.24, `past_key_values` before: read off the model's forward signature."""
    params = inspect.signature(hf_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _install_cache_shim(bridge: Any) -> int:
    """On `cache`-keyword transformers, give TransformerLens' re-implemented attention the old keyword.

    Only modules whose `forward` overrides `AttentionBridge.forward` read the cache themselves (through
    `_update_kv_cache`, which looks for `past_key_values`); the base class hands kwargs to the Hugging Face
    module, which already understands `cache`. Installed once per bridge and left installed: it only renames
    a keyword, and attaching it around every forward would cost about as much as a toy model's step.
    Returns the number of modules shimmed.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    if getattr(bridge, "_stir_cache_shim", None) is not None:
        return bridge._stir_cache_shim

    def rename(module, args, kwargs):
        if "cache" in kwargs and kwargs.get("past_key_values") is None:
            kwargs = dict(kwargs)
            kwargs["past_key_values"] = kwargs.pop("cache")
            return args, kwargs
        return None

    n = 0
    for module in bridge.original_model.modules():
        if isinstance(module, AttentionBridge) and type(module).forward is not AttentionBridge.forward:
            module.register_forward_pre_hook(rename, with_kwargs=True)
            n += 1
    bridge._stir_cache_shim = n
    return n


@torch.no_grad()
def run_with_states(bridge: Any, ids: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """One whole-sequence forward of `ids` `[batch, pos]` (no padding, no KV cache); returns
    `{name: [batch, pos, d_model]}` for the hook `names` (TransformerLens' `run_with_cache`)."""
    wanted = set(names)
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in wanted)
    return {n: cache[n] for n in names}


def unembedding(bridge: Any) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    """(`W_U` `[d_model, d_vocab]`, final-norm gain γ `[d_model]` or None, norm kind "rms"/"ln"/None),
    read from the bridge's `W_U`, `ln_final` and config."""
    ln = getattr(bridge, "ln_final", None)
    weight = getattr(ln, "weight", None) if ln is not None else None
    kind_cfg = str(getattr(bridge.cfg, "normalization_type", "") or "").upper()
    kind = "rms" if kind_cfg.startswith("RMS") else "ln" if kind_cfg.startswith("LN") else None
    return bridge.W_U, (weight.detach() if weight is not None else None), kind


class Backend:
    """A TransformerLens 4 `TransformerBridge` driven one forward at a time with a Hugging Face KV cache.

    Shapes: `ids` `[batch, t]` long; `mask` `[batch, slots]` long over every physical cache slot plus the
    `t` new ones (0 = a hole: padding or a replaced slot); `positions` `[batch, t]` long; logits
    `[batch, t or 1, d_vocab]` in the model's dtype; hooks see `[batch, t, d_model]`.
    """

    def __init__(self, bridge: Any):
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.config = self.hf_model.config
        self.cache_kw = cache_keyword(self.hf_model)
        if self.cache_kw == "cache":
            _install_cache_shim(bridge)
        # `logits_to_keep` avoids materialising [batch, t, vocab] logits at prefill (15 GB at 64 x 400 x 152k
        # in fp32); every architecture we support takes it, an old custom one may not.
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.hf_model.forward).parameters

    def new_cache(self) -> KVCache:
        """An empty KV cache; each forward appends `[batch, kv_heads, t, head_dim]` per layer."""
        from transformers import DynamicCache

        # With the config, layers get their real kinds (sliding-window layers for Gemma 2/3, Mistral).
        return DynamicCache(config=self.config)

    @staticmethod
    def cache_length(cache: KVCache) -> int:
        """Physical slots in the cache (holes included): the `slots` of `mask` `[batch, slots]`."""
        return int(cache.get_seq_length())

    @staticmethod
    def select_rows(cache: KVCache, idx: torch.Tensor) -> KVCache:
        """A new cache holding rows `idx` `[n]` long (repeats allowed): `[n, kv_heads, slots, head_dim]`
        per layer; the original is left untouched.

        Only the key/value tensors are gathered (`index_select` copies just those rows); every other field
        of a layer (sliding-window bookkeeping, dtype, device) is shared by a shallow copy.
        """
        new = copy.copy(cache)
        new.layers = []
        for layer in cache.layers:
            lay = copy.copy(layer)
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                i = idx.to(layer.keys.device)
                lay.keys = layer.keys.index_select(0, i)
                lay.values = layer.values.index_select(0, i)
            new.layers.append(lay)
        return new

    @staticmethod
    def copy_rows(cache: KVCache, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Overwrite rows `dst` `[n]` with rows `src` `[n]` (long), in place: a fork into rows that are no longer used, which
        copies only those rows instead of gathering the whole cache."""
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                s, d = src.to(layer.keys.device), dst.to(layer.keys.device)
                layer.keys.index_copy_(0, d, layer.keys.index_select(0, s))
                layer.values.index_copy_(0, d, layer.values.index_select(0, s))

    @staticmethod
    def select_slots(cache: KVCache, keep: torch.Tensor) -> bool:
        """Keep only the slots `keep` `[n_kept]` long of every layer (`[batch, kv_heads, n_kept, head_dim]`
        after), in place; False (and nothing done) when a layer keeps
        a sliding window, whose own bookkeeping counts slots."""
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            return False
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                i = keep.to(layer.keys.device)
                layer.keys = layer.keys.index_select(-2, i)
                layer.values = layer.values.index_select(-2, i)
        return True

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                hooks: Sequence[Hook] = (), keep: str = "last") -> torch.Tensor:
        """Run `ids` `[batch, t]` after the cached slots, extending `cache` in place by `t` slots.

        `mask` `[batch, slots + t]`, `positions` `[batch, t]`; each hook `(name, fn)` is attached for this
        forward only and `fn(x [batch, t, d_model], hook)` may return a replacement.

        `keep="last"` returns logits `[batch, 1, d_vocab]` for the last position only (prefill, steps);
        `keep="all"` returns `[batch, t, d_vocab]`; `keep="none"` returns None (capture-only forwards).
        """
        kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": positions, "use_cache": True,
                                  self.cache_kw: cache}
        if keep in ("last", "none") and self._keeps_logits:
            kwargs["logits_to_keep"] = 1
        with self.bridge.hooks(fwd_hooks=list(hooks)):
            logits = self.bridge(ids, return_type="logits", **kwargs)
        if keep == "none":
            return None
        return logits[:, -1:] if keep == "last" else logits
