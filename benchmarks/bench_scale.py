"""Memory and speed at Qwen2.5-0.5B's shape: peak RSS and tokens/s, vanilla and STIR, before and after.

A random-init `Qwen2ForCausalLM` with Qwen2.5-0.5B's shapes (24 layers, d_model 896, 14 query / 2 KV
heads, vocab 151,936; float32 on CPU) decodes batch 8 × 256 new tokens. Each configuration runs in its own
process (peak RSS is per process), all in one run of this script:

- before: what the engine did until now — prefill logits for every position (`[batch, prompt, vocab]`
  float32), previews as forked copies of the whole cache (`schedule=sync`), finished rows still fed;
- after: last-position logits only, previews as rows of the continuous scheduler (the null row is the
  main row), finished rows leave the batch.

Memory is the peak resident set *during the decode* above its start (a sampling thread, every 5 ms), after
a warm-up forward has paged the weights in: the process peak itself is set by loading the weights, which
every configuration shares.

A random model has no "\\n\\n": the delimiter is the token greedy decoding emits most often (found first),
so control points occur; the library holds random corrections at control points 1..8 (no anchors), so
every control point is previewed (L=4, 4 probe tokens). The measured peaks are compared with
`stir_core.runtime.memory.estimate`. Prints ratios from one run; `--out` saves the report.

    python benchmarks/bench_scale.py [--batch 8] [--new 256] [--out results/bench_scale.txt]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = Path("/tmp/stir-bench-qwen25-0.5b")
PROMPT_TOKENS = 64
CONFIGS = {
    "vanilla before": {"method": "vanilla", "legacy": True},
    "vanilla after": {"method": "vanilla", "legacy": False},
    "stir before": {"method": "stir", "legacy": True},
    "stir after": {"method": "stir", "legacy": False},
}


def build_model(out: Path) -> None:
    """Random Qwen2 weights with Qwen2.5-0.5B's config and a word-level tokenizer of the same vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    vocab = {f"<{i}>": i for i in range(151_936)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<151935>", pad_token="<151934>").save_pretrained(out)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, rope_theta=1e6, eos_token_id=151935, pad_token_id=151934)
    Qwen2ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)


def prompts(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(f"<{rng.randrange(151_000)}>" for _ in range(PROMPT_TOKENS - 1)) for _ in range(n)]


def library(d_model: int, n_layers: int, seed: int = 0):
    import torch

    from stir_core.library.format import ToolLibrary

    g = torch.Generator().manual_seed(seed)
    rows, keys, vecs = [], [], []
    for m in range(1, 9):
        for i in range(6):
            keys.append(torch.randn(d_model, generator=g))
            vecs.append(torch.randn(d_model, generator=g))
            rows.append({"id": f"m{m}/{i}", "kind": "correction", "layer": 14, "control_point": m, "quality": 1.0})
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vecs), rows,
                                    {"d_model": d_model, "n_layers": n_layers})


def child(name: str, batch: int, new: int, delimiter: str) -> dict:
    from stir_core.config import StirConfig
    from stir_core.online.methods import run_method
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model
    from stir_core.runtime.scheduler import generate

    spec = CONFIGS[name]
    model = load_model(str(MODEL_DIR), device="cpu", dtype="float32", threads=None)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = Engine(model)
    engine.legacy_prefill_logits = spec["legacy"]
    lib = library(model.d_model, model.n_layers) if spec["method"] == "stir" else None
    cfg = StirConfig(max_new_tokens=new, delimiter=delimiter, max_control_points=8, top_l=4, probe_tokens=4,
                     schedule="sync" if spec["legacy"] else "continuous",
                     max_preview_rows=None)
    import threading

    import psutil

    # Touch every weight first: safetensors maps the file lazily, so the first forward would page the
    # weights in (≈ 2 GB here) inside the measured window.
    generate(engine, [prompts(1)[0]], 2, capture_at=None)
    proc, peak, stop = psutil.Process(), [0], threading.Event()
    base = proc.memory_info().rss

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    traces = run_method(engine, prompts(batch), spec["method"], lib, cfg)
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    tokens = sum(tr.n_tokens for tr in traces)
    return {"config": name, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "rss_loaded_mb": rss_loaded, "rss_before_decode_mb": base / 2**20,
            "decode_peak_above_mb": (max(peak[0], base) - base) / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "interventions": sum(tr.interventions for tr in traces),
            "control_points": sum(len(tr.decisions) for tr in traces)}


def find_delimiter(batch: int) -> str:
    from stir_core.runtime.engine import Engine
    from stir_core.runtime.model import load_model
    from stir_core.runtime.scheduler import generate

    model = load_model(str(MODEL_DIR), device="cpu", dtype="float32", threads=None)
    res = generate(Engine(model), prompts(batch), 48, capture_at=None)
    counts = Counter(t for toks in res.tokens for t in toks)
    return model.tokenizer.decode([counts.most_common(1)[0][0]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--delimiter", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.new, args.delimiter)))
        return
    build_model(MODEL_DIR)
    delimiter = find_delimiter(args.batch)
    results = {}
    for name in CONFIGS:
        r = subprocess.run([sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--new",
                            str(args.new), "--delimiter", delimiter], capture_output=True, text=True, check=True)
        results[name] = json.loads(r.stdout.strip().splitlines()[-1])
    from stir_core.runtime.memory import QWEN25, estimate

    shape = QWEN25["0.5B"]
    lines = [f"random-init Qwen2 with Qwen2.5-0.5B's shapes, float32 CPU; batch {args.batch} x {args.new} new "
             f"tokens, prompts of {PROMPT_TOKENS} tokens; delimiter {delimiter!r}; M=8 L=4 probe_tokens=4",
             f"{'config':16s} {'tok/s':>7s} {'decode peak above start, MB':>28s} {'estimate MB':>12s} "
             f"{'process peak MB':>16s} {'CPs':>5s} {'commits':>7s}"]
    for name, r in results.items():
        spec = CONFIGS[name]
        est = estimate(shape, args.batch, PROMPT_TOKENS, args.new, 4, spec["method"],
                       legacy_prefill_logits=spec["legacy"])
        lines.append(f"{name:16s} {r['tokens_per_s']:7.1f} {r['decode_peak_above_mb']:28.0f} "
                     f"{(est['kv_cache'] + est['logits']) / 2**20:12.0f} {r['peak_rss_mb']:16.0f} "
                     f"{r['control_points']:5d} {r['interventions']:7d}")
    va, sa, vb, sb = (results[k] for k in ("vanilla after", "stir after", "vanilla before", "stir before"))
    w = sa["rss_loaded_mb"]
    lines += [
        f"decode memory above start: stir / vanilla = {sa['decode_peak_above_mb'] / max(1, va['decode_peak_above_mb']):.2f}x "
        f"after, {sb['decode_peak_above_mb'] / max(1, vb['decode_peak_above_mb']):.2f}x before; "
        f"vanilla after / before = {va['decode_peak_above_mb'] / max(1, vb['decode_peak_above_mb']):.2f}x; "
        f"stir after / before = {sa['decode_peak_above_mb'] / max(1, sb['decode_peak_above_mb']):.2f}x",
        f"with the weights (RSS after load {w:.0f} MB): stir / vanilla = "
        f"{(w + sa['decode_peak_above_mb']) / (w + va['decode_peak_above_mb']):.3f}x (goal <= 1.25x)",
        f"tokens/s: vanilla after / before = {va['tokens_per_s'] / vb['tokens_per_s']:.2f}x; "
        f"stir after / before = {sa['tokens_per_s'] / sb['tokens_per_s']:.2f}x",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n" + json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
