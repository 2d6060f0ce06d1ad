"""Diagnostics (stir_core.analysis.diagnostics) against values worked out by hand from constructed traces, and
their path into `evaluate`'s summary.json, `EvalResult.diagnostics_table()` and `stir eval`'s printout."""

from __future__ import annotations

import json
import math

import pytest
from helpers.tasks import OneTask
from typer.testing import CliRunner

from stir_core.analysis.diagnostics import diagnose, truncation_warnings
from stir_core.analysis.evaluate import evaluate, load_results
from stir_core.cli import app
from stir_core.online.methods import StirConfig
from stir_core.online.trace import GateDecision, TokenRecord, Trace
from stir_core.tasks import Example, register_task

EOS = 99


def trace(token_ids: list[int], probe: int, chosen: list[str | None]) -> Trace:
    toks = [TokenRecord(index=i, token_id=t, text=f"<{t}>", logprob=-0.5, segment=0) for i, t in enumerate(token_ids)]
    decs = [GateDecision(m=m + 1, token_index=m, query_layers=[1], chosen=c, reason="committed" if c else "below_tau")
            for m, c in enumerate(chosen)]
    return Trace(method="stir", prompt="p", completion="".join(t.text for t in toks), tokens=toks, decisions=decs, probe_tokens=probe)


def five_traces() -> tuple[list[Trace], list[str | None]]:
    traces = [
        trace([1, 2, 3, EOS], 0, ["a", None]),  # ends at EOS under budget
        trace([5] * 10, 6, [None, None, None]),  # spends the whole budget of 10 without EOS: truncated
        trace([5] * 9 + [EOS], 12, ["b"]),  # EOS is the 10th (last allowed) token: stopped, not truncated
        trace([5] * 9, 2, []),
        trace([4], 3, []),
    ]
    return traces, ["5", None, "3", None, "x"]


def test_diagnostics_match_hand_computed_values():
    traces, answers = five_traces()
    d = diagnose(traces, answers, max_new_tokens=10, eos_token_id=EOS)
    assert d.no_answer_rate == pytest.approx(2 / 5)  # rows 2 and 4 have no answer
    assert d.truncation_rate == pytest.approx(1 / 5)  # row 2 only
    # committed tokens sorted [1, 4, 9, 10, 10]: p50 = the middle one; p90 at rank 0.9 * 4 = 3.6 -> 10
    assert (d.tokens_p50, d.tokens_p90, d.tokens_max) == (9, 10, 10)
    # probe tokens sorted [0, 2, 3, 6, 12]: p90 at rank 3.6 = 6 + 0.6 * (12 - 6) = 9.6, truncated to 9
    assert (d.probe_p90, d.probe_max) == (9, 12)
    # 6 decisions (2 + 3 + 1), 4 of them null
    assert d.steps == 6
    assert d.null_step_rate == pytest.approx(4 / 6) and d.tool_step_rate == pytest.approx(2 / 6)


def test_without_an_eos_id_truncation_is_the_budget_rule():
    traces, answers = five_traces()
    d = diagnose(traces, answers, max_new_tokens=10, eos_token_id=None)
    assert d.truncation_rate == pytest.approx(2 / 5)  # rows 2 and 3 both reached 10 tokens


def test_no_steps_gives_no_step_rates():
    d = diagnose([trace([1, EOS], 0, [])], ["1"], max_new_tokens=4, eos_token_id=EOS)
    assert d.steps == 0 and d.null_step_rate is None and d.tool_step_rate is None
    assert d.no_answer_rate == 0.0 and d.truncation_rate == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 traces but 1 answers"):
        diagnose([trace([1], 0, []), trace([1], 0, [])], ["1"], max_new_tokens=4, eos_token_id=EOS)


class DiagTask(OneTask):
    name = "diagtask"

    def load(self, split="eval", n=None, seed=0):
        return [Example(id=f"d{i}", question=f"{i}+{i}=", answer="1") for i in range(n or 6)]


register_task("diagtask", DiagTask)


def test_evaluate_writes_diagnostics_consistent_with_its_examples(engine, tmp_path):
    max_new = 12
    res = evaluate(engine, DiagTask(), ["vanilla"], None, StirConfig(max_new_tokens=max_new), n=6,
                   out_dir=tmp_path / "ev", show_progress=False)
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())["methods"]["vanilla"]["diagnostics"]
    assert saved == res.summary["vanilla"]["diagnostics"]
    ex = load_results(tmp_path / "ev").examples
    eos = engine.model.eos_token_id
    last = [json.loads(t)["tokens"][-1]["token_id"] for t in ex["trace_json"]]
    truncated = [n >= max_new and tok != eos for n, tok in zip(ex["n_tokens"], last, strict=True)]
    assert saved["truncation_rate"] == pytest.approx(sum(truncated) / len(ex))
    assert saved["no_answer_rate"] == pytest.approx(ex["answer"].isna().mean())
    assert saved["tokens_max"] == ex["n_tokens"].max()
    assert saved["steps"] == 0 and saved["null_step_rate"] is None  # vanilla makes no decisions
    table = res.diagnostics_table()
    assert list(table["method"]) == ["vanilla"] and "diagnostics" not in res.table().columns
    assert math.isclose(table.loc[0, "truncation_rate"], saved["truncation_rate"])


def test_stir_eval_prints_the_diagnostics_and_warns_on_truncation(tiny_model_dir, tmp_path):
    r = CliRunner().invoke(app, ["eval", "--task", "diagtask", "--methods", "vanilla", "--n", "3",
                                 "--set", "max_new_tokens=8", "--model", str(tiny_model_dir), "--device", "cpu",
                                 "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    after = r.output.split("diagnostics")[1]
    assert "truncation_rate" in after and "tokens_p90" in after and "null_step_rate" in after
    rate = json.loads((tmp_path / "ev" / "summary.json").read_text())["methods"]["vanilla"]["diagnostics"][
        "truncation_rate"]
    assert rate >= 0.2  # the random tiny model seldom stops within 8 tokens, so the warning path runs
    assert "warning: vanilla ran out of tokens" in r.output


def test_truncation_warnings_use_the_reference_threshold():
    def summary(rate):
        return {"diagnostics": {"truncation_rate": rate, "tokens_p90": 9, "tokens_max": 10}}

    lines = truncation_warnings({"a": summary(0.2), "b": summary(0.19), "c": summary(None), "d": {"n": 1}}, 10)
    assert lines == ["warning: a ran out of tokens on 20% of problems at max_new_tokens=10 (tokens p90 9, max 10); "
                     "its accuracy is likely underestimated: raise max_new_tokens"]
