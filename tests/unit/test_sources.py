"""Prompt sources: every loader on small files, and bad data named by file, line and field."""

import json

import pytest

from longrl.config import ConfigError, RunConfig, load_config
from longrl.data.sources import (
    DataError,
    champ_answer,
    load_prompts,
    load_source,
    load_sources,
    parse_spec,
)
from longrl.types import Prompt


def write(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


# -- spec strings --------------------------------------------------------------------------------


def test_spec_strings():
    assert parse_spec("jsonl:a/b.jsonl") == parse_spec("a/b.jsonl")
    spec = parse_spec("data/q.csv?text=q&answer=final")
    assert (spec.kind, spec.target, spec.options) == ("csv", "data/q.csv", {"text": "q", "answer": "final"})
    spec = parse_spec("reasoning_gym:chain_sum,leg_counting?size=4&seed=2")
    assert (spec.kind, spec.target, spec.options) == ("reasoning_gym", "chain_sum,leg_counting",
                                                      {"size": "4", "seed": "2"})
    assert parse_spec("champ") == parse_spec("champ?")
    assert parse_spec("hf:/d/x?split=test").options == {"split": "test"}


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(DataError) as err:
        load_source("s3:bucket/x")
    assert ("unknown kind 's3'; kinds are jsonl, parquet, csv, hf, reasoning_gym, humaneval, champ, "
            "world (or a path ending in .jsonl, .parquet or .csv)") in str(err.value)


def test_bad_options_are_named(tmp_path):
    path = write(tmp_path, [json.dumps({"text": "1+1", "answer": "2"})])
    with pytest.raises(DataError, match=r"unknown option 'txt' \(valid options: id, text, messages"):
        load_source(f"{path}?txt=q")
    with pytest.raises(DataError, match="option 'split' must look like key=value"):
        load_source(f"{path}?split")
    with pytest.raises(DataError, match=r"unknown option 'size' \(valid options: none\)"):
        load_source("champ?size=3")


# -- JSONL ---------------------------------------------------------------------------------------


def test_reads_rows(tmp_path):
    path = write(tmp_path, [json.dumps({"text": "1+1", "answer": "2", "tags": ["a"]}), "",
                            json.dumps({"id": "q2", "text": "2+2", "answer": "4", "level": 3})])
    prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["1+1", "2+2"]
    assert prompts[0].id == "prompts:1" and prompts[0].tags == ["a"]
    assert prompts[0].source == "prompts.jsonl" and prompts[0].messages is None
    assert prompts[1].id == "q2" and prompts[1].meta == {"level": 3}
    assert load_source(f"jsonl:{path}") == load_source(str(path)) == prompts


def test_column_aliases_chat_messages_and_code_tests(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    path = write(tmp_path, [
        json.dumps({"question": "3+3", "solution": "so \\boxed{6}", "difficulty": 0.5}),
        json.dumps({"messages": chat, "answer": "2", "source": "mine"}),
        json.dumps({"prompt": chat, "answer": "2", "id": 7}),  # a `prompt` column holding a chat
        json.dumps({"text": "def f(): ...", "tests": [{"assert": "assert f() is None"}]}),
    ])
    q, m, p, code = load_source(str(path))
    assert (q.text, q.answer, q.difficulty, q.meta) == ("3+3", "so \\boxed{6}", 0.5, {})
    assert m.messages == chat and m.text == "1+1?" and m.source == "mine"
    assert p.messages == chat and p.id == "7"
    assert code.answer is None and code.tests == [{"assert": "assert f() is None"}]


def test_field_map_option(tmp_path):
    path = write(tmp_path, [json.dumps({"q": "1+1", "final": "2", "uid": "a", "answer": "ignored"})])
    (prompt,) = load_source(f"jsonl:{path}?text=q&answer=final&id=uid")
    assert (prompt.id, prompt.text, prompt.answer) == ("a", "1+1", "2")
    assert prompt.meta == {"answer": "ignored"}  # unmapped columns are kept, not used
    with pytest.raises(DataError, match=r"line 1: missing field 'question'"):
        load_source(f"jsonl:{path}?text=question&answer=final")


@pytest.mark.parametrize("row, fragment", [
    ('{"text": "1+1"}', "line 2: missing field 'answer' (or 'solution', or 'tests' for code)"),
    ('{"answer": "2"}', "line 2: missing field 'text' (or 'prompt', 'question', 'messages')"),
    ('{"text": "1+1", "answer": 2}', "line 2: field 'answer' must be a str, got int"),
    ('{"question": 5, "answer": "2"}', "line 2: field 'question' must be a str, got int"),
    ('{"question": ["1+1"], "answer": "2"}', "line 2: field 'question', message 1: must be an object with string 'role' and 'content', got \"1+1\""),
    ('{"messages": [], "answer": "2"}', "line 2: field 'messages' must be a non-empty list of {role, content} messages, got list"),
    ('{"text": "1+1", "answer": "2", "difficulty": "hard"}', "line 2: field 'difficulty' must be a number, got str 'hard'"),
    ('{"text": "1+1", "answer": "2", "difficulty": 3}', "line 2: field 'difficulty' must be between 0 (easy) and 1 (hard), got 3"),
    ('{"text": "1+1", "answer": "2", "tags": "math"}', "line 2: field 'tags' must be a list of str, got str 'math'"),
    ('{"text": "1+1", "tests": {"stdin": ""}}', "line 2: field 'tests' must be a list of test objects, got dict"),
    ('{"messages": [{"role": "system", "content": "x"}], "answer": "2"}', "line 2: field 'messages': no message with role 'user'"),
    ('{"messages": [{"role": "user"}], "answer": "2"}', "line 2: field 'messages', message 1: must be an object with string 'role' and 'content'"),
    ('{"id": "a", "text": "1+1", "answer": "2"}', "line 2: field 'id': 'a' repeats the id of line 1"),
    ('{"text": "1+1", "answer": "2"', "line 2: not valid JSON (Expecting ',' delimiter at column 30)"),
    ('["1+1", "2"]', "line 2: expected a JSON object, got list"),
])
def test_malformed_rows(tmp_path, row, fragment):
    path = write(tmp_path, [json.dumps({"id": "a", "text": "0+0", "answer": "0"}), row])
    with pytest.raises(DataError) as err:
        load_prompts(path)
    assert str(err.value).startswith(f"{path}, line 2: ") and fragment in str(err.value)


def test_a_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"text": "1+1", "answer": "2"}\n{"text": "\xff", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"p.jsonl, line 2: not UTF-8 text \(byte 11\)"):
        load_source(str(path))


def test_skip_mode_reports_and_keeps_the_rest(tmp_path, capsys):
    path = write(tmp_path, ['{"text": "1+1"}', json.dumps({"text": "2+2", "answer": "4"}), "{oops"])
    prompts = load_prompts(path, on_error="skip")
    assert [p.text for p in prompts] == ["2+2"]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"skipping: {path}, line 1: missing field 'answer' (or 'solution', or 'tests' for code)",
                   (f"skipping: {path}, line 3: not valid JSON (Expecting property name enclosed in "
                   "double quotes at column 2)"),
                   f"{path}: skipped 2 malformed row(s), kept 1"]


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"prompts.jsonl: no prompts in the file \(it is empty\)"):
        load_prompts(write(tmp_path, []))
    with pytest.raises(DataError, match=r"no prompts in the file \(2 malformed rows skipped\)"):
        load_prompts(write(tmp_path, ["{}", "[]"]), on_error="skip")
    with pytest.raises(DataError, match="prompt file '.*nope.jsonl' does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="on_error is 'ignore': use 'raise' or 'skip'"):
        load_prompts(write(tmp_path, ['{"text": "1", "answer": "1"}']), on_error="ignore")


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_rows_and_cells(tmp_path):
    chat = json.dumps([{"role": "user", "content": "hi, 1+1?"}]).replace('"', '""')
    path = write(tmp_path, [
        "id,question,answer,tags,difficulty,messages,note",
        'a,"1+1, twice",2,"math, easy",0.25,,x',
        f'b,,2,"[""math""]",,"{chat}",',
        'c,"two\nlines",5,,,,',
    ], name="qa.csv")
    a, b, c = load_source(str(path))
    assert (a.id, a.text, a.answer, a.tags, a.difficulty, a.meta) == \
        ("a", "1+1, twice", "2", ["math", "easy"], 0.25, {"note": "x"})
    assert b.messages == [{"role": "user", "content": "hi, 1+1?"}] and b.text == "hi, 1+1?" and b.tags == ["math"]
    assert c.text == "two\nlines" and c.source == "qa.csv"


@pytest.mark.parametrize("row, fragment", [
    ("q,,,", "line 3: missing field 'answer'"),
    ("q,2,hard,", "line 3: field 'difficulty' must be a number, got 'hard'"),
    ("q,2,,[{oops", "line 3: field 'messages' must hold JSON in a CSV cell (Expecting property name"),
    ("q,2,,,extra", "line 3: 5 cells but the header has 4 columns"),
    ("q", "line 3: 1 cells but the header has 4 columns"),
])
def test_csv_malformed_rows(tmp_path, row, fragment):
    path = write(tmp_path, ["text,answer,difficulty,messages", "1+1,2,,", row], name="qa.csv")
    with pytest.raises(DataError) as err:
        load_source(f"csv:{path}")
    assert str(err.value).startswith(f"{path}, line 3: ") and fragment in str(err.value)


def test_csv_empty_header_only_and_missing(tmp_path, capsys):
    for lines in ([], ["text,answer"]):
        with pytest.raises(DataError, match=r"qa.csv: no prompts in the file \(it is empty\)"):
            load_source(str(write(tmp_path, lines, name="qa.csv")))
    with pytest.raises(DataError, match="prompt file '.*none.csv' does not exist"):
        load_source(f"csv:{tmp_path / 'none.csv'}")
    path = write(tmp_path, ["text,answer", "1+1,", "2+2,4"], name="qa.csv")
    assert [p.answer for p in load_source(str(path), on_error="skip")] == ["4"]
    assert "skipping: " + str(path) + ", line 2: missing field 'answer'" in capsys.readouterr().err


# -- Parquet -------------------------------------------------------------------------------------


def parquet(tmp_path, rows, name="qa.parquet"):
    import pandas as pd

    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_parquet_rows(tmp_path):
    chat = [{"role": "user", "content": "2+2?"}]
    path = parquet(tmp_path, [{"prompt": "1+1", "answer": "2", "tags": ["x"], "level": 1, "messages": None},
                              {"prompt": None, "answer": "4", "tags": [], "level": 2, "messages": chat}])
    one, two = load_source(f"parquet:{path}")
    assert (one.id, one.text, one.tags, one.meta) == ("qa:1", "1+1", ["x"], {"level": 1})
    assert (two.id, two.text, two.messages) == ("qa:2", "2+2?", chat)


def test_parquet_bad_rows_name_the_row(tmp_path, capsys):
    path = parquet(tmp_path, [{"text": "1+1", "answer": "2"}, {"text": "2+2", "answer": None},
                              {"text": "3+3", "answer": "6"}])
    with pytest.raises(DataError, match=r"qa.parquet, row 2: missing field 'answer'"):
        load_source(str(path))
    assert len(load_source(str(path), on_error="skip")) == 2
    assert "qa.parquet, row 2: missing field 'answer'" in capsys.readouterr().err
    path = parquet(tmp_path, [{"text": "1+1", "answer": 2}], name="ints.parquet")
    with pytest.raises(DataError, match=r"ints.parquet, row 1: field 'answer' must be a str, got int"):
        load_source(str(path))


def test_parquet_empty_garbage_and_missing(tmp_path):
    import pandas as pd

    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(empty)
    with pytest.raises(DataError, match=r"empty.parquet: no prompts in the file \(it is empty\)"):
        load_source(str(empty))
    garbage = write(tmp_path, ["not parquet"], name="bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        load_source(str(garbage))
    with pytest.raises(DataError, match="does not exist"):
        load_source(f"parquet:{tmp_path / 'none.parquet'}")


# -- Hugging Face datasets on disk ---------------------------------------------------------------


def test_hf_saved_dataset_and_splits(tmp_path):
    import datasets

    rows = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    prompts = load_source(f"hf:{tmp_path / 'one'}")
    assert [(p.id, p.text, p.answer) for p in prompts] == [("one:1", "1+1", "2"), ("one:2", "2+2", "4")]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                 "test": datasets.Dataset.from_list(rows[:1])})
    both.save_to_disk(str(tmp_path / "two"))
    assert [p.text for p in load_source(f"hf:{tmp_path / 'two'}?split=test")] == ["1+1"]
    with pytest.raises(DataError, match=r"no split 'dev'; the splits are train, test \(choose one with \?split=NAME\)"):
        load_source(f"hf:{tmp_path / 'two'}?split=dev")


def test_hf_data_directory_and_bad_rows(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write(folder, [json.dumps({"text": "1+1", "answer": "2"}), json.dumps({"text": "2+2", "answer": ""})],
          name="train.jsonl")
    with pytest.raises(DataError) as err:
        load_source(f"hf:{folder}")
    assert str(err.value) == f"{folder} [train], row 2: missing field 'answer' (or 'solution', or 'tests' for code)"
    assert [p.text for p in load_source(f"hf:{folder}", on_error="skip")] == ["1+1"]
    with pytest.raises(DataError, match="dataset '.*nowhere' does not exist"):
        load_source(f"hf:{tmp_path / 'nowhere'}")


# -- several sources, the run config -------------------------------------------------------------


def test_load_sources_concatenates_and_keeps_ids_unique(tmp_path):
    a = write(tmp_path, [json.dumps({"text": "1+1", "answer": "2"})], name="a.jsonl")
    b = write(tmp_path, ["question,answer", "2+2,4"], name="b.csv")
    prompts = load_sources([str(a), str(b)])
    assert [(p.id, p.text, p.source) for p in prompts] == [("a:1", "1+1", "a.jsonl"), ("b:2", "2+2", "b.csv")]
    with pytest.raises(DataError, match=r"prompt id 'a:1' comes from both '.*a.jsonl' and 'jsonl:.*a.jsonl'"):
        load_sources([str(a), f"jsonl:{a}"])


def test_run_config_data_section_feeds_the_prompt_pool(tmp_path):
    from longrl.loop import prompt_sets

    train = write(tmp_path, [json.dumps({"text": "1+1", "answer": "2"}), "{bad"], name="train.jsonl")
    held = write(tmp_path, [json.dumps({"text": "5+5", "answer": "10"})], name="held.jsonl")
    config = load_config(RunConfig, overrides=[f"data.train=['{train}', 'world?size=3']",
                                               f"data.eval=['{held}']", "data.on_error='skip'"])
    pool, evals = prompt_sets(config)
    assert [p.text for p in pool[:1]] == ["1+1"] and len(pool) == 4 and pool[1].source == "world"
    assert [p.text for p in evals] == ["5+5"]
    config = load_config(RunConfig, overrides=["world.train_size=5", "world.eval_size=7"])
    pool, evals = prompt_sets(config)  # the defaults name the world, shaped by the [world] section
    assert config.data.train == ["world"] and config.data.eval == ["world?split=eval"]
    assert len(pool) == 5 and len(evals) == 7 and {p.source for p in pool + evals} == {"world"}


def test_train_sources_without_eval_sources_are_a_config_error(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text('[data]\ntrain = ["jsonl:mine.jsonl"]\n')
    with pytest.raises(ConfigError, match=r"run.toml, line 2: key 'data.train' is set but data.eval is not"):
        load_config(RunConfig, run)
    with pytest.raises(ConfigError, match="no prompt sources"):
        load_config(RunConfig, overrides=["data.train=[]", "data.eval=['world?split=eval']"])


# -- built-in sources ----------------------------------------------------------------------------


def test_reasoning_gym_source():
    prompts = load_source("reasoning_gym:basic_arithmetic,leg_counting?size=2&seed=5")
    assert [p.id for p in prompts] == ["reasoning_gym/basic_arithmetic/5/0", "reasoning_gym/basic_arithmetic/5/1",
                                       "reasoning_gym/leg_counting/5/0", "reasoning_gym/leg_counting/5/1"]
    first = prompts[0]
    gym = first.meta["reasoning_gym"]
    assert (gym["dataset"], gym["config"], gym["index"]) == ("basic_arithmetic", {"size": 2, "seed": 5}, 0)
    assert first.answer == gym["entry"]["answer"] and first.text == gym["entry"]["question"]
    assert first.tags == ["reasoning_gym", "basic_arithmetic", "arithmetic"]
    assert [m["role"] for m in first.messages] == ["system", "user"] and "<answer>" in first.messages[0]["content"]
    narrow = load_sources(["reasoning_gym:basic_arithmetic?size=1&seed=5",
                           "reasoning_gym:basic_arithmetic?size=1&seed=5&max_terms=2&min_terms=2"])
    assert [p.id for p in narrow] == ["reasoning_gym/basic_arithmetic/5/0",
                                      "reasoning_gym/basic_arithmetic[max_terms=2,min_terms=2]/5/0"]
    (plain,) = load_source("reasoning_gym:basic_arithmetic?size=1&seed=5&system=none")
    assert plain.messages == [{"role": "user", "content": plain.text}]
    assert plain.text.endswith("Give your final answer between <answer> and </answer> tags.")


@pytest.mark.parametrize("spec, fragment", [
    ("reasoning_gym:basic_arithmetc", "unknown reasoning-gym generator 'basic_arithmetc'; did you mean basic_arithmetic"),
    ("reasoning_gym:basic_arithmetic?max_termz=3", ("generator 'basic_arithmetic' has no option 'max_termz' "
                                                   "(its options: min_terms, max_terms, ")),
    ("reasoning_gym:basic_arithmetic?max_terms=x", ("generator 'basic_arithmetic' rejects its config "
                                                   "{'max_terms': 'x', 'size': 500, 'seed': 0}: '>=' not supported")),
    ("reasoning_gym:basic_arithmetic?size=two", "option size='two' must be an integer"),
    ("reasoning_gym:basic_arithmetic?system=pirate", "unknown system prompt 'pirate'"),
    ("reasoning_gym:", "name at least one generator"),
    ("reasoning_gym:game_of_life_halting?size=1", "gives full credit to the answer 'not an answer'"),
])
def test_reasoning_gym_spec_errors(spec, fragment):
    with pytest.raises(DataError) as err:
        load_source(spec)
    assert fragment in str(err.value)


def test_humaneval_source():
    prompts = load_source("humaneval")
    assert len(prompts) == 164 and len({p.id for p in prompts}) == 164
    first = prompts[0]
    assert first.id == "HumanEval/0" and "code" in first.tags and first.source == "humaneval"
    assert first.tests == [{"test": first.tests[0]["test"], "entry_point": "has_close_elements"}]
    assert "def check(candidate)" in first.tests[0]["test"]


@pytest.mark.parametrize("raw, checkable", [
    ("C(10, 5), or equivalently 252", "252"),
    ("C(n, 4), or an equivalent form such as n(n-1)(n-2)(n-3)/4!", "n(n-1)(n-2)(n-3)/4!"),
    ("5/14, or approximately 35.7%", "5/14"),
    ("100 (i.e., all values)", "100"),
    ("((-1)^(n+1)+n+1)/(n+2) (i.e., 1 if for odd n, and n/(n+2) for even n)", "((-1)^(n+1)+n+1)/(n+2)"),
    ("-3 is the only possible value", "-3"),
    ("The limit exists and is equal to (a+3b)/2", "(a+3b)/2"),
    ("The only possible value for the limit is sqrt(a)", "sqrt(a)"),
    ("2 inequalities", "2"),
    ("At most 0 integer-valued zeros (i.e., no integer zeros)", "0"),
    ("sum_(k=1)^n 1/k", r"\sum_{k=1}^{n} 1/k"),
    ("No integer solutions", "No integer solutions"),
    ("x=±1, ±2, ±1/2", "x=±1, ±2, ±1/2"),
])
def test_champ_answers_reduce_to_their_checkable_form(raw, checkable):
    assert champ_answer(raw) == checkable


def test_champ_source_and_the_math_reward_accepts_its_answers():
    from longrl.rewards.registry import get_reward

    prompts = load_source("champ")
    assert len(prompts) == 270 and len({p.id for p in prompts}) == 270
    categories = {p.tags[2] for p in prompts}
    assert categories == {"combinatorics", "inequality", "number-theory", "polynomial", "sequence"}
    assert all(p.tags[:2] == ["math", "champ"] and p.answer for p in prompts)
    assert sum("yes_no" in p.tags for p in prompts) == sum(p.answer in ("Yes", "No") for p in prompts) > 0
    by_id = {p.id: p for p in prompts}
    assert by_id["champ/P_Combinatorics_2"].meta["raw_answer"] == "C(10, 5), or equivalently 252"
    assert by_id["champ/P_Combinatorics_2"].text.endswith("Put your final answer in \\boxed{}.")

    math = get_reward("math")
    results = math(prompts, [f"The answer is \\boxed{{{p.answer}}}." for p in prompts])
    assert [p.id for p, r in zip(prompts, results) if r.score != 1.0] == []
    # equivalent forms of the reduced references, as a model would write them
    checks = [("champ/P_Combinatorics_2", "\\boxed{252}", 1.0), ("champ/P_Combinatorics_2", "\\boxed{250}", 0.0),
              ("champ/P_Combinatorics_14", "\\boxed{\\frac{5}{14}}", 1.0),
              ("champ/P_Sequence_7", "\\boxed{3}", 1.0), ("champ/P_Inequality_14", "\\boxed{100}", 1.0)]
    results = math([by_id[i] for i, _, _ in checks], [r for _, r, _ in checks])
    assert [r.score for r in results] == [s for _, _, s in checks]


def test_world_source():
    train = load_source("world?size=4&seed=1")
    assert len(train) == 4 and all(p.source == "world" for p in train)
    held = load_source("world?split=eval")
    assert {p.id for p in held}.isdisjoint({p.id for p in load_source("world?size=300")})


# -- chat templates ------------------------------------------------------------------------------


def test_encode_prompt_accepts_text_messages_and_prompts():
    from longrl.tiny import build_char_tokenizer
    from longrl.models import encode_prompt

    tok = build_char_tokenizer()
    plain = Prompt(id="a", text="1+1", answer="2")
    assert encode_prompt(tok, plain) == encode_prompt(tok, "1+1") == \
        tok("<|user|>1+1<|end|><|assistant|>").input_ids
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1"}]
    expected = tok("<|system|>S<|end|><|user|>1+1<|end|><|assistant|>").input_ids
    assert encode_prompt(tok, chat) == expected
    assert encode_prompt(tok, Prompt(id="b", text="1+1", messages=chat)) == expected
    tok.chat_template = None  # no template: the contents joined by blank lines
    assert encode_prompt(tok, chat) == tok("S\n\n1+1").input_ids
