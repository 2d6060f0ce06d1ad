"""The logit lens of a tool: the tokens a vector promotes and suppresses through the unembedding.

With `final_norm` the vector is first passed through the *linear part* of the model's final norm, i.e.
multiplied by its gain γ (and centred first for LayerNorm). Why: a tool Δ is a difference of residual
states, so the norm's bias cancels, and adding Δ to a state h changes the normed state by about
γ ⊙ Δ / scale(h); the positive scale does not change the ranking. Without `final_norm` the readout is the
raw `W_U^T Δ`. The app shows the readout after the final norm (the default here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stir_core.runtime import backend


@dataclass
class LensReadout:
    """Tokens a vector promotes (largest logits) and suppresses (smallest), best first."""

    promoted: list[tuple[int, float]]  # (token id, logit)
    suppressed: list[tuple[int, float]]
    final_norm: bool  # whether the final norm's linear part was applied first
    texts: dict[int, str] = field(default_factory=dict)  # token id -> text, when a tokenizer was given


def logit_lens(
    vector: torch.Tensor,
    W_U: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    norm_kind: str | None = None,
    k: int = 10,
) -> LensReadout:
    """Read a direction through the unembedding. vector: [d_model]; W_U: [d_model, d_vocab].

    With `norm_kind` "rms" the vector is multiplied by `norm_weight` (γ) first; with "ln" it is centred,
    then multiplied by γ (the linear part of the final norm; see the module docstring). None: raw W_U^T v."""
    v = torch.as_tensor(vector).detach().float().cpu()
    w = torch.as_tensor(W_U).detach().float().cpu()
    if v.ndim != 1 or w.ndim != 2 or w.shape[0] != v.shape[0]:
        raise ValueError(
            f"need vector [d_model] and W_U [d_model, d_vocab], got {tuple(v.shape)} and {tuple(w.shape)}"
        )
    if not torch.isfinite(v).all():
        raise ValueError("vector contains NaN or inf")
    if norm_kind not in (None, "rms", "ln"):
        raise ValueError(f"unknown norm_kind {norm_kind!r}; use None, 'rms' or 'ln'")
    if norm_kind == "ln":
        v = v - v.mean()
    if norm_kind is not None and norm_weight is not None:
        v = v * torch.as_tensor(norm_weight).detach().float().cpu()
    logits = v @ w  # [d_vocab]
    k = min(k, logits.shape[0])
    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    return LensReadout(
        [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)],
        [(int(i), -float(s)) for s, i in zip(bottom.values, bottom.indices, strict=True)],
        norm_kind is not None,
    )


def unembedding(model: Any) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    """(W_U [d_model, d_vocab], final-norm gain γ [d_model] or None, norm kind "rms"/"ln"/None) of a
    `LoadedModel` (`backend.unembedding`)."""
    return backend.unembedding(model.bridge)


def lens_for_model(model: Any, vector: torch.Tensor, k: int = 10, final_norm: bool = True) -> LensReadout:
    """`logit_lens` through a loaded model's unembedding (after its final norm's linear part by default),
    with token texts filled in."""
    W_U, weight, kind = unembedding(model)
    out = logit_lens(vector, W_U, weight, kind if final_norm else None, k)
    ids = {i for i, _ in out.promoted + out.suppressed}
    out.texts = {i: model.tokenizer.decode([i]) for i in sorted(ids)}
    return out
