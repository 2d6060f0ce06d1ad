"""`stir_core.analysis.effects`: KL(steered ‖ vanilla) after each commit, by teacher forcing, checked against
the decode itself (recorded log-probs) and against a manual forward of the Hugging Face model with a plain
PyTorch hook on the decoder layer (not TransformerLens, not the engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.app_library import PROMPT, build_test_library

from stir_core.analysis.effects import EffectsUnavailable, trace_effects
from stir_core.online.methods import StirConfig, run_method
from stir_core.runtime.engine import Engine


@pytest.fixture(scope="module")
def lib(tiny_model_dir, tmp_path_factory):
    return build_test_library(tiny_model_dir, tmp_path_factory.mktemp("eff") / "lib")


def _hf_logits(model, ids: list[int], adds: list[tuple[int, int, torch.Tensor]]) -> np.ndarray:
    """Logits [len(ids), vocab] of the wrapped HF model, `vector` added to decoder layer `layer`'s output
    (resid_post) at `position` for each of `adds`."""
    hf = model.hf_model
    handles = []
    for pos, layer, vec in adds:
        def hook(_mod, _inp, out, pos=pos, vec=vec):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[:, pos] += vec.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handles.append(hf.model.layers[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].double().numpy()
    finally:
        for h in handles:
            h.remove()


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp = p_logits - np.logaddexp.reduce(p_logits)
    lq = q_logits - np.logaddexp.reduce(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


@pytest.mark.parametrize("scope", ["segment", "persist"])
def test_commit_effects_match_a_manual_forward_and_the_decode(tiny, lib, scope):
    cfg = StirConfig(max_new_tokens=24, delimiter="\n", seed=0, scope=scope)
    trace = run_method(Engine(tiny), [tiny.format_prompt(PROMPT)], "stir", lib, cfg)[0]
    assert trace.interventions >= 2  # the test library commits here (two control points)
    eff = trace_effects(tiny, trace, lib, scope)
    # the steered recomputation reproduces the decode's own log-probs of every generated token
    assert eff.logprob_error < 1e-4
    prompt = tiny.encode(trace.prompt)
    ids = prompt + [t.token_id for t in trace.tokens]
    n0 = len(prompt)
    vanilla = _hf_logits(tiny, ids, [])
    committed = [d for d in trace.decisions if d.committed]
    assert [c.m for c in eff.commits] == [d.m for d in committed]
    for c, d in zip(eff.commits, committed, strict=True):
        mine = [d] if scope == "segment" else [e for e in committed if e.m <= d.m]
        adds = [(n0 + t.index, e.layer, e.alpha * lib.vectors[e.chosen_entry].float())
                for e in mine for t in trace.tokens if t.tool == e.chosen and t.index >= e.token_index]
        steered = _hf_logits(tiny, ids, adds)
        assert c.tokens and c.tokens[0] == d.token_index + 1
        for i, kl in zip(c.tokens, c.kl, strict=True):
            row = n0 - 1 + i
            assert kl == pytest.approx(_kl(steered[row], vanilla[row]), abs=1e-4)
            assert c.top_changed[c.tokens.index(i)] == (steered[row].argmax() != vanilla[row].argmax())
        assert max(c.kl) > 1e-3  # the vector does move the distribution right after its commit
    before = committed[0].token_index
    assert all(k == 0.0 for k in eff.kl[: before + 1])  # nothing acts before the first commit


def test_vanilla_has_no_effect_and_ablations_say_why(tiny, lib):
    cfg = StirConfig(max_new_tokens=16, delimiter="\n", seed=0)
    van = run_method(Engine(tiny), [tiny.format_prompt(PROMPT)], "vanilla", lib, cfg)[0]
    eff = trace_effects(tiny, van, lib)
    assert eff.commits == [] and all(k == 0.0 for k in eff.kl) and eff.logprob_error < 1e-4
    rnd = run_method(Engine(tiny), [tiny.format_prompt(PROMPT)], "random_vector", lib, cfg)[0]
    assert rnd.interventions
    with pytest.raises(EffectsUnavailable, match="random"):
        trace_effects(tiny, rnd, lib)
