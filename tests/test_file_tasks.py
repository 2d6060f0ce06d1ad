"""File-backed tasks: loaders, prompt templates, extraction and scoring, splits and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import stir_core.tasks.files  # noqa: F401  (registers the file tasks)
from stir_core.tasks import Task, get_task

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gold_number(answer_text: str) -> int:
    """Reference gold for a GSM8K row, computed independently of the extractor."""
    return int(answer_text.split("####")[-1].strip().replace(",", ""))


# --- gsm8k ----------------------------------------------------------------------------------------


def _check_gsm8k(path: Path) -> int:
    task = get_task("gsm8k", path=path)
    assert isinstance(task, Task) and task.delimiter == "\n\n"
    rows, examples = _rows(path), task.load("eval")
    assert len(examples) == len(rows)
    assert len({ex.id for ex in examples}) == len(examples)
    for row, ex in zip(rows, examples, strict=True):
        gold = _gold_number(row["answer"])
        assert ex.question == row["question"].strip()
        assert int(ex.answer) == gold
        # the raw worked answer (with <<calc>> annotations) and the cleaned gold solution both score
        assert task.extract(row["answer"]) == str(gold)
        assert task.score(row["answer"], ex)
        assert task.score(ex.solution, ex)
        # the gold solution: one segment per non-empty worked line, then the "#### n" line
        body = row["answer"].rpartition("####")[0]
        segments = ex.solution.split("\n\n")
        assert len(segments) == sum(1 for line in body.splitlines() if line.strip()) + 1
        assert segments[-1] == "#### " + row["answer"].rpartition("####")[2].strip()
        assert "<<" not in ex.solution
        prompt = task.prompt(ex)
        assert row["question"].strip() in prompt and "####" in prompt
    # a completion with another row's (different) answer does not score
    wrong = [(a, b) for a, b in zip(examples, examples[1:], strict=False) if a.answer != b.answer]
    assert wrong and not any(task.score(f"#### {b.answer}", a) for a, b in wrong)
    return len(examples)


def test_gsm8k_fixture():
    assert _check_gsm8k(FIXTURES / "gsm8k_sample.jsonl") == 5
    answers = [ex.answer for ex in get_task("gsm8k", path=FIXTURES / "gsm8k_sample.jsonl").load()]
    assert {"1450000", "2125", "-10"} <= set(answers)  # comma-grouped and negative golds


def test_gsm8k_real_test_file():
    if not GSM8K_TEST.is_file():
        pytest.skip(f"shared data folder absent: {GSM8K_TEST} not found (the fixture test covers the loader)")
    assert _check_gsm8k(GSM8K_TEST) == 1319


def test_gsm8k_realistic_completions():
    task = get_task("gsm8k", path=FIXTURES / "gsm8k_sample.jsonl")
    janet = task.load()[0]  # gold 18
    assert task.score("16 - 3 - 4 = 9 eggs.\n\n9 * 2 = 18 dollars.\n\n#### 18", janet)
    assert task.score("She makes $18.00 a day.\n\n#### $18.00", janet)
    assert task.score("So the answer is 18.", janet)  # no marker: last number
    assert not task.score("9 * 2 = 18\n\n#### 19", janet)
    assert not task.score("I cannot tell.", janet)
    assert task.extract("#### 1,450,000") == "1450000"


def test_gsm8k_alternative_fields(tmp_path):
    path = _write_jsonl(
        tmp_path / "alt.jsonl",
        [{"id": "q1", "problem": "What is 2+2?", "target": 4, "rationale": "2 + 2 = <<2+2=4>>4"}],
    )
    (ex,) = get_task("gsm8k", path=path).load()
    assert (ex.id, ex.question, ex.answer, ex.solution) == ("q1", "What is 2+2?", "4", "2 + 2 = 4\n\n#### 4")


# --- math500, aime, amc ---------------------------------------------------------------------------


def test_math500_fixture():
    task = get_task("math500", path=FIXTURES / "math500_sample.jsonl")
    examples = task.load()
    assert len(examples) == 5
    sin60, angle, polar, coin, choice = examples
    assert sin60.meta["level"] == 1 and sin60.id == "fixture/precalculus/1.json"
    assert task.score("So the value is $\\boxed{\\dfrac{\\sqrt3}{2}}$.", sin60)
    assert not task.score("$\\boxed{\\frac{1}{2}}$", sin60)
    assert task.score("Each base angle is $\\boxed{10^\\circ}$.", angle)
    assert task.score("Each base angle is $\\boxed{10}$.", angle)
    assert task.score("\\boxed{(3, \\frac{\\pi}{2})}", polar)
    assert task.score("\\boxed{0.5}", coin)  # gold taken from the solution's \boxed{\dfrac{1}{2}}
    assert coin.id == "math500-3" and coin.meta["answer_raw"] == "\\dfrac{1}{2}"
    assert task.score("\\boxed{\\textbf{(C)}}", choice)
    assert task.score("First \\boxed{5}, no: \\boxed{\\text{(C)}}", choice)  # the last box wins
    assert task.score("The answer is 0.5", coin)  # no box: the inline "answer is" (extractors.py:128-130)
    assert not task.score("I am not sure which it is.", coin)  # the last line is no answer
    assert task.score("#### 1/2", coin)  # the marker fallback
    for ex in examples:  # gold solutions, where present, score against their own answers
        if ex.solution:
            assert task.score(ex.solution, ex)
        assert "\\boxed{<final answer>}" in task.prompt(ex) and ex.question in task.prompt(ex)


def test_aime_fixture_and_amc_parquet(tmp_path):
    aime = get_task("aime", path=FIXTURES / "aime_sample.jsonl")
    examples = aime.load()
    assert [ex.id for ex in examples] == ["2024-I-1", "2024-I-2", "2024-I-3"]
    assert [ex.answer for ex in examples] == ["24", "12", "146"]
    assert aime.score(examples[0].solution, examples[0])  # "\boxed{024}" is 24
    assert aime.score("The count is \\boxed{12}.", examples[1])
    assert aime.score("so 2 * 73 = 146\n\n#### 146", examples[2])
    assert not aime.score("\\boxed{145}", examples[2])

    rows = [  # the AI-MO AMC validation layout: float answers
        {"id": 0, "problem": "What is $3 \\cdot 47$?", "answer": 141.0, "url": "https://example.org/1"},
        {"id": 1, "problem": "What is $1+1$?", "answer": 2.0, "url": "https://example.org/2"},
    ]
    path = tmp_path / "amc.parquet"
    pd.DataFrame(rows).to_parquet(path)
    amc = get_task("amc", path=path)
    a, b = amc.load()
    assert (a.id, a.answer, a.meta["url"]) == ("0", "141", "https://example.org/1")
    assert amc.score("$3 \\cdot 47 = \\boxed{141}$", a) and not amc.score("\\boxed{141}", b)


# --- multiple choice ------------------------------------------------------------------------------


def test_arc_fixture():
    task = get_task("arc-challenge", path=FIXTURES / "arc_sample.jsonl")
    plants, day, mass, renewable = task.load()
    assert [plants.answer, day.answer, mass.answer, renewable.answer] == ["C", "B", "C", "B"]
    assert day.meta["labels_raw"] == ["1", "2", "3", "4"]  # numeric labels are shown as letters
    assert mass.meta["letters"] == ["A", "B", "C", "D", "E"]
    assert renewable.question == "Which of these is a renewable resource?"  # the nested ARC layout
    prompt = task.prompt(day)
    assert "(B) Earth spinning on its axis" in prompt and prompt.index("(A) ") < prompt.index("(D) ")
    assert task.score("Plants use CO2 for photosynthesis.\n\n#### C", plants)
    assert task.score("The answer is (B).", day)
    assert not task.score("The answer is (A).", day)
    assert task.score("Mass is measured in grams, option C. A scale works.", mass)


def test_openbookqa_fixture_and_parquet(tmp_path):
    task = get_task("openbookqa", path=FIXTURES / "openbookqa_sample.jsonl")
    magnet, ice, light = task.load()
    assert [magnet.answer, ice.answer, light.answer] == ["B", "D", "A"]  # letter, {label,text}, 0-based int
    assert task.prompt(magnet).startswith("Solve the following problem step by step.")
    assert "Question:\nA magnet will stick to\n\nOptions:\n(A) a wooden spoon\n(B) an iron nail" in task.prompt(magnet)

    path = tmp_path / "obqa.parquet"
    pd.DataFrame(_rows(FIXTURES / "openbookqa_sample.jsonl")[:1]).to_parquet(path)
    (ex,) = get_task("openbookqa", path=path).load()  # HF dict-of-lists comes back as numpy arrays
    assert (ex.id, ex.question, ex.answer, ex.meta["choices"]) == (
        magnet.id,
        magnet.question,
        "B",
        magnet.meta["choices"],
    )


# --- splits, sampling, templates ------------------------------------------------------------------


def test_splits_and_subsampling(tmp_path):
    mine = _write_jsonl(tmp_path / "mine.jsonl", [{"question": "q", "answer": "x\n#### 3"}])
    task = get_task("gsm8k", paths={"eval": FIXTURES / "gsm8k_sample.jsonl", "mine": mine})
    full = task.load("eval")
    assert [ex.answer for ex in task.load("mine")] == ["3"]
    sub = task.load("eval", n=3, seed=7)
    assert sub == task.load("eval", n=3, seed=7)  # deterministic
    assert len(sub) == 3 and [full.index(ex) for ex in sub] == sorted(full.index(ex) for ex in sub)
    assert len({tuple(ex.id for ex in task.load("eval", n=3, seed=s)) for s in range(10)}) > 1
    assert task.load("eval", n=50) == full and task.load("eval", n=0) == []
    with pytest.raises(ValueError, match="no file for split 'val'"):
        task.load("val")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        task.load("test")
    with pytest.raises(ValueError, match="non-negative"):
        task.load("eval", n=-1)
    single = get_task("gsm8k", path=FIXTURES / "gsm8k_sample.jsonl")
    with pytest.raises(ValueError, match="split 'mine'"):
        single.load("mine")  # a single path is the eval split only


def test_custom_template():
    task = get_task("math500", path=FIXTURES / "math500_sample.jsonl", template="Q: {question}\nA: \\boxed{}")
    ex = task.load()[0]
    assert task.prompt(ex) == f"Q: {ex.question}\nA: \\boxed{{}}"
    with pytest.raises(ValueError, match="{choices}"):
        get_task("arc-challenge", path=FIXTURES / "arc_sample.jsonl", template="{question}")


# --- errors ---------------------------------------------------------------------------------------


def test_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="reads local files"):
        get_task("gsm8k")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_task("gsm8k", path=tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="'.csv'"):
        get_task("gsm8k", path=tmp_path / "data.csv")
    with pytest.raises(ValueError, match="either path= or paths="):
        get_task(
            "gsm8k", path=FIXTURES / "gsm8k_sample.jsonl", paths={"eval": FIXTURES / "gsm8k_sample.jsonl"}
        )
    with pytest.raises(ValueError, match="unknown split 'test'"):
        get_task("gsm8k", paths={"test": FIXTURES / "gsm8k_sample.jsonl"})


@pytest.mark.parametrize(
    "task, lines, message",
    [
        ("gsm8k", ['{"question": "q", "answer": "#### 1"}', "{not json"], "line 2: not valid JSON"),
        (
            "gsm8k",
            ['{"question": "q", "answer": "#### 1"}', "", '{"question": "q"}'],
            "line 3: missing field 'answer'",
        ),
        ("gsm8k", ['{"answer": "#### 1"}'], "line 1: missing field 'question'"),
        ("gsm8k", ['{"question": "q", "answer": "so\\n#### many"}'], "'many' is not a number"),
        ("gsm8k", ["[1, 2]"], "line 1: expected a JSON object"),
        ("gsm8k", ['{"id": 1, "question": "q", "answer": "#### 1"}'] * 2, "line 2: duplicate id '1'"),
        ("aime", ['{"problem": "p", "answer": "3.5"}'], "line 1: field 'answer' '3.5' is not an integer"),
        ("math500", ['{"problem": "p", "solution": "no box"}'], "line 1: missing field 'answer'"),
        (
            "arc-challenge",
            ['{"question": "q", "choices": ["x", "y"], "answerKey": "C"}'],
            "'C' is not one of",
        ),
        ("arc-challenge", ['{"question": "q", "answerKey": "A"}'], "line 1: missing field 'choices'"),
        ("arc-challenge", ['{"question": "q", "choices": ["x", "y"]}'], "line 1: missing field 'answerKey'"),
        ("openbookqa", ['{"question_stem": "q", "choices": ["x", "y"], "answer": 2}'], "out of range"),
        (
            "openbookqa",
            ['{"question_stem": "q", "choices": 5, "answerKey": "A"}'],
            "field 'choices' should be",
        ),
        ("gsm8k", [""], "has no rows"),
    ],
)
def test_bad_rows_name_the_line_and_field(tmp_path, task, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t = get_task(task, path=path)  # construction only checks that the file exists
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        t.load()
    assert "bad.jsonl" in str(err.value)


def test_bad_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        get_task("gsm8k", path=path).load()


def test_json_array_and_mmlu_columns(tmp_path):
    rows = [
        {"question": "2 + 2 = ?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"},
        {"question": "Largest?", "A": "1", "B": "9", "C": "3", "answer": 1},
    ]
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(rows, indent=1))
    first, second = get_task("arc-challenge", path=path).load()
    assert (first.answer, first.meta["choices"]) == ("B", ["3", "4", "5", "22"])
    assert (second.answer, second.meta["letters"]) == ("B", ["A", "B", "C"])


# --- SVAMP, StrategyQA, CommonsenseQA (the formats their public exports use) ------------------------------

SVAMP_ROWS = [  # the ChilleD/SVAMP export: Body + Question, a float Answer
    {"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
     "Question": "How much do you have to pay to buy each pack?", "Equation": "( 76.0 - 25.0 )", "Answer": 51.0,
     "Type": "Subtraction"},
    {"ID": "chal-2", "Body": "Dan had $ 3 left with him after he bought a candy bar. If he had a total of $ 4 at "
     "the start", "Question": "How much did the candy bar cost?", "Equation": "( 4.0 - 3.0 )", "Answer": 1.0,
     "Type": "Subtraction"},
]


def test_svamp_rows_prompt_and_score(tmp_path):
    task = get_task("svamp", path=_write_jsonl(tmp_path / "svamp.jsonl", SVAMP_ROWS))
    dvd, candy = task.load()
    # the reference joins Body and Question with a newline (stir/data/loaders.py:108)
    assert dvd.question == SVAMP_ROWS[0]["Body"] + "\n" + SVAMP_ROWS[0]["Question"]
    assert (dvd.id, dvd.answer, candy.answer, dvd.meta["Type"]) == ("chal-1", "51", "1", "Subtraction")
    assert task.prompt(dvd).startswith("Solve the following problem step by step.")
    assert "#### <answer>" in task.prompt(dvd) and "Problem:\n" + dvd.question in task.prompt(dvd)
    assert task.score("76 - 25 = 51\n\n#### 51", dvd) and not task.score("#### 50", dvd)
    assert task.score("So the candy bar cost $1.", candy)
    with pytest.raises(ValueError, match="svamp.jsonl line 1: field 'Answer' 'many' is not a number"):
        get_task("svamp", path=_write_jsonl(tmp_path / "svamp.jsonl", [{**SVAMP_ROWS[0], "Answer": "many"}])).load()


STRATEGYQA_ROWS = [  # the original strategyqa_train.json: a JSON array, boolean answers, facts as a list
    {"qid": "b8677742616fef051f00", "term": "Genghis Khan", "description": "founder and first Great Khan",
     "question": "Are more people today related to Genghis Khan than Julius Caesar?", "answer": True,
     "facts": ["Julius Caesar had three children.", "Genghis Khan had sixteen children."],
     "decomposition": ["How many kids did Julius Caesar have?", "How many kids did Genghis Khan have?"]},
    {"qid": "4668264df84fb7c25b39", "term": "Aristotle", "description": "Ancient Greek philosopher",
     "question": "Could Aristotle have used a laptop?", "answer": False,
     "facts": ["Aristotle died in 322 BC.", "The first laptop was made in 1981."]},
]


def test_strategyqa_json_array_and_chilled_jsonl(tmp_path):
    path = tmp_path / "strategyqa_train.json"
    path.write_text(json.dumps(STRATEGYQA_ROWS))
    task = get_task("strategyqa", path=path)
    khan, aristotle = task.load()
    assert (khan.id, khan.answer, aristotle.answer) == ("b8677742616fef051f00", "Yes", "No")  # loaders.py:371-375
    assert khan.solution == "Julius Caesar had three children.\n\nGenghis Khan had sixteen children.\n\n#### Yes"
    assert task.prompt(aristotle).endswith("#### <Yes/No>\n\nQuestion:\nCould Aristotle have used a laptop?\n")
    assert task.score("Aristotle died long before 1981.\n\n#### No", aristotle)
    assert not task.score("#### Yes", aristotle) and task.score(khan.solution, khan)
    # the ChilleD/StrategyQA export: JSONL, facts as one text, "true"/"false" strings accepted too
    rows = [{"qid": "q1", "question": "Is water wet?", "answer": "true", "facts": "Water makes things wet."}]
    (ex,) = get_task("strategyqa", path=_write_jsonl(tmp_path / "s.jsonl", rows)).load()
    assert (ex.answer, ex.solution) == ("Yes", "Water makes things wet.\n\n#### Yes")
    with pytest.raises(ValueError, match="s.jsonl line 1: field 'answer' 'maybe' is not a yes/no answer"):
        get_task("strategyqa", path=_write_jsonl(tmp_path / "s.jsonl", [{**rows[0], "answer": "maybe"}])).load()


CSQA_ORIGINAL = {  # the original train_rand_split.jsonl layout: question = {stem, choices, concept}
    "answerKey": "A", "id": "075e483d21c29a511267ef62bedc0461",
    "question": {"question_concept": "punishing", "stem": "The sanctions against the school were a punishing "
                 "blow, and they seemed to what the efforts the school had made to change?",
                 "choices": [{"label": "A", "text": "ignore"}, {"label": "B", "text": "enforce"},
                             {"label": "C", "text": "authoritarian"}, {"label": "D", "text": "yell at"},
                             {"label": "E", "text": "avoid"}]}}
CSQA_HF = {  # the tau/commonsense_qa export (Parquet): choices as {"label": [...], "text": [...]}
    "id": "61fe6e879ff18686d7552425a36344c8", "question": "Sammy wanted to go to where the people were. "
    "Where might he go?", "question_concept": "people",
    "choices": {"label": ["A", "B", "C", "D", "E"],
                "text": ["race track", "populated areas", "the desert", "apartment", "roadblock"]},
    "answerKey": "B"}


def test_commonsenseqa_original_jsonl_and_hf_parquet(tmp_path):
    task = get_task("commonsenseqa", path=_write_jsonl(tmp_path / "csqa.jsonl", [CSQA_ORIGINAL]))
    (ex,) = task.load()
    assert (ex.answer, ex.meta["letters"], ex.meta["choices"][0]) == ("A", list("ABCDE"), "ignore")
    assert "Options:\n(A) ignore\n(B) enforce\n(C) authoritarian\n(D) yell at\n(E) avoid\n" in task.prompt(ex)
    assert task.score("Sanctions would undo the effort.\n\n#### A", ex) and not task.score("#### E", ex)
    path = tmp_path / "csqa.parquet"
    pd.DataFrame([CSQA_HF]).to_parquet(path)
    (hf,) = get_task("commonsenseqa", path=path).load()  # dict-of-lists comes back as numpy arrays
    assert (hf.id, hf.answer, hf.meta["choices"][1]) == (CSQA_HF["id"], "B", "populated areas")
    assert get_task("commonsenseqa", path=path).score("People are in populated areas. The answer is (B).", hf)


def test_prompt_style_blank_lines_is_ours_and_reference_is_the_default(tmp_path):
    path = _write_jsonl(tmp_path / "svamp.jsonl", SVAMP_ROWS)
    ref, ours = get_task("svamp", path=path), get_task("svamp", path=path, prompt_style="blank_lines")
    ex = ref.load()[0]
    # stir/data/prompts.py:13-19 (gsm8k_0shot / svamp_0shot), word for word
    assert ref.prompt(ex) == ("Solve the following problem step by step.\nYou should show intermediate steps.\n"
                              "Return the final numeric answer on the last line in the format:\n#### <answer>\n\n"
                              f"Problem:\n{ex.question}\n")
    assert ref.system_prompt == "You are a helpful assistant. Follow the user's instructions carefully."
    assert "separate the steps with a blank line" in ours.prompt(ex) and ours.system_prompt is None
    with pytest.raises(ValueError, match="prompt_style: 'fancy' is not one of reference, blank_lines"):
        get_task("svamp", path=path, prompt_style="fancy")
    from stir_core.config import PromptConfig, knobs
    from stir_core.tasks.files import PROMPT_STYLES

    assert knobs(PromptConfig)["prompt_style"].choices == PROMPT_STYLES  # the knob schema and the tasks agree


def test_the_system_message_goes_through_the_chat_template():
    from stir_core.tasks import render_prompt

    class Model:
        calls: list = []

        def format_prompt(self, text, system=None):
            self.calls.append((text, system))
            return f"<sys>{system}</sys><user>{text}</user>" if system else f"<user>{text}</user>"

    task = get_task("math500", path=FIXTURES / "math500_sample.jsonl")
    ex = task.load()[0]
    assert render_prompt(Model(), task, ex) == f"<sys>{task.system_prompt}</sys><user>{task.prompt(ex)}</user>"
    assert render_prompt(Model(), get_task("planted"), get_task("planted").load("eval", 1)[0]).startswith("<user>")
