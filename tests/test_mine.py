"""Stage I on a tiny random model (with a toy task) and on constructed rollouts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers.tasks import EchoTask, echo_config

from stir_core.config import MineConfig
from stir_core.offline.mine import Rollout, contrast_problem, mine_candidates
from stir_core.tasks import Example


def test_one_pass_capture_equals_per_prefix_forwards(tiny):
    fast = mine_candidates(tiny, echo_config(), task=EchoTask(), show_progress=False)
    slow = mine_candidates(tiny, echo_config(capture="reprefill"), task=EchoTask(), show_progress=False)
    assert len(fast) > 0
    assert fast.table["id"].tolist() == slow.table["id"].tolist()
    # Same float32 model, different batching of the same positions: equal to 1e-4 absolute.
    torch.testing.assert_close(fast.keys, slow.keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.vectors, slow.vectors, atol=1e-4, rtol=1e-4)


def test_mining_is_reproducible_and_seeded(tiny):
    a = mine_candidates(tiny, echo_config(), task=EchoTask(), show_progress=False)
    b = mine_candidates(tiny, echo_config(), task=EchoTask(), show_progress=False)
    c = mine_candidates(tiny, echo_config(seed=4), task=EchoTask(), show_progress=False)
    assert torch.equal(a.vectors, b.vectors) and a.table.equals(b.table)
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    assert a.manifest["content_hash"] != c.manifest["content_hash"]


def test_resume_after_interruption_equals_uninterrupted(tiny, tmp_path):
    full = mine_candidates(tiny, echo_config(), task=EchoTask(), show_progress=False)

    def stop_after_first_batch(done, total, info):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mine_candidates(tiny, echo_config(), run_dir=tmp_path, task=EchoTask(), progress=stop_after_first_batch,
                        show_progress=False)
    seen = []
    resumed = mine_candidates(tiny, echo_config(), run_dir=tmp_path, task=EchoTask(),
                              progress=lambda d, t, i: seen.append(d), show_progress=False)
    assert seen == [6], "the resumed run starts after the checkpointed first batch"
    assert torch.equal(full.vectors, resumed.vectors) and torch.equal(full.keys, resumed.keys)
    assert full.table.equals(resumed.table)
    with pytest.raises(ValueError, match="different mining config"):
        mine_candidates(tiny, echo_config(k_rollouts=5), run_dir=tmp_path, task=EchoTask(), show_progress=False)


def _rollout(k, correct, reward, states, prefixes):
    return Rollout(example_id="x", k=k, text="", n_tokens=10, correct=correct, reward=reward, states=states,
                   prefixes=prefixes)


class CheckTask(EchoTask):
    def check_prefix(self, ex, prefix):
        return "bad" not in prefix


def test_contrast_rules_on_constructed_rollouts():
    d = 4
    ex = Example(id="x", question="q", answer="1")
    s = lambda v: torch.full((2, 1, d), float(v))  # noqa: E731  two control points, one layer
    rollouts = [
        _rollout(0, True, 0.9, s(1.0), ["a\n", "a\nb\n"]),
        _rollout(1, True, 0.5, s(2.0), ["a\n", "a\nb\n"]),
        _rollout(2, False, -0.1, s(-1.0), ["a\n", "a\nbad\n"]),
        _rollout(3, False, -0.2, s(-3.0), ["a\n", "a\nb\n"]),
        _rollout(4, False, -0.3, s(6.0), ["a\n"]),  # only one control point
    ]
    cfg = MineConfig(task="echo", k_pos=1, k_neg=2, clean_prefixes="off", layers=[0])
    items, _ = contrast_problem(None, EchoTask(), ex, rollouts, cfg, [0], 0)
    m1 = [it for it in items if it.m == 1][0]
    # positives: the best correct (k=0); negatives: the two lowest-reward incorrect at m=1 (k=4, k=3)
    assert m1.pos_ids == ["x:0"] and m1.neg_ids == ["x:4", "x:3"]
    torch.testing.assert_close(m1.mu_pos - m1.mu_neg, torch.full((d,), 1.0 - (6.0 - 3.0) / 2))
    assert m1.quality == pytest.approx(0.9 - (-0.25))
    m2 = [it for it in items if it.m == 2][0]
    assert m2.neg_ids == ["x:3", "x:2"]  # rollout 4 has no second control point
    # clean prefixes: rollout 2 went wrong before control point 2, so it is not contrasted there
    cfg_clean = MineConfig(task="echo", k_pos=1, k_neg=2, clean_prefixes="auto", layers=[0])
    items, stats = contrast_problem(None, CheckTask(), ex, rollouts, cfg_clean, [0], 0)
    assert [it for it in items if it.m == 2][0].neg_ids == ["x:3"]
    assert stats["dropped_unclean"] == 1
    # identical positive and negative states (Δ = 0): kept by default (reference), dropped by the switch
    same = [_rollout(0, True, 0.9, s(1.0), ["a\n"]), _rollout(1, False, -0.1, s(1.0), ["a\n"])]
    items, stats = contrast_problem(None, EchoTask(), ex, same, cfg, [0], 0)
    assert len(items) == 1 and stats["zero_delta"] == 1
    assert torch.equal(items[0].mu_pos, items[0].mu_neg) and items[0].quality == pytest.approx(1.0)
    items, stats = contrast_problem(None, EchoTask(), ex, same, replace(cfg, drop_zero_delta=True), [0], 0)
    assert items == [] and stats["zero_delta"] == 1
    # without incorrect rollouts nothing is mined
    only_correct = [r for r in rollouts if r.correct]
    assert contrast_problem(None, EchoTask(), ex, only_correct, cfg, [0], 0)[0] == []
    with pytest.raises(ValueError, match="step checker"):
        contrast_problem(None, EchoTask(), ex, rollouts, MineConfig(task="echo", clean_prefixes="on"), [0], 0)


class GoldTask(EchoTask):
    """Gold solutions: 'right' scores correct, anything else does not."""

    def score(self, completion, ex):
        return completion == "right"


class GoldEngine:
    """Stands in for the engine where only the gold path needs it: states are token positions."""

    class model:  # noqa: N801
        d_model = 4

        @staticmethod
        def encode(text):
            return [0] * len(text)

        @staticmethod
        def format_prompt(text):
            return text

        class tokenizer:  # noqa: N801  one character per token
            def __new__(cls, text, add_special_tokens=False):
                return {"input_ids": [ord(c) for c in text]}

            @staticmethod
            def decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
                return "".join(chr(i) for i in ids)

    def forward_states(self, rows, layers):
        return [torch.arange(len(rows[0]), dtype=torch.float32)[:, None, None].expand(-1, len(layers), 4)]


@pytest.mark.parametrize(("solution", "mode", "expect"), [
    ("right", "penalised", 1.0 - 0.01 * 5 / 40),  # correct gold, 5 tokens, eta0 = 0.01, T_mine = 40
    ("wrong", "penalised", 0.0 - 0.01 * 5 / 40),  # the reference scores the gold text too
    ("right", "fixed", 1.0),
])
def test_gold_positive_reward(solution, mode, expect):
    ex = Example(id="x", question="q", answer="1", solution=solution)
    s = lambda v: torch.full((1, 1, 4), float(v))  # noqa: E731
    neg = [_rollout(0, False, -0.2, s(-1.0), ["a\n"])]
    cfg = MineConfig(task="echo", k_pos=1, k_neg=1, pos_source="gold", max_new_tokens=40, eta0=0.01,
                     gold_reward=mode, layers=[0])
    # The gold text has no delimiter, so give it one control point by making the delimiter one of its letters.
    task = GoldTask()
    task.delimiter = solution[-1]
    items, _ = contrast_problem(GoldEngine(), task, ex, neg, cfg, [0], 0)
    if expect - (-0.2) <= 0:
        assert items == []
    else:
        (it,) = items
        assert it.mean_reward_pos == pytest.approx(expect) and it.quality == pytest.approx(expect + 0.2)
        assert it.pos_ids == ["x:gold"]


def test_random_mining_keeps_nonpositive_splits_at_zero_quality():
    ex = Example(id="x", question="q", answer="1")
    s = lambda v: torch.full((1, 1, 4), float(v))  # noqa: E731
    rollouts = [_rollout(k, k % 2 == 0, r, s(k), ["a\n"]) for k, r in enumerate([0.9, -0.1, 0.8, -0.2])]
    base = MineConfig(task="echo", method="random", layers=[0], seed=0, k_pos=2, k_neg=2)
    # Brute force over seeds: each split's gap is mean R(first half) - mean R(second half) of the seeded
    # shuffle; the reference keeps every split with q = max(0, gap), `drop` keeps only gap > 0.
    seen_nonpositive = False
    for seed in range(12):
        cfg = replace(base, seed=seed)
        kept, _ = contrast_problem(None, EchoTask(), ex, rollouts, cfg, [0], 0)
        dropped, stats = contrast_problem(None, EchoTask(), ex, rollouts, replace(cfg, random_quality="drop"), [0], 0)
        (it,) = kept
        pos_r = [rollouts[int(i.split(":")[1])].reward for i in it.pos_ids]
        neg_r = [rollouts[int(i.split(":")[1])].reward for i in it.neg_ids]
        gap = sum(pos_r) / len(pos_r) - sum(neg_r) / len(neg_r)
        assert it.quality == pytest.approx(max(0.0, gap))
        assert len(dropped) == (1 if gap > 0 else 0) and stats["nonpositive_quality"] == (0 if gap > 0 else 1)
        seen_nonpositive |= gap <= 0
    assert seen_nonpositive, "no seed produced a non-positive split; the test would not exercise the switch"


def test_max_control_points_caps_mining():
    ex = Example(id="x", question="q", answer="1")
    s = lambda v: torch.full((10, 1, 4), float(v))  # noqa: E731  ten control points
    pre = [f"{'a' * (i + 1)}\n" for i in range(10)]
    rollouts = [_rollout(0, True, 0.9, s(1.0), pre), _rollout(1, False, -0.1, s(-1.0), pre)]
    cfg = MineConfig(task="echo", k_pos=1, k_neg=1, layers=[0])
    assert cfg.max_control_points == 8 and cfg.clean_prefixes == "off"  # the reference config's defaults
    assert sorted({it.m for it in contrast_problem(None, EchoTask(), ex, rollouts, cfg, [0], 0)[0]}) == list(range(1, 9))
    unbounded = replace(cfg, max_control_points=None)
    assert len(contrast_problem(None, EchoTask(), ex, rollouts, unbounded, [0], 0)[0]) == 10
    with pytest.raises(ValueError, match="max_control_points"):
        MineConfig(max_control_points=0)


def _ids(it):
    return [int(i.split(":")[1]) for i in it.pos_ids], [int(i.split(":")[1]) for i in it.neg_ids]


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_split_rule_without_the_correct_incorrect_contrast(n):
    ex = Example(id="x", question="q", answer="1")
    s = lambda v: torch.full((1, 1, 4), float(v))  # noqa: E731
    rewards = [0.5, 0.9, 0.5, -0.1, 0.2, 0.9, -0.3][:n]  # ties: 0.5 (k=0, 2) and 0.9 (k=1, 5)
    rollouts = [_rollout(k, r > 0.4, r, s(k), ["a\n"]) for k, r in enumerate(rewards)]
    # Ranked (require_correct_and_incorrect=False): spelled out as the reference's `_select_pos_neg`.
    order = sorted(range(n), key=lambda k: rewards[k], reverse=True)  # stable: equal rewards keep k order
    ranked = MineConfig(task="echo", layers=[0], k_pos=2, k_neg=3, require_correct_and_incorrect=False)
    items, _ = contrast_problem(None, EchoTask(), ex, rollouts, ranked, [0], 0)
    want_pos, want_neg = order[:2], order[::-1][:3]
    gap = sum(rewards[k] for k in want_pos) / 2 - sum(rewards[k] for k in want_neg) / len(want_neg)
    if n == 1 or gap <= 0:
        assert items == []  # one rollout is both sides: gap 0, dropped outside the random ablation
    else:
        assert _ids(items[0]) == (want_pos[: len(want_pos)], want_neg)
    disjoint, _ = contrast_problem(None, EchoTask(), ex, rollouts, replace(ranked, split_rule="disjoint"), [0], 0)
    k = min(2, 3, n // 2)
    if k == 0:
        assert disjoint == []
    else:
        assert _ids(disjoint[0]) == (order[:k], order[n - k:])
    # Random: the first max(1, k_pos) of a seeded shuffle, then the next max(1, k_neg) (all of it if none left).
    for seed in range(4):
        cfg = MineConfig(task="echo", layers=[0], method="random", k_pos=2, k_neg=3, seed=seed)
        (it,), _ = contrast_problem(None, EchoTask(), ex, rollouts, cfg, [0], 0)
        pos, neg = _ids(it)
        assert len(pos) == min(2, n) and set(pos) | set(neg) <= set(range(n))
        if n > 2:
            assert not set(pos) & set(neg) and len(neg) == min(3, n - 2)
        else:
            assert sorted(neg) == sorted(pos)  # nothing left: the reference reuses the shuffle
        halves = contrast_problem(None, EchoTask(), ex, rollouts, replace(cfg, split_rule="disjoint"), [0], 0)[0]
        if n < 2:
            assert halves == []
        else:
            hp, hn = _ids(halves[0])
            assert len(hp) == n // 2 and len(hn) == n - n // 2 and not set(hp) & set(hn)


def test_nothing_mined_gives_an_empty_library(tiny):
    # One rollout per side of the same four: with k_pos = k_neg = 4 the reference split puts every rollout on
    # both sides, so no split has a positive gap and nothing is mined.
    lib = mine_candidates(tiny, echo_config(k_rollouts=4, k_pos=4, k_neg=4, n_problems=2), task=EchoTask(),
                          show_progress=False)
    assert len(lib) == 0 and lib.manifest["d_model"] == tiny.d_model


def test_mine_candidates_refuses_a_launcher_instead_of_mining_every_problem_on_every_rank(monkeypatch):
    """One process only: under torchrun/accelerate `stir build` runs `shard_mine.mine_sharded`; a direct
    call says so before touching the model (None stands in for it)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="mine_sharded"):
        mine_candidates(None, echo_config(), task=EchoTask(), show_progress=False)
