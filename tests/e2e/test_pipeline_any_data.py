"""The whole chain from the CLI on a user's own data: no tiny world anywhere.

Arithmetic word problems written here as JSONL, scored by a user reward file, run through
`sft` -> `train` -> `eval` -> `shortest-rs` -> `dpo` -> `report --model`, each step's output
checked. Half of the SFT answers reason first (`3+4=7` then `A: 7`), half answer at once, so
correct samples differ in length and long2short has pairs to work with.
"""

import json
import random
import textwrap

import pytest

from longrl.cli import main

TEMPLATES = ["Ann has {a} pens and gets {b} more. How many pens?",
             "A box holds {a} eggs and {b} more are added. How many eggs?",
             "Tom walks {a} km, then {b} km. How far in all?"]

REWARD = textwrap.dedent("""
    import re

    def answer_line(prompt, response):
        found = re.findall(r"^A: *(-?\\d+) *$", response, flags=re.MULTILINE)
        return float(len(found) == 1 and found[0] == prompt.answer)
""")


def _problems(rng, n, held_out):
    out = []
    while len(out) < n:
        a, b, t = rng.randint(1, 9), rng.randint(1, 9), rng.randrange(len(TEMPLATES))
        if ((a * 10 + b) % 5 == 0) == held_out:  # a disjoint held-out split
            out.append((TEMPLATES[t].format(a=a, b=b), a, b))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    rng = random.Random(0)
    sft_rows = [{"prompt": q, "response": (f"{a}+{b}={a + b}\n" if i % 2 else "") + f"A: {a + b}"}
                for i, (q, a, b) in enumerate(_problems(rng, 400, held_out=False))]
    train = [{"id": f"t{i}", "text": q, "answer": str(a + b)} for i, (q, a, b) in enumerate(_problems(rng, 200, False))]
    held = [{"id": f"e{i}", "text": q, "answer": str(a + b)} for i, (q, a, b) in enumerate(_problems(rng, 24, True))]
    for name, rows in (("sft", sft_rows), ("train", train), ("eval", held)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "my_reward.py").write_text(REWARD)
    shared = textwrap.dedent(f"""
        [reward]
        names = ["{root}/my_reward.py:answer_line"]

        [eval]
        num_prompts = 24
        n_samples = 2
        max_new_tokens = 24
    """)
    (root / "sft.toml").write_text(textwrap.dedent(f"""
        name = "sft"
        out_dir = "{root}/runs"
        steps = 150
        lr = 3e-3
        rows_per_step = 8
        row_tokens = 256

        [tiny]
        hidden_size = 128
        num_layers = 2
        intermediate_size = 512
        max_positions = 256

        [data]
        train = ["jsonl:{root}/sft.jsonl"]
        eval = ["jsonl:{root}/eval.jsonl"]
    """) + shared)
    (root / "run.toml").write_text(textwrap.dedent(f"""
        out_dir = "{root}/runs"
        iterations = 3
        checkpoint_every = 0

        [model]
        path = "{root}/runs/sft/final"

        [data]
        train = ["jsonl:{root}/train.jsonl"]
        eval = ["jsonl:{root}/eval.jsonl"]

        [rollout]
        prompts_per_iter = 8
        samples_per_prompt = 4
        max_new_tokens = 24

        [train]
        lr = 5e-5
        mini_batch_size = 32
        row_tokens = 256
    """) + shared)
    return root


def _json(path):
    return json.loads(path.read_text())


def test_the_chain_runs_on_user_data_with_a_user_reward(workspace, capsys):
    runs = workspace / "runs"
    assert main(["sft", str(workspace / "sft.toml"), "--no-progress"]) == 0
    sft = _json(runs / "sft" / "eval.json")
    assert sft["eval/prompts"] == 24 and sft["eval/pass@1"] >= 0.25, sft  # it learned the format and the sums

    assert main(["train", str(workspace / "run.toml"), "name=rl", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (runs / "rl" / "metrics.jsonl").read_text().splitlines()]
    rewarded = [r for r in rows if "reward/mean" in r]
    assert len(rewarded) == 3 and all(r["reward/errors"] == 0 for r in rewarded)
    assert rows[0]["eval/prompts"] == 24 and "eval/pass@1" in rows[-1]
    sample = json.loads((runs / "rl" / "samples" / "iter_000001.jsonl").read_text().splitlines()[0])
    assert sample["prompt_id"].startswith("t") and f"{workspace}/my_reward.py:answer_line" in sample["reward_info"]

    capsys.readouterr()
    assert main(["eval", str(workspace / "run.toml"), "--model", str(runs / "rl" / "final")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval/prompts"] == 24 and 0.0 <= evaluated["eval/pass@1"] <= 1.0

    l2s = [f"model.path={runs / 'sft' / 'final'}", f"data.train=['jsonl:{workspace}/train.jsonl']",
           f"data.eval=['jsonl:{workspace}/eval.jsonl']", f"reward.names=['{workspace}/my_reward.py:answer_line']",
           f"out_dir={runs}", "sample.num_prompts=32", "sample.n=6", "sample.max_new_tokens=24",
           "eval.num_prompts=24", "eval.n_samples=2", "eval.max_new_tokens=24", "--no-progress"]
    assert main(["shortest-rs", "name=rs", "steps=10", "warmup_steps=2", "rows_per_step=4", *l2s]) == 0
    kept = [json.loads(line) for line in (runs / "rs" / "shortest.jsonl").read_text().splitlines()]
    groups = [json.loads(line) for line in (runs / "rs" / "samples.jsonl").read_text().splitlines()]
    assert len(groups) == 32 and 0 < len(kept) <= 32
    shortest = [min(r["tokens"] for r in g["responses"] if r["correct"])  # per group, in order
                for g in groups if any(r["correct"] for r in g["responses"])]
    assert [k["tokens"] for k in kept] == shortest
    assert _json(runs / "rs" / "eval.json")["eval/prompts"] == 24

    assert main(["dpo", "name=dpo", "steps=4", "warmup_steps=1", "pairs_per_step=8", *l2s]) == 0
    dpo = _json(runs / "dpo" / "eval.json")
    assert dpo["dpo/pairs"] >= 1 and dpo["eval/prompts"] == 24

    out = workspace / "report"
    assert main(["report", str(workspace / "run.toml"), "--model", f"sft={runs / 'sft' / 'final'}",
                 "--model", f"rl={runs / 'rl' / 'final'}", "--out", str(out)]) == 0
    table = _json(out / "token_efficiency.json")
    assert [row["name"] for row in table] == ["sft", "rl"]
