"""Engine throughput vs Hugging Face `generate` (same model, batch, greedy), and the cost of an attached
zero-scale intervention. Prints ratios measured in one run.

    python benchmarks/bench_engine.py [--batch 16] [--tokens 64] [--model PATH]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from _common import best_of, load_bench_model

from stir_core.runtime.engine import Engine, Steer
from stir_core.runtime.scheduler import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_bench_model(args.model)
    # Both sides decode exactly `tokens` per row: HF via min_new_tokens, the engine with EOS switched off.
    no_eos = dataclasses.replace(model)
    no_eos.__class__ = type("NoEos", (type(model),), {"eos_token_id": None})
    engine = Engine(no_eos)
    prompts = [f"mod10 {i % 10}+{(3 * i) % 10}-{(7 * i) % 10}\n" for i in range(args.batch)]
    n_tok = args.batch * args.tokens
    # HF generate needs an EOS-free budget to match: forbid early stop by a huge min_new_tokens.
    hf = model.hf_model
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(
        [tok.bos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
    )

    def run_hf():
        with torch.no_grad():
            hf.generate(
                **enc,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
                pad_token_id=model.pad_token_id,
            )

    made = []

    def run_engine(steers=None):
        res = generate(engine, prompts, args.tokens, capture_at=None, steers=steers)
        made.append(sum(len(t) for t in res.tokens))

    zero = [Steer(model.n_layers // 2, torch.zeros(model.d_model), 0.0, "segment")] * args.batch
    run_engine()  # warm-up
    t_hf = best_of(run_hf)
    t_engine = best_of(run_engine)
    t_zero = best_of(lambda: run_engine(zero))
    assert min(made) == n_tok, made
    print(
        f"model: {model.model_id}  params={model.n_params:,}  batch={args.batch}  new tokens/row={args.tokens}"
    )
    print(f"HF generate      : {n_tok / t_hf:8.0f} tok/s")
    print(
        f"engine           : {n_tok / t_engine:8.0f} tok/s   ratio engine/HF = {t_hf / t_engine:.2f}x throughput"
    )
    print(
        f"engine + 0-steer : {n_tok / t_zero:8.0f} tok/s   cost of attached zero intervention = "
        f"{t_zero / t_engine:.2f}x time"
    )


if __name__ == "__main__":
    main()
