"""`stir cases`: fixed/broken selection against hand-made results, gate markers at the right places, escaping
of model text in HTML and Markdown, and refusal to overwrite without --force."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from stir_core.analysis.cases import find_cases, segments, to_html, to_markdown
from stir_core.analysis.evaluate import EvalResult, save_results
from stir_core.cli import app
from stir_core.online.trace import Candidate, GateDecision, TokenRecord, Trace

runner = CliRunner()
EVIL = "<script>alert(1)</script> ``` & </pre>"


def make_trace(method: str, pieces: list[str], decisions: list[GateDecision]) -> Trace:
    toks = [TokenRecord(index=i, token_id=10 + i, text=p, logprob=-0.1, segment=0) for i, p in enumerate(pieces)]
    return Trace(method=method, prompt="p", completion="".join(pieces), tokens=toks, decisions=decisions)


def stir_decisions() -> list[GateDecision]:
    cand = Candidate(entry=0, tool_id="t<0>", kind="correction", layer=2, sim=0.9, quality=1.0, value=0.9, previewed=True,
                     probe_text="x", probe_logprob=-0.5, gain=0.2, score=0.75)
    return [GateDecision(m=1, token_index=1, query_layers=[2], candidates=[cand], null_value=0.1, score_null=0.5, chosen="t<0>", reason="committed", alpha=0.6, layer=2),
            GateDecision(m=2, token_index=3, query_layers=[2], candidates=[], reason="no_entries")]


def make_result() -> EvalResult:
    # vanilla right on e0, e2; stir right on e1, e2, e3 -> stir fixed e1, e3 and broke e0
    right = {"vanilla": [True, False, True, False], "stir": [False, True, True, True]}
    rows = []
    for method, oks in right.items():
        for i, ok in enumerate(oks):
            pieces = ["a", "\n\n", EVIL if i == 1 else "b", "\n\n", f"#### {i}"]
            t = make_trace(method, pieces, stir_decisions() if method == "stir" else [])
            rows.append({"example_id": f"e{i}", "method": method, "correct": ok, "n_tokens": t.n_tokens,
                         "probe_tokens": 0, "interventions": t.interventions, "prompt": f"Q{i} <b>?</b>",
                         "completion": t.completion, "answer": None if i == 0 else str(i), "gold": str(i),
                         "trace_json": t.to_json()})
    summary = {m: {"accuracy": sum(v) / 4, "n": 4} for m, v in right.items()}
    return EvalResult(summary, pd.DataFrame(rows), {"task": "t", "split": "eval", "n": 4, "model": "m"})


def test_fixed_and_broken_are_the_discordant_problems_in_order():
    c = find_cases(make_result(), "stir", "vanilla")
    assert [x.example_id for x in c.fixed] == ["e1", "e3"] and [x.example_id for x in c.broken] == ["e0"]
    assert (c.n_fixed, c.n_broken, c.n) == (2, 1, 4)
    assert c.broken[0].baseline.correct and not c.broken[0].method.correct
    top1 = find_cases(make_result(), "stir", "vanilla", top=1)
    assert [x.example_id for x in top1.fixed] == ["e1"] and top1.n_fixed == 2
    # the other way round: vanilla "fixes" what stir broke
    rev = find_cases(make_result(), "vanilla", "stir")
    assert [x.example_id for x in rev.fixed] == ["e0"] and [x.example_id for x in rev.broken] == ["e1", "e3"]


def test_markers_follow_the_decision_token():
    t = make_trace("stir", ["a", "\n\n", "b", "\n\n", "c"], stir_decisions())
    segs = segments(t)
    assert [s for s, _ in segs] == ["a\n\n", "b\n\n", "c"]  # decisions at token indices 1 and 3
    assert [d.m if d else None for _, d in segs] == [1, 2, None]
    assert "".join(s for s, _ in segs) == t.completion


def test_markdown_shows_both_traces_with_gate_decisions():
    md = to_markdown(find_cases(make_result(), "stir", "vanilla"))
    assert md.index("## Fixed") < md.index("### 1. e1") < md.index("### 2. e3") < md.index("## Broken")
    assert "a\n\n⟪gate m=1: t<0> (committed, α=0.6, layer 2)⟫b\n\n⟪gate m=2: null (no_entries)⟫#### 3" in md
    assert "| 1 | 1 | t<0> | committed | 0.6 | 2 | 0.75 | 0.5 | 0 |" in md
    assert "**baseline — vanilla**: answer `1` · wrong" in md
    assert "**method — stir**: answer no answer · wrong" in md  # e0 has no extracted answer
    # the completion holding ``` is fenced with four backticks, so it cannot close its block
    assert "````\na\n\n⟪gate m=1" in md


def test_html_escapes_model_and_data_text():
    html = to_html(find_cases(make_result(), "stir", "vanilla"))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>?</b>" not in html and "Q1 &lt;b&gt;?&lt;/b&gt;" in html
    assert "&lt;/pre&gt;" in html and "t&lt;0&gt;" in html
    assert "<span class='gate commit'>gate m=1: t&lt;0&gt; (committed" in html
    assert "<span class='gate null'>gate m=2: null (no_entries)</span>" in html


def test_cli_writes_both_files_and_refuses_to_overwrite(tmp_path):
    run = tmp_path / "run"
    save_results(make_result(), run)
    r = runner.invoke(app, ["cases", str(run)])
    assert r.exit_code == 0, r.output
    assert "fixed 2, broke 1 of 4" in r.output
    md, html = run / "cases-stir-vs-vanilla.md", run / "cases-stir-vs-vanilla.html"
    assert md.read_text() == to_markdown(find_cases(make_result(), "stir", "vanilla"))
    assert html.read_text() == to_html(find_cases(make_result(), "stir", "vanilla"))
    html.unlink()
    md.write_text("mine")
    r = runner.invoke(app, ["cases", str(run)])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert md.read_text() == "mine" and not html.exists()  # refused before anything was written
    r = runner.invoke(app, ["cases", str(run), "--force"])  # --force never replaces a file we did not write
    assert r.exit_code == 2 and "was not written by stir cases" in r.output and md.read_text() == "mine"
    md.unlink()
    assert runner.invoke(app, ["cases", str(run)]).exit_code == 0
    assert runner.invoke(app, ["cases", str(run), "--force", "--top", "1"]).exit_code == 0
    assert "### 2." not in md.read_text() and "shown: 1 fixed and 1 broken" in md.read_text()


@pytest.mark.parametrize("args, needle", [
    (["--method", "nope"], "method 'nope' is not in this run (it has vanilla, stir)"),
    (["--baseline", "static"], "baseline 'static' is not in this run"),
    (["--top", "-1"], "--top must be >= 0"),
    (["--md", "x.txt"], "--md must end in .md"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needle):
    run = tmp_path / "run"
    save_results(make_result(), run)
    r = runner.invoke(app, ["cases", str(run), *args])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1
    assert not list(run.glob("cases-*"))


def test_cli_refuses_a_directory_that_is_not_a_run(tmp_path):
    r = runner.invoke(app, ["cases", str(tmp_path)])
    assert r.exit_code == 2 and "no summary.json" in r.output
