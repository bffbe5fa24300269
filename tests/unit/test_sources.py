"""Prompt files: malformed rows give errors that name file, line and field."""

import json

import pytest

from longrl.data.sources import DataError, load_prompts


def write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_reads_rows(tmp_path):
    path = write(tmp_path, [json.dumps({"text": "1+1", "answer": "2", "tags": ["a"]}), "",
                            json.dumps({"id": "q2", "text": "2+2", "answer": "4", "level": 3})])
    prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["1+1", "2+2"]
    assert prompts[0].id == "prompts:1" and prompts[0].tags == ["a"]
    assert prompts[1].id == "q2" and prompts[1].meta == {"level": 3}


@pytest.mark.parametrize("row, fragment", [
    ('{"text": "1+1"}', "line 2: missing field 'answer'"),
    ('{"text": "1+1", "answer": 2}', "line 2: field 'answer' must be a str, got int"),
    ('{"text": "1+1", "answer": "2", "difficulty": "hard"}', "line 2: field 'difficulty' must be a number"),
    ('{"text": "1+1", "answer": "2"', "line 2: not valid JSON"),
    ('["1+1", "2"]', "line 2: expected a JSON object"),
])
def test_malformed_rows(tmp_path, row, fragment):
    path = write(tmp_path, [json.dumps({"text": "0+0", "answer": "0"}), row])
    with pytest.raises(DataError) as err:
        load_prompts(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_skip_mode_reports_and_keeps_the_rest(tmp_path, capsys):
    path = write(tmp_path, ['{"text": "1+1"}', json.dumps({"text": "2+2", "answer": "4"})])
    prompts = load_prompts(path, on_error="skip")
    assert [p.text for p in prompts] == ["2+2"]
    assert "line 1: missing field 'answer'" in capsys.readouterr().err


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(write(tmp_path, []))
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
