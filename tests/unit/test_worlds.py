"""The tiny world: traces are correct arithmetic, the split is disjoint, the verifier is exact."""

import itertools
import random
import re

import pytest

from longrl.config import ConfigError, WorldConfig
from longrl.data.worlds import TASKS, TEXT_TASKS, World, format_trace, is_held_out, make_problem
from longrl.tiny import build_char_tokenizer
from longrl.rewards.world import check_answer
from longrl.rewards.registry import get_reward


def _fixed(*values):
    """A random source whose randint returns `values` in order."""
    rng, it = random.Random(), iter(values)
    rng.randint = lambda a, b: next(it)
    return rng


def test_add_trace_by_hand():
    # 347 + 285: columns right to left with carries
    rng = _fixed(347, 285)
    text, answer, lines = make_problem("add", 3, rng)
    assert (text, answer) == ("347+285", 632)
    assert lines == ["7+5+0=12 c1", "4+8+1=13 c1", "3+2+1=6 c0"]


def test_sub_and_mul_traces_by_hand():
    text, answer, lines = make_problem("sub", 3, _fixed(285, 532))
    assert (text, answer) == ("532-285", 247)
    assert lines == ["2-5-0=7 b1", "3-8-1=4 b1", "5-2-1=2 b0"]
    text, answer, lines = make_problem("mul", 3, _fixed(347, 6))
    assert (text, answer) == ("347*6", 2082)
    assert lines == ["7*6+0=42 c4", "4*6+4=28 c2", "3*6+2=20 c2"]


@pytest.mark.parametrize("task", TEXT_TASKS)  # image tasks: test_visual_world.py
def test_every_trace_line_is_true_and_ends_in_the_answer(task):
    rng = random.Random(1)
    for level in range(1, 6):
        for _ in range(50):
            text, answer, lines = make_problem(task, level, rng)
            assert eval(text) == answer
            if task == "count":  # a count and the ones left always add up to the answer
                for line in lines:
                    count, left = re.match(r"^(\d+) r(\d{3})$", line).groups()
                    assert int(count) + int(left) == answer
                assert lines[-1] == f"{answer} r000"
                continue
            for line in lines:
                expr, value = re.match(r"^([\d+*-]+)=(\d+)", line).groups()
                if task == "sub":  # a borrow adds 10 to the column
                    assert int(value) in (eval(expr), eval(expr) + 10)
                else:
                    assert eval(expr) == int(value)


def test_split_is_disjoint_and_deterministic():
    world = World(WorldConfig(tasks=["add"], min_level=2, max_level=2, eval_size=100))
    held_out = world.eval_prompts()
    train = world.train_prompts(3000)
    assert len({p.id for p in held_out}) == 100
    assert all(is_held_out(p.text) for p in held_out)
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert [p.id for p in world.eval_prompts()] == [p.id for p in held_out]


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown task 'div'"):
        World(WorldConfig(tasks=["div"]))


@pytest.mark.parametrize("response, answer, score, reason", [
    ("7+5+0=12 c1\nA: 12", "12", 1.0, "ok"),
    ("A: 13", "12", 0.0, "wrong"),
    ("no answer here", "12", 0.0, "no_answer"),
    ("A: 12\nA: 13", "12", 0.0, "multiple_answers"),
    ("A: 12\nA: 12", "12", 1.0, "ok"),
    ("The A: 12 inline", "12", 0.0, "no_answer"),
])
def test_verifier(response, answer, score, reason):
    result = check_answer(response, answer)
    assert result.score == score and result.info["reason"] == reason


def test_world_reward_is_registered():
    world = World(WorldConfig(tasks=["add"], eval_size=3))
    prompts = world.eval_prompts()
    responses = [p.meta["trace"] for p in prompts]
    assert [r.score for r in get_reward("world")(prompts, responses)] == [1.0, 1.0, 1.0]


def test_char_tokenizer_round_trip_and_chat_template():
    tok = build_char_tokenizer()
    text = "347+285\n7+5+0=12 c1\nA: 632"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "1+2"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|user|>1+2<|end|><|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id


def test_saved_tokenizer_loads_back_identically_with_auto_tokenizer(tiny_model_dir):
    # AutoTokenizer picks the class from the model type (Qwen2Tokenizer) and rebuilds the
    # pre-tokenizer; the saved tokenizer must still split text exactly as the built one does.
    from transformers import AutoTokenizer

    built, loaded = build_char_tokenizer(), AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in ["347+285\n7+5+0=12 c1\nA: 632", "  two  spaces\n\nand é", "<|user|>1+2<|end|>"]:
        assert loaded(text, add_special_tokens=False).input_ids == built(text, add_special_tokens=False).input_ids
        assert loaded.decode(loaded(text, add_special_tokens=False).input_ids) == text
    assert len(loaded) == len(built)
    assert (loaded.pad_token_id, loaded.eos_token_id) == (built.pad_token_id, built.eos_token_id)


def test_check_lines_by_hand():
    from longrl.data.worlds import check_line

    assert check_line("7+5+0=12 c1") == "check 7+5+0=12 ok"
    assert check_line("2-5-0=7 b1") == "check 2-5-0=7 ok"
    assert check_line("7*6+0=42 c4") == "check 7*6+0=42 ok"
    assert check_line("12+30=42") == "check 12+30=42 ok"


@pytest.mark.parametrize("task", TASKS)
def test_verbose_traces_are_true_verified_and_vary_in_length(task):
    from longrl.data.worlds import verbose_lines

    world = World(WorldConfig(tasks=[task], min_level=2, max_level=3, trace_style="verbose", eval_size=60))
    prompts = world.eval_prompts()
    assert [r.score for r in get_reward("world")(prompts, [p.meta["trace"] for p in prompts])] == [1.0] * 60
    for p in prompts:
        for line in p.meta["trace"].splitlines()[:-1]:
            if line.startswith("verify "):
                expr, value = line.split()[1].split("=")
                assert eval(expr) == int(value), line
                assert line.endswith(" ok")
    # one problem, different draws: the number of re-checks (so the length) varies
    text, answer, lines = make_problem(task, 3, random.Random(0))
    lengths = {len(format_trace(verbose_lines(text, lines, answer, random.Random(s)), answer)) for s in range(30)}
    assert len(lengths) >= 3
    # the concise trace is the verbose one with its check and verify lines removed
    concise = World(WorldConfig(tasks=[task], min_level=2, max_level=3, eval_size=60)).eval_prompts()
    assert [p.id for p in concise] == [p.id for p in prompts]
    for c, v in zip(concise, prompts):
        lines = v.meta["trace"].splitlines()
        kept = [x for x in lines if not x.startswith(("check ", "verify "))]
        assert kept == c.meta["trace"].splitlines()
        for before, line in itertools.pairwise(lines):  # a check restates the step just before it
            if line.startswith("check "):
                assert line == f"check {before.split()[0]} ok"




def test_rep_trace_by_hand():
    # 1095 + 7*3: 7 added three times to 1095, the additions left counting down to 0
    text, answer, lines = make_problem("rep", 3, _fixed(1095, 7))
    assert (text, answer) == ("1095+7*3", 1116)
    assert lines == ["1095+7=1102 r2", "1102+7=1109 r1", "1109+7=1116 r0"]
    assert format_trace(lines, answer) == "1095+7=1102 r2\n1102+7=1109 r1\n1109+7=1116 r0\nA: 1116"
    # level 12: the count is padded to len(str(12 - 1)) = 2 digits, so every line has one length;
    # line 10 starts from 1052 + 9*9 = 1133
    text, answer, lines = make_problem("rep", 12, _fixed(1052, 9))
    assert (text, answer) == ("1052+9*12", 1160)
    assert lines[0] == "1052+9=1061 r11" and lines[9] == "1133+9=1142 r02" and lines[-1] == "1151+9=1160 r00"
    assert len(lines) == 12 and {len(line) for line in lines} == {15}


def test_rep_traces_run_past_1000_tokens_at_the_long_world_levels():
    # configs/long_rl.toml trains levels 64-72. A line is 4 + 1 + 1 + 1 + 4 + 2 + 2 = 15
    # characters plus a newline, so the shortest trace (level 64, start 1000, a = 2, answer
    # 1000 + 2*64 = 1128) is 64*16 + len("A: 1128") = 1031 characters, one token each with the
    # character tokenizer; the longest (level 72) is 72*16 + 7 = 1159
    tok = build_char_tokenizer()
    text, answer, lines = make_problem("rep", 64, _fixed(1000, 2))
    trace = format_trace(lines, answer)
    assert answer == 1128 and len(trace) == 64 * 16 + 7 == 1031
    assert len(tok(trace, add_special_tokens=False).input_ids) == 1031
    world = World(WorldConfig(tasks=["rep"], min_level=64, max_level=72, eval_size=50))
    prompts = world.eval_prompts() + world.train_prompts(50)
    assert {len(p.meta["trace"]) for p in prompts} <= {n * 16 + 7 for n in range(64, 73)}
    assert len({len(p.meta["trace"]) for p in prompts}) > 5
    assert [r.score for r in get_reward("world")(prompts, [p.meta["trace"] for p in prompts])] == [1.0] * 100
    assert not {p.text for p in world.train_prompts(2000)} & {p.text for p in world.eval_prompts()}


def test_count_trace_by_hand():
    # 1095 + 1*3: counting up from 1095 three times, the ones left (3 digits) counting down to 0
    text, answer, lines = make_problem("count", 3, _fixed(1095))
    assert (text, answer) == ("1095+1*3", 1098)
    assert format_trace(lines, answer) == "1095 r003\n1096 r002\n1097 r001\n1098 r000\nA: 1098"
    with pytest.raises(ConfigError, match="count runs to level 999"):
        make_problem("count", 1000, _fixed(1000))


def test_count_traces_run_past_1000_tokens_at_the_long_world_levels():
    # configs/long_rl.toml trains levels 100-115: n + 1 lines of 9 characters and a newline, then
    # the answer line, so (n + 1)*10 + len("A: 1234") = 1,017-1,167 characters, one token each
    tok = build_char_tokenizer()
    text, answer, lines = make_problem("count", 100, _fixed(1999))
    trace = format_trace(lines, answer)
    assert answer == 2099 and len(trace) == 101 * 10 + 7 == 1017
    assert len(tok(trace, add_special_tokens=False).input_ids) == 1017
    world = World(WorldConfig(tasks=["count"], min_level=100, max_level=115, eval_size=50))
    prompts = world.eval_prompts() + world.train_prompts(50)
    assert {len(p.meta["trace"]) for p in prompts} <= {(n + 1) * 10 + 7 for n in range(100, 116)}
    assert len({len(p.meta["trace"]) for p in prompts}) > 5
    assert [r.score for r in get_reward("world")(prompts, [p.meta["trace"] for p in prompts])] == [1.0] * 100
    assert not {p.text for p in world.train_prompts(2000)} & {p.text for p in world.eval_prompts()}
