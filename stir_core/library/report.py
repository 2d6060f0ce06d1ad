"""Short markdown cards for a built library: what was mined, what was kept, and how it compares to noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stir_core.library.format import ToolLibrary


def _per_cp(lib: ToolLibrary, kind: str = "correction") -> dict[str, int]:
    t = lib.table[lib.table["kind"] == kind]
    return {f"L{a}/m{b}": int(n) for (a, b), n in t.groupby(["layer", "control_point"]).size().items()}


def library_card(run_dir: str | Path) -> str:
    """Markdown card of `<run>/candidates`, `<run>/library` and `<run>/build.json`."""
    run = Path(run_dir)
    cands, lib = ToolLibrary.load(run / "candidates"), ToolLibrary.load(run / "library")
    build = json.loads((run / "build.json").read_text())
    corr = lib.table[lib.table["kind"] == "correction"]
    sel = lib.manifest["selection"]  # one writer: select.select_library
    logdet = "n/a (singular)" if sel["logdet"] is None else f"{sel['logdet']:.1f}"
    ratio = (corr["norm"] / corr["shuffled_norm"]).replace([np.inf, -np.inf], np.nan).dropna()
    lines = [
        "# Library card", "",
        f"- model: `{lib.manifest.get('model_id')}`; task `{build['config']['mine']['task']}`, split "
        f"`{build['config']['mine']['split']}`, seed {lib.manifest.get('seed')}",
        f"- mining: {build['mining_stats']['problems']} problems x {build['config']['mine']['k_rollouts']} rollouts "
        f"({build['mining_stats']['correct_rollouts']} correct), {build['timings_s']['mine']:.0f} s",
        f"- mining stats: `{json.dumps(build['mining_stats'])}`",
        f"- candidates mined (corrections per layer/control point): `{json.dumps(_per_cp(cands))}`",
        f"- selection: {sel['method']} with budget {sel['budget']}: kept {sel['n_kept']} of "
        f"{sel['n_candidates']} entries (dropped {sel['n_dropped']}), log det {logdet}",
        f"- tools kept (corrections per layer/control point): `{json.dumps(_per_cp(lib))}`",
        f"- correction norms: median {corr['norm'].median():.2f} (min {corr['norm'].min():.2f}, max "
        f"{corr['norm'].max():.2f}); quality median {corr['quality'].median():.3f}",
        f"- label-shuffled control: median norm / shuffled norm = {ratio.median():.2f} "
        f"({(ratio > 1).mean():.0%} of tools above their shuffled control)",
        f"- content hash: `{lib.manifest['content_hash']}`",
    ]
    return "\n".join(lines) + "\n"
