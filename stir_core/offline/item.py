"""`Item`: one mined (problem, control point, layer) contrast, the record Stage I keeps, checkpoints and
merges (`mine`, `checkpoint`, `shard_mine`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(kw_only=True)
class Item:
    """One mined (problem, control point, layer) contrast."""

    example_id: str
    m: int
    layer: int
    mu_pos: torch.Tensor  # [d_model]
    mu_neg: torch.Tensor
    shuffled_norm: float
    quality: float
    mean_reward_pos: float
    mean_reward_neg: float
    pos_ids: list[str]
    neg_ids: list[str]
    order: int  # global discovery order: deterministic tie-break
    # Provenance for the tool dashboard: each contrasted prefix (completion text up to the m-th delimiter)
    # and its rollout's reward, aligned with pos_ids / neg_ids ("" for a gold positive).
    pos_prefixes: list[str] = field(default_factory=list)
    neg_prefixes: list[str] = field(default_factory=list)
    pos_rewards: list[float] = field(default_factory=list)
    neg_rewards: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.quality, -self.order)
