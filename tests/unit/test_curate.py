"""Prompt-set curation (SPEC §1): each step on crafted prompts, then `longrl curate` on the tiny world."""

import json
from collections import defaultdict

import pytest

from longrl.config import ConfigError, CurateConfig, load_config
from longrl.data.curate import (
    CurateError,
    Judge,
    RewardRouter,
    balance_by_tag,
    decontaminate,
    difficulty_bucket,
    easy_to_hack,
    exact_dedupe,
    exclude_guessable,
    filter_difficulty,
    guess_text,
    near_dedupe,
    pass_rate,
    prompt_row,
    shingles,
    tag_report,
)
from longrl.data.sources import load_source
from longrl.types import Completion, Prompt


def P(id, text, answer="1", **kw):
    return Prompt(id=id, text=text, answer=answer, **kw)


# ----------------------------------------------------------------------------------------------
# Text rules
# ----------------------------------------------------------------------------------------------


def test_exact_dedupe_keeps_the_first_and_names_it():
    prompts = [P("a", "What is 2+2?", "4"), P("b", "What  is 2+2? \n", "5"), P("c", "what is 2+2?", "4"),
               P("d", "What is 2+2?", "4")]
    result = exact_dedupe(prompts)
    assert [p.id for p in result.kept] == ["a", "c"]  # case is kept: `what` differs from `What`
    assert [(d.id, d.reason) for d in result.dropped] == [("b", "exact_duplicate"), ("d", "exact_duplicate")]
    assert result.dropped[0].detail == "same text as a (answers differ: '4' kept, '5' dropped)"
    assert result.dropped[1].detail == "same text as a"


def test_shingles_by_hand():
    assert shingles("What is 2+2?", "word", 3) == {"what is 2", "is 2 +", "2 + 2", "+ 2 ?"}
    assert shingles("Ab  c", "char", 3) == {"ab ", "b c"}
    assert shingles("hi", "word", 3) == {"hi"}  # shorter than a shingle: the whole text


LEGS = ("Your task is to count how many legs there are in total when given a list of animals. "
        "Now, how many legs are there in total if you have {} dogs, 3 cats and 2 spiders in the garden?")


def test_near_dedupe_drops_rewordings_but_not_new_numbers():
    prompts = [P("a", LEGS.format(5)), P("b", LEGS.format(5).replace("garden?", "garden ?!")),
               P("c", LEGS.format(6)), P("d", "Compute the sum of the first ten primes.")]
    result = near_dedupe(prompts, threshold=0.8)
    assert [p.id for p in result.kept] == ["a", "c", "d"]
    assert [d.id for d in result.dropped] == ["b"] and "with a" in result.dropped[0].detail
    assert result.stats["kept_similar_with_other_numbers"] == 1.0  # c: similar to a, other numbers
    loose = near_dedupe(prompts, threshold=0.8, same_numbers=False)
    assert [p.id for p in loose.kept] == ["a", "d"]


ZOO = ("Count the legs of these animals, counting every animal in the list that follows, one by one, "
       "and give the total number of legs: {}.")


def test_boilerplate_is_left_out_of_similarity():
    animals = ["cat", "spider", "crab", "bird", "ant", "dog"]
    prompts = [P(a, ZOO.format(a)) for a in animals] + [P("again", ZOO.format("spider").upper())]
    result = near_dedupe(prompts, threshold=0.8, common_share=0.1)
    assert [p.id for p in result.kept] == animals and [d.id for d in result.dropped] == ["again"]
    assert result.stats["common_shingles"] == len(shingles(ZOO.format("x"))) - 2  # all but the 2 with the slot
    without = near_dedupe(prompts, threshold=0.8, common_share=1.0)  # the template dominates
    assert len(without.kept) < len(animals)


def test_template_ngrams_of_an_eval_set_are_not_contamination():
    evals = [P(f"e{i}", ZOO.format(a)) for i, a in enumerate(["cat", "spider", "crab", "bird", "ant"])]
    train = [P("new", ZOO.format("horse")), P("leak", ZOO.format("crab"))]
    result = decontaminate(train, {"zoo": evals}, n=8, common_share=0.1)
    assert [p.id for p in result.kept] == ["new"] and [d.id for d in result.dropped] == ["leak"]
    assert "(e2)" in result.dropped[0].detail
    assert decontaminate(train, {"zoo": evals}, n=8, common_share=1.0).kept == []  # template matches


def test_decontaminate_at_the_ngram_boundary():
    eval_text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"  # 15 words
    words = eval_text.split()
    shares_13 = P("t13", "intro " + " ".join(words[1:14]) + " outro")  # 13 consecutive eval words
    shares_12 = P("t12", "intro " + " ".join(words[1:13]) + " outro")  # only 12
    short = P("s", "What is 2 + 3?")  # 6 tokens: contaminated only if all of it appears
    short_other = P("s2", "What is 3 + 2?")
    result = decontaminate([shares_13, shares_12, short, short_other],
                           {"bench": [P("e1", eval_text)], "quiz": [P("e2", "Q7. what is 2+3? explain")]}, n=13)
    assert [p.id for p in result.kept] == ["t12", "s2"]
    assert result.dropped[0].detail == f"13-gram {' '.join(words[1:14])!r} also in eval set 'bench' (e1)"
    assert result.dropped[1].detail == "6-gram 'what is 2 + 3 ?' also in eval set 'quiz' (e2)"
    with pytest.raises(CurateError, match="n-gram size is 0"):
        decontaminate([short], {}, n=0)


@pytest.mark.parametrize("text, answer, reason", [
    ("Which planet is largest?\n(A) Mars (B) Jupiter (C) Venus", "B", "multiple_choice"),
    ("Pick one:\nA. 3\nB. 4\nC. 5", "4", "multiple_choice"),
    ("Which of the following numbers is prime: 4, 6, 7?", "7", "multiple_choice"),
    ("Find the odd one out.", "(C)", "multiple_choice"),
    ("Is 91 a prime number?", "No", "true_false"),
    ("Is the sum even?", "$\\text{Yes}$", "true_false"),
    ("True or false: every square is a rectangle.", "1", "true_false"),
    ("Prove that sqrt(2) is irrational.", "", "proof"),
    ("Show that n^3 - n is divisible by 6 for every integer n.", "6", "proof"),
])
def test_guessable_rules(text, answer, reason):
    result = exclude_guessable([P("q", text, answer)])
    assert result.kept == [] and result.dropped[0].reason == reason


@pytest.mark.parametrize("text, answer", [
    ("(a) Find x if 2x = 4. (b) Find y if 3y = 9.", "2, 3"),  # lower-case parts, not options
    ("How many ways can 5 books be arranged?", "120"),
    ("Improve the bound: find the least n with 2^n > 1000.", "10"),  # `improve` is not `prove`
    ("What is the value of the constant B if B = 2A and A = 6?", "12"),
    ("Name the variable that is largest.", "B12"),
])
def test_guessable_rules_leave_ordinary_questions(text, answer):
    assert [p.id for p in exclude_guessable([P("q", text, answer)]).kept] == ["q"]


def test_unknown_guessable_rule():
    with pytest.raises(CurateError, match="unknown guessable rule"):
        exclude_guessable([], ["essay"])


# ----------------------------------------------------------------------------------------------
# Reward routing and the model-based steps, with a scripted engine
# ----------------------------------------------------------------------------------------------


def test_reward_router_order():
    route = RewardRouter([("reasoning_gym", "reasoning_gym"), ("math", "math"), ("world", "world")])
    assert route(P("1", "q", source="reasoning_gym:leg_counting")) == "reasoning_gym"  # source family
    assert route(P("2", "q", source="file.jsonl", tags=["x", "math"])) == "math"  # a tag
    assert route(P("3", "q", source="world", meta={"reward": "code"})) == "code"  # the loader's choice
    with pytest.raises(CurateError, match=r"prompt 'u' \(source 'mystery'.*judge.rules"):
        route(P("u", "q", source="mystery"))
    assert RewardRouter([], default="math")(P("u", "q", source="mystery")) == "math"


class ScriptedEngine:
    """Answers each question with its scripted responses in turn; records what it was asked."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script
        self.asked, self.params, self.calls = [], [], defaultdict(int)

    def generate(self, requests, params):
        self.params.append(params)
        out = []
        for r in requests:
            question = self.tokenizer.decode(r.prompt_ids, skip_special_tokens=True)
            self.asked.append((question, self.tokenizer.decode(r.prefix_ids)))
            key = next(k for k in self.script if k in question)
            response = self.script[key][self.calls[key] % len(self.script[key])]
            self.calls[key] += 1
            ids = self.tokenizer.encode(response, add_special_tokens=False)
            out.append(Completion(ids, [0.0] * len(ids), "stop"))
        return out


@pytest.fixture(scope="module")
def char_tokenizer():
    from longrl.tiny import build_char_tokenizer

    return build_char_tokenizer()


WORLD = Judge(RewardRouter([("world", "world")]))


def test_pass_rate_gives_exact_difficulties(char_tokenizer):
    prompts = [P("a", "11+11", "22", source="world"), P("b", "12+12", "24", source="world"),
               P("c", "13+13", "26", source="world")]
    engine = ScriptedEngine(char_tokenizer, {
        "11+11": ["A: 22"] * 7 + ["A: 21"] * 3,  # 7 of 10 correct
        "12+12": ["A: 20", "no answer"],  # never
        "13+13": ["1+1=2\nA: 26"]})  # always
    result = pass_rate(prompts, engine, char_tokenizer, WORLD, n=10, temperature=1.0, max_new_tokens=32, chunk=2)
    assert [p.difficulty for p in result.kept] == [(10 - 7) / 10, 1.0, 0.0]
    assert result.kept[0].meta["pass_rate"] == {"correct": 7, "n": 10}
    assert prompts[0].difficulty is None and prompts[0].meta == {}  # the input is not mutated
    assert engine.params[0].temperature == 1.0 and engine.params[0].max_new_tokens == 32
    assert [q for q, _ in engine.asked].count("11+11") == 10 and result.stats["reward_errors"] == 0
    # the world reward's reasons: 7 + 10 right, 3 + 5 wrong numbers, 5 without an answer line
    assert result.stats["reward_reasons"] == {"world:ok": 17, "world:wrong": 8, "world:no_answer": 5}
    assert [difficulty_bucket(p.difficulty) for p in result.kept] == ["medium", "hard", "easy"]

    kept = filter_difficulty(result.kept, min_difficulty=0.0, max_difficulty=1.0, drop_solved=True)
    assert [p.id for p in kept.kept] == ["a", "b"] and kept.dropped[0].reason == "solved"
    narrow = filter_difficulty(result.kept, min_difficulty=0.2, max_difficulty=0.9, drop_solved=False)
    assert [p.id for p in narrow.kept] == ["a"] and [d.reason for d in narrow.dropped] == ["too_hard", "too_easy"]


def test_difficulty_buckets_at_the_edges():
    assert [difficulty_bucket(d, (0.3, 0.7)) for d in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0, None)] == \
        ["easy", "easy", "medium", "medium", "hard", "hard", "unlabelled"]


def test_easy_to_hack_forces_an_immediate_answer(char_tokenizer):
    system = [{"role": "system", "content": "Think first."}, {"role": "user", "content": "31+31"}]
    prompts = [P("a", "21+21", "42", source="world"), P("b", "22+22", "44", source="world"),
               P("c", "31+31", "62", source="world", messages=system)]
    engine = ScriptedEngine(char_tokenizer, {
        "21+21": ["40", "41", "42", "43", "44", "45", "46", "47"],  # the 3rd guess is right
        "22+22": ["40"], "31+31": ["60"]})
    result = easy_to_hack(prompts, engine, char_tokenizer, WORLD, guesses=8, template="{question} =?",
                          formats={"world": "A: {guess}"}, max_new_tokens=6)
    assert [p.id for p in result.kept] == ["b", "c"]
    assert result.dropped[0].detail == "1/8 guesses correct, e.g. 'A: 42'"
    # the forced start ends the context the guess is sampled from
    assert engine.asked[0] == ("21+21 =?A: ", "") and engine.params[0].max_new_tokens == 6
    assert ("Think first.31+31 =?A: ", "") in engine.asked  # the system message stays, the user turn is wrapped
    assert len(engine.asked) == 3 * 8


@pytest.mark.parametrize("answer_format, completion, scored", [
    ("<answer>{guess}</answer>", "42</answer> because 6*7", "<answer>42</answer> because 6*7"),
    ("<answer>{guess}</answer>", " 42\nsince...", "<answer>42</answer>"),  # the first line, closed
    ("\\boxed{{guess}}", "\\frac{1}{2}} is it", "\\boxed{\\frac{1}{2}} is it"),  # closed by the model
    ("\\boxed{{guess}}", "\\frac{1040}{5}", "\\boxed{\\frac{1040}{5}}"),  # a brace inside is not the close
    ("A: {guess}", "632", "A: 632"),
])
def test_guess_text(answer_format, completion, scored):
    assert guess_text(answer_format, completion) == scored


def test_reward_errors_are_counted_not_raised(char_tokenizer):
    judge = Judge(RewardRouter([("world", "world")]))
    prompt = P("a", "11+11", None, source="world")  # the world reward cannot read a missing answer
    result = pass_rate([prompt], ScriptedEngine(char_tokenizer, {"11": ["A: 22"]}), char_tokenizer, judge, n=2)
    assert result.kept[0].difficulty == 1.0 and result.stats["reward_errors"] == 2
    assert "a: TypeError" in result.stats["first_reward_error"]
    assert result.stats["reward_reasons"] == {"world:error": 2}


# ----------------------------------------------------------------------------------------------
# Balance, report, output rows
# ----------------------------------------------------------------------------------------------


def tagged(n_a, n_b, n_none=0):
    return ([P(f"a{i}", "q", tags=["task:a", "x"]) for i in range(n_a)] +
            [P(f"b{i}", "q", tags=["task:b"]) for i in range(n_b)] + [P(f"n{i}", "q", tags=["x"]) for i in range(n_none)])


def test_balance_cap_and_shares():
    capped = balance_by_tag(tagged(5, 2, 3), max_per_tag=2, prefix="task:")
    ids = [p.id for p in capped.kept]
    assert sum(i.startswith("a") for i in ids) == 2 and ids[-5:] == ["b0", "b1", "n0", "n1", "n2"]
    assert capped.dropped[0].detail == "tag 'task:a': kept 2 of 5"
    assert ids == sorted(ids, key=[p.id for p in tagged(5, 2, 3)].index)  # order preserved
    # shares a:b = 2:1 over 10 a and 3 b: the largest set meeting them is 6 a + 3 b
    shared = balance_by_tag(tagged(10, 3), target_shares={"task:a": 2, "task:b": 1}, prefix="task:")
    counts = {t: sum(p.tags[0] == t for p in shared.kept) for t in ("task:a", "task:b")}
    assert counts == {"task:a": 6, "task:b": 3}
    again = balance_by_tag(tagged(10, 3), target_shares={"task:a": 2, "task:b": 1}, prefix="task:")
    assert [p.id for p in again.kept] == [p.id for p in shared.kept]  # seeded


def test_tag_report_counts():
    prompts = [P("1", "q", tags=["math", "algebra"], difficulty=0.1), P("2", "q", tags=["math"], difficulty=0.5),
               P("3", "q", tags=["gym"], difficulty=1.0), P("4", "q")]
    report = tag_report(prompts)
    assert report["total"] == 4 and report["buckets"] == {"easy": 1, "medium": 1, "hard": 1, "unlabelled": 1}
    assert report["tags"]["math"] == {"count": 2, "share": 0.5, "buckets": {"easy": 1, "medium": 1}}
    assert report["tags"]["(untagged)"]["count"] == 1
    assert report["mean_difficulty"] == round((0.1 + 0.5 + 1.0) / 3, 4)


def test_curated_rows_load_back(tmp_path):
    prompts = [P("g1", "Count.", "3", tags=["reasoning_gym", "x"], difficulty=0.4, source="reasoning_gym",
                 messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "Count."}],
                 meta={"reasoning_gym": {"entry": {"answer": "3"}}, "pass_rate": {"correct": 6, "n": 10},
                       "solution": "kept apart"})]
    path = tmp_path / "curated.jsonl"
    path.write_text("".join(json.dumps(prompt_row(p)) + "\n" for p in prompts))
    (back,) = load_source(f"jsonl:{path}")
    assert (back.id, back.text, back.answer, back.tags, back.difficulty, back.source, back.messages) == \
        ("g1", "Count.", "3", ["reasoning_gym", "x"], 0.4, "reasoning_gym", prompts[0].messages)
    assert back.meta["reasoning_gym"] == {"entry": {"answer": "3"}} and back.meta["pass_rate"]["correct"] == 6
    assert back.meta["meta"] == {"solution": "kept apart"}  # a column name the loader would read as a field


# ----------------------------------------------------------------------------------------------
# Config and the command
# ----------------------------------------------------------------------------------------------


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="unknown step 'passrate'; did you mean 'pass_rate'"):
        load_config(CurateConfig, None, ["steps=['passrate']"])
    with pytest.raises(ConfigError, match="hack.template must contain"):
        load_config(CurateConfig, None, ["hack.template='Answer now'"])
    with pytest.raises(ConfigError, match="balance.target_shares: entry 'math' must look like KEY=VALUE"):
        load_config(CurateConfig, None, ["balance.target_shares=['math']"])
    with pytest.raises(ConfigError, match=r"'hack_template': unknown key"):
        load_config(CurateConfig, None, ["hack_template='{question}'"])  # the flat names of old
    with pytest.raises(ConfigError, match=r"'reward.math.timeout': unknown option of reward 'math'"):
        load_config(CurateConfig, None, ["reward.math.timeout=5"])


def test_curate_command_on_the_tiny_world(tmp_path, tiny_model_dir, capsys):
    from longrl.cli import main
    from longrl.config import WorldConfig
    from longrl.data.worlds import World

    world = World(WorldConfig())
    train, held_out = world.train_prompts(30), world.eval_prompts()[:5]
    extra = tmp_path / "extra.jsonl"  # a duplicate, a leaked eval problem, a guessable one
    extra.write_text("\n".join(json.dumps(r) for r in [
        {"id": "dup", "text": train[0].text, "answer": train[0].answer, "source": "world"},
        {"id": "leak", "text": held_out[0].text, "answer": held_out[0].answer, "source": "world"},
        {"id": "yn", "text": "Is 12+30 even?", "answer": "yes", "source": "world"}]) + "\n")
    code = main(["curate", "--no-progress", f"out_dir={tmp_path}", "name=c", f"model.path={tiny_model_dir}",
                 f"data.train=['world?size=30', 'jsonl:{extra}']", "data.eval=['world?split=eval']",
                 "pass_rate.n_samples=2", "hack.guesses=2", "hack.template='{question}'", "rollout.max_new_tokens=12",
                 "hack.max_new_tokens=4", "balance.tag_prefix=task:", "balance.max_per_tag=10", "threads=1"])
    assert code == 0
    out = tmp_path / "c"
    report = json.loads((out / "report.json").read_text())
    reasons = {r: e["count"] for r, e in report["dropped"]["by_reason"].items()}
    assert report["loaded"] == 33 and reasons["exact_duplicate"] >= 1 and reasons["contaminated"] == 1
    assert reasons["true_false"] == 1 and report["dropped"]["by_reason"]["contaminated"]["examples"][0]["id"] == "leak"
    assert report["loaded"] == report["curated"] + report["dropped"]["total"]
    assert [s["step"] for s in report["steps"]] == list(CurateConfig().steps)
    curated = load_source(f"jsonl:{out / 'curated.jsonl'}")
    assert len(curated) == report["curated"] and all(p.difficulty is not None for p in curated)
    assert all(p.meta["pass_rate"]["n"] == 2 for p in curated)
    assert sum(report["output"]["buckets"].values()) == report["curated"]
    assert len((out / "dropped.jsonl").read_text().splitlines()) == report["dropped"]["total"]
    assert "## Dropped, by reason" in (out / "report.md").read_text()
    assert "prompts loaded" in capsys.readouterr().out


def test_curate_command_without_a_model(tmp_path, capsys):
    from longrl.cli import main

    assert main(["curate", "--no-progress", f"out_dir={tmp_path}", "data.train=['world?size=5']"]) == 2
    assert "sample from a model: set model.path" in capsys.readouterr().err


def test_an_id_shared_by_two_different_prompts_is_an_error(tmp_path, capsys):
    from longrl.cli import main

    for name, text in (("a", "1+1"), ("b", "2+2")):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": "q1", "text": text, "answer": "2"}) + "\n")
    argv = ["curate", "--no-progress", f"out_dir={tmp_path}", "steps=['exact_dedupe']",
            f"data.train=['jsonl:{tmp_path / 'a.jsonl'}', 'jsonl:{tmp_path / 'b.jsonl'}']"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "prompt id 'q1' is used by two prompts" in err and "b.jsonl" in err


@pytest.mark.parametrize("name", ["curate_world", "curate_gym", "curate_champ"])
def test_shipped_configs_load(name):
    from pathlib import Path

    config = load_config(CurateConfig, Path(__file__).parents[2] / "configs" / f"{name}.toml")
    assert config.data.train and config.pass_rate.n_samples == 10 and config.hack.guesses == 8
