"""The backend seam: the only module that touches transformers' or TransformerLens' internals.

Everything the engine, mining and the controller need from the model goes through `Backend`:

- `hook_name(layer, point)` — the TransformerLens hook name of a residual-stream point;
- `new_cache(n_slots, capacity)` — the static slot pool (`stir_core/runtime/slots.py`);
- `forward(ids, qpos, cache, hooks, keep)` — one forward writing the new K/V at their positions in place;
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

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stir_core.runtime.slots import SlotCache, attention_masks, layer_windows

HOOK_POINTS = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid")
DEFAULT_HOOK_POINT = "blocks.{layer}.hook_resid_post"

Hook = tuple[str, Callable[[torch.Tensor, Any], torch.Tensor | None]]


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
    """A TransformerLens 4 `TransformerBridge` driven one forward at a time over a static slot pool.

    Shapes: `ids` `[batch, t]` long; `qpos` `[batch, t]` long (the positions written; -1 for nothing);
    logits `[batch, t or 1, d_vocab]` in the model's dtype; hooks see `[batch, t, d_model]`.
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
        self.windows, self.mask_mapping = layer_windows(self.config)
        if len({w for w in self.windows if w is not None}) > 1:
            raise ValueError("layers with different sliding windows are not supported by the slot cache")
        param = next(self.hf_model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def new_cache(self, n_slots: int, capacity: int, lazy_zero: bool = False, fixed: bool = False) -> SlotCache:
        """An empty static pool of `n_slots` slots of `capacity` positions (`stir_core/runtime/slots.py`)."""
        return SlotCache(n_slots, capacity, lazy_zero=lazy_zero, fixed=fixed)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, qpos: torch.Tensor, cache: SlotCache, keep: str = "last",
                rows: torch.Tensor | None = None, grow: bool = True, offset: int = 0) -> torch.Tensor | None:
        """Run `ids` `[batch, t]` at query positions `qpos` `[batch, t]` (-1: nothing fed there; its K/V go to
        the scratch column), writing the K/V in place. Batch row b is slot `rows[b]` of `cache` (`rows`
        `[batch]` long; None: slots `[offset, offset + batch)` in order, read as a view). `grow=False` (a captured step): no capacity check, which
        would read `qpos` back to the host.

        Hooks are the engine's, installed once (`stir_core/runtime/steering.py`). `keep="last"` returns logits `[batch, 1, d_vocab]` for the last position only
        (prefill, steps); `keep="all"` returns `[batch, t, d_vocab]`; `keep="none"` returns None.
        """
        view = None
        if grow:  # eager: attend over the longest filled range only
            view = needed = max(int(qpos.max()) + 1, 1)
            if needed > cache.capacity:
                cache.grow(max(needed, 2 * cache.capacity))
        cache.rows, cache.view, cache.offset = rows, view, offset
        cache.write = torch.where(qpos >= 0, qpos, cache.scratch).to(self.device)
        q = qpos.to(self.device)
        full, slide = attention_masks(q, cache.capacity, {w for w in self.windows if w is not None}, self.dtype,
                                      n_keys=view)
        mask: Any = full
        if slide and all(self.windows):  # every layer slides with one window (Mistral): one plain mask
            mask = next(iter(slide.values()))
        if self.mask_mapping:
            mask = {"full_attention": full, "sliding_attention": slide[next(iter(slide))]}
        kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": q.clamp(min=0), "use_cache": True,
                                  self.cache_kw: cache}
        if keep in ("last", "none") and self._keeps_logits:
            kwargs["logits_to_keep"] = 1
        logits = self.bridge(ids, return_type="logits", **kwargs)
        if keep == "none":
            return None
        return logits[:, -1:] if keep == "last" else logits
