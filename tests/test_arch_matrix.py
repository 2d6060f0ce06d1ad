"""The architecture matrix: every family users run, through `load_model(dir)` and the public Engine API.

Each family is a tiny model of its real Hugging Face class (`tests/arch_models.py`) with a trained byte-level
BPE (Qwen2 / Llama 3 / GPT-2 / OLMo 2 style) or SentencePiece (Llama 2 / Mistral / Gemma / Phi-3 style)
tokenizer whose tokens fuse the delimiter with its neighbours. References are computed another way: full
forwards without a cache, one row at a time, with vectors added by a hook; text from `tokenizer.decode`.
`FAMILIES` (Qwen2, Qwen3, Llama 3 and 2, Mistral, Gemma 2 and 3, GPT-2, Phi-3, OLMo 2) are trained to recite a
delimiter-rich script and get every check; `EXTENDED` (Qwen3-MoE, GPT-OSS, DeepSeek-V3, GLM-4.5, Mixtral,
SmolLM3, OLMo 3, EXAONE 4, Granite, Seed-OSS) keep random weights and get the decoding and steering checks.

A control point is counted per delimiter occurrence (`str.count` semantics, left to right, in the
completion): the occurrence's token is the first whose prefix decode holds it. A token holding two
delimiters ("\\n\\n\\n\\n") is two control points at the same token, and two captures there, so that the
m-th capture is always the state of control point m (mining indexes states by m).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from arch_models import BY_NAME, DELIM, EXTENDED, FAMILIES, FUSED, build_family, train_tokenizers  # noqa: E402
from oracle.segmented import decode, fork, prefill, refeed_last  # noqa: E402

from stir_core.online.methods import (  # noqa: E402
    StirConfig,
    generate_segmented,  # noqa: E402
    run_method,
)
from stir_core.runtime.engine import Engine, Sampling, Steer  # noqa: E402
from stir_core.runtime.model import ModelLoadError, load_model  # noqa: E402
from stir_core.runtime.scheduler import generate  # noqa: E402

N_NEW = 48
QUESTIONS = ["we add 3 and 4", "half of the eggs cost 9 each, what is the price"]
NAMES = [f.name for f in FAMILIES]  # trained to recite: every check
ALL = NAMES + [f.name for f in EXTENDED]  # random weights too: decoding, batching, forks, steering
SLIDING = [f.name for f in FAMILIES + EXTENDED if f.sliding_window is not None]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> dict[str, Path]:
    return train_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def arch(tokenizer_dirs, tmp_path_factory):
    """`arch(name)` -> (model dir, LoadedModel, Engine), built once per module."""
    built: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("arch")

    def get(name: str):
        if name not in built:
            fam = BY_NAME[name]
            d = build_family(fam, tokenizer_dirs[fam.tokenizer], root / name)
            model = load_model(d, device="cpu")
            built[name] = (d, model, Engine(model))
        return built[name]

    return get


def prompts_of(model) -> list[str]:
    return [model.format_prompt(q) for q in QUESTIONS]


@torch.no_grad()
def manual_greedy(model, ids: list[int], n: int, layer: int | None = None, vec=None, start: int | None = None,
                  at: int | None = None) -> tuple[list[int], list[float]]:
    """Reference decode: one full uncached forward per token, stopping after EOS like the engine; `vec` added
    at positions >= `start` or at `at`."""
    out, lps = [], []
    for _ in range(n):
        hooks = []
        if vec is not None:
            def fn(x, hook):
                x = x.clone()
                if start is not None:
                    x[:, start:] += vec.to(x.dtype)
                if at is not None:
                    x[:, at] += vec.to(x.dtype)
                return x

            hooks = [(f"blocks.{layer}.hook_resid_post", fn)]
        with model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(torch.tensor([ids + out]), return_type="logits")[0, -1].float()
        tok = int(logits.argmax())
        lps.append(float(torch.log_softmax(logits, -1)[tok]))
        out.append(tok)
        if tok == model.eos_token_id:
            break
    return out, lps


def occurrence_tokens(tokenizer, ids: list[int], delim: str = DELIM) -> list[int]:
    """For each delimiter occurrence in decode(ids), the index of the token that completes it."""
    out = []
    for i in range(len(ids)):
        count = tokenizer.decode(ids[: i + 1], skip_special_tokens=True).count(delim)
        out += [i] * (count - len(out))
    return out


def fused_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Generated tokens that hold the delimiter plus other text (or two delimiters)."""
    pieces = [tokenizer.decode([i], skip_special_tokens=True) for i in ids]
    return [p for p in pieces if DELIM in p and p != DELIM]


def random_vector(engine, model, layer: int, seed: int) -> torch.Tensor:
    """A random direction [d_model] with the norm of the model's own resid_post at `layer` (a real push)."""
    states = engine.forward_states([model.encode(prompts_of(model)[0])], [layer])[0][:, 0]
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.d_model, generator=g)
    return v / v.norm() * float(states.norm(dim=-1).mean())


def assert_close(a, b, atol=1e-4):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=atol, rtol=1e-4)


# ---- decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_kv_cached_decode_matches_full_forward(arch, name):
    """Greedy tokens and log-probs of the cached decode equal uncached full forwards (past any sliding window)."""
    _, model, engine = arch(name)
    for p in prompts_of(model):
        res = generate(engine, [p], N_NEW)
        ref, ref_lp = manual_greedy(model, model.encode(p), N_NEW)
        assert res.tokens[0] == ref
        assert_close(res.logprobs[0], ref_lp)


@pytest.mark.parametrize("name", ALL)
def test_left_padded_batch_matches_single_rows(arch, name):
    _, model, engine = arch(name)
    prompts = prompts_of(model) + [model.format_prompt("9")]
    lengths = {len(model.encode(p)) for p in prompts}
    assert len(lengths) > 1, "the prompts must differ in length so the batch is left-padded"
    batch = generate(engine, prompts, N_NEW)
    for b, p in enumerate(prompts):
        single = generate(engine, [p], N_NEW)
        assert batch.tokens[b] == single.tokens[0]
        assert_close(batch.logprobs[b], single.logprobs[0])


@pytest.mark.parametrize("name", SLIDING)
def test_generation_runs_past_the_sliding_window(arch, name):
    """The sliding-window families are built with a tiny window; prompt + generation must exceed it."""
    _, model, engine = arch(name)
    window = model.bridge.original_model.config.sliding_window
    p = prompts_of(model)[0]
    assert len(model.encode(p)) + N_NEW > 3 * window
    res = generate(engine, [p], N_NEW)
    ref, _ = manual_greedy(model, model.encode(p), N_NEW)
    assert res.tokens[0] == ref


# ---- text and control points ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_trace_text_is_tokenizer_decode(arch, name):
    """Greedy traces and seeded samples: the text is `tokenizer.decode(ids)`, and token texts add up to it."""
    _, model, engine = arch(name)
    tok = model.tokenizer
    traces = run_method(engine, prompts_of(model), "no_memory", None, StirConfig(max_new_tokens=N_NEW))
    for tr in traces:
        ids = [t.token_id for t in tr.tokens]
        assert tr.completion == tok.decode(ids, skip_special_tokens=True)
        assert "".join(t.text for t in tr.tokens) == tr.completion
    sampled = generate(engine, prompts_of(model), N_NEW, sampling=Sampling(temperature=1.0, top_p=1.0), seed=3)
    for text, ids in zip(sampled.texts, sampled.tokens, strict=True):
        assert text == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", NAMES)
def test_every_delimiter_is_a_control_point(arch, name):
    """One decision per delimiter occurrence, at the token completing it, fused tokens included; none is lost
    after the last token (nothing is left to steer there). Checked for the null policy and for a policy that
    steers at every control point (steering must not stop)."""
    _, model, engine = arch(name)
    tok = model.tokenizer
    traces = run_method(engine, prompts_of(model), "no_memory", None, StirConfig(max_new_tokens=N_NEW))
    fused = []
    for tr in traces:
        ids = [t.token_id for t in tr.tokens]
        occ = occurrence_tokens(tok, ids)
        expected = [(m, i) for m, i in enumerate(occ, start=1) if i < len(ids) - 1]
        assert [(d.m, d.token_index) for d in tr.decisions] == expected
        assert [t.index for t in tr.tokens if t.is_delimiter] == sorted(set(occ))
        fused += fused_tokens(tok, ids)
    assert fused, f"{name}: no generated token fuses the delimiter with other text; the test would be vacuous"

    torch.manual_seed(0)
    vec = torch.randn(model.d_model) * 0.5
    layer = model.n_layers - 1

    def always(row, m, text, states):
        return Steer(layer, vec, 1.0, "last", tag=f"m{m}")

    res, decisions = generate_segmented(engine, prompts_of(model), always, N_NEW, delimiter=DELIM,
                                        capture_layers=[layer])
    for b, ids in enumerate(res.tokens):
        occ = occurrence_tokens(tok, ids)
        expected = [(m, i) for m, i in enumerate(occ, start=1) if i < len(ids) - 1]
        assert [(d.m, d.token_index) for d in decisions[b]] == expected
        # Every control point is acted on, except the earlier ones of a fused token (the gate acts at its last).
        last_of_token = {i: m for m, i in enumerate(occ, start=1)}
        assert all(d.committed == (last_of_token[d.token_index] == d.m) for d in decisions[b])
        assert all(d.reason == "fused" for d in decisions[b] if not d.committed)


@pytest.mark.parametrize("name", NAMES)
def test_fused_delimiter_tokens_exist(arch, name, tokenizer_dirs):
    """The tokenizer really fuses: one token each for ".\\n\\n", "\\n\\n\\n\\n" and "\\n\\nThe" (or a longer one
    holding it)."""
    _, model, _ = arch(name)
    texts = [model.tokenizer.convert_tokens_to_string([t]) for t in model.tokenizer.get_vocab()]
    for piece in FUSED:
        assert any(piece in t for t in texts), piece


# ---- capture, fork, steering --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_capture_matches_manual_forward(arch, name):
    """States captured while decoding (one per delimiter occurrence) equal a separate forward's resid_post."""
    _, model, engine = arch(name)
    tok = model.tokenizer
    layers = list(range(model.n_layers))
    prompts = prompts_of(model)
    res = generate(engine, prompts, N_NEW, capture_layers=layers, capture_at=DELIM)
    n_caps = 0
    for b, p in enumerate(prompts):
        ids, caps = model.encode(p), res.captures[b]
        assert [c.token_index for c in caps] == occurrence_tokens(tok, res.tokens[b])
        for cap in caps:
            prefix = ids + res.tokens[b][: cap.token_index + 1]
            _, cache = model.bridge.run_with_cache(torch.tensor([prefix]),
                                                   names_filter=lambda n: n.endswith("hook_resid_post"))
            for j, layer in enumerate(layers):
                assert_close(cap.states[j], cache[f"blocks.{layer}.hook_resid_post"][0, -1].float(), atol=1e-4)
        n_caps += len(caps)
    assert n_caps > 0


@pytest.mark.parametrize("name", ALL)
def test_slot_core_steps_equal_the_bridge_without_cache(arch, name):
    """The slot core, stepped by hand over a batch of rows of different lengths, one steered at `segment`:
    every step's tokens equal greedy bridge forwards without a cache, and every step's captured resid_post
    (all layers) equals `run_with_cache`'s `hook_resid_post` on the whole sequence within 1e-5, with the
    steered row's vector added to that hook by hand from its first generated position."""
    _, model, engine = arch(name)
    layers = list(range(model.n_layers))
    prompts = [model.encode(p) for p in prompts_of(model)] + [model.encode(model.format_prompt("9"))]
    assert len({len(p) for p in prompts}) > 1
    vec = random_vector(engine, model, model.n_layers - 1, seed=5) * 0.5
    steers = [None, Steer(model.n_layers - 1, vec, 1.0, "segment"), None]
    state = prefill(engine, prompts, capture_layers=layers)
    engine.set_steers(state, steers)
    live = torch.tensor([s is not None for s in steers])
    feed = torch.ones(len(prompts), dtype=torch.bool)
    n = 12
    tokens, states = [[] for _ in prompts], [[] for _ in prompts]
    for _ in range(n):
        chosen, _ = engine.choose(state, feed, None)
        cap = engine.step(state, chosen, feed, live=live)
        for b in range(len(prompts)):
            tokens[b].append(int(chosen[b]))
            states[b].append(torch.stack([cap[layer][b, -1] for layer in layers]))
    for b, (ids, s) in enumerate(zip(prompts, steers, strict=True)):
        add = None if s is None else (s.layer, s.vector, len(ids))
        seq = ids + tokens[b]
        hooks = []
        if add is not None:
            def fn(x, hook, start=add[2], v=add[1]):
                x = x.clone()
                x[:, start:] += v.to(x.dtype)
                return x
            hooks = [(f"blocks.{add[0]}.hook_resid_post", fn)]
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
            ref_tokens = []
            for _ in range(n):  # greedy, recomputed from scratch each step
                logits = model.bridge(torch.tensor([ids + ref_tokens]), return_type="logits")[0, -1]
                ref_tokens.append(int(logits.float().argmax()))
            assert tokens[b] == ref_tokens
            _, cache = model.bridge.run_with_cache(torch.tensor([seq]),
                                                   names_filter=lambda nm: nm.endswith("hook_resid_post"))
        for t in range(n):
            pos = len(ids) + t
            ref = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0, pos].float() for layer in layers])
            torch.testing.assert_close(states[b][t], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_fork_and_steering_match_manual_forward(arch, name):
    """A forked row steered at every new token (`segment`) continues exactly like a full forward with the
    vector added at those positions; the unsteered fork and the original state are unaffected."""
    _, model, engine = arch(name)
    prompts = prompts_of(model)
    state = prefill(engine, [model.encode(p) for p in prompts])
    decode(engine, state, 5)
    layer = model.n_layers - 1
    vec = random_vector(engine, model, layer, seed=1)
    forked = fork(engine, state, [0, 0, 1])
    steers = [None, Steer(layer, vec, 1.0, "segment"), Steer(0, -vec, 0.5, "segment")]
    decode(engine, forked, 16, steers=steers)
    for b, (src, s) in enumerate(zip([0, 0, 1], steers, strict=True)):
        prefix = state.rows[src].prompt + state.rows[src].tokens
        if s is None:
            ref, ref_lp = manual_greedy(model, prefix, 16)
        else:
            ref, ref_lp = manual_greedy(model, prefix, 16, s.layer, s.scale * s.vector, start=len(prefix))
        assert forked.rows[b].tokens[5:] == ref
        assert_close(forked.rows[b].logprobs[5:], ref_lp)
    assert forked.rows[1].logprobs[5:] != forked.rows[0].logprobs[5:], "the vector should change the continuation"
    decode(engine, state, 16)
    assert state.rows[0].tokens[5:] == forked.rows[0].tokens[5:]


@pytest.mark.parametrize("name", ALL)
def test_last_position_steer_matches_manual_forward(arch, name):
    """`last`: the row's last token re-run with the vector equals a full forward adding it at that position
    (sliding-window families included: the re-run overwrites the delimiter's position in place)."""
    _, model, engine = arch(name)
    layer = model.n_layers - 1
    vec = random_vector(engine, model, layer, seed=2)
    p = prompts_of(model)[0]
    state = prefill(engine, [model.encode(p)])
    decode(engine, state, 4)
    row = state.rows[0]
    prefix = row.prompt + row.tokens
    refeed_last(engine, state, [Steer(layer, vec, 1.0, "last")])
    decode(engine, state, 12)
    ref, ref_lp = manual_greedy(model, prefix, 12, layer, vec, at=len(prefix) - 1)
    assert state.rows[0].tokens[4:] == ref
    assert_close(state.rows[0].logprobs[4:], ref_lp)


# ---- the CLI on a real tokenizer ---------------------------------------------------------------------
def test_cli_generate_json_text_and_control_points(arch, tmp_path):
    """`stir generate --model DIR --json` on a tiny Qwen2 with byte-level BPE: text == decode(ids) and one
    control point per delimiter occurrence."""
    from typer.testing import CliRunner

    from stir_core.cli import app

    d, model, _ = arch("qwen2")
    out = tmp_path / "gen.json"
    r = CliRunner().invoke(app, ["generate", QUESTIONS[0], "--raw", "--methods", "no_memory", "--model", str(d),
                                 "--device", "cpu", "--max-new-tokens", str(N_NEW), "--json", str(out)])
    assert r.exit_code == 0, r.output
    trace = json.loads(out.read_text())["no_memory"]
    ids = [t["token_id"] for t in trace["tokens"]]
    assert len(ids) == N_NEW
    assert trace["completion"] == model.tokenizer.decode(ids, skip_special_tokens=True)
    occ = occurrence_tokens(model.tokenizer, ids)
    assert len(occ) >= 2
    assert [(d["m"], d["token_index"]) for d in trace["decisions"]] == \
        [(m, i) for m, i in enumerate(occ, start=1) if i < len(ids) - 1]


# ---- architectures the bridge does not support --------------------------------------------------------
UNSUPPORTED = [  # reasoning-model families in transformers 5.24 that TransformerLens 4.3's bridge lacks
    ("MinistralConfig", "MinistralForCausalLM", {"head_dim": 16}),
    ("HeliumConfig", "HeliumForCausalLM", {}),
]


@pytest.mark.parametrize("config_cls,model_cls,extra", UNSUPPORTED, ids=[u[1] for u in UNSUPPORTED])
def test_unsupported_architecture_is_one_clear_error(tokenizer_dirs, tmp_path, config_cls, model_cls, extra):
    import shutil

    import transformers

    for f in tokenizer_dirs["bpe"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = getattr(transformers, config_cls)(vocab_size=400, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                            **extra)
    getattr(transformers, model_cls)(cfg).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path, device="cpu")
    msg = str(err.value)
    assert f"['{model_cls}'] is not supported" in msg and "\n" not in msg and len(msg) < 400


def test_a_registered_adapter_loads_an_unsupported_architecture(tokenizer_dirs, tmp_path, monkeypatch):
    """The README's recipe: map Ministral onto the Mistral adapter (in both of TransformerLens' tables); the
    bridge then matches Hugging Face's own logits and the cached decode matches full forwards."""
    import shutil

    import transformers
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.model_bridge.supported_architectures.mistral import MistralArchitectureAdapter

    for f in tokenizer_dirs["bpe"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = transformers.MinistralConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    transformers.MinistralForCausalLM(cfg).save_pretrained(tmp_path)
    monkeypatch.setitem(factory.SUPPORTED_ARCHITECTURES, "MinistralForCausalLM", MistralArchitectureAdapter)
    monkeypatch.setitem(factory.ArchitectureAdapterFactory._adapters, "MinistralForCausalLM",
                        MistralArchitectureAdapter)
    model = load_model(tmp_path, device="cpu")
    p = model.format_prompt(QUESTIONS[0])
    ids = model.encode(p)
    with torch.no_grad():
        hf = model.bridge.original_model(torch.tensor([ids])).logits[0, -1]
        tl = model.bridge(torch.tensor([ids]), return_type="logits")[0, -1]
    assert_close(tl, hf, atol=1e-5)
    res = generate(Engine(model), [p], 16)
    assert res.tokens[0] == manual_greedy(model, ids, 16)[0]
