"""Memory of a decode, estimated from the model's shape: weights, KV cache, logits and STIR's previews.

`estimate()` is what the README's memory table prints for real model sizes; `benchmarks/bench_scale.py`
checks it against peak RSS measured on a random-init model of Qwen2.5-0.5B's shape. Bytes throughout.

What is counted (the engine's own tensors; allocator slack and framework buffers are not):
- weights: parameters × dtype size;
- KV cache: 2 (K, V) × layers × kv heads × head dim × rows × slots × dtype size, where slots = prompt +
  generated tokens (+ the holes a row leaves: re-runs and rolled-back probes, ~5% for STIR); HF's cache
  grows by concatenation, so one layer's K and V exist twice during a step;
- logits: float32 `[rows, vocab]` for the next token (the engine never keeps `[rows, positions, vocab]`;
  `legacy_prefill_logits=True` estimates the old prefill that did);
- previews: STIR's extra rows — L probe copies per previewed prompt, one driver per committed segment —
  each holding a full row of cache. `max_preview_rows` caps the rows but serialises the previews, and every
  forward gives every row a slot (idle rows too), so the cache widens with the forwards: measured on an H200
  at 1.5B's shapes it raised the peak (results/bench_gpu_capped.txt). `estimate` counts the rows only, so
  with a cap it is no bound; the README's table shows no capped column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GiB = 1024**3


@dataclass(frozen=True, kw_only=True)
class Shape:
    name: str
    n_params: float
    n_layers: int
    d_model: int
    n_kv_heads: int
    head_dim: int
    vocab: int


# Published configs of the Qwen2.5 instruct models (config.json on the hub).
QWEN25 = {
    "0.5B": Shape(name="Qwen2.5-0.5B", n_params=0.494e9, n_layers=24, d_model=896, n_kv_heads=2, head_dim=64,
                  vocab=151_936),
    "1.5B": Shape(name="Qwen2.5-1.5B", n_params=1.544e9, n_layers=28, d_model=1536, n_kv_heads=2,
                  head_dim=128, vocab=151_936),
    "3B": Shape(name="Qwen2.5-3B", n_params=3.086e9, n_layers=36, d_model=2048, n_kv_heads=2, head_dim=128,
                vocab=151_936),
    "7B": Shape(name="Qwen2.5-7B", n_params=7.616e9, n_layers=28, d_model=3584, n_kv_heads=4, head_dim=128,
                vocab=152_064),
}


def kv_bytes_per_slot(shape: Shape, dtype_bytes: int) -> int:
    """K and V of one token in one row, every layer."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * dtype_bytes


def estimate(shape: Shape, batch: int, prompt_tokens: int, new_tokens: int, dtype_bytes: int = 2,
             method: str = "vanilla", top_l: int = 4, max_preview_rows: int | None = None,
             hole_fraction: float = 0.05, legacy_prefill_logits: bool = False) -> dict[str, float]:
    """Peak bytes by part for one batched decode; `total` adds them up.

    STIR's previews: at worst every prompt previews at once (L copies each) unless `max_preview_rows` caps
    the extra rows; the legacy path (`schedule=sync`) forked L + 1 copies of every previewed row.
    """
    slots = prompt_tokens + new_tokens
    per_slot = kv_bytes_per_slot(shape, dtype_bytes)
    weights = shape.n_params * dtype_bytes
    if method == "vanilla":
        kv_rows, slot_factor = batch, 1.0
    else:
        extra = batch * top_l if max_preview_rows is None else min(batch * top_l, max_preview_rows)
        if legacy_prefill_logits:  # the sync path's fork: L + 1 copies next to the originals
            extra = batch * (top_l + 1)
        kv_rows, slot_factor = batch + extra, 1.0 + hole_fraction
    kv = kv_rows * slots * slot_factor * per_slot
    kv_step = kv / shape.n_layers  # one layer's K, V concatenated anew during a step
    logits = batch * shape.vocab * 4 * (prompt_tokens if legacy_prefill_logits else 1)
    parts = {"weights": weights, "kv_cache": kv + kv_step, "logits": logits}
    parts["total"] = sum(parts.values())
    return parts


def table(batch: int = 64, prompt_tokens: int = 200, new_tokens: int = 1000, dtype_bytes: int = 2,
          top_l: int = 4) -> list[dict]:
    """The README's memory table: per Qwen2.5 size, vanilla vs STIR's worst case (every prompt previewing)."""
    rows = []
    for key, shape in QWEN25.items():
        if key == "0.5B":
            continue
        v = estimate(shape, batch, prompt_tokens, new_tokens, dtype_bytes, "vanilla")
        s = estimate(shape, batch, prompt_tokens, new_tokens, dtype_bytes, "stir", top_l)
        rows.append({"model": shape.name, "weights_gib": v["weights"] / GiB,
                     "kv_vanilla_gib": v["kv_cache"] / GiB, "logits_gib": v["logits"] / GiB,
                     "vanilla_gib": v["total"] / GiB, "stir_uncapped_gib": s["total"] / GiB,
                     "stir_uncapped_x": s["total"] / v["total"], **{"shape": asdict(shape)}})
    return rows
