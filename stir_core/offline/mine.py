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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from stir_core.config import knob, validate
from stir_core.io import atomic, jsonio
from stir_core.library.format import ToolLibrary
from stir_core.offline.capture import retokenized_states
from stir_core.runtime.engine import Engine, Sampling
from stir_core.runtime.locks import serialised
from stir_core.runtime.model import LoadedModel, resolve_layers
from stir_core.runtime.segment import segment_ends
from stir_core.tasks import Example, Task, get_task, render_prompt, step_checker_of

CHECKPOINT = "mine_checkpoint"


@dataclass
class MineConfig:
    """Stage I knobs; defaults follow the reference (STIR_SPEC.md) unless noted. Validated on creation."""

    task: str = knob("planted", str, "task to mine (a registered task name)", "data")
    split: str = knob("mine", str, "split to mine (never the evaluation split by default)", "data")
    n_problems: int = knob(64, int, "problems mined", "data", min=1)
    k_rollouts: int = knob(8, int, "K: sampled rollouts per problem", "rollouts", min=2)
    temperature: float = knob(0.7, float, "sampling temperature of the rollouts", "rollouts", gt=0.0)
    top_p: float = knob(0.95, float, "nucleus sampling mass", "rollouts", gt=0.0, max=1.0)
    max_new_tokens: int = knob(256, int, "T_mine: tokens per rollout", "rollouts", min=1)
    eta0: float = knob(0.01, float, "length penalty: R = 1[correct] - eta0 * len / T_mine", "rollouts", min=0.0)
    layers: list = knob([0.6], list, "layers to mine (int, fraction in [0, 1], or 'a/b')", "contrast")
    method: str = knob("contrastive", str, "contrastive, or random (ablation)", "contrast",
                       choices=("contrastive", "random"))
    require_correct_and_incorrect: bool = knob(True, bool, "mine a control point only when it has both",
                                               "contrast")
    k_pos: int = knob(4, int, "best correct prefixes averaged", "contrast", min=1)
    k_neg: int = knob(4, int, "worst incorrect prefixes averaged", "contrast", min=1)
    min_incorrect: int = knob(1, int, "incorrect rollouts needed at a control point", "contrast", min=0)
    pos_source: str = knob("rollout", str, "where positive states come from", "contrast",
                           choices=("rollout", "gold", "rollout_or_gold"))
    # Reference-fidelity switches (STIR_SPEC.md, knob table); each default is what the authors' code does.
    clean_prefixes: str = knob("off", str, "off (reference) | auto | on (ours): drop prefixes whose steps are "
                               "already wrong", "contrast", choices=("off", "auto", "on"))
    max_control_points: int | None = knob(8, int, "M: control points mined per problem (reference config 8; "
                                          "none: all, ours)", "contrast", optional=True, min=1)
    gold_reward: str = knob("penalised", str, "gold positive's reward: penalised (reference: 1[gold correct] - "
                            "eta0*len/T_mine) | fixed (ours: 1.0)", "contrast", choices=("penalised", "fixed"))
    drop_zero_delta: bool = knob(False, bool, "drop items with Δ = 0 (ours; the reference keeps them)", "contrast")
    random_quality: str = knob("clamp", str, "method=random: clamp (reference: q = max(0, gap), every split "
                               "kept) | drop (ours: drop q <= 0)", "contrast", choices=("clamp", "drop"))
    # Without the correct/incorrect contrast (method=random, or require_correct_and_incorrect=False):
    # reference = the first max(1, k_pos) of the shuffled / reward-ranked rollouts are positives and the next
    # (random) or last (ranked) max(1, k_neg) negatives; disjoint (ours) = equal halves.
    split_rule: str = knob("reference", str, "positives/negatives without the correct/incorrect contrast: "
                           "reference (first k_pos, next/last k_neg) | disjoint (ours: halves)", "contrast",
                           choices=("reference", "disjoint"))
    top_c: int = knob(256, int, "C: items kept (by quality)", "contrast", min=1)
    problems_per_batch: int = knob(8, int, "problems decoded together (and per checkpoint)", "rollouts", min=1)
    capture: str = knob("decode", str, "decode (by tokens, one pass) | reprefill (by tokens, one forward per "
                        "prefix) | retokenize (the reference's: the text cut at each delimiter, re-tokenized with "
                        "the prompt, one forward each; offline/capture.py)", "rollouts",
                        choices=("decode", "reprefill", "retokenize"))
    seed: int = knob(0, int, "seed of the split sample and the rollouts", "data", min=0)

    def __post_init__(self) -> None:
        validate(self, "mine")


@dataclass
class Rollout:
    example_id: str
    k: int
    text: str
    n_tokens: int
    correct: bool
    reward: float
    states: torch.Tensor  # [n_control_points, n_layers, d_model]: state after segment m at index m-1
    prefixes: list[str]  # completion text up to and including the m-th delimiter


@dataclass
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


def _seed(seed: int, example_id: str, k: int) -> int:
    return (seed * 1_000_003 + hash_str(example_id) * 131 + k) % (2**62)


def hash_str(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode())


@serialised  # one decode on the model at a time (stir_core/runtime/locks.py)
def sample_rollouts(engine: Engine, task: Task, examples: list[Example], cfg: MineConfig,
                    layers: list[int]) -> list[list[Rollout]]:
    """K seeded rollouts per example, one batched decode; states at every control point per rollout."""
    model = engine.model
    prompt_texts = [render_prompt(model, task, ex) for ex in examples]
    prompts = [model.encode(p) for p in prompt_texts]
    state = engine.prefill(prompts, capture_layers=layers if cfg.capture == "decode" else (),
                           delimiter=task.delimiter)
    rows = [i for i in range(len(examples)) for _ in range(cfg.k_rollouts)]
    state = engine.fork(state, rows)  # the prompt is prefilled once per problem, then forked K times
    for b, i in enumerate(rows):
        state.rows[b].generator = torch.Generator().manual_seed(_seed(cfg.seed, examples[i].id, b % cfg.k_rollouts))
    delim = task.delimiter
    engine.decode(state, cfg.max_new_tokens, sampling=Sampling(cfg.temperature, cfg.top_p),
                  capture_at=delim if cfg.capture == "decode" else None)
    engine.finish(state.rows)
    out: list[list[Rollout]] = [[] for _ in examples]
    for b, i in enumerate(rows):
        row, ex = state.rows[b], examples[i]
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
            states = retokenized_states(engine, prompt_texts[i], text, delim, layers)
            if len(states) != len(ends):
                raise RuntimeError(f"retokenize: {len(states)} delimiter offsets in the text but {len(ends)} "
                                   f"control points in the token stream (problem {ex.id!r})")
        else:  # by tokens, one forward per prefix (kept for tests and benchmarks)
            states = torch.stack([engine.forward_states([row.prompt + row.tokens[: t + 1]], layers)[0][-1]
                                  for t in ends]) if ends else torch.zeros(0, len(layers), model.d_model)
        out[i].append(Rollout(ex.id, b % cfg.k_rollouts, text, len(row.tokens), correct, reward, states, prefixes))
    return out


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


def contrast_problem(engine: Engine, task: Task, ex: Example, rollouts: list[Rollout], cfg: MineConfig,
                     layers: list[int], order_start: int) -> tuple[list[Item], dict]:
    """The items of one problem (one per mined control point and layer) and its counts."""
    checker = step_checker_of(task) if cfg.clean_prefixes != "off" else None
    if cfg.clean_prefixes == "on" and checker is None:
        raise ValueError(f"clean_prefixes='on' but task {task.name!r} has no step checker")
    rng = random.Random(_seed(cfg.seed, ex.id, 10_007))
    n_cp = max((len(r.prefixes) for r in rollouts), default=0)
    if cfg.max_control_points is not None:
        n_cp = min(n_cp, cfg.max_control_points)
    gold, r_gold = None, 1.0
    items, stats = [], {"control_points": 0, "skipped_no_neg": 0, "skipped_no_pos": 0, "dropped_unclean": 0,
                        "zero_delta": 0, "nonpositive_quality": 0}
    for m in range(1, n_cp + 1):
        valid = [r for r in rollouts if len(r.prefixes) >= m]
        if checker is not None:
            clean = [r for r in valid if checker(ex, r.prefixes[m - 1])]
            stats["dropped_unclean"] += len(valid) - len(clean)
            valid = clean
        pos_states = None
        if cfg.method == "random":
            if len(valid) < (1 if cfg.split_rule == "reference" else 2):
                continue
            shuffled = sorted(valid, key=lambda r: r.k)
            rng.shuffle(shuffled)
            if cfg.split_rule == "reference":  # stage1.py `_select_pos_neg_random`
                n_pos = min(max(1, cfg.k_pos), len(shuffled))
                rest = shuffled[n_pos:] or shuffled  # one valid rollout: it is both sides (Δ = 0)
                pos, neg = shuffled[:n_pos], rest[: max(1, cfg.k_neg)]
            else:
                half = len(shuffled) // 2
                pos, neg = shuffled[:half], shuffled[half:]
        elif cfg.require_correct_and_incorrect:
            neg = sorted((r for r in valid if not r.correct), key=lambda r: (r.reward, r.k))[: cfg.k_neg]
            if len(neg) < max(1, cfg.min_incorrect):
                stats["skipped_no_neg"] += 1
                continue
            pos = sorted((r for r in valid if r.correct), key=lambda r: (-r.reward, r.k))[: cfg.k_pos]
            if not pos and cfg.pos_source == "rollout":
                stats["skipped_no_pos"] += 1
                continue
            if cfg.pos_source == "gold" or (not pos and cfg.pos_source == "rollout_or_gold"):
                if gold is None:
                    gold, n_gold = _gold_states(engine, task, ex, layers, cfg.capture)
                    r_gold = gold_reward(task, ex, n_gold, cfg)
                if len(gold) < m:
                    stats["skipped_no_pos"] += 1
                    continue
                pos, pos_states = [], gold[m - 1][None]
        else:
            ranked = sorted(valid, key=lambda r: (-r.reward, r.k))
            if cfg.split_rule == "reference":  # stage1.py `_select_pos_neg`: best K_pos, worst K_neg (may overlap)
                if not ranked:
                    continue
                pos, neg = ranked[: max(1, cfg.k_pos)], ranked[::-1][: max(1, cfg.k_neg)]
            else:
                if len(ranked) < 2:
                    continue
                k = min(cfg.k_pos, cfg.k_neg, len(ranked) // 2)
                pos, neg = ranked[:k], ranked[-k:]
        if pos_states is None:
            pos_states = torch.stack([r.states[m - 1] for r in pos])
        neg_states = torch.stack([r.states[m - 1] for r in neg])  # [n_neg, n_layers, d]
        r_pos = sum(r.reward for r in pos) / len(pos) if pos else r_gold  # no rollout positives: the gold
        r_neg = sum(r.reward for r in neg) / len(neg)
        quality = r_pos - r_neg
        if quality <= 0:
            # The random ablation keeps every split at q = max(0, gap) (reference); dropping q <= 0 there would
            # turn it back into a reward-selected contrast. Everything else needs a positive gap.
            if cfg.method == "random" and cfg.random_quality == "clamp":
                quality = 0.0
            else:
                stats["nonpositive_quality"] += 1
                continue
        # Label-shuffled control: the same states, positive/negative labels permuted within the problem.
        both = torch.cat([pos_states, neg_states])
        perm = list(range(len(both)))
        rng.shuffle(perm)
        sh = both[perm]
        for j, layer in enumerate(layers):
            mu_pos, mu_neg = pos_states[:, j].mean(0), neg_states[:, j].mean(0)
            # Identical prefixes (e.g. a first segment every rollout shares) give Δ = 0: no action to take.
            # The reference keeps such items (counted here either way); `drop_zero_delta` (ours) drops them.
            if float((mu_pos - mu_neg).norm()) <= 1e-5 * max(1.0, float(mu_neg.norm())):
                stats["zero_delta"] += 1
                if cfg.drop_zero_delta:
                    continue
            shuffled = float((sh[: len(pos_states), j].mean(0) - sh[len(pos_states):, j].mean(0)).norm())
            items.append(Item(ex.id, m, layer, mu_pos, mu_neg, shuffled, quality, r_pos, r_neg,
                              [f"{ex.id}:{r.k}" for r in pos] or [f"{ex.id}:gold"],
                              [f"{ex.id}:{r.k}" for r in neg], order_start + len(items),
                              [r.prefixes[m - 1] for r in pos] or [""], [r.prefixes[m - 1] for r in neg],
                              [r.reward for r in pos] or [r_pos], [r.reward for r in neg]))
        stats["control_points"] += any(it.m == m for it in items)
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


# ---- checkpointing ---------------------------------------------------------------------------------
def _save_checkpoint(path: Path, items: list[Item], next_problem: int, stats: dict, cfg: MineConfig,
                     shard: dict | None = None) -> None:
    """`shard` (rank, world size; sharded runs only) is recorded so that a shard is never resumed or
    merged by a run with another layout."""
    tensors = {}
    meta = []
    for i, it in enumerate(items):
        tensors[f"pos.{i}"], tensors[f"neg.{i}"] = it.mu_pos.contiguous(), it.mu_neg.contiguous()
        meta.append({k: v for k, v in asdict(it).items() if k not in ("mu_pos", "mu_neg")})
    with atomic.atomic_dir(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp / "items.safetensors"))
        (tmp / "state.json").write_text(jsonio.dumps({"next_problem": next_problem, "stats": stats,
                                                      "config": asdict(cfg), "items": meta,
                                                      **({"shard": shard} if shard else {})}))


class CheckpointError(ValueError):
    """A mining checkpoint that cannot be resumed; the message names the file and how to recover."""


def _load_checkpoint(path: Path, cfg: MineConfig, shard: dict | None = None) -> tuple[list[Item], int, dict] | None:
    if not (path / "state.json").exists():
        return None
    recover = "rerun with --restart to discard it and mine from the start"
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        next_problem, stats, metas, saved_cfg = state["next_problem"], state["stats"], state["items"], state["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / 'state.json'}: damaged checkpoint ({type(err).__name__}: {err}); "
                              f"{recover}") from None
    if saved_cfg != json.loads(json.dumps(asdict(cfg))):
        raise CheckpointError(f"{path}: checkpoint was written with a different mining config; "
                              f"{recover}, or use another run directory")
    if state.get("shard") != shard:
        raise CheckpointError(f"{path}: checkpoint was written as shard {state.get('shard')} but is read as "
                              f"{shard}; rerun with the process count that wrote it, or use another run directory")
    try:
        tensors = safetensors.torch.load_file(str(path / "items.safetensors"))
        items = [Item(**m, mu_pos=tensors[f"pos.{i}"], mu_neg=tensors[f"neg.{i}"]) for i, m in enumerate(metas)]
    except Exception as err:  # noqa: BLE001 - safetensors raises its own types for truncated files
        raise CheckpointError(f"{path / 'items.safetensors'}: damaged checkpoint ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); {recover}") from None
    return items, next_problem, stats


def check_checkpoint(run_dir: str | Path, cfg: MineConfig) -> int | None:
    """Read a run directory's mining checkpoint without a model (so a damaged one is reported before any
    model loads): the problem it resumes at, or None when there is none. Raises `CheckpointError`."""
    loaded = _load_checkpoint(Path(run_dir) / CHECKPOINT, cfg)
    return None if loaded is None else loaded[1]


def discard_checkpoint(run_dir: str | Path) -> bool:
    """Delete a run directory's mining checkpoint (`--restart`); True when there was one."""
    import shutil

    ckpt = Path(run_dir) / CHECKPOINT
    if not ckpt.is_dir():
        return False
    shutil.rmtree(ckpt)
    return True


def mine_candidates(model: LoadedModel, cfg: MineConfig, run_dir: str | Path | None = None,
                    progress: Callable[[int, int, dict], None] | None = None,
                    task: Task | None = None, show_progress: bool = True) -> ToolLibrary | None:
    """Stage I over `cfg.n_problems` problems of `cfg.split`; resumes from `run_dir`'s checkpoint.

    Returns the candidate set (2 entries per kept item, top `cfg.top_c` items by quality). Under a launcher
    (torchrun, accelerate launch) each rank mines its shard and rank 0 returns the merged set; the other
    ranks return None (see `shard_mine`).
    """
    from stir_core.offline import shard_mine
    from stir_core.runtime import distributed

    if (dist := distributed.from_env()) is not None:  # under torchrun / accelerate: this rank's shard
        return shard_mine.mine_sharded(model, cfg, run_dir, dist, progress, task, show_progress)
    if run_dir is not None:
        shard_mine.check_run_dir(Path(run_dir), world_size=1)
    task = task or get_task(cfg.task)
    layers = resolve_layers(cfg.layers, model.n_layers)
    examples = task.load(cfg.split, cfg.n_problems, cfg.seed)
    engine = Engine(model)
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    items: list[Item] = []
    start, stats = 0, new_stats()
    if ckpt is not None and (loaded := _load_checkpoint(ckpt, cfg)) is not None:
        items, start, stats = loaded
    bar = tqdm(total=len(examples), initial=start, desc="mine", unit="problem", disable=not show_progress)
    order = max((it.order for it in items), default=-1) + 1
    for lo in range(start, len(examples), cfg.problems_per_batch):
        batch = examples[lo: lo + cfg.problems_per_batch]
        items, order = mine_batch(engine, task, batch, cfg, layers, items, stats, order)
        if ckpt is not None:
            _save_checkpoint(ckpt, items, lo + len(batch), stats, cfg)
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
        new, s = contrast_problem(engine, task, ex, rollouts, cfg, layers, order)
        order += len(new)
        items.extend(new)
        stats["problems"] += 1
        stats["rollouts"] += len(rollouts)
        stats["correct_rollouts"] += sum(r.correct for r in rollouts)
        for k, v in s.items():
            stats[k] += v
    return sorted(items, key=lambda it: it.key, reverse=True)[: cfg.top_c], order  # the top-C heap


def finish_candidates(items: list[Item], model: LoadedModel, cfg: MineConfig, stats: dict, layers: list[int],
                      extra: dict | None = None) -> ToolLibrary:
    """The candidate library from the final top-C items, in (control point, layer, quality, order) order."""
    items = sorted(items, key=lambda it: (it.m, it.layer, -it.quality, it.order))
    return items_to_library(items, model, cfg, {"mining_stats": stats, "layers": layers, **(extra or {})})
