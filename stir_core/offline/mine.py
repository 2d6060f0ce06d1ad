"""Stage I — differential intrinsic action induction: mine candidate tools from the model's own rollouts.

For each problem: K sampled rollouts (one batched decode, the prompt prefilled once and forked), a
length-regularised reward, and at every control point m the mean state of the best correct prefixes minus
that of the worst incorrect ones. States come from the rollout itself (captured while decoding), never from
a re-prefill per prefix. Every item becomes two entries: a correction (key μ⁻, vector Δ) and an anchor
(key μ⁺, no vector). Mining checkpoints after each batch of problems and resumes bit-for-bit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from stir_core.config import MineConfig, resolve_layers
from stir_core.io import jsonio
from stir_core.library.format import ToolLibrary
from stir_core.offline.capture import retokenized_states
from stir_core.offline.checkpoint import CHECKPOINT, check_run_dir, load_checkpoint, save_checkpoint
from stir_core.offline.item import Item
from stir_core.runtime import distributed
from stir_core.runtime.engine import Engine, Row, Sampling
from stir_core.runtime.locks import serialised
from stir_core.runtime.model import LoadedModel
from stir_core.runtime.scheduler import Schedule, run_continuous
from stir_core.runtime.segment import segment_ends
from stir_core.tasks import Example, Task, get_task, render_prompt, step_checker_of


@dataclass(kw_only=True)
class Rollout:
    """One sampled completion of a problem, with its reward and its states at every control point."""

    example_id: str
    k: int
    text: str
    n_tokens: int
    correct: bool
    reward: float
    states: torch.Tensor  # [n_control_points, n_layers, d_model]: state after segment m at index m-1
    prefixes: list[str]  # completion text up to and including the m-th delimiter


def _seed(seed: int, example_id: str, k: int) -> int:
    return (seed * 1_000_003 + hash_str(example_id) * 131 + k) % (2**62)


def hash_str(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode())


@serialised  # one decode on the model at a time (stir_core/runtime/locks.py)
def sample_rollouts(engine: Engine, task: Task, examples: list[Example], cfg: MineConfig,
                    layers: list[int]) -> list[list[Rollout]]:
    """K seeded rollouts per example in one decode (each prompt prefilled once, its slot copied K - 1 times,
    every rollout with its own seed); states at every control point per rollout."""
    model = engine.model
    prompt_texts = [render_prompt(model, task, ex) for ex in examples]
    k_roll = cfg.k_rollouts
    seeds = [_seed(cfg.seed, ex.id, k) for ex in examples for k in range(k_roll)]  # sequence i*K + k
    rows = run_continuous(engine, [model.encode(p) for p in prompt_texts], None, Schedule(cfg.max_new_tokens),
                          task.delimiter, capture_layers=layers if cfg.capture == "decode" else (),
                          sampling=Sampling(cfg.temperature, cfg.top_p), seeds=seeds, fanout=k_roll)
    return [[_rollout(engine, task, ex, prompt_texts[i], rows[i * k_roll + k], k, cfg, layers)
             for k in range(k_roll)] for i, ex in enumerate(examples)]


def _rollout(engine: Engine, task: Task, ex: Example, prompt_text: str, row: Row, k: int, cfg: MineConfig,
             layers: list[int]) -> Rollout:
    """A finished rollout's record: its reward, and the states and prefix text at each control point."""
    model, delim = engine.model, task.delimiter
    text = row.text
    correct = bool(task.score(text, ex))
    reward = float(correct) - cfg.eta0 * len(row.tokens) / cfg.max_new_tokens
    # Prefix texts and token ends at each control point (one per delimiter occurrence), from the
    # rollout's own text stream: a token holding two delimiters ends two control points.
    ends, prefixes, acc = [], [], ""
    for t, (piece, n) in enumerate(zip(row.pieces, row.stream.boundaries, strict=True)):
        acc += piece
        ends += [t] * n
        prefixes += [acc] * n
    if cfg.capture == "decode":
        # One capture per control point (a token ending two has two, with the same state).
        states = (torch.stack([c.states for c in row.captures]) if row.captures
                  else torch.zeros(0, len(layers), model.d_model))
    elif cfg.capture == "retokenize":  # the reference's text cut and re-tokenized (stage1.py:466-507)
        states = retokenized_states(engine, prompt_text, text, delim, layers)
        if len(states) != len(ends):
            raise RuntimeError(f"retokenize: {len(states)} delimiter offsets in the text but {len(ends)} "
                               f"control points in the token stream (problem {ex.id!r})")
    else:  # by tokens, one forward per prefix (kept for tests and benchmarks)
        states = torch.stack([engine.forward_states([row.prompt + row.tokens[: t + 1]], layers)[0][-1]
                              for t in ends]) if ends else torch.zeros(0, len(layers), model.d_model)
    return Rollout(example_id=ex.id, k=k, text=text, n_tokens=len(row.tokens), correct=correct, reward=reward,
                   states=states, prefixes=prefixes)


@serialised
def _gold_states(engine: Engine, task: Task, ex: Example, layers: list[int],
                 capture: str = "decode") -> tuple[torch.Tensor, int]:
    """States of the gold solution at each of its control points [n_cp, n_layers, d_model], and its length
    in tokens."""
    if not ex.solution:
        return torch.zeros(0), 0
    model = engine.model
    if capture == "retokenize":  # prompt and gold tokenized together (stage1.py:492-493)
        sol = model.tokenizer(ex.solution, add_special_tokens=False)["input_ids"]
        return retokenized_states(engine, render_prompt(model, task, ex), ex.solution, task.delimiter, layers), len(sol)
    prompt = model.encode(render_prompt(model, task, ex))
    sol = model.tokenizer(ex.solution, add_special_tokens=False)["input_ids"]
    states = engine.forward_states([prompt + sol], layers)[0][len(prompt):]
    ends = segment_ends(model.tokenizer, sol, task.delimiter)
    return (states[ends] if ends else torch.zeros(0)), len(sol)


def gold_reward(task: Task, ex: Example, n_tokens: int, cfg: MineConfig) -> float:
    """The gold positive's reward. `penalised` (reference, stage1.py `_length_regularized_reward` applied to
    the gold text): 1[the gold text scores correct] - eta0 * len / T_mine. `fixed` (ours): 1.0."""
    if cfg.gold_reward == "fixed":
        return 1.0
    return float(bool(task.score(ex.solution, ex))) - cfg.eta0 * n_tokens / cfg.max_new_tokens


# ---- Stage I's contrast, one named step per rule ------------------------------------------------------
# The reference is the authors' `stir/offline/stage1.py` (commit 77f5d9c); each step names the lines it
# follows, or says it is ours (a switch in STIR_SPEC.md's knob table, reference value by default).
# tests/test_stage1_rules.py checks each step against those lines.

Split = tuple[list[Rollout], list[Rollout]]  # (positives, negatives)


def clean_rollouts(checker: Callable[[Example, str], bool], ex: Example, valid: list[Rollout],
                   m: int) -> list[Rollout]:
    """Ours (`clean_prefixes` on/auto; the reference keeps every prefix): the rollouts whose first m
    segments the task's step checker accepts."""
    return [r for r in valid if checker(ex, r.prefixes[m - 1])]


def split_random(valid: list[Rollout], cfg: MineConfig, rng: random.Random) -> Split | None:
    """method=random: the rollouts shuffled (ordered by k first, so the shuffle alone decides), then
    split_rule=reference (stage1.py:67-86 `_select_pos_neg_random`): the first max(1, k_pos) are positives
    and the next max(1, k_neg) negatives, or the positives again when none are left (Δ = 0);
    split_rule=disjoint (ours): equal halves. None (nothing mined, no draw made) with too few rollouts."""
    if len(valid) < (1 if cfg.split_rule == "reference" else 2):
        return None
    shuffled = sorted(valid, key=lambda r: r.k)
    rng.shuffle(shuffled)
    if cfg.split_rule == "reference":
        n_pos = min(max(1, cfg.k_pos), len(shuffled))
        rest = shuffled[n_pos:] or shuffled  # one valid rollout: it is both sides (Δ = 0)
        return shuffled[:n_pos], rest[: max(1, cfg.k_neg)]
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


def contrast_negatives(valid: list[Rollout], cfg: MineConfig) -> list[Rollout] | None:
    """require_correct_and_incorrect (stage1.py:477): the k_neg incorrect rollouts of lowest reward (ties by
    k); None (counted `skipped_no_neg`) when fewer than max(1, min_incorrect) are taken (stage1.py:474 counts
    all incorrect rollouts instead; the two agree while min_incorrect <= k_neg, as in every config here)."""
    neg = sorted((r for r in valid if not r.correct), key=lambda r: (r.reward, r.k))[: cfg.k_neg]
    return neg if len(neg) >= max(1, cfg.min_incorrect) else None


def contrast_positives(valid: list[Rollout], cfg: MineConfig) -> list[Rollout]:
    """require_correct_and_incorrect (stage1.py:482): the k_pos correct rollouts of highest reward (ties by
    k); may be empty."""
    return sorted((r for r in valid if r.correct), key=lambda r: (-r.reward, r.k))[: cfg.k_pos]


def uses_gold(pos: list[Rollout], cfg: MineConfig) -> bool:
    """Whether the gold solution is the positive (stage1.py:479-480): always for pos_source=gold, and for
    rollout_or_gold when no rollout positive exists."""
    return cfg.pos_source == "gold" or (not pos and cfg.pos_source == "rollout_or_gold")


def split_ranked(valid: list[Rollout], cfg: MineConfig) -> Split | None:
    """Without the correct/incorrect contrast, by reward (ties by k). split_rule=reference (stage1.py:59-64
    `_select_pos_neg`): the best max(1, k_pos) and the worst max(1, k_neg), which may overlap;
    split_rule=disjoint (ours): the best and worst min(k_pos, k_neg, n // 2). None with too few rollouts."""
    ranked = sorted(valid, key=lambda r: (-r.reward, r.k))
    if cfg.split_rule == "reference":
        if not ranked:
            return None
        return ranked[: max(1, cfg.k_pos)], ranked[::-1][: max(1, cfg.k_neg)]
    if len(ranked) < 2:
        return None
    k = min(cfg.k_pos, cfg.k_neg, len(ranked) // 2)
    return ranked[:k], ranked[-k:]


def contrast_quality(r_pos: float, r_neg: float, cfg: MineConfig) -> float | None:
    """q = mean positive reward - mean negative reward (stage1.py:514). A gap <= 0 is dropped (None,
    stage1.py:520), except under method=random with random_quality=clamp, where it becomes 0
    (stage1.py:518-519): dropping there would turn the ablation back into a reward-selected contrast;
    random_quality=drop (ours) drops it too."""
    quality = r_pos - r_neg
    if quality > 0:
        return quality
    if cfg.method == "random" and cfg.random_quality == "clamp":
        return 0.0
    return None


def is_zero_delta(mu_pos: torch.Tensor, mu_neg: torch.Tensor) -> bool:
    """Δ = μ⁺ - μ⁻ is zero up to float noise (identical prefixes, e.g. a first segment every rollout
    shares): |Δ| <= 1e-5 · max(1, |μ⁻|). The reference keeps such items (stage1.py:623-625 drops only a
    non-finite Δ); `drop_zero_delta` (ours) drops them. Shapes: [d_model] each."""
    return float((mu_pos - mu_neg).norm()) <= 1e-5 * max(1.0, float(mu_neg.norm()))


def shuffled_control_norms(pos_states: torch.Tensor, neg_states: torch.Tensor, rng: random.Random) -> list[float]:
    """Ours (no reference line: a diagnostic the library records as `shuffled_norm`): the label-shuffled
    control, |mean of the first n_pos - mean of the rest| per layer after one permutation of the pooled
    states. pos_states [n_pos, n_layers, d_model], neg_states [n_neg, n_layers, d_model] -> [n_layers]."""
    both = torch.cat([pos_states, neg_states])
    perm = list(range(len(both)))
    rng.shuffle(perm)
    sh = both[perm]
    n_pos = len(pos_states)
    return [float((sh[:n_pos, j].mean(0) - sh[n_pos:, j].mean(0)).norm()) for j in range(both.shape[1])]


class GoldPositive:
    """The gold solution as the positive (stage1.py:481-493): its states at each control point, computed
    once per problem on first use, and its reward (`gold_reward`)."""

    def __init__(self, engine: Engine, task: Task, ex: Example, layers: list[int], cfg: MineConfig) -> None:
        self._args, self._cfg = (engine, task, ex, layers), cfg
        self._states: torch.Tensor | None = None
        self.reward = 1.0

    def states_at(self, m: int) -> torch.Tensor | None:
        """[1, n_layers, d_model] at control point m, or None when the gold has fewer than m segments."""
        if self._states is None:
            engine, task, ex, layers = self._args
            self._states, n_gold = _gold_states(engine, task, ex, layers, self._cfg.capture)
            self.reward = gold_reward(task, ex, n_gold, self._cfg)
        return self._states[m - 1][None] if len(self._states) >= m else None


def pick_pos_neg(valid: list[Rollout], m: int, cfg: MineConfig, rng: random.Random, gold: GoldPositive,
                 stats: dict) -> tuple[list[Rollout], list[Rollout], torch.Tensor | None] | None:
    """Positives, negatives and (gold positive only) the positive states at control point m, by the rule
    the config names (stage1.py:464-509); None when nothing is mined there (counted in `stats`)."""
    if cfg.method == "random":
        split = split_random(valid, cfg, rng)
        return None if split is None else (*split, None)
    if not cfg.require_correct_and_incorrect:
        split = split_ranked(valid, cfg)
        return None if split is None else (*split, None)
    neg = contrast_negatives(valid, cfg)
    if neg is None:
        stats["skipped_no_neg"] += 1
        return None
    pos = contrast_positives(valid, cfg)
    if not pos and cfg.pos_source == "rollout":
        stats["skipped_no_pos"] += 1
        return None
    if uses_gold(pos, cfg):
        if (states := gold.states_at(m)) is None:
            stats["skipped_no_pos"] += 1
            return None
        return [], neg, states
    return pos, neg, None


def contrast_problem(engine: Engine, task: Task, ex: Example, rollouts: list[Rollout], cfg: MineConfig,
                     layers: list[int], order_start: int) -> tuple[list[Item], dict]:
    """The items of one problem (one per mined control point and layer) and its counts.

    At each control point m = 1..min(longest rollout's count, M): the rollouts reaching m
    (stage1.py:460), optionally cleaned (`clean_rollouts`), split by `pick_pos_neg`, scored by
    `contrast_quality`, given a label-shuffled control (`shuffled_control_norms`), then one item per layer,
    `is_zero_delta` ones counted (and dropped with `drop_zero_delta`)."""
    checker = step_checker_of(task) if cfg.clean_prefixes != "off" else None
    if cfg.clean_prefixes == "on" and checker is None:
        raise ValueError(f"clean_prefixes='on' but task {task.name!r} has no step checker")
    rng = random.Random(_seed(cfg.seed, ex.id, 10_007))
    n_cp = max((len(r.prefixes) for r in rollouts), default=0)
    if cfg.max_control_points is not None:
        n_cp = min(n_cp, cfg.max_control_points)
    gold = GoldPositive(engine, task, ex, layers, cfg)
    items: list[Item] = []
    stats = {"control_points": 0, "skipped_no_neg": 0, "skipped_no_pos": 0, "dropped_unclean": 0,
             "zero_delta": 0, "nonpositive_quality": 0}
    for m in range(1, n_cp + 1):
        valid = [r for r in rollouts if len(r.prefixes) >= m]
        if checker is not None:
            clean = clean_rollouts(checker, ex, valid, m)
            stats["dropped_unclean"] += len(valid) - len(clean)
            valid = clean
        picked = pick_pos_neg(valid, m, cfg, rng, gold, stats)
        if picked is None:
            continue
        pos, neg, pos_states = picked
        if pos_states is None:
            pos_states = torch.stack([r.states[m - 1] for r in pos])
        neg_states = torch.stack([r.states[m - 1] for r in neg])  # [n_neg, n_layers, d]
        r_pos = sum(r.reward for r in pos) / len(pos) if pos else gold.reward  # no rollout positives: the gold
        r_neg = sum(r.reward for r in neg) / len(neg)
        quality = contrast_quality(r_pos, r_neg, cfg)
        if quality is None:
            stats["nonpositive_quality"] += 1
            continue
        shuffled = shuffled_control_norms(pos_states, neg_states, rng)
        n_before = len(items)
        for j, layer in enumerate(layers):
            mu_pos, mu_neg = pos_states[:, j].mean(0), neg_states[:, j].mean(0)
            if is_zero_delta(mu_pos, mu_neg):
                stats["zero_delta"] += 1
                if cfg.drop_zero_delta:
                    continue
            items.append(Item(
                example_id=ex.id, m=m, layer=layer, mu_pos=mu_pos, mu_neg=mu_neg, shuffled_norm=shuffled[j],
                quality=quality, mean_reward_pos=r_pos, mean_reward_neg=r_neg,
                pos_ids=[f"{ex.id}:{r.k}" for r in pos] or [f"{ex.id}:gold"],
                neg_ids=[f"{ex.id}:{r.k}" for r in neg], order=order_start + len(items),
                pos_prefixes=[r.prefixes[m - 1] for r in pos] or [""],
                neg_prefixes=[r.prefixes[m - 1] for r in neg],
                pos_rewards=[r.reward for r in pos] or [r_pos], neg_rewards=[r.reward for r in neg]))
        stats["control_points"] += len(items) > n_before
    return items, stats


def items_to_library(items: list[Item], model: LoadedModel, cfg: MineConfig, extra: dict) -> ToolLibrary:
    """Two entries per item: a correction (key μ⁻, vector Δ) and an anchor (key μ⁺, zero vector)."""
    keys, vectors, rows = [], [], []
    for it in items:
        delta = it.mu_pos - it.mu_neg
        pair = f"{it.example_id}/m{it.m}/L{it.layer}"
        common = {"layer": it.layer, "control_point": it.m, "quality": it.quality, "task": cfg.task,
                  "example_id": it.example_id, "n_pos": len(it.pos_ids), "n_neg": len(it.neg_ids),
                  "mean_reward_pos": it.mean_reward_pos, "mean_reward_neg": it.mean_reward_neg,
                  "model_id": model.model_id, "model_revision": model.revision or "", "seed": cfg.seed,
                  "pair_id": pair, "rollout_ids": json.dumps(it.pos_ids + it.neg_ids),
                  "pos_rollouts": json.dumps(it.pos_ids), "neg_rollouts": json.dumps(it.neg_ids),
                  "pos_prefixes": json.dumps(it.pos_prefixes), "neg_prefixes": json.dumps(it.neg_prefixes),
                  "pos_rewards": jsonio.dumps(it.pos_rewards), "neg_rewards": jsonio.dumps(it.neg_rewards)}
        keys += [it.mu_neg, it.mu_pos]
        vectors += [delta, torch.zeros_like(delta)]
        rows.append({"id": f"{pair}/corr", "kind": "correction", "norm": float(delta.norm()),
                     "shuffled_norm": it.shuffled_norm, **common})
        rows.append({"id": f"{pair}/anchor", "kind": "anchor", "norm": 0.0, "shuffled_norm": float("nan"), **common})
    d = model.d_model
    manifest = {"model_id": model.model_id, "model_revision": model.revision or "", "d_model": d,
                "n_layers": model.n_layers, "config": {"mine": asdict(cfg)}, "seed": cfg.seed, **extra}
    if not items:
        return ToolLibrary.empty(**manifest)  # the manifest carries d_model
    return ToolLibrary.from_records(torch.stack(keys).float(), torch.stack(vectors).float(), rows, manifest)


def mine_candidates(model: LoadedModel, cfg: MineConfig, run_dir: str | Path | None = None,
                    progress: Callable[[int, int, dict], None] | None = None,
                    task: Task | None = None, show_progress: bool = True) -> ToolLibrary:
    """Stage I over `cfg.n_problems` problems of `cfg.split`; resumes from `run_dir`'s checkpoint.

    Returns the candidate set (2 entries per kept item, top `cfg.top_c` items by quality). One process
    only: under a launcher (torchrun, accelerate launch) `shard_mine.mine_sharded` mines each rank's shard
    (`build.mine_run` picks), and this refuses rather than have every rank mine every problem.
    """
    if distributed.from_env() is not None:
        raise ValueError("mine_candidates runs in one process; under a launcher use "
                         "stir_core.offline.shard_mine.mine_sharded (stir build picks it)")
    if run_dir is not None:
        check_run_dir(Path(run_dir), world_size=1)
    task = task or get_task(cfg.task)
    layers = resolve_layers(cfg.layers, model.n_layers)
    examples = task.load(cfg.split, cfg.n_problems, cfg.seed)
    engine = Engine(model)
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    items: list[Item] = []
    start, stats = 0, new_stats()
    if ckpt is not None and (loaded := load_checkpoint(ckpt, cfg)) is not None:
        items, start, stats = loaded
    bar = tqdm(total=len(examples), initial=start, desc="mine", unit="problem", disable=not show_progress)
    order = max((it.order for it in items), default=-1) + 1
    # Batch by batch, not one continuous decode over all problems: a problem admitted mid-run is prefilled
    # with other padding, which moves the captured states by ~1e-5 — enough to break the bit-for-bit
    # equality with sharded mining (tests/test_distributed.py), whose ranks see other batches.
    for lo in range(start, len(examples), cfg.problems_per_batch):
        batch = examples[lo: lo + cfg.problems_per_batch]
        items, order = mine_batch(engine, task, batch, cfg, layers, items, stats, order)
        if ckpt is not None:
            save_checkpoint(ckpt, items, lo + len(batch), stats, cfg)
        bar.update(len(batch))
        bar.set_postfix(candidates=2 * len(items))
        if progress is not None:
            progress(lo + len(batch), len(examples), {"candidates": 2 * len(items), **stats})
    bar.close()
    return finish_candidates(items, model, cfg, stats, layers)


def new_stats() -> dict:
    """The mining counters, all zero (every one is a sum over problems, so shards add up)."""
    return {"problems": 0, "rollouts": 0, "correct_rollouts": 0, "control_points": 0,
            "skipped_no_neg": 0, "skipped_no_pos": 0, "dropped_unclean": 0, "zero_delta": 0,
            "nonpositive_quality": 0}


def mine_batch(engine: Engine, task: Task, batch: list[Example], cfg: MineConfig, layers: list[int],
               items: list[Item], stats: dict, order: int) -> tuple[list[Item], int]:
    """One batch of problems: rollouts, contrasts, counts added to `stats` (in place), then the top-C heap.

    Returns (the kept items, the next discovery order). Shared by one-process and sharded mining.
    """
    for ex, rollouts in zip(batch, sample_rollouts(engine, task, batch, cfg, layers), strict=True):
        items, order = add_problem(engine, task, ex, rollouts, cfg, layers, items, stats, order)
    return top_items(items, cfg), order


def add_problem(engine: Engine, task: Task, ex: Example, rollouts: list[Rollout], cfg: MineConfig,
                layers: list[int], items: list[Item], stats: dict, order: int) -> tuple[list[Item], int]:
    """One problem's contrasts appended to `items` and its counts to `stats` (in place); returns (items, the
    next discovery order)."""
    new, s = contrast_problem(engine, task, ex, rollouts, cfg, layers, order)
    items.extend(new)
    stats["problems"] += 1
    stats["rollouts"] += len(rollouts)
    stats["correct_rollouts"] += sum(r.correct for r in rollouts)
    for k, v in s.items():
        stats[k] += v
    return items, order + len(new)


def top_items(items: list[Item], cfg: MineConfig) -> list[Item]:
    """The top-C heap: the `top_c` best items by (quality, earliest discovery). Applied every batch; the
    key is unique (discovery order), so where it is applied never changes the final set."""
    return sorted(items, key=lambda it: it.key, reverse=True)[: cfg.top_c]


def finish_candidates(items: list[Item], model: LoadedModel, cfg: MineConfig, stats: dict, layers: list[int],
                      extra: dict | None = None) -> ToolLibrary:
    """The candidate library from the final top-C items, in (control point, layer, quality, order) order."""
    items = sorted(items, key=lambda it: (it.m, it.layer, -it.quality, it.order))
    return items_to_library(items, model, cfg, {"mining_stats": stats, "layers": layers, **(extra or {})})
