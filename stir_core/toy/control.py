"""The testbed's own positive control, from ground truth only (no mining, no library).

1. Contrast directions: for mode-A and mode-B problems of the `mine` split, traces are drawn from the
   planted writer and teacher-forced through the model (`bridge.run_with_cache`). At each trace's damage
   boundary (A2 or B2) the state is resid_post at the delimiter's last token; the direction per layer is
   mean(state before a sound segment) − mean(state before the failure form).
2. Geometry: the cosine between the mode-A and mode-B directions per layer, each direction's norm relative
   to the mean state norm, a label-shuffled norm (noise floor) and the cosine between problem halves.
3. Oracle gate: greedy segmented decoding (`segmented.generate_segmented`) that adds alpha x the true mode's
   direction at the true damage boundary (`positions="last"`), swept over layers and alphas.
4. Evaluation for the card: greedy accuracy and tokens for `planted` and `plain` (the same code path as
   `stir eval --methods vanilla`), planted error attribution, sampled (T=0.7) accuracy.

`run_control()` does all of it and writes `card.json` and `MODEL_CARD.md` beside the weights.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from stir_core.io import atomic
from stir_core.online.methods import generate_segmented
from stir_core.runtime.backend import hook_name, run_with_states
from stir_core.runtime.engine import Engine, Sampling, Steer
from stir_core.runtime.locks import serialised
from stir_core.runtime.model import LoadedModel, load_model
from stir_core.runtime.scheduler import generate
from stir_core.tasks.base import Example
from stir_core.tasks.plain import PlainTask
from stir_core.tasks.planted import DELIM, PlantedTask
from stir_core.toy.train import DEFAULT_OUT

MODES = ("A", "B")
DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
MAX_NEW_TOKENS = 256  # as `stir eval` (StirConfig.max_new_tokens)
EVAL_SEED = 123  # as `stir eval`


@dataclass(kw_only=True)
class ModeContrast:
    """One mode's contrast at its damage boundary. `direction` is [n_layers, d_model]."""

    mode: str
    direction: torch.Tensor
    n_sound: int
    n_failure: int
    rel_norm: list[float]  # ‖Δ_l‖ / mean ‖h_l‖
    shuffled_rel_norm: list[float]  # the same with sound/failure labels shuffled (noise floor)
    half_cos: list[float]  # cos(Δ from one half of the problems, Δ from the other half)


def damage_prefixes(
    task: PlantedTask, examples: list[Example], traces_per_problem: int, seed: int
) -> dict[str, list[tuple[int, str, bool]]]:
    """Per mode: (problem index, prompt + completion prefix up to the damage delimiter, next form is sound)."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[int, str, bool]]] = {m: [] for m in MODES}
    for i, ex in enumerate(examples):
        mode = ex.meta["mode"]
        if mode is None:
            continue
        for _ in range(traces_per_problem):
            trace = task.sample_trace(ex, rng)
            for k, seg in enumerate(trace):
                if seg.boundary == f"{mode}2":
                    prefix = task.prompt(ex) + "".join(s.text + DELIM for s in trace[:k])
                    out[mode].append((i, prefix, seg.form not in ("slip", "shortcut")))
    return out


@torch.no_grad()
def last_token_states(model: LoadedModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """resid_post at every layer at the last token of each text (teacher-forced): [n, n_layers, d_model]."""
    names = [hook_name(layer) for layer in range(model.n_layers)]
    out = torch.zeros(len(texts), model.n_layers, model.d_model)
    by_len: dict[int, list[int]] = defaultdict(list)
    ids = [model.encode(t) for t in texts]
    for i, x in enumerate(ids):
        by_len[len(x)].append(i)  # equal lengths: no padding, no position shifts
    for rows in by_len.values():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo : lo + batch_size]
            tokens = torch.tensor([ids[i] for i in chunk], device=model.device)
            cache = run_with_states(model.bridge, tokens, names)
            out[chunk] = torch.stack([cache[n][:, -1].float().cpu() for n in names], dim=1)
    return out


def _diff(states: torch.Tensor, sound: torch.Tensor) -> torch.Tensor:
    return states[sound].mean(0) - states[~sound].mean(0)


def mode_contrasts(
    model: LoadedModel, task: PlantedTask, examples: list[Example], traces_per_problem: int = 4, seed: int = 0
) -> dict[str, ModeContrast]:
    """Each mode's sound-minus-failure direction per layer at its damage boundary, with its noise controls."""
    out = {}
    for mode, items in damage_prefixes(task, examples, traces_per_problem, seed).items():
        sound = torch.tensor([s for _, _, s in items])
        if len(items) < 4 or bool(sound.all()) or not bool(sound.any()):
            raise ValueError(
                f"mode {mode}: need sound and failure traces at the damage boundary, got "
                f"{int(sound.sum())} sound / {int((~sound).sum())} failure"
            )
        states = last_token_states(model, [p for _, p, _ in items])  # [n, n_layers, d_model]
        direction = _diff(states, sound)
        h_norm = states.norm(dim=-1).mean(0)
        gen = torch.Generator().manual_seed(seed)
        shuffled = _diff(states, sound[torch.randperm(len(sound), generator=gen)])
        problem = torch.tensor([i for i, _, _ in items])
        first = problem % 2 == 0  # problem halves: every trace of a problem lands in the same half
        if any(bool(sound[h].all()) or not bool(sound[h].any()) for h in (first, ~first)):
            raise ValueError(f"mode {mode}: a problem half lacks sound or failure traces; use more problems")
        halves = [_diff(states[h], sound[h]) for h in (first, ~first)]
        out[mode] = ModeContrast(
            mode=mode,
            direction=direction,
            n_sound=int(sound.sum()),
            n_failure=int((~sound).sum()),
            rel_norm=(direction.norm(dim=-1) / h_norm).tolist(),
            shuffled_rel_norm=(shuffled.norm(dim=-1) / h_norm).tolist(),
            half_cos=torch.cosine_similarity(halves[0], halves[1], dim=-1).tolist(),
        )
    return out


def cosine_ab(contrasts: dict[str, ModeContrast]) -> list[float]:
    """cos(Δ_A, Δ_B) per layer."""
    return torch.cosine_similarity(contrasts["A"].direction, contrasts["B"].direction, dim=-1).tolist()


def oracle_policy(
    task: PlantedTask, examples: list[Example], vectors: dict[str, torch.Tensor], layer: int, alpha: float
):
    """At the true damage boundary of row b's mode, add `alpha * vectors[mode]` at `layer`; else nothing.

    `vectors[mode]` is [d_model]. The boundary is found from the text so far and the ground truth.
    """

    def policy(row: int, m: int, text: str, states: dict) -> Steer | None:
        ex = examples[row]
        mode = ex.meta["mode"]
        if mode is None or task.boundary_of(ex, text) != f"{mode}2":
            return None
        return Steer(layer, vectors[mode], alpha, "last", tag=f"oracle-{mode}")

    return policy


@serialised  # the engine is not safe for concurrent callers (stir_core/runtime/locks.py)
def oracle_accuracy(
    engine: Engine,
    task: PlantedTask,
    examples: list[Example],
    vanilla_correct: list[bool],
    vectors: dict[str, torch.Tensor],
    layer: int,
    alpha: float,
    batch_size: int = 64,
) -> float:
    """Accuracy on `examples` with the oracle gate.

    Only problems with a planted mode are decoded (the gate never fires elsewhere, so the rest keep their
    greedy result from `vanilla_correct`).
    """
    idx = [i for i, ex in enumerate(examples) if ex.meta["mode"] is not None]
    correct = list(vanilla_correct)
    for lo in range(0, len(idx), batch_size):
        chunk = [examples[i] for i in idx[lo : lo + batch_size]]
        policy = oracle_policy(task, chunk, vectors, layer, alpha)
        prompts = [engine.model.format_prompt(task.prompt(ex)) for ex in chunk]
        res, _ = generate_segmented(engine, prompts, policy, MAX_NEW_TOKENS, DELIM, capture_layers=())
        for i, text in zip(idx[lo : lo + batch_size], res.texts, strict=True):
            correct[i] = task.score(text, examples[i])
    return sum(correct) / len(correct)


@serialised
def evaluate_task(engine: Engine, task, n: int, seed: int = EVAL_SEED, sampled_n: int = 300) -> dict:
    """Greedy (the `stir eval --methods vanilla` path) and T=0.7 sampled accuracy on the eval split."""
    from stir_core.analysis.evaluate import evaluate

    res = evaluate(engine, task, ["vanilla"], n=n, split="eval", seed=seed, show_progress=False)
    df = res.examples
    out = {
        "split": "eval",
        "n": int(len(df)),
        "seed": seed,
        "greedy_accuracy": float(df["correct"].mean()),
        "mean_tokens": float(df["n_tokens"].mean()),
        "completions": df["completion"].tolist(),
        "correct": [bool(x) for x in df["correct"]],
    }
    examples = task.load("eval", n, seed)[:sampled_n]
    sampling = Sampling(temperature=0.7, top_p=0.95)
    texts: list[str] = []
    for lo in range(0, len(examples), 64):
        prompts = [engine.model.format_prompt(task.prompt(ex)) for ex in examples[lo : lo + 64]]
        texts += generate(engine, prompts, MAX_NEW_TOKENS, sampling=sampling, seed=seed + lo).texts
    out["sampled"] = {
        "temperature": 0.7,
        "top_p": 0.95,
        "n": len(examples),
        "accuracy": sum(task.score(t, ex) for t, ex in zip(texts, examples, strict=True)) / len(examples),
    }
    return out


def attribute(task: PlantedTask, examples: list[Example], completions: list[str]) -> dict:
    """Error counts by planted mode, the planted share of errors, and accuracy per problem mode."""
    errors = Counter(task.attribute_error(ex, c) for ex, c in zip(examples, completions, strict=True))
    n_err = sum(v for k, v in errors.items() if k is not None)
    by_mode: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ex, c in zip(examples, completions, strict=True):
        key = ex.meta["mode"] or "none"
        by_mode[key][0] += int(task.score(c, ex))
        by_mode[key][1] += 1
    return {
        "errors": {k: errors.get(k, 0) for k in ("A", "B", "other")},
        "planted_error_share": (errors.get("A", 0) + errors.get("B", 0)) / n_err if n_err else 1.0,
        "accuracy_by_problem_mode": {k: v[0] / v[1] for k, v in sorted(by_mode.items())},
    }


def choose_layer(cos: list[float], best_gain: list[float], max_cos: float = -0.5) -> tuple[int, str]:
    """The layer with the largest oracle gain among those whose A/B cosine is <= `max_cos`."""
    ok = [layer for layer, c in enumerate(cos) if c <= max_cos]
    if ok:
        layer = max(ok, key=lambda la: (best_gain[la], -cos[la]))
        return layer, (
            f"largest oracle gain (+{100 * best_gain[layer]:.1f} points) among layers where the mode-A and "
            f"mode-B directions are opposed (cos <= {max_cos}: layers {ok}); cos there {cos[layer]:.2f}"
        )
    layer = min(range(len(cos)), key=lambda la: cos[la])
    return layer, f"no layer has cos <= {max_cos} (TARGET MISSED); most opposed layer, cos {cos[layer]:.2f}"


def run_control(
    model_dir: str | Path = DEFAULT_OUT,
    n_eval: int = 600,
    n_mine: int = 500,
    traces_per_problem: int = 4,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    sampled_n: int = 300,
    seed: int = 0,
    write: bool = True,
    device: str = "cpu",
) -> dict:
    """Evaluate the toy model, compute the positive control, pick the default layer; write the card."""
    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    model = load_model(model_dir, device=device)
    engine = Engine(model)
    planted, plain = PlantedTask(), PlainTask()
    card = json.loads((model_dir / "card.json").read_text()) if (model_dir / "card.json").exists() else {}
    recipe_planting = card.get("recipe", {}).get("planting")
    if recipe_planting is not None and recipe_planting != vars(planted.planting):
        raise ValueError(
            f"{model_dir} was trained with planting {recipe_planting}, but the task's default is "
            f"{vars(planted.planting)}: the card would describe another distribution"
        )

    ev = evaluate_task(engine, planted, n_eval, sampled_n=sampled_n)
    ev_examples = planted.load("eval", n_eval, EVAL_SEED)
    ev.update(attribute(planted, ev_examples, ev["completions"]))
    plain_ev = evaluate_task(engine, plain, n_eval, sampled_n=sampled_n)

    contrasts = mode_contrasts(model, planted, planted.load("mine", n_mine, seed), traces_per_problem, seed)
    cos = cosine_ab(contrasts)
    baseline = ev["greedy_accuracy"]
    oracle: dict[int, dict[float, float]] = {}
    for layer in range(model.n_layers):
        vecs = {m: contrasts[m].direction[layer] for m in MODES}
        oracle[layer] = {
            a: oracle_accuracy(engine, planted, ev_examples, ev["correct"], vecs, layer, a) for a in alphas
        }
    best_gain = [max(oracle[la].values()) - baseline for la in range(model.n_layers)]
    layer, reason = choose_layer(cos, best_gain)
    best_alpha = max(alphas, key=lambda a: oracle[layer][a])
    d = {m: contrasts[m].direction[layer] for m in MODES}
    swapped = {"A": d["B"], "B": d["A"]}
    static = {m: (d["A"] + d["B"]) / 2 for m in MODES}
    controls = {
        name: oracle_accuracy(engine, planted, ev_examples, ev["correct"], vecs, layer, best_alpha)
        for name, vecs in (("swapped_modes", swapped), ("mean_of_both", static))
    }

    for e in (ev, plain_ev):
        e.pop("completions")
        e.pop("correct")
    train = card.get("train", {})
    weights = (model_dir / "model.safetensors").stat().st_size
    targets = {
        "weights_le_10MB": weights <= 10 * 2**20,
        "train_cpu_le_30min (15 min on 2 cores)": train.get("cpu_s", float("inf")) <= 30 * 60,
        "planted_greedy_in_30_70": 0.3 <= ev["greedy_accuracy"] <= 0.7,
        "planted_error_share_ge_80": ev["planted_error_share"] >= 0.8,
        "oracle_gain_ge_20_points": oracle[layer][best_alpha] - baseline >= 0.2,
        "cos_ab_le_-0.5_at_default_layer": cos[layer] <= -0.5,
    }
    card.update(
        {
            "weights_bytes": weights,
            "targets": targets,
            "n_params": model.n_params,
            "eval": {"planted": ev, "plain": plain_ev},
            "control": {
                "split": "mine",
                "n_problems": n_mine,
                "traces_per_problem": traces_per_problem,
                "seed": seed,
                "counts": {m: {"sound": c.n_sound, "failure": c.n_failure} for m, c in contrasts.items()},
                "rel_norm": {m: c.rel_norm for m, c in contrasts.items()},
                "shuffled_rel_norm": {m: c.shuffled_rel_norm for m, c in contrasts.items()},
                "half_cos": {m: c.half_cos for m, c in contrasts.items()},
                "cos_ab": cos,
                "oracle": {
                    "baseline": baseline,
                    "accuracy": {
                        str(la): {str(a): acc for a, acc in row.items()} for la, row in oracle.items()
                    },
                    "best_gain": best_gain,
                    "at_default_layer": {
                        "alpha": best_alpha,
                        "accuracy": oracle[layer][best_alpha],
                        **controls,
                    },
                },
                "default_layer": layer,
                "default_layer_reason": reason,
                "wall_s": time.perf_counter() - t0,
            },
        }
    )
    if write:
        directions = {f"{m}.direction": contrasts[m].direction.contiguous() for m in MODES}
        tmp = model_dir / ".control.safetensors.tmp"
        save_file(directions, str(tmp), metadata={"what": "mode contrast directions [n_layers, d_model]"})
        tmp.chmod(0o644)
        tmp.replace(model_dir / "control.safetensors")
        write_card(model_dir, card)
    return card


def write_card(model_dir: str | Path, card: dict) -> None:
    """Write `card.json` and `MODEL_CARD.md` (atomically)."""
    model_dir = Path(model_dir)
    atomic.write_json(model_dir / "card.json", card)
    atomic.write_text(model_dir / "MODEL_CARD.md", render_card(card))


def _history(runs: list[dict]) -> str:
    """The recipe search that led here (card.json `history`), as a table; empty when there is none."""
    if not runs:
        return ""
    lines = [f"| {r['run']} | {r['change']} | {r['result']} |" for r in runs]
    return "## Recipes tried\n| run | recipe | result |\n|---|---|---|\n" + "\n".join(lines) + "\n\n"


def _row(xs: list[float], fmt: str = "{:+.2f}") -> str:
    return " | ".join(fmt.format(x) for x in xs)


def render_card(card: dict) -> str:
    """The markdown model card from `card.json`'s content."""
    r, t = card["recipe"], card["train"]
    pe, qe, c = card["eval"]["planted"], card["eval"]["plain"], card["control"]
    n_layers = len(c["cos_ab"])
    head = " | ".join(f"L{la}" for la in range(n_layers))
    sep = "|".join(["---"] * (n_layers + 1))
    pl = r["planting"]
    oracle_rows = "\n".join(
        f"| α={a} | " + _row([c["oracle"]["accuracy"][str(la)][a] for la in range(n_layers)], "{:.3f}") + " |"
        for a in c["oracle"]["accuracy"]["0"]
    )
    at = c["oracle"]["at_default_layer"]
    return f"""# toy-reasoner — the embedded STIR testbed

A {r["n_layers"]}-layer Llama (d_model {r["d_model"]}, {r["n_heads"]} heads, MLP {r["d_mlp"]}, {card["n_params"]:,}
parameters, {card["weights_bytes"] / 1e6:.1f} MB of float32 weights) with a character tokenizer, trained on a mixture
of the `planted` task ({r["planted_share"]:.0%} of each batch) and the `plain` task (the negative control). The task
is told apart by the prompt (`mod10 …` / `calc …`). Everything below is produced by `stir toy-control`.

## Recipe
`stir toy-train --seed {r["seed"]} --threads {t.get("threads", 1)}` (defaults): {r["steps"]} steps, batch {r["batch_size"]}, AdamW lr {r["lr"]}
(warmup {r["warmup"]}, cosine to 10%), weight decay {r["weight_decay"]}, loss on completion tokens only,
{r["n_problems"]} training problems per task with planted traces resampled at every draw.
Planting: modes A/B on {pl["p_mode_a"]:.0%}/{pl["p_mode_b"]:.0%} of problems; A: recheck after ±1 p={pl["p_recheck_a"]},
then slip p={pl["p_slip_a"]}; B: skip the check after ±9 p={pl["p_skip_b"]}, then wrong merge p={pl["p_merge_b"]} (after a check: a second check p={pl["p_recheck_b"]});
background recheck p={pl["p_background_recheck"]}.
Training time: {t["cpu_s"] / 60:.1f} CPU-minutes; {t["wall_s"] / 60:.1f} min wall with {t.get("threads", "?")} torch thread(s)
(wall time depends on the machine and its load); torch {card.get("torch", "?")}; final loss (EMA) {t["final_loss"]:.4f}.

## Held-out accuracy (split `eval`, seed {pe["seed"]}, n={pe["n"]}; `stir eval --task … --methods vanilla --n {pe["n"]}`)
| task | greedy accuracy | mean tokens | sampled accuracy (T={pe["sampled"]["temperature"]}, top_p={pe["sampled"]["top_p"]}, n={pe["sampled"]["n"]}) |
|---|---|---|---|
| planted | {pe["greedy_accuracy"]:.3f} | {pe["mean_tokens"]:.1f} | {pe["sampled"]["accuracy"]:.3f} |
| plain | {qe["greedy_accuracy"]:.3f} | {qe["mean_tokens"]:.1f} | {qe["sampled"]["accuracy"]:.3f} |

Planted greedy errors by mode: A {pe["errors"]["A"]}, B {pe["errors"]["B"]}, other {pe["errors"]["other"]}
({pe["planted_error_share"]:.0%} from the planted modes). Accuracy by problem mode:
{", ".join(f"{k} {v:.2f}" for k, v in pe["accuracy_by_problem_mode"].items())}.

## Positive control (ground truth only; `stir toy-control`)
Contrast at the damage boundary (mean state before the sound form − before the failure form), from writer
traces of {c["n_problems"]} `mine` problems × {c["traces_per_problem"]} traces (A: {c["counts"]["A"]["sound"]} sound /
{c["counts"]["A"]["failure"]} failure, B: {c["counts"]["B"]["sound"]} / {c["counts"]["B"]["failure"]}).

| | {head} |
|{sep}|
| cos(Δ_A, Δ_B) | {_row(c["cos_ab"])} |
| ‖Δ_A‖/‖h‖ | {_row(c["rel_norm"]["A"], "{:.3f}")} |
| ‖Δ_A‖/‖h‖ labels shuffled | {_row(c["shuffled_rel_norm"]["A"], "{:.3f}")} |
| ‖Δ_B‖/‖h‖ | {_row(c["rel_norm"]["B"], "{:.3f}")} |
| ‖Δ_B‖/‖h‖ labels shuffled | {_row(c["shuffled_rel_norm"]["B"], "{:.3f}")} |
| cos between problem halves, A | {_row(c["half_cos"]["A"])} |
| cos between problem halves, B | {_row(c["half_cos"]["B"])} |

Oracle gate (adds α·Δ of the true mode at the true damage boundary, `positions=last`, greedy; baseline
{c["oracle"]["baseline"]:.3f}):

| accuracy | {head} |
|{sep}|
{oracle_rows}

**Default layer: {c["default_layer"]}** — {c["default_layer_reason"]}. At that layer and α={at["alpha"]}: oracle
{at["accuracy"]:.3f} (+{100 * (at["accuracy"] - c["oracle"]["baseline"]):.1f} points); the same gate with the modes'
directions swapped {at["swapped_modes"]:.3f}, with one static vector (mean of Δ_A and Δ_B) {at["mean_of_both"]:.3f}.

{_history(card.get("history", []))}## Targets (issue 3)
{chr(10).join(f"- {k}: {'met' if v else 'MISSED'}" for k, v in card["targets"].items())}

Directions are stored in `control.safetensors` (`A.direction`, `B.direction`: [n_layers, d_model]).
"""
