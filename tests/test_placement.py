"""One model over several devices, on CPU: an explicit Hugging Face device map with block 1 offloaded to disk
(Accelerate dispatches it: its weights rest on `meta` and are brought to its execution device per forward).
Steering, capture and teacher-forced states must equal the single-device run exactly.

On a CPU-only machine every execution device is `cpu`, so this checks the dispatch path and the placement
bookkeeping, not a real cross-GPU copy; `add.to(x.device)` in the engine is what a GPU split relies on.
"""

from __future__ import annotations

import pytest
import torch
from oracle.segmented import decode, prefill

from stir_core.runtime.distributed import Dist
from stir_core.runtime.engine import Engine, Sampling, Steer
from stir_core.runtime.model import load_model
from stir_core.runtime.placement import layer_devices, replica_gpus

DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def split(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", device_map=DEVICE_MAP)


def test_device_map_is_applied_and_layers_report_their_execution_device(split):
    hf = split.bridge.original_model
    assert hf.hf_device_map["model.layers.1"] == "disk"
    assert next(hf.model.layers[1].parameters()).device.type == "meta"  # really offloaded
    assert next(hf.model.layers[0].parameters()).device.type == "cpu"
    assert layer_devices(split.bridge) == {i: torch.device("cpu") for i in range(3)}
    assert split.device == torch.device("cpu")


def test_steer_capture_and_states_equal_the_single_device_run(split, tiny):
    prompts = [tiny.encode("12+3="), tiny.encode("7-4+1=")]
    layers = [0, 1, 2]
    vec = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    steers = [Steer(1, vec, 2.0, "segment"), Steer(2, -vec, 1.0, "segment")]
    outs = []
    for model in (tiny, split):
        eng = Engine(model)
        state = prefill(eng, prompts, capture_layers=layers, seeds=[11, 12], delimiter="d")
        decode(eng, state, 12, sampling=Sampling(1.0, 1.0), steers=steers, capture_at="d")  # seeded: both emit a "d"
        states = eng.forward_states([p + r.tokens for p, r in zip(prompts, state.rows, strict=True)], layers)
        outs.append((state.rows, states))
    (rows_a, st_a), (rows_b, st_b) = outs
    for a, b in zip(rows_a, rows_b, strict=True):
        assert a.tokens == b.tokens and a.logprobs == b.logprobs and a.added == b.added
        assert len(a.captures) == len(b.captures)
        for ca, cb in zip(a.captures, b.captures, strict=True):
            assert ca.token_index == cb.token_index and torch.equal(ca.states, cb.states)
            assert cb.states.device == torch.device("cpu")
    for a, b in zip(st_a, st_b, strict=True):
        assert torch.equal(a, b)
    assert all(r.captures for r in rows_b)  # the comparison covered captured states


def test_replica_gpus_cut_the_visible_gpus_per_local_rank():
    assert replica_gpus(None, 4) == [0, 1, 2, 3]
    assert replica_gpus(Dist(1, 2, 1), 8, local_world_size=2) == [4, 5, 6, 7]
    assert replica_gpus(Dist(3, 4, 1), 4, local_world_size=2) == [2, 3]
    with pytest.raises(ValueError, match="only 2 GPU"):
        replica_gpus(Dist(0, 4, 0), 2, local_world_size=4)
