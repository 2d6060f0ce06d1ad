"""The embedded testbed: task generators, ground truth, step checker, training recipe, shipped model."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from stir_core.runtime.scheduler import generate
from stir_core.tasks import get_task
from stir_core.tasks.plain import PlainTask
from stir_core.tasks.planted import CLASSES, FORMS, PlantedTask, apply_op

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "assets" / "toy-reasoner"


@pytest.fixture(scope="module")
def planted() -> PlantedTask:
    return PlantedTask()


# --- generators -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [PlantedTask(), PlainTask()], ids=["planted", "plain"])
def test_generator_is_deterministic_per_seed(task):
    a, b = task.load("val", 50, seed=3), task.load("val", 50, seed=3)
    assert a == b
    assert [e.question for e in task.load("val", 50, seed=4)] != [e.question for e in a]


@pytest.mark.parametrize("task", [PlantedTask(), PlainTask()], ids=["planted", "plain"])
def test_splits_are_disjoint_and_deduplicated(task):
    sets = {}
    for split, n in (("train", 3000), ("mine", 400), ("val", 200), ("eval", 400)):
        qs = [e.question for e in task.load(split, n, seed=0)]
        assert len(qs) == n and len(set(qs)) == n, split
        sets[split] = set(qs)
    names = list(sets)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not sets[x] & sets[y], (x, y)
    # Another seed of the same split stays inside the split.
    assert not {e.question for e in task.load("eval", 400, seed=9)} & sets["train"]


def test_registry_and_bad_input(planted):
    assert isinstance(get_task("planted"), PlantedTask) and isinstance(get_task("plain"), PlainTask)
    with pytest.raises(ValueError, match="split"):
        planted.load("test", 3)
    with pytest.raises(ValueError, match="at most one trigger"):
        planted.make_example(3, [("+", 1), ("-", 9), ("+", 2), ("+", 2)])
    with pytest.raises(ValueError, match="no room"):
        planted.make_example(3, [("+", 2), ("+", 2), ("+", 2), ("+", 1)])


def test_planted_ground_truth_is_consistent(planted):
    for ex in planted.load("mine", 300, seed=1):
        ops, totals, cls = ex.meta["ops"], ex.meta["totals"], ex.meta["classes"]
        t = ex.meta["start"]
        for s, d in ops:
            t = apply_op(t, s, d)
        assert str(t) == ex.answer == str(totals[-1])
        assert planted.score(ex.solution, ex)
        assert len(cls) == len(ops) + 1 and cls[0] == "start" and cls[-1] == "end"
        assert set(cls) <= set(CLASSES)
        digits = [d for _, d in ops]
        if ex.meta["mode"] == "A":
            assert digits.count(1) == 1 and cls[ex.meta["trigger"] + 1] == "A2"
        elif ex.meta["mode"] == "B":
            assert digits.count(9) == 1 and cls[ex.meta["trigger"] + 1] == "B2"
        else:
            assert 1 not in digits and 9 not in digits and set(cls[1:-1]) <= {"none"}


# --- parser and attribution ---------------------------------------------------------------------------


def test_parser_recovers_form_and_class_of_sampled_traces(planted):
    rng = random.Random(0)
    seen = Counter()
    for ex in planted.load("train", 400, seed=5):
        for _ in range(3):
            trace = planted.sample_trace(ex, rng)
            text = "\n\n".join(s.text for s in trace)
            parsed = planted.parse(ex, text)
            assert [(p.form, p.boundary) for p in parsed] == [(s.form, s.boundary) for s in trace], text
            seen.update((s.form, s.boundary) for s in trace)
            wrong = any(s.form in ("slip", "shortcut") for s in trace)
            assert planted.score(text, ex) == (not wrong)
    # Every planted form occurs where the writer plants it.
    for key in [("recheck", "A1"), ("slip", "A2"), ("plain", "B1"), ("shortcut", "B2"), ("recheck", "none")]:
        assert seen[key] > 0, key
    assert {f for f, _ in seen} == set(FORMS) - {"other"}


def _mode_a_example(planted):
    # start 3: 3+4=7, 7-1=6 (A trigger: op 2), 6+3=9 (A1), 9-2=7 (A2), answer 7
    return planted.make_example(3, [("+", 4), ("-", 1), ("+", 3), ("-", 2)])


def _mode_b_example(planted):
    # start 3: 3+4=7, 7+9=6 (B trigger: op 2), 6-2=4 (B1), 4+6=0 (B2), 0-3=7; answer 7
    return planted.make_example(3, [("+", 4), ("+", 9), ("-", 2), ("+", 6), ("-", 3)])


def test_attribution_on_constructed_examples(planted):
    a, b = _mode_a_example(planted), _mode_b_example(planted)
    assert a.meta["mode"] == "A" and a.meta["classes"] == ["start", "none", "A1", "A2", "end"]
    assert b.meta["classes"] == ["start", "none", "B1", "B2", "none", "end"]
    cases = [
        (a, "3+4=7\n\n7-1=6\n\n6+3=9\n\n9-2=7\n\n#### 7", None),
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\n9-2=7\n\n#### 7", None),  # precursor without damage
        (
            a,
            "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\nchk 0, 0-2=8\n\n#### 8",
            "A",
        ),  # mode A: a slipped second check
        (a, "3+4=7\n\n8-1=7\n\n7+3=0\n\n0-2=8\n\n#### 8", "other"),  # a slip, but not at A2
        (a, "3+4=7\n\n7-1=6\n\n6+3=8\n\n8-2=6\n\n#### 6", "other"),  # an arithmetic error
        (a, "3+4=7\n\n7-1=6\n\n6+3=9\n\n9-2=7\n\n#### 3", "other"),  # a wrong final copy
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-3=3\n\n#### 3", "B"),  # mode B: a wrong merge
        (b, "3+4=7\n\n7+9=6\n\nchk 6, 6-2=4\n\nchk 4, 4+6=0\n\n0-3=7\n\n#### 7", None),
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-3=7\n\n#### 7", None),  # a correct merge is fine
        (b, "3+4=7\n\n7+9-2=8\n\n8+6=4\n\n4-3=1\n\n#### 1", "other"),  # a wrong merge at the wrong place
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6=", "other"),  # truncated
    ]
    for ex, text, want in cases:
        assert planted.attribute_error(ex, text) == want, text
        assert planted.score(text, ex) == (want is None), text


def test_boundary_of_follows_merged_segments(planted):
    b = _mode_b_example(planted)
    assert planted.boundary_of(b, "") == "start"
    assert planted.boundary_of(b, "3+4=7\n\n7+9=6\n\n") == "B1"
    assert planted.boundary_of(b, "3+4=7\n\n7+9=6\n\nchk 6, 6-2=4\n\n") == "B2"
    assert planted.boundary_of(b, "3+4=7\n\n7+9-2=4\n\n") == "B2"  # one segment, two operations
    assert planted.boundary_of(b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-3=7\n\n") == "end"


# --- step checker -------------------------------------------------------------------------------------


def test_step_checker_on_clean_and_broken_prefixes(planted):
    a, b = _mode_a_example(planted), _mode_b_example(planted)
    for ex in (a, b):
        for k in range(len(ex.solution) + 1):  # every prefix of the gold solution is clean
            assert planted.check_prefix(ex, ex.solution[:k]), repr(ex.solution[:k])
    clean = [
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+"),
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\n"),
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\nchk 9"),  # a second check, still right
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-3=7\n\n"),
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-"),
    ]
    broken = [
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\nchk 0"),  # the slip's miscopied total
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\nchk 0, 0-2=8\n\n"),
        (a, "3+4=7\n\n7-1=6\n\nchk 6, 6+3=9\n\n0"),  # a plain step with a miscopied total
        (a, "3+4=8"),  # a wrong result, not yet delimited
        (a, "3+4=7\n\n7-1=6\n\nchk 5"),  # a miscopied recheck
        (a, "3+5"),  # the wrong operand
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6-3=3"),  # the wrong merge
        (b, "3+4=7\n\n7+9=6\n\n6-2=4\n\n4+6=0\n\n0-3=7\n\n#### 7\n\n0"),  # something after the answer
    ]
    for ex, prefix in clean:
        assert planted.check_prefix(ex, prefix), prefix
    for ex, prefix in broken:
        assert not planted.check_prefix(ex, prefix), prefix
    plain = PlainTask()
    ex = plain.load("eval", 1)[0]
    assert plain.check_prefix(ex, ex.solution[:5]) and not plain.check_prefix(ex, "0")


# --- training recipe ----------------------------------------------------------------------------------


def test_collate_masks_prompt_and_padding():
    from stir_core.toy.tokenizer import VOCAB
    from stir_core.toy.train import collate

    batch = collate([("ab\n", "12"), ("c\n", "3")])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    bos, eos, pad, m = VOCAB["<bos>"], VOCAB["<eos>"], VOCAB["<pad>"], -100
    v = VOCAB
    assert ids.tolist() == [
        [bos, v["a"], v["b"], v["\n"], v["1"], v["2"], eos],
        [bos, v["c"], v["\n"], v["3"], eos, pad, pad],
    ]
    assert labels.tolist() == [[m, m, m, m, v["1"], v["2"], eos], [m, m, m, v["3"], eos, m, m]]
    assert mask.tolist() == [[1] * 7, [1] * 5 + [0, 0]]


def test_training_is_deterministic_for_a_seed(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stir_core.toy.train import Recipe, train_toy

    def run(seed, name):
        r = Recipe(
            seed=seed, n_layers=1, d_model=32, n_heads=2, d_mlp=64, steps=3, batch_size=4, n_problems=40
        )
        train_toy(tmp_path / name, r, progress=False)
        return AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict()

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["recipe"]["seed"] == 1 and card["train"]["n_params"] > 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    text = "mod10 3+4\n3+4=7\n\n#### 7"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


# --- the shipped model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    if not (TOY / "model.safetensors").exists():
        pytest.fail(f"the embedded model is missing from {TOY} (run `stir toy-train`)")
    from stir_core.runtime.model import load_model

    return load_model(TOY, device="cpu")


def test_shipped_model_files_and_size():
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "MODEL_CARD.md",
    ):
        assert (TOY / name).is_file(), name
    assert (TOY / "model.safetensors").stat().st_size <= 10 * 2**20
    cfg = json.loads((TOY / "config.json").read_text())
    assert cfg["model_type"] == "llama"


def test_shipped_model_decodes_held_out_problems(toy, planted):
    from stir_core.runtime.engine import Engine

    eng = Engine(toy)
    pool = planted.load("eval", 200, seed=7)
    none = [e for e in pool if e.meta["mode"] is None][:6]
    mode_a = [e for e in pool if e.meta["mode"] == "A"][:3]
    res = generate(eng, [planted.prompt(e) for e in none + mode_a], 96)
    for ex, text in zip(none, res.texts[: len(none)], strict=True):
        forms = [s.form for s in planted.parse(ex, text)]
        assert "other" not in forms and forms[-1] == "final", text
    # Problems without a planted mode are (nearly) always solved; mode-A ones fail the planted way.
    assert sum(planted.score(t, e) for t, e in zip(res.texts, none, strict=False)) >= 5
    assert (
        sum(planted.attribute_error(e, t) == "A" for t, e in zip(res.texts[len(none) :], mode_a, strict=True))
        >= 2
    )


def test_engine_greedy_matches_hf_generate(toy, planted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stir_core.runtime.engine import Engine

    ex = planted.load("eval", 1, seed=11)[0]
    text = generate(Engine(toy), [planted.prompt(ex)], 96).texts[0]
    hf = AutoModelForCausalLM.from_pretrained(TOY)
    tok = AutoTokenizer.from_pretrained(TOY)
    ids = tok(planted.prompt(ex), return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=96, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0)
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == text


def test_teacher_forced_states_match_the_engine(toy, planted):
    from stir_core.runtime.engine import Engine
    from stir_core.toy.control import last_token_states

    exs = planted.load("mine", 5, seed=2)
    texts = [planted.prompt(e) + e.solution.split("\n\n")[0] + "\n\n" for e in exs]
    ours = last_token_states(toy, texts)  # grouped by length, no padding
    ref = Engine(toy).forward_states([toy.encode(t) for t in texts], list(range(toy.n_layers)))  # left-padded
    for i, r in enumerate(ref):
        torch.testing.assert_close(ours[i], r[-1], atol=1e-4, rtol=1e-4)


def test_card_positive_control_reproduces(toy, planted):
    from stir_core.toy.control import cosine_ab, mode_contrasts

    card = json.loads((TOY / "card.json").read_text())
    c = card["control"]
    contrasts = mode_contrasts(
        toy, planted, planted.load("mine", c["n_problems"], c["seed"]), c["traces_per_problem"], c["seed"]
    )
    assert {m: {"sound": x.n_sound, "failure": x.n_failure} for m, x in contrasts.items()} == c["counts"]
    cos = cosine_ab(contrasts)
    assert cos == pytest.approx(c["cos_ab"], abs=1e-4)
    assert cos[c["default_layer"]] <= -0.5
    from safetensors.torch import load_file

    stored = load_file(TOY / "control.safetensors")
    for m, x in contrasts.items():
        torch.testing.assert_close(stored[f"{m}.direction"], x.direction, atol=1e-5, rtol=1e-5)


def test_oracle_gate_repairs_planted_failures(toy, planted):
    from safetensors.torch import load_file

    from stir_core.online.methods import generate_segmented
    from stir_core.runtime.engine import Engine
    from stir_core.toy.control import oracle_policy

    c = json.loads((TOY / "card.json").read_text())["control"]
    layer, alpha = c["default_layer"], c["oracle"]["at_default_layer"]["alpha"]
    stored = load_file(TOY / "control.safetensors")
    vectors = {m: stored[f"{m}.direction"][layer] for m in ("A", "B")}
    exs = [e for e in planted.load("val", 120, seed=5) if e.meta["mode"]][:16]
    prompts = [planted.prompt(e) for e in exs]
    eng = Engine(toy)
    greedy = generate(eng, prompts, 96).texts
    steered, decisions = generate_segmented(
        eng, prompts, oracle_policy(planted, exs, vectors, layer, alpha), 96, capture_layers=()
    )
    fired = [sum(d.committed for d in ds) for ds in decisions]
    assert fired == [1] * len(exs)  # exactly once per problem: at its damage boundary
    assert sum(planted.score(t, e) for t, e in zip(greedy, exs, strict=True)) <= 3
    assert sum(planted.score(t, e) for t, e in zip(steered.texts, exs, strict=True)) >= 13
