"""Constructed libraries for the online tests: seeded random keys and vectors at chosen control points."""

from __future__ import annotations

import torch

from stir_core.library.format import ToolLibrary

PROMPTS = ["12+3=", "7-2=45\n9", "a:b?", "3+4=7\n"]  # mixed lengths and delimiters: batching is exercised


def make_library(d, layer=1, cps=(1, 2, 3), n_per=3, seed=0, anchors=True, q_corr=1.0, q_anchor=0.5,
                 anchor_same_key=False, hook_point="blocks.{layer}.hook_resid_post") -> ToolLibrary:
    g = torch.Generator().manual_seed(seed)
    keys, vecs, rows = [], [], []
    for m in cps:
        for i in range(n_per):
            k = torch.randn(d, generator=g)
            v = torch.randn(d, generator=g) * 2
            keys.append(k)
            vecs.append(v)
            rows.append({"id": f"m{m}/{i}/corr", "kind": "correction", "layer": layer, "control_point": m,
                         "quality": q_corr * (1 + 0.1 * i)})
            if anchors:
                keys.append(k.clone() if anchor_same_key else torch.randn(d, generator=g))
                vecs.append(torch.zeros(d))
                rows.append({"id": f"m{m}/{i}/anchor", "kind": "anchor", "layer": layer, "control_point": m,
                             "quality": q_anchor})
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vecs), rows,
                                    {"d_model": d, "n_layers": 3, "hook_point": hook_point})
