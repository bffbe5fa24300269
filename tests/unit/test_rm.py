"""The classic reward model: batched scores equal plain forward passes, training learns a
separable labelling, and the `rm` reward scores from a run's config."""

import json
import math

import pytest
import torch

from longrl.cli import main
from longrl.config import ConfigError, RewardConfig
from longrl.rewards.registry import build_rewards
from longrl.rewards.rm import load_rm, rm_input_ids, rm_logits, rm_reward
from longrl.types import Prompt


def test_batched_scores_equal_one_plain_forward_per_sequence(tiny_model_dir):
    model, tokenizer = load_rm(tiny_model_dir)
    model.eval()
    texts = [("1+1", "2", "A: 2"), ("12+30", "42", "2+0=2 c0\n1+3=4 c0\nA: 42"), ("5+5", None, "A: 9")]
    ids = [rm_input_ids(tokenizer, q, ref, r, 4096) for q, ref, r in texts]
    assert len({len(x) for x in ids}) == 3  # different lengths: the batch is padded
    with torch.no_grad():
        batched = rm_logits(model, ids, tokenizer.pad_token_id)
        for i, seq in enumerate(ids):  # the model's own forward, one sequence, no padding
            plain = model(input_ids=torch.tensor([seq])).logits[0, -1].item()
            assert batched[i].item() == pytest.approx(plain, abs=1e-5)


def test_long_inputs_keep_their_end(tiny_model_dir):
    _, tokenizer = load_rm(tiny_model_dir)
    full = rm_input_ids(tokenizer, "1+1", "2", "x" * 50 + "A: 2", 4096)
    cut = rm_input_ids(tokenizer, "1+1", "2", "x" * 50 + "A: 2", 20)
    assert cut == full[-20:]


def _rows(n, seed):
    """Labelled rows a tiny model can separate: label 1 for a right answer written `A: <sum>`,
    0 for a wrong one written `B: <sum + 1>`."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        good = rng.random() < 0.5
        rows.append({"prompt": f"{a}+{b}", "reference": str(a + b),
                     "response": f"A: {a + b}" if good else f"B: {a + b + 1}", "label": int(good)})
    return rows


def test_rm_train_learns_a_separable_labelling_and_scores_as_a_reward(tmp_path, tiny_model_dir):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(160, 0)))
    assert main(["rm", "train", f"data={data}", f"model.path={tiny_model_dir}", f"out_dir={tmp_path}",
                 "epochs=4", "batch_size=16", "lr=1e-3", "--no-progress"]) == 0
    log = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["rm/accuracy"] >= 0.9 and log[-1]["rm/held_out_rows"] == 32
    model_dir = tmp_path / "rm" / "final"
    rewards = build_rewards(RewardConfig(names=["rm"], options={"rm": {"model": str(model_dir), "output": "binary"}}))
    (reward, _), = rewards.values()
    prompts = [Prompt("a", "3+4", answer="7"), Prompt("b", "3+4", answer="7")]
    results = reward(prompts, ["A: 7", "B: 8"])
    assert [r.score for r in results] == [1.0, 0.0]
    assert 0.0 <= results[0].info["rm_probability"] <= 1.0
    logit = results[0].info["rm_logit"]
    assert results[0].info["rm_probability"] == pytest.approx(1 / (1 + math.exp(-logit)))


def test_bad_rows_and_missing_model_are_clear_errors(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1", "response": "A: 2", "label": 1}\n{"prompt": "1+1", "response": "A: 3", "label": "no"}\n')
    assert main(["rm", "train", f"data={data}", f"model.path={tiny_model_dir}", f"out_dir={tmp_path}",
                 "--no-progress"]) == 2
    assert "bad.jsonl, line 2: field 'label' must be 0 or 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"\[reward.rm\] model = DIR"):
        rm_reward()


def test_rm_label_writes_verifier_labelled_rows_that_rm_train_reads(tmp_path, tiny_model_dir, capsys):
    from longrl.rewards.rm import read_labelled

    out = tmp_path / "labelled.jsonl"
    args = ["rm", "label", f"model.path={tiny_model_dir}", f"out={out}", "sample.num_prompts=6", "sample.n=3",
            "sample.max_new_tokens=12", "world.tasks=['add']", "world.min_level=1", "world.max_level=1"]
    assert main([*args, "--no-progress"]) == 0
    assert "18 responses to 6 prompts" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 18 and {r["label"] for r in rows} <= {0, 1}
    for row in rows:  # the label is the world verifier's: a stopped response whose last line is A: <answer>
        right = row["finish_reason"] == "stop" and row["response"].strip().endswith(f"A: {row['reference']}")
        assert row["label"] == int(right), row
    assert len(read_labelled(out)) == 18
    assert main([*args, "split=eval", "--no-progress"]) == 0  # held-out prompts: a different set
    held = {json.loads(line)["prompt"] for line in out.read_text().splitlines()}
    assert held and held.isdisjoint({r["prompt"] for r in rows})
