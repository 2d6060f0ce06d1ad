"""Interop: GGUF control vectors (llama.cpp / repeng), steering-vectors, and importing external vectors.

References: the `gguf` package's own reader, repeng's own loader and `ControlModel`, steering-vectors' own
`apply()`, our engine's steered decode, and library tensors read back with plain numpy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
import torch
from typer.testing import CliRunner

from stir_core.cli import app
from stir_core.library.format import ToolLibrary
from stir_core.runtime.scheduler import generate

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo-library"
runner = CliRunner()
gguf = pytest.importorskip("gguf", reason="the 'gguf' package is not installed (pip install .[interop])")


def _lib(layers, d=48, n_layers=3, seed=0) -> ToolLibrary:
    g = torch.Generator().manual_seed(seed)
    keys, vecs, rows = [], [], []
    for i, layer in enumerate(layers):
        keys.append(torch.randn(d, generator=g))
        vecs.append(torch.randn(d, generator=g) * 2)
        rows.append({"id": f"t{i}", "kind": "correction", "layer": layer, "control_point": 1, "quality": 0.5 + i})
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vecs), rows,
                                    {"model_id": "embedded:toy-reasoner", "d_model": d, "n_layers": n_layers})


def test_export_demo_library_gguf_opens_with_the_gguf_reader(tmp_path):
    out = tmp_path / "demo.gguf"
    r = runner.invoke(app, ["export", str(DEMO), "--format", "gguf", "--out", str(out)])
    assert r.exit_code == 0, r.output
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"  # the toy model's model_type
    table = pd.read_parquet(DEMO / "tools.parquet")
    vectors = safetensors.numpy.load_file(str(DEMO / "tools.safetensors"))["vectors"]
    corr = (table["kind"] == "correction").to_numpy()
    layers = sorted(set(table.loc[corr, "layer"].tolist()))
    assert reader.fields["controlvector.layer_count"].contents() == len(layers)
    assert sorted(t.name for t in reader.tensors) == [f"direction.{x}" for x in layers]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [vectors.shape[1]]
        layer = int(t.name.split(".")[1])
        want = vectors[corr & (table["layer"] == layer).to_numpy()].astype(np.float64).mean(0)
        np.testing.assert_allclose(np.asarray(t.data), want, rtol=1e-5, atol=1e-6)
    ids = json.loads(reader.fields["stir.tool_ids"].contents())
    assert len(ids) == int(corr.sum())


def test_single_tool_is_a_one_layer_vector_and_group_rules(tmp_path):
    from stir_core.library.interop.export import export_library
    from stir_core.library.interop.gguf_io import read_control_vector

    lib = _lib([1, 1, 2])
    path, _ = export_library(lib, "gguf", tmp_path / "one.gguf", ids=["t1"], hint="llama")
    cv = read_control_vector(path)
    assert list(cv.directions) == [1]
    np.testing.assert_allclose(cv.directions[1], lib.vectors[1].numpy(), rtol=1e-6)
    v = lib.vectors.double().numpy()
    q = lib.table["quality"].to_numpy()
    for rule, want in (("mean", (v[0] + v[1]) / 2), ("sum", v[0] + v[1]),
                       ("quality_mean", (q[0] * v[0] + q[1] * v[1]) / (q[0] + q[1]))):
        path, _ = export_library(lib, "gguf", tmp_path / f"{rule}.gguf", rule=rule, scale=2.0, hint="llama")
        cv = read_control_vector(path)
        assert sorted(cv.directions) == [1, 2]
        np.testing.assert_allclose(cv.directions[1], 2.0 * want, rtol=1e-5)
        np.testing.assert_allclose(cv.directions[2], 2.0 * v[2], rtol=1e-5)


def test_llamacpp_refuses_layer_zero_repeng_allows_it(tmp_path):
    lib = _lib([0, 2])
    r = runner.invoke(app, ["export", "x", "--out", str(tmp_path / "a.gguf")])  # bad library first
    assert r.exit_code == 2 and "library directory not found" in r.output
    lib.save(tmp_path / "lib")
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--out", str(tmp_path / "a.gguf")])
    assert r.exit_code == 2 and "block 0" in r.output and not (tmp_path / "a.gguf").exists()
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--format", "repeng", "--out", str(tmp_path / "r.gguf")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--format", "repeng", "--out", str(tmp_path / "r.gguf")])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output  # never unasked
    for flag in ("--force", "--overwrite"):  # --overwrite: the old name, still accepted
        r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--format", "repeng", "--out",
                                str(tmp_path / "r.gguf"), flag])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--ids", "nope", "--out", str(tmp_path / "n.gguf")])
    assert r.exit_code == 2 and "nope" in r.output


REPENG_CHECK = """
import sys, json, numpy as np, torch
np.float_ = np.float64  # repeng 0.4.0 names np.float_ in annotations; numpy 2 removed the alias
from repeng import ControlModel, ControlVector
from stir_core.runtime.model import load_model
model_dir, path, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
cv = ControlVector.import_gguf(path)
m = load_model(model_dir, device="cpu")
hf = m.bridge.original_model
seq = torch.tensor([m.encode("1+2=3\\n\\n4+5=")])
cm = ControlModel(hf, [layer])
cm.set_control(cv, 1.0)
with torch.no_grad():
    steered = cm(seq).logits[0].float()
cm.reset(); cm.unwrap()
v = torch.from_numpy(np.asarray(cv.directions[layer], dtype=np.float32))
with torch.no_grad(), m.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", lambda x, hook: x + v)]):
    ours = m.bridge(seq)[0].float()
with torch.no_grad():
    plain = hf(seq).logits[0].float()
print(json.dumps({"model_type": cv.model_type, "layers": sorted(cv.directions),
                  "vec": [float(x) for x in cv.directions[layer]],
                  "max_diff": float((steered - ours).abs().max()), "moved": float((steered - plain).abs().max())}))
"""


def test_repeng_loads_the_file_and_steers_the_same_point(tmp_path, tiny_model_dir):
    """repeng's own `import_gguf` reads the file; its `ControlModel` steering equals our resid_post hook."""
    if importlib.util.find_spec("repeng") is None:
        reason = "repeng is not installed (pip install --no-deps repeng==0.4.0)"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    lib = _lib([1, 2])
    lib.save(tmp_path / "lib")
    out = tmp_path / "r.gguf"
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--format", "repeng", "--ids", "t0",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(REPENG_CHECK), str(tiny_model_dir), str(out), "1"],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["model_type"] == "llama" and res["layers"] == [1]
    np.testing.assert_allclose(res["vec"], lib.vectors[0].numpy(), rtol=1e-6)
    assert res["moved"] > 1e-2  # the vector changes the logits ...
    assert res["max_diff"] < 1e-4  # ... exactly as our hook at blocks.1.hook_resid_post does


def test_steering_vectors_apply_equals_engine_steered_decode(tiny, engine):
    from stir_core.library.interop.steering_vectors_adapter import available, to_steering_vector
    from stir_core.library.interop.vectors import Directions
    from stir_core.runtime.engine import Steer

    reason = available()
    if reason is not None:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    g = torch.Generator().manual_seed(3)
    layer = 1
    v = torch.randn(tiny.d_model, generator=g) * 2
    sv = to_steering_vector(Directions(directions={layer: v.numpy()}, d_model=tiny.d_model))
    assert set(sv.layer_activations) == {layer} and sv.layer_type == "decoder_block"
    prompt = "12+7=19\n\n3+4="
    steered = generate(engine, [prompt], 16, steers=[Steer(layer, v, 1.0, "segment")])
    plain = generate(engine, [prompt], 16)
    ids, gen = tiny.encode(prompt), steered.tokens[0]
    assert len(gen) >= 4
    hf = tiny.bridge.original_model
    seq = torch.tensor([ids + gen])
    # Our `segment` steer adds the vector at every generated token; steering-vectors does the same
    # with token_indices from the first generated position, in one teacher-forced forward.
    with torch.no_grad(), sv.apply(hf, min_token_index=None, token_indices=slice(len(ids), None)):
        logits = hf(seq).logits[0, len(ids) - 1: -1].float()
    assert logits.argmax(-1).tolist() == gen
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen)[:, None])[:, 0]
    np.testing.assert_allclose(lp.numpy(), np.array(steered.logprobs[0]), atol=1e-4)
    assert plain.tokens[0] != gen or not np.allclose(plain.logprobs[0], steered.logprobs[0], atol=1e-3)


def test_import_vector_runs_as_static_baseline_like_the_source(tmp_path):
    """Exporting the demo library's layer 3 and importing it back gives the `static` baseline's vector,
    so `--methods static` on the imported library decodes exactly like static on the demo library."""
    gg = tmp_path / "demo.gguf"
    assert runner.invoke(app, ["export", str(DEMO), "--out", str(gg)]).exit_code == 0
    lib_dir = tmp_path / "imported"
    r = runner.invoke(app, ["import-vector", str(gg), "--library-out", str(lib_dir), "--layer", "3"])
    assert r.exit_code == 0, r.output
    imp = ToolLibrary.load(lib_dir)
    assert len(imp) == 1 and int(imp.table["layer"].iloc[0]) == 3
    args = ["eval", "--task", "planted", "--methods", "static", "--n", "12", "--set", "layer=3",
            "--set", "max_new_tokens=96", "--device", "cpu"]
    r1 = runner.invoke(app, [*args, "--library", str(lib_dir), "--out", str(tmp_path / "e1")])
    r2 = runner.invoke(app, [*args, "--library", str(DEMO), "--out", str(tmp_path / "e2")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    c1 = [json.loads(x)["completion"] for x in (tmp_path / "e1" / "examples.jsonl").read_text().splitlines()]
    c2 = [json.loads(x)["completion"] for x in (tmp_path / "e2" / "examples.jsonl").read_text().splitlines()]
    assert c1 == c2 and len(c1) == 12


def test_import_refuses_width_and_layer_mismatch(tmp_path, tiny_model_dir):
    bad_w = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"1": np.ones(40, np.float32)}, str(bad_w))
    r = runner.invoke(app, ["import-vector", str(bad_w), "--library-out", str(tmp_path / "o"),
                            "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "width 40" in r.output and "d_model is 48" in r.output
    bad_l = tmp_path / "l.safetensors"
    safetensors.numpy.save_file({"direction.7": np.ones(48, np.float32)}, str(bad_l))
    r = runner.invoke(app, ["import-vector", str(bad_l), "--library-out", str(tmp_path / "o"),
                            "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "layer 7 is out of range" in r.output
    assert not (tmp_path / "o").exists()
    assert len(r.output.strip().splitlines()) == 1  # one line, no traceback


def test_steering_vectors_file_round_trip(tmp_path, tiny_model_dir):
    lib = _lib([2])
    lib.save(tmp_path / "lib")
    out = tmp_path / "sv.safetensors"
    r = runner.invoke(app, ["export", str(tmp_path / "lib"), "--format", "steering-vectors", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["import-vector", str(out), "--library-out", str(tmp_path / "imp"),
                            "--model", str(tiny_model_dir)])
    assert r.exit_code == 0, r.output
    imp = ToolLibrary.load(tmp_path / "imp")
    torch.testing.assert_close(imp.vectors[0], lib.vectors[0])
    from stir_core.library.interop.export import load_steering_vector
    from stir_core.library.interop.steering_vectors_adapter import available

    if available() is None:  # the file also opens as that library's SteeringVector
        sv = load_steering_vector(out)
        assert sv.layer_type == "decoder_block" and list(sv.layer_activations) == [2]
        torch.testing.assert_close(sv.layer_activations[2], lib.vectors[0])
