"""The slot core on a GPU (issue 20): ms per decode step against Hugging Face `generate`, kernel launches per
step, mining rollout rate, a Playground-style comparison, STIR / vanilla wall and peak memory; one run, in
a few minutes on an H200, goals printed beside the numbers. `--tiny --device cpu` runs every part on a CPU
with a tiny config, to check the script (its numbers mean nothing).

Part 1, at Qwen2.5-1.5B's shapes: a random `Qwen2ForCausalLM` with its config (28 layers, d_model 1536,
12 query / 2 KV heads, vocab 151,936), bf16, word-level tokenizer (bench_scale.py's), 63-token prompts.
- ms per step at batch 1, 8, 32 (`--batches`), same weights, same process: this core (vanilla
  `scheduler.generate`: the static slot pool and, on CUDA, its captured step per bucket; capture time on its
  own line), Hugging Face `generate(cache_implementation="static")` (compiled decoding on CUDA), and eager
  `generate` (dynamic cache). Goal: this core ≤ 1.5× compiled Hugging Face at batch 1 and 32.
- kernel launches per decode step (torch profiler, CUDA only) for the three.
- mining rollout rate: `--mine-problems` × K=8 seeded sampled rollouts (batch 64) of `--mine-new` tokens,
  generated tokens per second.
- Playground: one prompt, 256 new tokens, three columns (vanilla, static, stir), wall per column.
- STIR vs vanilla (`--batch` problems × `--new` tokens, delimiter "7>": every token id ending in 7 closes a
  segment, M=8, L=4, probe_tokens=4, layer 14, random library): wall, forwards, peak memory above the
  weights, the pool's bound (`memory.pool_bytes`). Goals: STIR ≤ 1.2× vanilla wall; peak ≤ 1.5× vanilla's.
Part 2, the embedded model on CUDA (float32 and bfloat16) against the CPU (float32): planted accuracy of
vanilla and STIR on `--eval-n` eval problems (seed 2026) and the share of problems whose tokens equal the
CPU's (`--skip part2` to leave it out).

    python benchmarks/bench_gpu.py --skip part2 --out results/bench_gpu.txt     # on an H200, a few minutes
    python benchmarks/bench_gpu.py --tiny --device cpu --skip part2            # the script's own check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scale import library, prompts  # noqa: E402 - the same prompts and random library

from stir_core.config import StirConfig  # noqa: E402
from stir_core.online.methods import run_method  # noqa: E402
from stir_core.runtime.engine import Engine, Sampling  # noqa: E402
from stir_core.runtime.model import load_model  # noqa: E402
from stir_core.runtime.scheduler import generate  # noqa: E402

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
    engine.peak_pool_rows = engine.peak_pool_positions = 0
    t = time.perf_counter()
    traces = run_method(engine, batch, method, lib, cfg)
    sync(device)
    out = {"wall_s": time.perf_counter() - t, "forwards": engine.forwards, "row_positions": engine.row_positions,
           "tokens": sum(tr.n_tokens for tr in traces), "probe_tokens": sum(tr.probe_tokens for tr in traces),
           "interventions": sum(tr.interventions for tr in traces),
           "control_points": sum(len(tr.decisions) for tr in traces),
           "pool": (engine.peak_pool_rows, engine.peak_pool_positions)}
    if device.startswith("cuda"):
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def kernels_per_step(fn, steps: int, device: str) -> float | None:
    """CUDA kernels launched per decode step while `fn()` decodes `steps` tokens (None without CUDA)."""
    if not device.startswith("cuda"):
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    n = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    return n / steps


def ms_per_step(engine: Engine, hf, tok, device: str, batch: int, new: int, lines: list[str]) -> dict:
    """This core vs Hugging Face generate (static compiled, eager dynamic) at one batch size."""
    texts = prompts(batch)
    enc = tok(texts, return_tensors="pt", padding=True).to(device)
    out = {}

    def core():
        generate(engine, texts, new, capture_at=None)

    def hf_static():
        hf.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static")

    def hf_eager():
        hf.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    for name, fn in (("core", core), ("hf_static", hf_static), ("hf_eager", hf_eager)):
        t = time.perf_counter()
        fn()  # warm-up: compilation / graph capture happen here, reported on their own line
        sync(device)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - t
        out[name] = {"ms_per_step": 1000 * wall / new, "first_call_s": warm,
                     "kernels_per_step": kernels_per_step(fn, new, device)}
    return out


def part1(args, lines: list[str], report: dict) -> None:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from stir_core.runtime.graphs import bucket_for
    from stir_core.runtime.memory import QWEN25, pool_bytes, pool_positions, pool_rows

    path = Path(args.model_dir)
    t = time.perf_counter()
    build(path, args.shape, args.device)
    model = load_model(str(path), device=args.device, dtype="bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).to(args.device).eval()
    # The word-level tokenizer as saved: AutoTokenizer (and so the bridge) read the config's model type and
    # load Qwen2's BPE class over it, which turns a 63-word prompt into one token.
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "left"
    model.tokenizer = tok
    assert len(model.encode(prompts(1)[0])) == 63, "the benchmark's prompts must be 63 tokens"
    lines.append(f"random Qwen2 of shape {args.shape} ({model.n_params / 1e9:.2f} B params), bf16 on {args.device} "
                 f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}); built and "
                 f"loaded in {time.perf_counter() - t:.0f} s; torch {torch.__version__}")
    engine = Engine(model)
    lines.append(f"decode step: {'CUDA graph per bucket' if engine.graphs == 'cuda' else 'eager (no CUDA)'}")
    # ---- ms per step --------------------------------------------------------------------------------
    steps = {}
    for b in args.batches:
        engine.graph_log.clear()
        steps[b] = r = ms_per_step(engine, hf, tok, args.device, b, args.step_tokens, lines)
        for line in engine.graph_log:
            lines.append(f"  {line}")
        lines.append(f"batch {b:3d} (bucket {bucket_for(b)}): ms/step core {r['core']['ms_per_step']:7.2f}, "
                     f"HF static {r['hf_static']['ms_per_step']:7.2f}, HF eager {r['hf_eager']['ms_per_step']:7.2f}; "
                     f"core / HF static = {r['core']['ms_per_step'] / r['hf_static']['ms_per_step']:.2f}x "
                     f"(goal <= 1.5x at batch 1 and 32)")
        lines.append(f"  first call (compile / capture included): core {r['core']['first_call_s']:.1f} s, "
                     f"HF static {r['hf_static']['first_call_s']:.1f} s, HF eager {r['hf_eager']['first_call_s']:.1f} s")
        k = {n: v["kernels_per_step"] for n, v in r.items()}
        lines.append("  kernel launches per step: " + (", ".join(f"{n} {v:.0f}" for n, v in k.items())
                                                       if None not in k.values() else "n/a (no CUDA)"))
    report["ms_per_step"] = steps
    del hf
    # ---- mining rollouts -------------------------------------------------------------------------------
    # as mining decodes: each prompt prefilled once and its slot copied for its K = 8 rollouts
    problems = prompts(args.mine_problems)
    rows = [p for p in problems for _ in range(8)]
    engine.graph_log.clear()
    report["mining"] = {}
    default_sampler = engine.sampler
    for sampler in dict.fromkeys([default_sampler, "generator", "counter"]):  # the default first
        engine.sampler = sampler
        generate(engine, problems, 4, sampling=Sampling(0.7, 0.95), seed=1, fanout=8)  # warm-up of the bucket
        sync(args.device)
        t = time.perf_counter()
        res = generate(engine, problems, args.mine_new, sampling=Sampling(0.7, 0.95), seed=0, fanout=8)
        sync(args.device)
        wall = time.perf_counter() - t
        made = sum(len(x) for x in res.tokens)
        lines.append(f"mining rollouts, sampler {sampler}{' (default)' if sampler == default_sampler else ''}: "
                     f"{args.mine_problems} problems x K=8 = {len(rows)} rows x {args.mine_new} tokens "
                     f"(sampled, T=0.7, top-p 0.95): {made / wall:,.0f} tokens/s ({wall:.1f} s)")
        report["mining"][sampler] = {"rows": len(rows), "tokens": made, "wall_s": wall}
    engine.sampler = default_sampler
    # ---- STIR vs vanilla ---------------------------------------------------------------------------------
    lib = library(model.d_model, model.n_layers)
    cfg = StirConfig(max_new_tokens=args.new, delimiter=args.delimiter, max_control_points=8, top_l=4,
                     probe_tokens=4, layer=14, max_preview_rows=args.max_preview_rows)
    run_method(engine, prompts(4), "stir", lib, cfg.with_overrides(max_new_tokens=16))  # warm-up
    # ---- Playground: one prompt, three columns of 256 tokens ------------------------------------------------
    one = prompts(1)
    play = {}
    for method in ("vanilla", "static", "stir"):
        r = timed(engine, args.device, one, method, lib, cfg.with_overrides(max_new_tokens=args.play_new))
        play[method] = r["wall_s"]
    lines.append(f"Playground, one prompt x {args.play_new} tokens: " +
                 ", ".join(f"{m} {w:.2f} s" for m, w in play.items()) + f"; all three {sum(play.values()):.2f} s")
    report["playground"] = play
    batch = prompts(args.batch)
    runs = {"vanilla": timed(engine, args.device, batch, "vanilla", lib, cfg),
            "stir": timed(engine, args.device, batch, "stir", lib, cfg)}
    lines.append(f"batch {args.batch} x {args.new} new tokens, prompts of 63 tokens, delimiter {args.delimiter!r}; "
                 f"M=8 L=4 probe_tokens=4, layer 14, max_preview_rows {args.max_preview_rows}")
    shape = QWEN25["1.5B"] if args.shape == "1.5B" else None
    for name, r in runs.items():
        mem = f"  peak {r['peak_mib']:8.0f} MiB above weights" if "peak_mib" in r else ""
        lines.append(f"{name:8s} {r['wall_s']:7.2f} s  {r['forwards']:5d} forwards  tokens {r['tokens']:6d}  probe "
                     f"{r['probe_tokens']:6d}  control points {r['control_points']:4d}  commits "
                     f"{r['interventions']:4d}  pool {r['pool'][0]} slots x {r['pool'][1]} positions{mem}")
    v, s_ = runs["vanilla"], runs["stir"]
    lines.append(f"stir / vanilla = {s_['wall_s'] / v['wall_s']:.2f}x wall (goal <= 1.2x), "
                 f"{s_['forwards'] / v['forwards']:.2f}x forwards")
    if shape is not None:
        for name, method in (("vanilla", "vanilla"), ("stir", "stir")):
            rows_ = pool_rows(args.batch, method, 4, args.max_preview_rows, cfg.scope)
            pos = pool_positions(63, args.new, 4, method)
            lines.append(f"  {name} pool bound (memory.pool_bytes, {rows_} slots x {pos} positions): "
                         f"{pool_bytes(shape, rows_, pos) / 2**20:,.0f} MiB")
    if "peak_mib" in v:
        lines.append(f"peak memory above the weights: stir / vanilla = {s_['peak_mib'] / max(v['peak_mib'], 1):.2f}x "
                     f"(goal <= 1.5x)")
    report["stir_vs_vanilla"] = runs
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
    ap.add_argument("--tiny", action="store_true", help="the tiny shape and small sizes: checks the script on a CPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", default=None, help="default /tmp/stir-bench-qwen25-<shape>")
    ap.add_argument("--delimiter", default="7>", help='default "7>": every token id ending in 7 closes a segment '
                    "(about one token in ten, so all M=8 control points occur)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the ms/step table")
    ap.add_argument("--step-tokens", type=int, default=64, help="new tokens per ms/step measurement")
    ap.add_argument("--mine-problems", type=int, default=8, help="problems of the rollout-rate run (x K=8 rows)")
    ap.add_argument("--mine-new", type=int, default=256)
    ap.add_argument("--play-new", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--max-preview-rows", type=int, default=None, help="STIR's preview cap; default none")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--skip", choices=("part1", "part2"), default=None)
    ap.add_argument("--out", default=None, help="also write the report (and a .json beside it)")
    args = ap.parse_args()
    if args.tiny:
        args.shape, args.batches, args.step_tokens = "tiny", [1, 2], 8
        args.mine_problems, args.mine_new, args.play_new, args.batch, args.new, args.eval_n = 1, 8, 16, 4, 32, 8
    args.model_dir = args.model_dir or f"/tmp/stir-bench-qwen25-{args.shape}"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path (--tiny --device cpu checks it)")
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
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
