"""1 → N processes for `stir build`: the same config, one plain process vs `torchrun --nproc_per_node N`.

Prints, from one run of this script: wall time of each whole command (model load and imports included) and
of the mining stage (build.json `timings_s.mine`, the part that is sharded), their ratios, whether the two
libraries have the same content hash, and the load average around it (the machine may be shared).
Writes the same to results/scale_out.json.

    python benchmarks/bench_scale_out.py [--nproc 2] [--n-problems 96] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], out: Path) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    build = json.loads((out / "build.json").read_text())
    digest = json.loads((out / "library" / "manifest.json").read_text())["content_hash"]
    return wall, build["timings_s"]["mine"], digest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--n-problems", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = {"mine": {"n_problems": args.n_problems, "k_rollouts": 8, "max_new_tokens": 96, "layers": [2, 3],
                    "top_c": 96, "problems_per_batch": 8},
           "select": {"budget": 64}}
    tmp = Path(tempfile.mkdtemp(prefix="stir-scale-"))
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    load_before = os.getloadavg()
    rows = {"1": [], str(args.nproc): []}
    for i in range(args.repeats):  # interleaved, so both see the same background load
        out1 = tmp / f"one-{i}"
        rows["1"].append(run([str(BIN / "stir"), "build", "--config", str(tmp / "cfg.yaml"), "--out", str(out1),
                              "--device", "cpu"], out1))
        outn = tmp / f"n-{i}"
        rows[str(args.nproc)].append(run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node",
                                          str(args.nproc), "--no-python", "--", str(BIN / "stir"), "build",
                                          "--config", str(tmp / "cfg.yaml"), "--out", str(outn),
                                          "--device", "cpu"], outn))
    best = {k: (min(r[0] for r in v), min(r[1] for r in v)) for k, v in rows.items()}
    same = len({r[2] for v in rows.values() for r in v}) == 1
    res = {"config": cfg, "nproc": args.nproc, "repeats": args.repeats, "cpu_count": os.cpu_count(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "best_wall_s": {k: b[0] for k, b in best.items()}, "best_mine_s": {k: b[1] for k, b in best.items()},
           "speedup_wall": best["1"][0] / best[str(args.nproc)][0],
           "speedup_mine": best["1"][1] / best[str(args.nproc)][1],
           "same_library": same, "all_runs": rows}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "scale_out.json").write_text(json.dumps(res, indent=2))
    print(f"1 process : wall {best['1'][0]:.1f} s, mining {best['1'][1]:.1f} s (best of {args.repeats})")
    print(f"{args.nproc} processes: wall {best[str(args.nproc)][0]:.1f} s, mining {best[str(args.nproc)][1]:.1f} s")
    print(f"speed-up: whole command x{res['speedup_wall']:.2f}, mining x{res['speedup_mine']:.2f}; "
          f"same library: {same}; load average before/after {load_before[0]:.1f}/{os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
