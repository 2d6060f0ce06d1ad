"""Train the embedded toy reasoner: a small Llama with a character tokenizer on a mixture of tasks.

Every batch mixes `planted` traces (drawn fresh from the planted writer, so the model learns its form
probabilities) and `plain` gold solutions; the task is told apart by the prompt. Loss is on completion
tokens only (`<bos>` and prompt positions are masked). Deterministic for a seed on a given machine
and thread count (the card records it). The result is a standard Hugging Face directory (config,
safetensors, tokenizer) plus `card.json` with the recipe, which `stir_core.toy.control` extends with evaluation numbers.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from stir_core.io import jsonio
from stir_core.tasks.plain import PlainTask
from stir_core.tasks.planted import PlantedTask
from stir_core.toy.recipe import DEFAULT_OUT, Recipe
from stir_core.toy.tokenizer import BOS, EOS, PAD, VOCAB, encode, save_tokenizer


@dataclass(kw_only=True)
class TrainResult:
    out_dir: str
    wall_s: float
    cpu_s: float
    final_loss: float
    n_params: int
    threads: int  # torch CPU threads (bitwise reproducibility holds per seed and thread count)


def model_config(recipe: Recipe) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=recipe.d_model,
        intermediate_size=recipe.d_mlp,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=VOCAB[BOS],
        eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD],
    )


class Mixture:
    """Draws (prompt, completion) training pairs: `planted` with prob `planted_share`, else `plain`."""

    def __init__(self, recipe: Recipe) -> None:
        self.share = recipe.planted_share
        self.planted = PlantedTask(recipe.planting)
        self.plain = PlainTask()
        self.planted_pool = self.planted.load("train", recipe.n_problems, seed=recipe.seed)
        self.plain_pool = self.plain.load("train", recipe.n_problems, seed=recipe.seed)
        self.rng = random.Random(recipe.seed)

    def draw(self) -> tuple[str, str]:
        task, pool = (
            (self.planted, self.planted_pool)
            if self.rng.random() < self.share
            else (self.plain, self.plain_pool)
        )
        ex = pool[self.rng.randrange(len(pool))]
        return task.prompt(ex), task.sample_completion(ex, self.rng)


def collate(pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded batch; `labels` is -100 on `<bos>`, prompt and padding.

    Returns input_ids, attention_mask, labels: each `[batch, pos]`.
    """
    rows = [([VOCAB[BOS], *encode(p)], [*encode(c), VOCAB[EOS]]) for p, c in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), width), VOCAB[PAD], dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        n = len(a) + len(b)
        ids[i, :n] = torch.tensor(a + b)
        labels[i, len(a) : n] = torch.tensor(b)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_toy(
    out_dir: str | Path = DEFAULT_OUT, recipe: Recipe | None = None, progress: bool = True
) -> TrainResult:
    """Train a toy reasoner with `recipe` and save it (atomically, file by file) into `out_dir`."""
    recipe = recipe or Recipe()
    torch.manual_seed(recipe.seed)
    data = Mixture(recipe)
    model = LlamaForCausalLM(model_config(recipe))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    ema = None
    bar = tqdm(range(recipe.steps), desc="toy-train", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = collate([data.draw() for _ in range(recipe.batch_size)])
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_params = sum(p.numel() for p in model.parameters())
    result = TrainResult(out_dir=str(out_dir), wall_s=wall, cpu_s=cpu, final_loss=float(ema or 0.0),
                         n_params=n_params, threads=torch.get_num_threads())
    train_info = {k: v for k, v in asdict(result).items() if k != "out_dir"}
    card = {"recipe": asdict(recipe), "train": train_info, "torch": torch.__version__}
    save_model(model.eval(), out_dir, card)
    return result


def save_model(model: LlamaForCausalLM, out_dir: str | Path, card: dict) -> None:
    """Write the HF files and `card.json`: build them in a temp dir, then `os.replace` each into place.

    A stale `MODEL_CARD.md` (it describes other weights) is removed; `toy-control` writes the new one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tmp)
        (tmp / "card.json").write_text(jsonio.dumps(card, indent=2) + "\n", encoding="utf-8")
        for f in sorted(tmp.iterdir()):
            f.chmod(0o644)
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "MODEL_CARD.md").unlink(missing_ok=True)
