"""STIR vs vanilla on a GPU (issue 12): a random-init model of Qwen2.5-1.5B's shapes in bf16, and the
embedded model's CUDA paths. One run, ratios; needs CUDA (`--shape tiny --device cpu` checks the script).

Part 1, speed at 1.5B's shapes: a random `Qwen2ForCausalLM` with Qwen2.5-1.5B's config (28 layers, d_model
1536, 12 query / 2 KV heads, vocab 151,936), bf16, word-level tokenizer (bench_scale.py's). A random model
writes no "\\n\\n", so the delimiter is "7>": the word-level tokens decode as "<id>", so every token whose id
ends in 7 closes a segment, about one in ten (the most frequent token, bench_scale's choice, closed one
segment per 256 tokens here: too few to measure STIR), and the library holds
random corrections at control points 1..8 of layer 14 (no anchors): every control point is previewed
(M=8, L=4, probe_tokens=4). Reported:
- batched (`--batch` problems × `--new` tokens, one batch as `stir eval` runs them): wall time, forwards
  (sequential steps), row positions, peak CUDA memory above the weights — vanilla, STIR continuous, STIR
  sync; whether the two STIR schedulers give identical tokens (reported, not assumed: bf16 products of
  different batch shapes may round differently);
- one problem at a time (`--steps-n` problems): wall time and steps, vanilla vs STIR.
Part 2, the embedded model on CUDA (float32 and bfloat16) against the CPU (float32): planted accuracy of
vanilla and STIR (demo library, its recommended settings) on `--eval-n` eval problems (seed 2026) and the
share of problems whose tokens equal the CPU's.

    python benchmarks/bench_gpu.py [--batch 32] [--new 256] [--steps-n 8] [--eval-n 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import library, prompts  # noqa: E402 - the same prompts and random library

from stir_core.config import StirConfig  # noqa: E402
from stir_core.online.methods import run_method  # noqa: E402
from stir_core.runtime.engine import Engine  # noqa: E402
from stir_core.runtime.model import load_model  # noqa: E402

SHAPES = {  # Qwen2.5-1.5B's config.json; "tiny" to check the script on a CPU
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=True),
}
VOCAB = 151_936


def build(out: Path, shape: str, device: str) -> None:
    """Random weights (seed 0) with the shape's config, saved in bf16, and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(vocab={f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"<{VOCAB - 1}>",
                            pad_token=f"<{VOCAB - 2}>").save_pretrained(out)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 2, **SHAPES[shape])
    with torch.device(device):  # initialised where it runs: 1.5B parameters take minutes on a CPU
        model = Qwen2ForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    del model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(engine: Engine, device: str, batch: list[str], method: str, lib, cfg: StirConfig) -> dict:
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    engine.forwards = engine.row_positions = 0
    t = time.perf_counter()
    traces = run_method(engine, batch, method, lib, cfg)
    sync(device)
    out = {"wall_s": time.perf_counter() - t, "forwards": engine.forwards, "row_positions": engine.row_positions,
           "tokens": sum(tr.n_tokens for tr in traces), "probe_tokens": sum(tr.probe_tokens for tr in traces),
           "interventions": sum(tr.interventions for tr in traces),
           "control_points": sum(len(tr.decisions) for tr in traces),
           "ids": [[t.token_id for t in tr.tokens] for tr in traces]}
    if device.startswith("cuda"):
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def part1(args, lines: list[str], report: dict) -> None:
    path = Path(args.model_dir)
    t = time.perf_counter()
    build(path, args.shape, args.device)
    model = load_model(str(path), device=args.device, dtype="bfloat16")
    lines.append(f"random Qwen2 of shape {args.shape} ({model.n_params / 1e9:.2f} B params), bf16 on {args.device} "
                 f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}); built and "
                 f"loaded in {time.perf_counter() - t:.0f} s; torch {torch.__version__}")
    engine = Engine(model)
    res = engine.generate(prompts(8), 48, capture_at=None)  # also the warm-up
    counts = Counter(tok for toks in res.tokens for tok in toks)
    delim = args.delimiter or model.tokenizer.decode([counts.most_common(1)[0][0]])
    lib = library(model.d_model, model.n_layers)
    cfg = StirConfig(max_new_tokens=args.new, delimiter=delim, max_control_points=8, top_l=4, probe_tokens=4,
                     layer=14, max_preview_rows=args.max_preview_rows)
    run_method(engine, prompts(4), "stir", lib, cfg.with_overrides(max_new_tokens=16))  # warm-up
    batch = prompts(args.batch)
    runs = {"vanilla": timed(engine, args.device, batch, "vanilla", lib, cfg),
            "stir continuous": timed(engine, args.device, batch, "stir", lib, cfg),
            "stir sync": timed(engine, args.device, batch, "stir", lib, cfg.with_overrides(schedule="sync"))}
    lines.append(f"batch {args.batch} x {args.new} new tokens, prompts of 64 tokens, delimiter {delim!r}; "
                 f"M=8 L=4 probe_tokens=4, layer 14, max_preview_rows {args.max_preview_rows}")
    for name, r in runs.items():
        mem = f"  peak {r['peak_mib']:8.0f} MiB above weights" if "peak_mib" in r else ""
        lines.append(f"{name:16s} {r['wall_s']:7.2f} s  {r['forwards']:5d} forwards  {r['row_positions']:7d} row "
                     f"positions  tokens {r['tokens']:6d}  probe {r['probe_tokens']:6d}  control points "
                     f"{r['control_points']:4d}  commits {r['interventions']:4d}{mem}")
    v, c, s = runs["vanilla"], runs["stir continuous"], runs["stir sync"]
    same = sum(a == b for a, b in zip(c["ids"], s["ids"], strict=True))
    lines.append(f"stir continuous / vanilla = {c['wall_s'] / v['wall_s']:.2f}x wall, "
                 f"{c['forwards'] / v['forwards']:.2f}x forwards (goal <= 1.3x wall); stir sync / vanilla = "
                 f"{s['wall_s'] / v['wall_s']:.2f}x wall")
    if "peak_mib" in v:
        lines.append(f"peak memory above the weights: stir continuous / vanilla = "
                     f"{c['peak_mib'] / max(v['peak_mib'], 1):.2f}x")
    lines.append(f"continuous == sync tokens on {same}/{args.batch} problems")
    one = {"vanilla": [0.0, 0], "stir": [0.0, 0]}
    for p in batch[: args.steps_n]:
        for m in one:
            r = timed(engine, args.device, [p], m, lib, cfg)
            one[m][0] += r["wall_s"]
            one[m][1] += r["forwards"]
    k = args.steps_n
    lines.append(f"one problem at a time ({k} problems): wall vanilla {one['vanilla'][0]:.2f} s, stir "
                 f"{one['stir'][0]:.2f} s, stir / vanilla = {one['stir'][0] / one['vanilla'][0]:.2f}x; steps "
                 f"per problem vanilla {one['vanilla'][1] / k:.1f}, stir {one['stir'][1] / k:.1f}")
    report["part1"] = {name: {k2: v2 for k2, v2 in r.items() if k2 != "ids"} for name, r in runs.items()}
    report["part1"]["one_by_one"] = one
    del engine, model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()


def part2(args, lines: list[str], report: dict) -> None:
    from stir_core.config import online_config
    from stir_core.library.format import ToolLibrary
    from stir_core.tasks import get_task

    task = get_task("planted")
    examples = task.load("eval", args.eval_n, 2026)
    out = {}
    for device, dtype in (("cpu", "float32"), (args.device, "float32"), (args.device, "bfloat16")):
        model = load_model(None, device=device, dtype=dtype)
        lib = ToolLibrary.load(str(HERE.parent / "assets" / "demo-library"), d_model=model.d_model,
                               n_layers=model.n_layers)
        cfg = online_config(lib, {})
        engine = Engine(model)
        prompts_ = [model.format_prompt(task.prompt(ex)) for ex in examples]
        for method in ("vanilla", "stir"):
            t = time.perf_counter()
            traces = run_method(engine, prompts_, method, lib, cfg)
            sync(device)
            acc = sum(task.score(tr.completion, ex) for ex, tr in zip(examples, traces, strict=True)) / len(examples)
            out[(device, dtype, method)] = ([[t.token_id for t in tr.tokens] for tr in traces], acc,
                                            time.perf_counter() - t)
    lines.append(f"embedded model, {args.eval_n} planted eval problems (seed 2026), demo library, recommended settings")
    for (device, dtype, method), (ids, acc, wall) in out.items():
        ref = out[("cpu", "float32", method)][0]
        same = sum(a == b for a, b in zip(ids, ref, strict=True))
        lines.append(f"{device:6s} {dtype:8s} {method:8s} accuracy {acc:6.1%}  tokens equal to CPU float32 on "
                     f"{same}/{len(ids)}  {wall:6.2f} s")
    report["part2"] = {f"{d}/{t}/{m}": {"accuracy": a, "wall_s": w} for (d, t, m), (_, a, w) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.5B")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", default="/tmp/stir-bench-qwen25-1.5b")
    ap.add_argument("--delimiter", default="7>", help='default "7>": every token id ending in 7 closes a segment '
                    "(about one token in ten, so all M=8 control points occur); empty: the most frequent token")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--steps-n", type=int, default=8)
    ap.add_argument("--max-preview-rows", type=int, default=None,
                    help="STIR's preview cap (README: a quarter of the batch on a memory-bound GPU); default none")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--skip", choices=("part1", "part2"), default=None)
    ap.add_argument("--out", default=None, help="also write the report (and a .json beside it)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path (--device cpu --shape tiny to check it)")
    lines: list[str] = []
    report: dict = {}
    for name, part in (("part1", part1), ("part2", part2)):
        if args.skip != name:
            done = len(lines)
            part(args, lines, report)
            print("\n".join(lines[done:]), flush=True)
    text = "\n".join(lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
