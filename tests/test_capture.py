"""The reference's capture (`capture="retokenize"`, stir_core/offline/capture.py): text cut at each delimiter,
re-tokenized with the prompt, one forward each. With a character tokenizer every tokenization is canonical,
so it must give the states the decode-time capture gives; and each state must be the last position of an
independent Hugging Face forward over the same string."""

from __future__ import annotations

import torch
from helpers.tasks import EchoTask, echo_config
from oracle.segmented import decode, prefill

from stir_core.offline.capture import delimiter_end_offsets, retokenized_ids, retokenized_states
from stir_core.offline.mine import mine_candidates
from stir_core.runtime.engine import Engine, Sampling


def test_offsets_follow_str_count():
    for text in ["", "a\n\nb", "\n\n\n\n", "\n\n\n", "x\n\n\n\n\ny\n\n", "no delimiter"]:
        ends = delimiter_end_offsets(text, "\n\n")
        assert len(ends) == text.count("\n\n")
        assert all(text[e - 2:e] == "\n\n" for e in ends) and ends == sorted(set(ends))


def test_states_are_the_last_position_of_a_plain_hf_forward(tiny):
    engine = Engine(tiny)
    prompt, completion = tiny.format_prompt("3+4="), "7\n\nso 7\n\n\n\nok\n\n"
    states = retokenized_states(engine, prompt, completion, "\n\n", [0, 1], batch=2)
    assert states.shape == (4, 2, tiny.d_model)  # four delimiters, str.count semantics
    for m, ids in enumerate(retokenized_ids(tiny, prompt, completion, "\n\n")):
        assert tiny.tokenizer.decode(ids, skip_special_tokens=True).endswith("\n\n")
        with torch.no_grad():
            hs = tiny.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for j, layer in enumerate([0, 1]):  # hidden_states[l + 1] is block l's output
            torch.testing.assert_close(states[m, j], hs[layer + 1][0, -1].float(), atol=1e-4, rtol=1e-4)


def test_where_the_sampled_tokens_are_canonical_retokenize_equals_decode_capture(tiny):
    """Control points whose sampled ids so far are what the tokenizer writes for their text (no special or
    unknown token sampled before them) must get the decode-time state back; the others are where the two
    captures differ (the random model samples <pad>, which the text drops)."""
    engine, layers = Engine(tiny), [0, 1]
    prompts = [tiny.format_prompt(f"{i}+{i}=") for i in range(32)]
    ids = [tiny.encode(p) for p in prompts]
    state = prefill(engine, ids, capture_layers=layers, seeds=list(range(32)), delimiter="\n")
    decode(engine, state, 60, sampling=Sampling(1.5, 1.0), capture_at="\n")
    engine.finish(state.rows)
    same = differ = 0
    for p, prompt_ids, row in zip(prompts, ids, state.rows, strict=True):
        if not row.captures:
            continue
        retok = retokenized_states(engine, p, row.text, "\n", layers)
        assert len(retok) == len(row.captures) == row.text.count("\n")
        for m, cap in enumerate(row.captures):
            upto = list(row.tokens[: cap.token_index + 1])
            text = tiny.tokenizer.decode(upto, skip_special_tokens=True)
            if tiny.encode(p + text) == prompt_ids + upto:
                torch.testing.assert_close(retok[m], cap.states, atol=1e-4, rtol=1e-4)
                same += 1
            else:
                differ += 1
    assert same >= 5 and differ >= 1


def test_mining_with_retokenize_runs_the_reference_capture(tiny):
    fast = mine_candidates(tiny, echo_config(), task=EchoTask(), show_progress=False)
    ref = mine_candidates(tiny, echo_config(capture="retokenize"), task=EchoTask(), show_progress=False)
    assert len(fast) > 0 and fast.table["id"].tolist() == ref.table["id"].tolist()  # same items, other states
    assert ref.manifest["config"]["mine"]["capture"] == "retokenize"
