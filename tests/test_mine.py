"""Stage I on a tiny random model (with a toy task) and on constructed rollouts."""

from __future__ import annotations

import pytest
import torch

from stir_core.mine import MineConfig, Rollout, contrast_problem, mine_candidates
from stir_core.tasks import Example


class EchoTask:
    """A toy task for a random model: segments end at "\\n"; 'correct' when the completion has a '1'."""

    name = "echo"
    delimiter = "\n"

    def load(self, split="mine", n=None, seed=0):
        exs = [Example(f"e{i}", f"{i}+{i}=", "1") for i in range(12)]
        return exs[:n]

    def prompt(self, ex):
        return ex.question

    def extract(self, completion):
        return "1" if "1" in completion else None

    def score(self, completion, ex):
        return "1" in completion


def _cfg(**kw):
    base = dict(task="echo", n_problems=6, k_rollouts=6, temperature=1.5, top_p=1.0, max_new_tokens=40,
                layers=[1, -1], require_correct_and_incorrect=False, problems_per_batch=3, top_c=50, seed=3)
    base.update(kw)
    return MineConfig(**base)


def test_one_pass_capture_equals_per_prefix_forwards(tiny):
    fast = mine_candidates(tiny, _cfg(), task=EchoTask(), show_progress=False)
    slow = mine_candidates(tiny, _cfg(capture="reprefill"), task=EchoTask(), show_progress=False)
    assert len(fast) > 0
    assert fast.table["id"].tolist() == slow.table["id"].tolist()
    # Same float32 model, different batching of the same positions: equal to 1e-4 absolute.
    torch.testing.assert_close(fast.keys, slow.keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.vectors, slow.vectors, atol=1e-4, rtol=1e-4)


def test_mining_is_reproducible_and_seeded(tiny):
    a = mine_candidates(tiny, _cfg(), task=EchoTask(), show_progress=False)
    b = mine_candidates(tiny, _cfg(), task=EchoTask(), show_progress=False)
    c = mine_candidates(tiny, _cfg(seed=4), task=EchoTask(), show_progress=False)
    assert torch.equal(a.vectors, b.vectors) and a.table.equals(b.table)
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    assert a.manifest["content_hash"] != c.manifest["content_hash"]


def test_resume_after_interruption_equals_uninterrupted(tiny, tmp_path):
    full = mine_candidates(tiny, _cfg(), task=EchoTask(), show_progress=False)

    def stop_after_first_batch(done, total, info):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mine_candidates(tiny, _cfg(), run_dir=tmp_path, task=EchoTask(), progress=stop_after_first_batch,
                        show_progress=False)
    seen = []
    resumed = mine_candidates(tiny, _cfg(), run_dir=tmp_path, task=EchoTask(),
                              progress=lambda d, t, i: seen.append(d), show_progress=False)
    assert seen == [6], "the resumed run starts after the checkpointed first batch"
    assert torch.equal(full.vectors, resumed.vectors) and torch.equal(full.keys, resumed.keys)
    assert full.table.equals(resumed.table)
    with pytest.raises(ValueError, match="different mining config"):
        mine_candidates(tiny, _cfg(k_rollouts=5), run_dir=tmp_path, task=EchoTask(), show_progress=False)


def _rollout(k, correct, reward, states, prefixes):
    return Rollout("x", k, "", 10, correct, reward, states, prefixes)


class CheckTask(EchoTask):
    def check_prefix(self, ex, prefix):
        return "bad" not in prefix


def test_contrast_rules_on_constructed_rollouts():
    d = 4
    ex = Example("x", "q", "1")
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
    # identical positive and negative states carry no action: such items are dropped
    same = [_rollout(0, True, 0.9, s(1.0), ["a\n"]), _rollout(1, False, -0.1, s(1.0), ["a\n"])]
    items, stats = contrast_problem(None, EchoTask(), ex, same, cfg, [0], 0)
    assert items == [] and stats["zero_delta"] == 1
    # without incorrect rollouts nothing is mined
    only_correct = [r for r in rollouts if r.correct]
    assert contrast_problem(None, EchoTask(), ex, only_correct, cfg, [0], 0)[0] == []
    with pytest.raises(ValueError, match="step checker"):
        contrast_problem(None, EchoTask(), ex, rollouts, MineConfig(task="echo", clean_prefixes="on"), [0], 0)
