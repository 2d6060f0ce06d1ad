"""Static slot KV cache: a fixed pool of S row slots over per-layer K/V tensors of length T.

Every slot is one row of the pool. Its cache is the contiguous range `[0, length)`: position id == cache
index, so a slot needs no attention mask over holes, and a rollback is setting its length. Writes go to
explicit positions (`write` `[batch, t]`), so a re-run of a slot's last token (a `last` steer) overwrites
that position in place: nothing stays masked inside a sliding window. Column `T` is a scratch column: rows
fed nothing this forward (or a prompt's left padding) write there and no real query ever attends it.

The attention mask is built here from the query positions alone (`attention_masks`): key j is visible to a
query at position p iff `j <= p` (and `j > p - window` on sliding-window layers), as a 4D additive float
mask `[batch, 1, t, T + 1]`; models with sliding-window layers get the `{"full_attention", "sliding_attention"}`
mapping that Hugging Face models accept ready-made. Both Hugging Face's attention and TransformerLens'
re-implemented attention call `cache.update(k, v, layer_idx, ...)`, the one method relied on here.

Memory: `2 * n_layers * S * (T + 1) * kv_heads * head_dim * bytes` whatever the preview pattern
(`stir_core/runtime/memory.py`, `slot_pool_bytes`).
"""

from __future__ import annotations

from typing import Any

import torch


class SlotCache:
    """Per-layer K/V `[S, kv_heads, T + 1, head_dim]`, allocated on the first write of each layer.

    Before each forward the caller sets `rows` (`[batch]` long: the slot of each batch row, or None when
    the batch is the pool's first `batch` slots in order: the occupied prefix of a fixed pool) and `write` (`[batch, t]` long: the position each new
    token's K/V goes to; `T` for the scratch column). `update` writes there and returns the keys and values
    the batch's rows attend over (the whole pool's tensors, no copy, when `rows` is None).
    """

    is_compileable = False

    def __init__(self, n_slots: int, capacity: int, lazy_zero: bool = False, fixed: bool = False):
        self.n_slots, self.capacity = int(n_slots), int(capacity)
        self.fixed = fixed  # a graph pool: its tensors are captured, so it never grows
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        # A fixed pool sized for the worst case (every prompt previewing at once) mostly stays unused: with
        # `lazy_zero` its tensors start uninitialised and slots are zeroed the first time a batch reaches
        # them (a query attends its batch's slots up to the longest filled range, so those must be finite).
        # `zeroed[layer]`: slots [0, n) of that layer are finite. Off for a captured step's pool.
        self.lazy_zero = lazy_zero
        self.zeroed: list[int] = []
        self.rows: torch.Tensor | None = None
        self.write: torch.Tensor | None = None
        # Eager steps attend over the first `view` positions only (the longest filled range), not all T + 1:
        # on a CPU attention costs per key. None: every position (a captured step needs the fixed shape).
        self.view: int | None = None
        self.offset = 0  # with `rows` None: the batch is slots [offset, offset + batch)

    # what Hugging Face may ask of a cache when it builds nothing itself
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.capacity + 1

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def scratch(self) -> int:
        return self.capacity

    def _alloc(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> None:
        while len(self.keys) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
            self.zeroed.append(0)
        shape = (self.n_slots, k.shape[1], self.capacity + 1)
        make = k.new_empty if self.lazy_zero else k.new_zeros
        self.keys[layer_idx] = make(*shape, k.shape[-1])
        self.values[layer_idx] = make(*shape, v.shape[-1])
        self.zeroed[layer_idx] = 0 if self.lazy_zero else self.n_slots

    def _ready(self, layer_idx: int, n: int) -> None:
        """Slots [0, n) of a layer hold finite values (zeroed on first reach)."""
        done = self.zeroed[layer_idx]
        if n > done:
            self.keys[layer_idx][done:n].zero_()
            self.values[layer_idx][done:n].zero_()
            self.zeroed[layer_idx] = n

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `[batch, kv_heads, t, head_dim]` at `write`; return `[batch, kv_heads, T + 1, head_dim]`."""
        if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:
            self._alloc(layer_idx, key_states, value_states)
        batch, lo = self.write.shape[0], self.offset
        if self.lazy_zero:
            self._ready(layer_idx, lo + batch if self.rows is None else int(self.rows.max()) + 1)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        write = self.write.to(keys.device)
        rows = (torch.arange(lo, lo + batch, device=keys.device) if self.rows is None
                else self.rows.to(keys.device))
        # [batch, t, kv_heads, head_dim] at (rows[b], :, write[b, i]): advanced indices around a slice
        keys[rows[:, None], :, write] = key_states.transpose(1, 2).to(keys.dtype)
        values[rows[:, None], :, write] = value_states.transpose(1, 2).to(values.dtype)
        if self.view is not None:
            keys, values = keys[:, :, : self.view], values[:, :, : self.view]
        if self.rows is None:  # the batch is a run of the pool's slots: a view, no copy
            return keys[lo: lo + batch], values[lo: lo + batch]
        return keys.index_select(0, rows), values.index_select(0, rows)

    # ---- slot operations ---------------------------------------------------------------------------
    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor, upto: int) -> None:
        """Slots `dst` `[n]` become copies of slots `src` `[n]` over positions `[0, upto)`, in place (a
        fork into free slots: only those rows' filled range moves)."""
        pairs = list(zip(src.tolist(), dst.tolist(), strict=True))
        if not pairs:
            return
        for j, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is None:
                continue
            if self.lazy_zero:
                self._ready(j, max(d for _, d in pairs) + 1)
            if set(src.tolist()) & set(dst.tolist()):  # overlapping moves: gather all first, then scatter
                s, d = src.to(k.device), dst.to(k.device)
                k[d, :, :upto] = k[s, :, :upto]
                v[d, :, :upto] = v[s, :, :upto]
                continue
            for s, d in pairs:  # plain slice copies: cheaper on a CPU than one advanced-index assignment
                k[d, :, :upto].copy_(k[s, :, :upto])
                v[d, :, :upto].copy_(v[s, :, :upto])

    def select(self, idx: torch.Tensor, upto: int) -> SlotCache:
        """A new pool whose slot i copies slot `idx[i]` (repeats allowed). One gather of whole slots: what
        lies past a slot's length is stale but finite (the pool starts zeroed and only ever holds K/V), and
        masked until overwritten, so no separate zero-fill pass; `upto` is the longest filled range."""
        new = SlotCache(len(idx), self.capacity)
        for k, v in zip(self.keys, self.values, strict=True):
            i = None if k is None else idx.to(k.device)
            new.keys.append(None if k is None else k.index_select(0, i))
            new.values.append(None if v is None else v.index_select(0, i))
        return new

    def grow(self, capacity: int) -> None:
        """Lengthen every slot to `capacity` positions (a copy; a pool sized from the budget never grows)."""
        if capacity <= self.capacity:
            return
        if self.fixed:
            raise RuntimeError(f"a graph pool of {self.capacity} positions cannot grow to {capacity}")
        for lst in (self.keys, self.values):
            for j, t in enumerate(lst):
                if t is None:
                    continue
                new = t.new_zeros(t.shape[0], t.shape[1], capacity + 1, t.shape[3])
                new[:, :, : self.capacity] = t[:, :, : self.capacity]
                lst[j] = new
        self.capacity = capacity

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


def layer_windows(config: Any) -> tuple[list[int | None], bool]:
    """Per decoder layer, its sliding window (None: full attention), and whether the model takes the
    `{"full_attention", "sliding_attention"}` mask mapping (it mixes full and sliding layers)."""
    n = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window else "full_attention"] * n
    wins = [int(window) if t == "sliding_attention" and window else None for t in types]
    # Only models that mix full and sliding layers take (and need) the mapping; a model whose every layer
    # slides (Mistral) builds one mask and gets the sliding one as a plain 4D tensor.
    return wins, len(set(wins)) > 1


def attention_masks(qpos: torch.Tensor, capacity: int, windows: set[int], dtype: torch.dtype,
                    n_keys: int | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Additive masks `[batch, 1, t, n_keys]` (0 visible, dtype's min hidden; `n_keys` defaults to the
    pool's T + 1) for queries at `qpos` `[batch, t]`: the full-attention one and one per sliding window. A
    query whose row is fed nothing (position -1) sees the scratch column when it is in view, else nothing
    (its output is discarded either way)."""
    keys = torch.arange(capacity + 1 if n_keys is None else n_keys, device=qpos.device)
    q = qpos[:, None, :, None]
    visible = keys <= q
    idle = (q < 0) & (keys == capacity)
    lo = torch.finfo(dtype).min
    full = torch.where(visible | idle, 0.0, lo).to(dtype)
    slide = {w: torch.where((visible & (keys > q - w)) | idle, 0.0, lo).to(dtype) for w in windows}
    return full, slide
