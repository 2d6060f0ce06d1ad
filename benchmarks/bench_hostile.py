"""Issue 24's hostile inputs through the real `stir` entry point: wall time and peak memory of each refusal.

Each case runs in its own process (`python -m stir_core.cli ...`, wrapped to print its peak RSS); the line
shows the exit code, the seconds, the peak RSS and the one `error:` line. `stir --version` is the baseline
(what the interpreter and the CLI's imports cost): a refusal at the door should cost about that.

    PYTHONPATH=. python benchmarks/bench_hostile.py > results/bench_hostile.txt
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo-library"
WRAP = ("import resource, sys\nfrom stir_core.cli import run\nsys.argv = ['stir', *sys.argv[1:]]\ntry:\n    run()\n"
        "finally:\n    print(f'peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}', "
        "file=sys.stderr)\n")


def inputs(t: Path) -> dict[str, str]:
    bomb = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
            'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
            'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
            'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n'
            'h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\nonline:\n  delimiter: *i\n')
    files = {"bomb.yaml": bomb, "dup.yaml": "select:\n  budget: 4\n  budget: 8\n",
             "n.yaml": "mine:\n  n_problems: 100000000\n", "seed.yaml": "mine:\n  seed: 1.0e+23\n"}
    for name, text in files.items():
        (t / name).write_text(text)
    shutil.copytree(DEMO, t / "deep-lib")
    (t / "deep-lib" / "manifest.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    (t / "garbage.jsonl").write_bytes(bytes(range(256)) * 64)
    with open(t / "huge.jsonl", "wb") as f:
        f.truncate(1 << 30)
    (t / "webapp").mkdir()
    (t / "webapp" / "manifest.json").write_text('{"name": "app"}')
    (t / "webapp" / "CARD.md").write_text("notes\n")
    return {"t": str(t), "demo": str(DEMO)}


CASES = [
    ("baseline: stir --version", ["--version"]),
    ("YAML alias bomb (9^9 expansion) under online.delimiter", ["eval", "--config", "{t}/bomb.yaml"]),
    ("duplicate YAML key", ["build", "--config", "{t}/dup.yaml", "--out", "{t}/run"]),
    ("eval --n 100000000", ["eval", "--n", "100000000", "--out", "{t}/run"]),
    ("build n_problems: 100000000", ["build", "--config", "{t}/n.yaml", "--out", "{t}/run"]),
    ("mine.seed: 1e23", ["mine", "--config", "{t}/seed.yaml", "--out", "{t}/run"]),
    ("select --force over a web app's manifest.json", ["select", "{demo}", "--out", "{t}/webapp", "--force"]),
    ("manifest nested 200k deep", ["index", "{t}/deep-lib"]),
    ("binary garbage JSONL", ["eval", "--task", "gsm8k", "--path", "{t}/garbage.jsonl"]),
    ("1 GiB sparse task file", ["eval", "--task", "gsm8k", "--path", "{t}/huge.jsonl"]),
    ("dashboard --scales nan,inf", ["dashboard", "{demo}", "--tool", "x", "--out", "{t}/d.html", "--scales", "nan,inf"]),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fill = inputs(Path(tmp))
        print(f"python {sys.version.split()[0]}; each case in a fresh process\n")
        print(f"{'case':<52} {'rc':>3} {'wall s':>7} {'peak MB':>8}  message")
        for name, argv in CASES:
            args = [a.format(**fill) for a in argv]
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", WRAP, *args], capture_output=True, text=True, cwd=REPO,
                               timeout=600)
            wall = time.perf_counter() - t0
            peak = next((x.split("=")[1] for x in p.stderr.splitlines() if x.startswith("peak_rss_mb=")), "?")
            err = next((x for x in p.stderr.splitlines() if x.startswith("error:")), p.stdout.strip()[:60])
            print(f"{name:<52} {p.returncode:>3} {wall:>7.2f} {peak:>8}  {err[:150]}"
                  f"{'…' if len(err) > 150 else ''} ({len(err)} chars)")


if __name__ == "__main__":
    main()
