"""Long2short: merge = hand-averaged tensors, the DPO loss by hand, the k1.5 pair rule, shortest pick."""

import dataclasses
import json
import math

import pytest

from longrl.rewards.registry import build_rewards
import torch
from safetensors.torch import load_file

from longrl.cli import main
from longrl.config import RewardConfig, L2SSampleConfig, TinyModelConfig, WorldConfig
from longrl.data.sources import DataError
from longrl.data.worlds import World
from longrl.tiny import build_char_tokenizer, save_tiny_model
from longrl.long2short import (
    MergeError,
    dpo_loss,
    dpo_pairs,
    kept_samples,
    merge_checkpoints,
    sample_groups,
    selected_rows,
    shortest_correct,
    shortest_rows,
    with_instruction,
)
from longrl.models import encode_prompt, load_policy
from longrl.sft import load_sft_rows, text_example
from longrl.types import Completion

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return save_tiny_model(SMALL, root / "a", seed=1), save_tiny_model(SMALL, root / "b", seed=2)


# ----------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------


def test_merge_is_the_weighted_average_of_every_tensor(two_models, tmp_path):
    a, b = two_models
    out = merge_checkpoints([a, b], tmp_path / "m", weights=[1.0, 3.0])  # normalised to 0.25, 0.75
    ta, tb, tm = (load_file(d / "model.safetensors") for d in (a, b, out))
    assert tm.keys() == ta.keys()
    for name in ta:
        expected = 0.25 * ta[name].double() + 0.75 * tb[name].double()
        assert tm[name].dtype == torch.float32
        assert torch.allclose(tm[name].double(), expected, rtol=0, atol=1e-7), name
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    model, tokenizer = load_policy(out)  # a usable model directory
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]


def test_merge_keeps_bfloat16(two_models, tmp_path):
    dirs = []
    for i, src in enumerate(two_models):
        model, tokenizer = load_policy(src)
        model.to(torch.bfloat16).save_pretrained(tmp_path / f"bf{i}")
        tokenizer.save_pretrained(tmp_path / f"bf{i}")
        dirs.append(tmp_path / f"bf{i}")
    out = merge_checkpoints(dirs, tmp_path / "m")
    ta, tb, tm = (load_file(d / "model.safetensors") for d in (*dirs, out))
    for name in ta:
        assert tm[name].dtype == torch.bfloat16
        expected = ((ta[name].double() + tb[name].double()) / 2).to(torch.bfloat16)
        assert torch.equal(tm[name], expected), name


def test_merge_refuses_different_shapes_naming_the_tensor(two_models, tmp_path):
    wide = save_tiny_model(TinyModelConfig(hidden_size=48, num_layers=1, num_heads=2, intermediate_size=64),
                           tmp_path / "wide")
    with pytest.raises(MergeError, match=r"tensor 'model\.embed_tokens\.weight' has shape \(262, 32\) vs \(262, 48\)"):
        merge_checkpoints([two_models[0], wide], tmp_path / "m")


def test_merge_refuses_other_architectures_and_missing_tensors(two_models, tmp_path):
    deeper = save_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                             tmp_path / "deep")
    with pytest.raises(MergeError, match=r"tensor 'model\.layers\.1\.input_layernorm\.weight' is only in .*deep"):
        merge_checkpoints([two_models[0], deeper], tmp_path / "m")
    config = json.loads((deeper / "config.json").read_text())
    config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
    (deeper / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="architectures differ"):
        merge_checkpoints([two_models[0], deeper], tmp_path / "m")
    with pytest.raises(MergeError, match="one weight per checkpoint"):
        merge_checkpoints(two_models, tmp_path / "m", weights=[1.0])


def test_merge_cli(two_models, tmp_path, capsys):
    assert main(["merge", "--out", str(tmp_path / "m"), *map(str, two_models)]) == 0
    assert "merged model written" in capsys.readouterr().out
    wide = save_tiny_model(TinyModelConfig(hidden_size=48, num_layers=1, num_heads=2, intermediate_size=64),
                           tmp_path / "wide")
    assert main(["merge", "--out", str(tmp_path / "n"), str(two_models[0]), str(wide)]) == 2
    assert "embed_tokens.weight" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# DPO loss and pairs
# ----------------------------------------------------------------------------------------------


def test_dpo_loss_by_hand():
    beta = 0.1
    chosen = torch.tensor([-10.0, -30.0], requires_grad=True)
    rejected = torch.tensor([-20.0, -25.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-12.0, -30.0]), torch.tensor([-18.0, -26.0])
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    # pair 1: (−10+12) − (−20+18) = 2 − (−2) = 4, margin 0.4; pair 2: 0 − 1 = −1, margin −0.1
    expected = (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["dpo/margin"] == pytest.approx((0.4 - 0.1) / 2, abs=1e-6)
    assert metrics["dpo/accuracy"] == 0.5
    loss.backward()
    # dL/d chosen_p = −β σ(−margin_p) / P ; dL/d rejected_p = +β σ(−margin_p) / P
    sig = [1 / (1 + math.exp(0.4)), 1 / (1 + math.exp(-0.1))]
    assert chosen.grad.tolist() == pytest.approx([-beta * s / 2 for s in sig], abs=1e-7)
    assert rejected.grad.tolist() == pytest.approx([beta * s / 2 for s in sig], abs=1e-7)


def test_pair_rule_on_crafted_samples():
    lengths = [30, 50, 44, 20, 60, 45, 46]
    correct = [True, True, False, False, True, True, True]
    # positive: index 0 (shortest correct, 30 tokens)
    # wrong and longer than 30: 2 (44); wrong but shorter: 3 (20) is not a negative
    # correct and longer than 1.5 x 30 = 45: 1 (50), 4 (60), 6 (46); 5 (45) is not
    assert dpo_pairs(lengths, correct) == [(0, 1), (0, 2), (0, 4), (0, 6)]
    assert dpo_pairs(lengths, correct, ratio=1.9) == [(0, 2), (0, 4)]  # only 60 > 57
    assert dpo_pairs([10, 20], [False, False]) == []


def test_shortest_correct_and_ties():
    assert shortest_correct([40, 30, 30, 20], [True, True, True, False]) == 1  # first of the tie
    assert shortest_correct([40, 30], [False, False]) is None
    with pytest.raises(ValueError, match="2 lengths but 1"):
        shortest_correct([1, 2], [True])


def test_shortest_rows_keep_one_per_prompt_with_a_correct_sample():
    groups = [{"prompt": "1+2", "responses": [
                  {"text": "long", "tokens": 9, "correct": True}, {"text": "short", "tokens": 5, "correct": True},
                  {"text": "wrong", "tokens": 2, "correct": False}]},
              {"prompt": "3+4", "responses": [{"text": "x", "tokens": 3, "correct": False}] * 2}]
    assert shortest_rows(groups) == [{"prompt": "1+2", "response": "short", "tokens": 5}]


def test_keep_policies_choose_among_the_correct_samples():
    responses = [{"text": "9+1=10 wait, check: 10\nA: 10", "tokens": 30, "correct": True},
                 {"text": "A: 10", "tokens": 6, "correct": True},
                 {"text": "A: 10", "tokens": 6, "correct": True},  # a duplicate text
                 {"text": "9+1=10\nA: 10", "tokens": 14, "correct": True},
                 {"text": "A: 11", "tokens": 2, "correct": False}]
    markers = ["wait", "check"]
    assert kept_samples(responses, "shortest") == [1]
    assert kept_samples(responses, "longest") == [0]
    assert kept_samples(responses, "all") == [0, 1, 3]
    assert kept_samples(responses, "reflection", markers) == [0]
    assert kept_samples([{"text": "A: 1", "tokens": 2, "correct": False}], "all") == []
    with pytest.raises(ValueError, match="unknown keep policy"):
        kept_samples(responses, "best")
    rows = selected_rows([{"prompt": [{"role": "user", "content": "9+1"}], "responses": responses}], "reflection",
                         markers)
    assert rows == [{"messages": [{"role": "user", "content": "9+1"},
                                  {"role": "assistant", "content": responses[0]["text"]}], "tokens": 30}]


def test_an_instruction_is_asked_but_not_trained_on():
    tok = build_char_tokenizer()
    prompt = World(WorldConfig(tasks=["add"], eval_size=1)).eval_prompts()[0]
    asked = with_instruction(prompt, "Think step by step.")
    assert asked.text == f"Think step by step.\n\n{prompt.text}" and asked.id == prompt.id
    chat = dataclasses.replace(prompt, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert with_instruction(chat, "Think.").messages[1]["content"] == "Think.\n\nq"
    script = [(prompt.meta["trace"], "stop")] * 2
    (row,) = sample_groups(_Scripted(tok, script), tok, [prompt], build_rewards(RewardConfig()),
                           L2SSampleConfig(n=2, instruction="Think step by step."))
    assert row["prompt"] == prompt.text  # the row keeps the prompt without the instruction


def test_rs_sft_trains_on_the_samples_its_policy_keeps(tmp_path, tiny_model_dir):
    samples = tmp_path / "samples.jsonl"
    responses = [{"text": t, "token_ids": [1], "tokens": n, "correct": ok}
                 for t, n, ok in [("1+1=2 check ok\nA: 2", 18, True), ("A: 2", 5, True), ("A: 3", 5, False)]]
    samples.write_text(json.dumps({"prompt": "1+1", "responses": responses}) + "\n")
    common = [f"model.path={tiny_model_dir}", f"out_dir={tmp_path}", f"sample.samples_file={samples}", "steps=2",
              "rows_per_step=1", "row_tokens=64", "eval.num_prompts=2", "eval.n_samples=1", "eval.max_new_tokens=4",
              "--no-progress"]
    assert main(["rs-sft", *common, "keep=all"]) == 0
    kept = [json.loads(line) for line in (tmp_path / "rs_sft" / "kept_all.jsonl").read_text().splitlines()]
    assert [r["response"] for r in kept] == ["1+1=2 check ok\nA: 2", "A: 2"]
    assert main(["rs-sft", *common, "keep=reflection", "name=reflect"]) == 0
    kept = [json.loads(line) for line in (tmp_path / "reflect" / "kept_reflection.jsonl").read_text().splitlines()]
    assert [r["response"] for r in kept] == ["1+1=2 check ok\nA: 2"]


class _Scripted:
    """An engine that answers each request with the next scripted (text, finish reason)."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script

    def generate(self, requests, params):
        eos = self.tokenizer.eos_token_id
        out = []
        for (text, reason), _ in zip(self.script, requests):
            ids = self.tokenizer(text, add_special_tokens=False).input_ids + ([eos] if reason == "stop" else [])
            out.append(Completion(ids, [0.0] * len(ids), reason))
        return out


def test_sample_groups_scores_and_counts_truncated_as_wrong():
    tok = build_char_tokenizer()
    prompt = World(WorldConfig(tasks=["add"], eval_size=1)).eval_prompts()[0]
    good = prompt.meta["trace"]
    script = [(good, "stop"), ("A: 0", "stop"), (good, "length")]
    (row,) = sample_groups(_Scripted(tok, script), tok, [prompt], build_rewards(RewardConfig()), L2SSampleConfig(n=3))
    assert [r["correct"] for r in row["responses"]] == [True, False, False]
    assert [r["tokens"] for r in row["responses"]] == [len(good) + 1, 5, len(good)]  # end token counted
    assert row["responses"][0]["text"] == good and row["prompt"] == prompt.text


# ----------------------------------------------------------------------------------------------
# SFT rows from a data file
# ----------------------------------------------------------------------------------------------


def test_sft_data_file_rows_and_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+2", "response": "A: 3"}\n\n{"prompt": "2+2", "response": 4}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl, line 3: field 'response' must be a string"):
        load_sft_rows(path)
    path.write_text('{"prompt": "1+2", "response": "A: 3"}\n')
    assert load_sft_rows(path) == [("1+2", "A: 3")]
    tok = build_char_tokenizer()
    ids, mask = text_example(tok, "1+2", "A: 3")
    n = len(encode_prompt(tok, "1+2"))
    assert tok.decode(ids[n:-1]) == "A: 3" and ids[-1] == tok.eos_token_id
    assert mask == [0.0] * n + [1.0] * 5
