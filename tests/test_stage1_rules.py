"""Stage I's contrast rules, one test per named step of `mine.contrast_problem`, each against the lines of
the authors' `stir/offline/stage1.py` (commit 77f5d9c) it reproduces, transcribed below in their own
index-space form (rollout indices, rewards, numpy-free), so the check is a second computation, not ours
re-run. Steps that are ours (switches in STIR_SPEC.md's knob table) say so and are checked by hand."""

from __future__ import annotations

import random

import pytest
import torch

from stir_core.config import MineConfig
from stir_core.offline import mine
from stir_core.offline.mine import Rollout
from stir_core.tasks import Example


# ---- the reference, transcribed (index space) -------------------------------------------------------
def ref_select_pos_neg(rewards: list[float], k_pos: int, k_neg: int) -> tuple[list[int], list[int]]:
    """stage1.py:59-64 `_select_pos_neg`."""
    idx_sorted = sorted(range(len(rewards)), key=lambda i: rewards[i], reverse=True)
    return idx_sorted[: max(1, k_pos)], list(reversed(idx_sorted))[: max(1, k_neg)]


def ref_select_pos_neg_random(valid_idx: list[int], k_pos: int, k_neg: int, rng) -> tuple[list[int], list[int]]:
    """stage1.py:67-86 `_select_pos_neg_random`."""
    if not valid_idx:
        return [], []
    order = list(valid_idx)
    rng.shuffle(order)
    pos_take = min(max(1, k_pos), len(order))
    pos, rem = order[:pos_take], order[pos_take:]
    neg_take = min(max(1, k_neg), len(rem)) if rem else min(max(1, k_neg), len(order))
    return pos, (rem if rem else order)[:neg_take]


def ref_contrast(correct: list[bool], rewards: list[float], k_pos: int, k_neg: int, min_incorrect: int,
                 pos_source: str) -> tuple[list[int], list[int], bool] | None:
    """stage1.py:470-497 (require_contrast): (positive indices, negative indices, gold is the positive), or
    None when the control point is skipped (min_correct_rollouts = 1, the reference default)."""
    idx = range(len(correct))
    correct_idx = [i for i in idx if correct[i]]
    incorrect_idx = [i for i in idx if not correct[i]]
    if len(incorrect_idx) < min_incorrect:
        return None
    neg_idx = sorted(incorrect_idx, key=lambda i: rewards[i])[:k_neg]
    use_rollout_pos = pos_source in {"rollout", "rollout_or_gold"} and len(correct_idx) >= 1
    use_gold_pos = pos_source in {"gold", "rollout_or_gold"}
    if use_rollout_pos:
        return sorted(correct_idx, key=lambda i: rewards[i], reverse=True)[:k_pos], neg_idx, False
    if use_gold_pos:
        return [], neg_idx, True
    return None


def ref_quality(pos_rewards: list[float], neg_rewards: list[float], random_mining: bool) -> float | None:
    """stage1.py:514-521: the reward gap, clamped at 0 under random mining, else a gap <= 0 is skipped."""
    gap = sum(pos_rewards) / len(pos_rewards) - sum(neg_rewards) / len(neg_rewards)
    if random_mining:
        return max(0.0, gap)
    return None if gap <= 0.0 else gap


# ---- helpers ---------------------------------------------------------------------------------------
class FixedShuffle:
    """An rng whose `shuffle` applies one given permutation, so ours and the reference draw the same."""

    def __init__(self, perm: list[int]) -> None:
        self.perm = perm

    def shuffle(self, x: list) -> None:
        x[:] = [x[i] for i in self.perm]


def rollouts(correct: list[bool], rewards: list[float], n_cp: int = 1, d: int = 3) -> list[Rollout]:
    return [Rollout(example_id="x", k=k, text="", n_tokens=5, correct=c, reward=r,
                    states=torch.full((n_cp, 1, d), float(k)), prefixes=[f"p{m}" for m in range(n_cp)])
            for k, (c, r) in enumerate(zip(correct, rewards, strict=True))]


def ks(rs: list[Rollout]) -> list[int]:
    return [r.k for r in rs]


CASES = [  # (correct, rewards): ties on purpose, so the tie order is checked too
    ([True, False, True, False, False], [0.9, -0.1, 0.9, -0.3, -0.1]),
    ([False, False, False], [0.0, -0.2, 0.0]),
    ([True, True, True, True], [0.5, 0.9, 0.5, 0.1]),
    ([False, True, False, True, False, True], [-0.1, 0.8, -0.1, 0.8, -0.4, 0.7]),
    ([True], [1.0]),
]


# ---- one test per step -----------------------------------------------------------------------------
@pytest.mark.parametrize("correct,rewards", CASES)
@pytest.mark.parametrize("k_pos,k_neg", [(1, 1), (2, 3), (4, 4), (8, 2)])
def test_split_ranked_reproduces_select_pos_neg(correct, rewards, k_pos, k_neg):
    """split_rule=reference, no correct/incorrect contrast: stage1.py:59-64 (best K_pos, worst K_neg)."""
    cfg = MineConfig(require_correct_and_incorrect=False, split_rule="reference", k_pos=k_pos, k_neg=k_neg)
    pos, neg = mine.split_ranked(rollouts(correct, rewards), cfg)
    assert (ks(pos), ks(neg)) == ref_select_pos_neg(rewards, k_pos, k_neg)


def test_split_ranked_disjoint_is_ours_equal_halves():
    """split_rule=disjoint (ours, no reference line): best and worst min(k_pos, k_neg, n // 2), never shared."""
    cfg = MineConfig(require_correct_and_incorrect=False, split_rule="disjoint", k_pos=4, k_neg=4)
    pos, neg = mine.split_ranked(rollouts([True] * 5, [0.1, 0.9, 0.5, 0.3, 0.7]), cfg)
    assert ks(pos) == [1, 4] and ks(neg) == [3, 0]
    assert mine.split_ranked(rollouts([True], [1.0]), cfg) is None


@pytest.mark.parametrize("n", [1, 2, 5, 7])
@pytest.mark.parametrize("k_pos,k_neg", [(1, 1), (2, 3), (4, 4), (8, 1)])
def test_split_random_reproduces_select_pos_neg_random(n, k_pos, k_neg):
    """method=random, split_rule=reference: stage1.py:67-86, with both sides drawing the same permutation."""
    perm = random.Random(n * 31 + k_pos).sample(range(n), n)
    cfg = MineConfig(method="random", split_rule="reference", k_pos=k_pos, k_neg=k_neg)
    pos, neg = mine.split_random(rollouts([False] * n, [0.0] * n), cfg, FixedShuffle(perm))
    assert (ks(pos), ks(neg)) == ref_select_pos_neg_random(list(range(n)), k_pos, k_neg, FixedShuffle(perm))


def test_split_random_disjoint_is_ours_halves():
    """split_rule=disjoint (ours): the shuffled rollouts cut in two equal halves; one rollout mines nothing."""
    cfg = MineConfig(method="random", split_rule="disjoint")
    pos, neg = mine.split_random(rollouts([False] * 5, [0.0] * 5), cfg, FixedShuffle([4, 2, 0, 1, 3]))
    assert ks(pos) == [4, 2] and ks(neg) == [0, 1, 3]
    assert mine.split_random(rollouts([False], [0.0]), cfg, FixedShuffle([0])) is None


@pytest.mark.parametrize("correct,rewards", CASES)
@pytest.mark.parametrize("pos_source", ["rollout", "gold", "rollout_or_gold"])
@pytest.mark.parametrize("k_pos,k_neg,min_incorrect", [(1, 1, 1), (2, 3, 2), (4, 4, 0), (1, 2, 2)])
def test_contrast_sides_reproduce_require_contrast(correct, rewards, pos_source, k_pos, k_neg, min_incorrect):
    """require_correct_and_incorrect: stage1.py:474-477 (negatives), 479-482 (rollout positives) and
    479-497 (the gold instead). Checked where min_incorrect <= k_neg (every config we ship): see
    `contrast_negatives` for the one difference beyond that."""
    cfg = MineConfig(k_pos=k_pos, k_neg=k_neg, min_incorrect=min_incorrect, pos_source=pos_source)
    rs = rollouts(correct, rewards)
    ref = ref_contrast(correct, rewards, k_pos, k_neg, min_incorrect, pos_source)
    neg = mine.contrast_negatives(rs, cfg)
    # Our floor is max(1, min_incorrect): the reference with min_incorrect 0 and no incorrect rollout has no
    # negatives and skips at stage1.py:509 (`if not pos_texts or not neg_texts`); so do we, one step earlier.
    if neg is None:
        assert ref is None or ref[1] == []
        return
    pos = mine.contrast_positives(rs, cfg)
    gold = mine.uses_gold(pos, cfg)
    if not pos and not gold:  # pos_source=rollout and no correct rollout: skipped
        assert ref is None
        return
    assert ref is not None
    assert ks(neg) == ref[1] and gold == ref[2]
    if not gold:
        assert ks(pos) == ref[0]


@pytest.mark.parametrize("pos,neg", [([0.9], [-0.1]), ([0.5, 0.1], [0.3]), ([0.0], [0.0]), ([-0.2], [0.4, 0.0])])
@pytest.mark.parametrize("method", ["contrastive", "random"])
def test_contrast_quality_reproduces_the_reward_gap_rule(pos, neg, method):
    """stage1.py:514-521: q = gap; method=random clamps q at 0 (random_quality=clamp, the reference), other
    methods drop a gap <= 0."""
    cfg = MineConfig(method=method, random_quality="clamp")
    want = ref_quality(pos, neg, random_mining=method == "random")
    got = mine.contrast_quality(sum(pos) / len(pos), sum(neg) / len(neg), cfg)
    assert got == (None if want is None else pytest.approx(want))


def test_contrast_quality_drop_switch_is_ours():
    """random_quality=drop (ours): the random ablation drops a gap <= 0 instead of clamping it."""
    cfg = MineConfig(method="random", random_quality="drop")
    assert mine.contrast_quality(0.2, 0.5, cfg) is None and mine.contrast_quality(0.5, 0.2, cfg) == pytest.approx(0.3)


def test_zero_delta_is_kept_as_the_reference_keeps_it():
    """stage1.py:623-625 keeps every finite Δ, zero included; `is_zero_delta` only counts it (and
    `drop_zero_delta`, ours, drops it): identical means are zero, float noise is zero, a real gap is not."""
    a = torch.tensor([1.0, -2.0, 3.0])
    noisy = torch.stack([a * 0.1] * 10).sum(0)  # 10 · 0.1 · a in float32: a up to rounding
    assert mine.is_zero_delta(a, a.clone()) and mine.is_zero_delta(noisy, a)
    assert not mine.is_zero_delta(a + 1e-3, a)
    same = rollouts([True, False], [0.9, -0.1])
    for r in same:
        r.states = torch.ones(1, 1, 3)
    ex = Example(id="x", question="q", answer="1")
    items, stats = mine.contrast_problem(None, None, ex, same, MineConfig(), [0], 0)
    assert len(items) == 1 and stats["zero_delta"] == 1
    items, stats = mine.contrast_problem(None, None, ex, same, MineConfig(drop_zero_delta=True), [0], 0)
    assert items == [] and stats["zero_delta"] == 1


def test_shuffled_control_is_ours_one_permutation_of_the_pooled_states():
    """Ours (no reference line): pos [a, b] and neg [c] pooled, permuted by (2, 1, 0) to [c, b, a], give
    |mean(c, b) - a| per layer."""
    a, b, c = (torch.tensor([[v, 2 * v]]) for v in (1.0, 3.0, 10.0))  # [n_layers=1, d=2] each
    got = mine.shuffled_control_norms(torch.stack([a, b]), torch.stack([c]), FixedShuffle([2, 1, 0]))
    assert got == [pytest.approx(float(((c + b) / 2 - a).norm()))]


def test_clean_rollouts_is_ours_the_step_checker_decides():
    """clean_prefixes (ours; the reference keeps every prefix): rollouts whose m-th prefix the checker refuses
    are left out."""
    rs = rollouts([True, False, False], [0.9, -0.1, -0.2], n_cp=2)
    rs[1].prefixes = ["ok", "bad"]
    ex = Example(id="x", question="q", answer="1")
    kept = mine.clean_rollouts(lambda ex, prefix: "bad" not in prefix, ex, rs, 2)
    assert ks(kept) == [0, 2]


@pytest.mark.parametrize("correct,rewards", CASES)
def test_contrast_problem_picks_what_the_reference_picks(correct, rewards):
    """End to end through `contrast_problem` (one control point, the reference's defaults for a ranked split
    and for the correct/incorrect contrast): the item's positives and negatives are stage1.py's, or no item
    where stage1.py skips the control point or its gap."""
    ex = Example(id="x", question="q", answer="1")
    rs = rollouts(correct, rewards)
    for cfg in (MineConfig(require_correct_and_incorrect=False, k_pos=2, k_neg=2),
                MineConfig(require_correct_and_incorrect=True, k_pos=2, k_neg=2)):
        items, _ = mine.contrast_problem(None, None, ex, rs, cfg, [0], 0)
        if cfg.require_correct_and_incorrect:
            ref = ref_contrast(correct, rewards, 2, 2, 1, "rollout")
            pos_i, neg_i = (ref[0], ref[1]) if ref else (None, None)
        else:
            pos_i, neg_i = ref_select_pos_neg(rewards, 2, 2)
        q = None if pos_i is None else ref_quality([rewards[i] for i in pos_i], [rewards[i] for i in neg_i], False)
        if q is None:
            assert items == []
        else:
            (it,) = items
            assert it.pos_ids == [f"x:{i}" for i in pos_i] and it.neg_ids == [f"x:{i}" for i in neg_i]
            assert it.quality == pytest.approx(q)
