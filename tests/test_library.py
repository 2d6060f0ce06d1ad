"""The library directory: exact round trip, validation of damaged files, atomic writes."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from stir_core.io import atomic
from stir_core.library.format import (
    MANIFEST_FILE,
    TABLE_FILE,
    TENSORS_FILE,
    LibraryError,
    ToolLibrary,
    validate_for_model,
)

D = 16


def make_lib(n_pairs: int = 6, seed: int = 0, n_layers: int | None = 8) -> ToolLibrary:
    """n_pairs mined items -> a correction (key mu-, vector delta) and an anchor (key mu+, zero vector) each."""
    g = torch.Generator().manual_seed(seed)
    keys, vectors, rows = [], [], []
    for p in range(n_pairs):
        mu_pos, mu_neg = torch.randn(D, generator=g), torch.randn(D, generator=g)
        prov = dict(
            layer=[3, 5][p % 2], control_point=1 + p % 3, quality=0.25 + p / 10, task="planted",
            example_id=f"ex{p}", rollout_ids=[f"ex{p}/r{j}" for j in range(3)], n_pos=2, n_neg=1,
            mean_reward_pos=0.9, mean_reward_neg=-0.01, pair_id=f"item{p}", shuffled_norm=0.5,
        )  # fmt: skip
        keys += [mu_neg, mu_pos]
        vectors += [mu_pos - mu_neg, torch.zeros(D)]
        rows += [
            dict(id=f"item{p}/c", kind="correction", **prov),
            dict(id=f"item{p}/a", kind="anchor", **prov),
        ]
    manifest = dict(
        model_id="toy-reasoner", model_revision="abc123", n_layers=n_layers, seed=7, config={"K": 8}
    )
    return ToolLibrary.from_records(torch.stack(keys), torch.stack(vectors), rows, manifest)


@pytest.fixture
def saved(tmp_path) -> tuple[ToolLibrary, Path]:
    lib = make_lib()
    return lib, lib.save(tmp_path / "lib")


def junk(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(atomic.TMP_PREFIX)]


# --- round trip --------------------------------------------------------------------------------------


def test_round_trip_is_exact(saved):
    lib, path = saved
    back = ToolLibrary.load(path, d_model=D, n_layers=8)
    for a, b in ((lib.keys, back.keys), (lib.vectors, back.vectors)):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bitwise
    pd.testing.assert_frame_equal(lib.table, back.table)
    assert back.manifest == lib.manifest
    assert back.table["rollout_ids"][0] == json.dumps(["ex0/r0", "ex0/r1", "ex0/r2"])
    assert back.manifest["counts"] == {
        "entries": 12, "corrections": 6, "anchors": 6,
        "per_control_point": {"1": 4, "2": 4, "3": 4}, "per_layer": {"3": 6, "5": 6},
    }  # fmt: skip
    assert back.table["model_id"].unique().tolist() == ["toy-reasoner"] and back.table["seed"][0] == 7


def test_readable_without_the_package(saved):
    lib, path = saved
    tensors = safetensors.numpy.load_file(path / TENSORS_FILE)
    assert sorted(tensors) == ["keys", "vectors"]
    assert np.array_equal(tensors["keys"], lib.keys.numpy())
    table = pd.read_parquet(path / TABLE_FILE)
    assert table["id"].tolist() == lib.table["id"].tolist()
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["hook_point"] == "blocks.{layer}.hook_resid_post" and manifest["d_model"] == D


def test_empty_library_round_trip(tmp_path):
    lib = ToolLibrary.empty(D, model_id="m")
    back = ToolLibrary.load(lib.save(tmp_path / "e"))
    assert len(back) == 0 and back.keys.shape == (0, D)
    pd.testing.assert_frame_equal(lib.table, back.table)
    assert back.manifest == lib.manifest


def test_subset_recomputes_counts_and_hash(saved, tmp_path):
    lib, _ = saved
    sub = lib.subset([5, 0, 2])
    assert sub.table["id"].tolist() == [lib.table["id"][i] for i in (5, 0, 2)]
    assert torch.equal(sub.keys, lib.keys[[5, 0, 2]])
    assert (
        sub.manifest["counts"]["entries"] == 3
        and sub.manifest["content_hash"] != lib.manifest["content_hash"]
    )
    assert sub.manifest["config"] == lib.manifest["config"]
    sub.validate()
    back = ToolLibrary.load(sub.save(tmp_path / "sub"))
    assert back.manifest == sub.manifest
    with pytest.raises(ValueError, match="unique"):
        lib.subset([1, 1])
    with pytest.raises(ValueError, match="lie in"):
        lib.subset([12])


def test_extra_columns_round_trip(tmp_path):
    lib = make_lib()
    rows = [
        {**r, "shuffled_ratio": 0.5 * i, "tags": ["a", str(i)]}
        for i, r in enumerate(lib.table.to_dict("records"))
    ]
    extra = ToolLibrary.from_records(lib.keys, lib.vectors, rows, {"n_layers": 8, "note": "extras are kept"})
    back = ToolLibrary.load(extra.save(tmp_path / "x"))
    assert back.table["shuffled_ratio"].tolist() == [0.5 * i for i in range(12)]
    assert [list(t) for t in back.table["tags"]] == [["a", str(i)] for i in range(12)]
    assert back.manifest["note"] == "extras are kept"


def test_layer_beyond_manifest_depth():
    lib = make_lib(n_layers=8)
    rows = [{**r, "layer": 9} for r in lib.table.to_dict("records")]
    with pytest.raises(LibraryError, match="row 0 uses layer 9 but the manifest says n_layers=8"):
        ToolLibrary.from_records(lib.keys, lib.vectors, rows, {"n_layers": 8})


# --- rejection of damaged or mismatched libraries ----------------------------------------------------


def rewrite_table(path: Path, edit) -> None:
    table = pd.read_parquet(path / TABLE_FILE)
    table = edit(table)
    table.to_parquet(path / TABLE_FILE, index=False)


def rewrite_tensors(path: Path, edit) -> None:
    t = safetensors.torch.load_file(path / TENSORS_FILE)
    safetensors.torch.save_file(edit(t), path / TENSORS_FILE)


def test_truncated_tensors(saved):
    _, path = saved
    data = (path / TENSORS_FILE).read_bytes()
    (path / TENSORS_FILE).write_bytes(data[:-100])
    with pytest.raises(LibraryError, match=rf"{TENSORS_FILE}: not a readable safetensors file, truncated"):
        ToolLibrary.load(path)


def test_flipped_bit_is_caught_by_the_hash(saved):
    _, path = saved
    data = bytearray((path / TENSORS_FILE).read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8 : 8 + header_len])["keys"]["data_offsets"]
    data[8 + header_len + start + 4 * 5] ^= (
        0x01  # lowest mantissa bit of keys[0, 5]: still finite, no rule broken
    )
    (path / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(LibraryError, match=rf"{TENSORS_FILE}: content hash mismatch"):
        ToolLibrary.load(path)


def test_edited_table_is_caught_by_the_hash(saved):
    _, path = saved
    rewrite_table(path, lambda t: t.assign(quality=t["quality"] + 1.0))
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: content hash mismatch"):
        ToolLibrary.load(path)


def test_edited_manifest_hash_is_caught(saved):
    _, path = saved
    m = json.loads((path / MANIFEST_FILE).read_text())
    m["content_hash"] = "sha256:" + "0" * 64
    (path / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(LibraryError, match=rf"{MANIFEST_FILE}: content hash mismatch"):
        ToolLibrary.load(path)


@pytest.mark.parametrize("missing", [TENSORS_FILE, TABLE_FILE, MANIFEST_FILE])
def test_missing_file(saved, missing):
    _, path = saved
    (path / missing).unlink()
    with pytest.raises(LibraryError, match=rf"{missing}: missing file"):
        ToolLibrary.load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(LibraryError, match="library directory not found"):
        ToolLibrary.load(tmp_path / "nope")


def test_nan_in_vectors(saved):
    _, path = saved

    def poison(t):
        t["vectors"][4, 2] = float("nan")
        return t

    rewrite_tensors(path, poison)
    with pytest.raises(
        LibraryError, match=rf"{TENSORS_FILE}: 'vectors' has NaN/inf in 1 rows \(first: row 4\)"
    ):
        ToolLibrary.load(path)


def test_wrong_tensor_names_and_dtype(saved):
    _, path = saved
    rewrite_tensors(path, lambda t: {**t, "extra": torch.zeros(1)})
    with pytest.raises(LibraryError, match=rf"{TENSORS_FILE}: must hold exactly the tensors"):
        ToolLibrary.load(path)
    rewrite_tensors(path, lambda t: {"keys": t["keys"].half(), "vectors": t["vectors"]})
    with pytest.raises(LibraryError, match=rf"{TENSORS_FILE}: 'keys' must be a float32 tensor"):
        ToolLibrary.load(path)


def test_width_mismatch_with_manifest(saved):
    _, path = saved
    rewrite_tensors(path, lambda t: {k: v[:, :8].contiguous() for k, v in t.items()})
    with pytest.raises(LibraryError, match=rf"{TENSORS_FILE}: 'keys' has width 8 but manifest d_model is 16"):
        ToolLibrary.load(path)


def test_wrong_model(saved):
    _, path = saved
    with pytest.raises(
        LibraryError, match=rf"{MANIFEST_FILE}: library d_model is 16 but the model's d_model is 32"
    ):
        ToolLibrary.load(path, d_model=32)
    with pytest.raises(LibraryError, match=rf"{MANIFEST_FILE}: library was mined on a model with 8 layers"):
        ToolLibrary.load(path, d_model=D, n_layers=12)


def test_layer_out_of_range(tmp_path):
    lib = make_lib(n_layers=None)  # manifest does not pin the depth; the layers themselves must fit
    path = lib.save(tmp_path / "lib")
    ToolLibrary.load(path, d_model=D, n_layers=6)
    with pytest.raises(
        LibraryError, match=rf"{TABLE_FILE}: row 2 uses layer 5, out of range for a model with 4 layers"
    ):
        ToolLibrary.load(path, n_layers=4)
    with pytest.raises(LibraryError, match="out of range"):
        validate_for_model(lib, D, 5)


def test_bad_kind(saved):
    _, path = saved
    rewrite_table(path, lambda t: t.assign(kind=["correction", "tool"] * 6))
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: kind must be one of .* row 1 has 'tool'"):
        ToolLibrary.load(path)


def test_anchor_with_a_vector(saved):
    _, path = saved

    def give_anchor_vector(t):
        t["vectors"][1] = t["vectors"][0]
        return t

    rewrite_tensors(path, give_anchor_vector)
    with pytest.raises(
        LibraryError, match=rf"{TABLE_FILE}: row 1 \('item0/a'\) is an anchor but its vector is not zero"
    ):
        ToolLibrary.load(path)


def test_norm_must_match_vector(saved):
    _, path = saved
    rewrite_table(path, lambda t: t.assign(norm=t["norm"] * 2))
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: row 0 norm is"):
        ToolLibrary.load(path)


def test_row_count_mismatch(saved):
    _, path = saved
    rewrite_table(path, lambda t: t.iloc[:-1])
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: has 11 rows but {TENSORS_FILE} has 12 entries"):
        ToolLibrary.load(path)


def test_duplicate_ids_and_missing_columns(saved):
    _, path = saved
    rewrite_table(path, lambda t: t.assign(id=["same"] * 12))
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: ids must be unique"):
        ToolLibrary.load(path)
    rewrite_table(path, lambda t: t.drop(columns=["quality"]))
    with pytest.raises(LibraryError, match=rf"{TABLE_FILE}: missing columns \['quality'\]"):
        ToolLibrary.load(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "not valid JSON"), ('{"format_version": 2}', "format_version 2 is not supported"),
     ('{"format_version": 1}', "missing keys"), ("[1, 2]", "must be a JSON object")],
)  # fmt: skip
def test_bad_manifest(saved, text, problem):
    _, path = saved
    (path / MANIFEST_FILE).write_text(text)
    with pytest.raises(LibraryError, match=rf"{MANIFEST_FILE}: {problem}"):
        ToolLibrary.load(path)


def test_from_records_rejects_bad_input():
    lib = make_lib()
    rows = lib.table.to_dict("records")
    with pytest.raises(LibraryError, match="ids must be unique"):
        ToolLibrary.from_records(lib.keys, lib.vectors, [{**r, "id": "x"} for r in rows], {})
    # a zero correction is allowed (the reference keeps mined items with Δ = 0), a non-zero anchor is not
    zero = ToolLibrary.from_records(lib.keys, torch.zeros_like(lib.vectors), [{**r, "norm": 0.0} for r in rows], {})
    assert (zero.table["norm"] == 0).all()
    with pytest.raises(LibraryError, match="is an anchor but its vector is not zero"):
        ToolLibrary.from_records(lib.keys, torch.ones_like(lib.vectors),
                                 [{**r, "norm": float(lib.vectors.shape[1]) ** 0.5} for r in rows], {})
    with pytest.raises(LibraryError, match="11 rows for 12 entries"):
        ToolLibrary.from_records(lib.keys, lib.vectors, rows[:-1], {})
    with pytest.raises(LibraryError, match="lacks \\['quality'\\]"):
        ToolLibrary.from_records(
            lib.keys, lib.vectors, [{k: v for k, v in r.items() if k != "quality"} for r in rows], {}
        )
    with pytest.raises(LibraryError, match="control_point must be >= 1"):
        ToolLibrary.from_records(lib.keys, lib.vectors, [{**r, "control_point": 0} for r in rows], {})
    with pytest.raises(LibraryError, match="not strict JSON"):
        ToolLibrary.from_records(lib.keys, lib.vectors, rows, {"config": {"x": float("nan")}})


# --- atomic writes -------------------------------------------------------------------------------------


def test_interrupted_save_keeps_the_previous_library(saved, monkeypatch):
    old, path = saved
    new = make_lib(n_pairs=3, seed=1)
    real_write_text = Path.write_text

    def crash(self, *args, **kwargs):  # the manifest is written last, after both data files
        if self.name == MANIFEST_FILE:
            raise KeyboardInterrupt("simulated kill in the middle of save")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    back = ToolLibrary.load(path)
    assert back.manifest == old.manifest and torch.equal(back.keys, old.keys)
    assert junk(path.parent) == []
    new.save(path)  # and a later save replaces it cleanly
    assert len(ToolLibrary.load(path)) == 6 and junk(path.parent) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_dir_replaces_whole_directory(tmp_path, monkeypatch, exchange):
    if not exchange:  # the portable two-rename path
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "d"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
        (tmp / "stale.txt").write_text("x")
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "two"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("three")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "two" and junk(tmp_path) == []


def test_atomic_file_writes(tmp_path, monkeypatch):
    f = tmp_path / "sub" / "x.json"
    atomic.write_json(f, {"a": 1})
    assert json.loads(f.read_text()) == {"a": 1}
    with pytest.raises(TypeError):  # not serialisable: nothing written, the old file stays
        atomic.write_json(f, {"a": object()})
    assert json.loads(f.read_text()) == {"a": 1}
    atomic.write_json(f, {"a": float("nan")})  # non-finite numbers are written as null (strict JSON)
    assert f.read_text().split() == ["{", '"a":', "null", "}"]
    atomic.write_json(f, {"a": 1})
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        atomic.write_text(f, "new")
    assert json.loads(f.read_text()) == {"a": 1} and junk(f.parent) == []
    monkeypatch.undo()
    atomic.write_bytes(f, b"raw")
    assert f.read_bytes() == b"raw" and junk(f.parent) == []


def test_tools_are_the_rows_of_the_saved_files(saved):
    """`Tool` records against the files read with plain tools (safetensors + pandas)."""
    lib, path = saved
    raw = safetensors.numpy.load_file(str(path / "tools.safetensors"))
    table = pd.read_parquet(path / "tools.parquet")
    loaded = ToolLibrary.load(path)
    tools = loaded.tools()
    assert [t.id for t in tools] == table["id"].tolist() and [t.entry for t in tools] == list(range(len(table)))
    for t, (_, row) in zip(tools, table.iterrows(), strict=True):
        assert (t.kind, t.layer, t.control_point, t.quality) == (row["kind"], row["layer"], row["control_point"],
                                                                 row["quality"])
        np.testing.assert_array_equal(t.key.numpy(), raw["keys"][t.entry])
        np.testing.assert_array_equal(t.vector.numpy(), raw["vectors"][t.entry])
        assert t.provenance["pair_id"] == row["pair_id"] and json.loads(t.provenance["rollout_ids"]) == \
            json.loads(row["rollout_ids"])
        assert (t.kind == "anchor") == (float(t.vector.norm()) == 0.0)
    one = loaded.tool("item4/c")
    assert (one.entry, one.id, one.kind, one.provenance) == (8, tools[8].id, "correction", tools[8].provenance)
    assert torch.equal(one.vector, lib.vectors[8])
    assert loaded.layers == sorted(set(table["layer"])) == [3, 5]
    with pytest.raises(KeyError, match="no tool with id 'nope'"):
        loaded.tool("nope")
    assert ToolLibrary.empty(D).tools() == [] and ToolLibrary.empty(D).layers == []


def test_manifest_records_the_backends_that_decide_correctness(saved):
    """A saved library names the versions that wrote it, transformers and transformer-lens included (they
    decide what a decode computes), each as the installed distribution's metadata says."""
    from importlib import metadata

    _, path = saved
    recorded = json.loads((path / "manifest.json").read_text())["package_versions"]
    for pkg in ("stir-workbench", "torch", "transformers", "transformer-lens", "safetensors", "pyarrow"):
        assert recorded[pkg] == metadata.version(pkg), pkg
    assert recorded["python"] == platform.python_version()
