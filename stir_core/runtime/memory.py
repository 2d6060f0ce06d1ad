"""Memory of a decode, estimated from the model's shape: weights, KV cache, logits and STIR's previews.

`estimate()` is what the README's memory table prints for real model sizes; `benchmarks/bench_scale.py`
checks it against peak RSS measured on a random-init model of Qwen2.5-0.5B's shape. Bytes throughout.

What is counted (the engine's own tensors; allocator slack and framework buffers are not):
- weights: parameters × dtype size;
- KV cache: the static slot pool (`stir_core/runtime/slots.py`): 2 (K, V) × layers × kv heads × head dim ×
  S slots × (T + 1) positions × dtype size, allocated once per decode. T = the longest prompt + the budget
  (+ `probe_tokens` + 1 under a policy: a null preview may run past the budget before it is rolled back);
  S = `pool_rows(...)`: the prompts, plus for STIR at most L probe rows per prompt (a driver replaces the
  probes of its prompt), fewer under `max_preview_rows` (see `pool_rows`). Nothing widens with the
  number of forwards: a re-run overwrites its position, a rollback sets a length;
- logits: float32 `[rows, vocab]` for the next token (the engine never keeps `[rows, positions, vocab]`;
  `legacy_prefill_logits=True` estimates the old prefill that did);
- previews: STIR's extra rows — L probe copies per previewed prompt, one driver per committed segment —
  each a slot of the pool. `max_preview_rows` caps the extra rows, so with the slot pool it bounds memory
  (before the pool, each forward widened every row's cache and a cap raised the peak: H200,
  results/bench_gpu_capped.txt). The scheduler allocates one pool per run and never rebuilds it; with
  more prompts than `batch`, waiting prompts take the slots finished rows leave.
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


def pool_rows(batch: int, method: str = "vanilla", top_l: int = 4, max_preview_rows: int | None = None,
              scope: str = "segment") -> int:
    """Slots of the one scheduler's pool for `batch` sequences: one main row each, plus STIR's extra rows
    (probes, and in scope `segment` a driver per commit). Uncapped: L per prompt, the worst case (a driver
    takes one slot after its probes left). With `max_preview_rows` = c: max(c, L) extra slots whatever
    the pattern (one control point's L probes always fit); probes and drivers wait for a free one."""
    if method == "vanilla":
        return batch
    most = batch * max(top_l, 1)
    if max_preview_rows:
        most = min(most, max(max_preview_rows, top_l))
    return batch + most


def pool_positions(prompt_tokens: int, new_tokens: int, probe_tokens: int = 4, method: str = "vanilla") -> int:
    """Positions T per slot: prompt + budget (+ a null preview's run past the budget, under a policy)."""
    return prompt_tokens + new_tokens + (probe_tokens + 1 if method != "vanilla" else 1)


def pool_bytes(shape: Shape, rows: int, positions: int, dtype_bytes: int = 2) -> int:
    """K and V of a slot pool of `rows` slots × `positions` (+ 1 scratch) positions, every layer."""
    return rows * (positions + 1) * kv_bytes_per_slot(shape, dtype_bytes)


def estimate(shape: Shape, batch: int, prompt_tokens: int, new_tokens: int, dtype_bytes: int = 2,
             method: str = "vanilla", top_l: int = 4, max_preview_rows: int | None = None,
             hole_fraction: float = 0.05, legacy_prefill_logits: bool = False,
             scope: str = "segment") -> dict[str, float]:
    """Peak bytes by part for one batched decode; `total` adds them up.

    STIR's previews: at worst every prompt previews at once (L copies each) unless `max_preview_rows` caps
    the extra rows (`pool_rows`). `hole_fraction` is kept for old callers and ignored: the slot pool has no
    holes. `legacy_prefill_logits` counts the old all-position prefill logits.
    """
    weights = shape.n_params * dtype_bytes
    rows = pool_rows(batch, method, top_l, max_preview_rows, scope)
    kv = pool_bytes(shape, rows, pool_positions(prompt_tokens, new_tokens, method=method), dtype_bytes)
    logits = batch * shape.vocab * 4 * (prompt_tokens if legacy_prefill_logits else 1)
    parts = {"weights": weights, "kv_cache": kv, "logits": logits}
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
