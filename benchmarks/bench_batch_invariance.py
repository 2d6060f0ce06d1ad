"""Why shards are whole batches: a problem's rollouts decoded inside a batch vs alone.

Same seeds, same problems (the embedded model, float32 on CPU). Prints whether the sampled texts and the
captured control-point states are identical. Left padding changes the matmul shapes, so states can differ
in the last bits even when every sampled token agrees; sharding by whole batches (the batches one process
forms) sidesteps this, so N processes reproduce one process bit for bit.

    python benchmarks/bench_batch_invariance.py [--n 8] [--k 4]
"""

from __future__ import annotations

import argparse

import torch

from stir_core.config import MineConfig
from stir_core.offline.mine import sample_rollouts
from stir_core.runtime.engine import Engine
from stir_core.runtime.model import load_model
from stir_core.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    model = load_model("embedded", device="cpu")
    task = get_task("planted")
    examples = task.load("mine", args.n, 0)
    cfg = MineConfig(n_problems=args.n, k_rollouts=args.k, max_new_tokens=64, layers=[2, 3])
    engine = Engine(model)
    together = sample_rollouts(engine, task, examples, cfg, [2, 3])
    alone = [sample_rollouts(engine, task, [ex], cfg, [2, 3])[0] for ex in examples]
    pairs = [(a, b) for ra, rb in zip(together, alone, strict=True) for a, b in zip(ra, rb, strict=True)]
    same_text = all(a.text == b.text for a, b in pairs)
    same_shape = all(a.states.shape == b.states.shape for a, b in pairs)
    exact = same_shape and all(torch.equal(a.states, b.states) for a, b in pairs)
    diff = max((float((a.states - b.states).abs().max()) for a, b in pairs if a.states.numel()), default=0.0) \
        if same_shape else float("nan")
    print(f"{args.n} problems x {args.k} rollouts, batched together vs one problem per batch:")
    print(f"  sampled texts identical: {same_text}")
    print(f"  captured states bit-identical: {exact} (max abs difference {diff:.3g})")


if __name__ == "__main__":
    main()
