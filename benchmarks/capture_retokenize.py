"""Decode-time capture (by tokens, ours) vs the reference's re-tokenize-at-offset capture, measured on the
architecture matrix's fused-delimiter tokenizers (tests/arch_models.py: byte-level BPE and SentencePiece
vocabularies whose tokens fuse "\\n\\n" with punctuation, with itself and with the next word).

For every control point of greedy completions it compares the state captured while decoding with the state
at the last token of a fresh forward over `prompt + text[:delimiter end]` (stir_core/offline/capture.py),
and prints, per family: control points, the share whose states differ (relative L2 > 1e-3), the median and
max relative difference, and the same split by what the completing token holds (the delimiter at its end,
or more text after it such as "\\n\\nThe"). One run, no timing.

    python benchmarks/capture_retokenize.py [--families qwen2,llama2] [--new-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from arch_models import BY_NAME, DELIM, FAMILIES, build_family, train_tokenizers  # noqa: E402

from stir_core.offline.capture import retokenized_states  # noqa: E402
from stir_core.runtime.engine import Engine  # noqa: E402
from stir_core.runtime.model import load_model  # noqa: E402
from stir_core.runtime.scheduler import generate  # noqa: E402

QUESTIONS = ["we add 3 and 4", "half of the eggs cost 9 each, what is the price", "the total of 5 apples",
             "then 2 more apples cost 5", "check the sum of 12 and 30", "next we take half of the value"]
TOL = 1e-3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def measure(name: str, tok_dirs: dict, root: Path, new_tokens: int) -> dict:
    fam = BY_NAME[name]
    model = load_model(build_family(fam, tok_dirs[fam.tokenizer], root / name), device="cpu")
    engine = Engine(model)
    layers = sorted({model.n_layers // 2, model.n_layers - 1})
    prompts = [model.format_prompt(q) for q in QUESTIONS]
    res = generate(engine, prompts, new_tokens, capture_layers=layers, capture_at=DELIM)
    out = {"family": name, "tokenizer": fam.tokenizer, "points": 0, "count_mismatch": 0,
           "by": {"ends_with_delimiter": [], "carries_more_text": []}}
    tok = model.tokenizer
    for p, row in zip(prompts, res.rows, strict=True):
        retok = retokenized_states(engine, p, row.text, DELIM, layers)
        if len(retok) != len(row.captures):
            out["count_mismatch"] += 1
        for m, cap in enumerate(row.captures[: len(retok)]):
            piece = tok.decode([row.tokens[cap.token_index]], skip_special_tokens=True)
            kind = "ends_with_delimiter" if piece.endswith(DELIM) else "carries_more_text"
            d = max(rel(cap.states[j], retok[m, j]) for j in range(len(layers)))
            out["by"][kind].append(d)
            out["points"] += 1
    return out


def row(label: str, ds: list[float]) -> str:
    if not ds:
        return f"{label:<34} {0:>6}      —        —          —"
    differ = [d for d in ds if d > TOL]
    med = statistics.median(differ) if differ else 0.0
    return (f"{label:<34} {len(ds):>6} {len(differ) / len(ds):>7.1%} {med:>9.3f} {max(ds):>10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(f.name for f in FAMILIES))
    ap.add_argument("--new-tokens", type=int, default=96)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok_dirs = train_tokenizers(root / "tokenizers")
        print(f"relative L2 difference of the states (max over the captured layers); differs: > {TOL:g}")
        print(f"{'family / completing token':<34} {'points':>6} {'differ':>7} {'median*':>9} {'max':>10}")
        total: list[float] = []
        for name in args.families.split(","):
            res = measure(name.strip(), tok_dirs, root, args.new_tokens)
            allds = res["by"]["ends_with_delimiter"] + res["by"]["carries_more_text"]
            total += allds
            note = f"  (control point counts differ in {res['count_mismatch']} rows)" if res["count_mismatch"] else ""
            print(row(f"{res['family']} ({res['tokenizer']})", allds) + note)
            for kind, ds in res["by"].items():
                print(row(f"  {kind}", ds))
        print(row("all families", total))
        print("* median over the control points that differ")


if __name__ == "__main__":
    main()
