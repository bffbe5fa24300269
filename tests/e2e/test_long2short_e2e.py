"""Long2short commands on a tiny model: DPO moves the log-prob margin towards the short answer,
shortest-rs keeps the shortest correct sample and fine-tunes on it. Samples are scripted (a
random model is never correct), so the tests check the training, not the sampler's luck."""

import json

import pytest
import torch

from longrl.cli import main
from longrl.config import WorldConfig
from longrl.data.worlds import World
from longrl.long2short import load_groups, preference_pairs, sequence_logprobs
from longrl.models import load_policy

TINY_EVAL = ["eval.num_prompts=4", "eval.n_samples=1", "eval.max_new_tokens=8", "world.tasks=['add']",
             "world.min_level=2", "world.max_level=2", "world.trace_style=verbose"]


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory, tiny_model_dir):
    """Four prompts x three samples: a concise correct trace, a verbose correct one, a wrong one."""
    _, tokenizer = load_policy(tiny_model_dir)
    verbose = World(WorldConfig(tasks=["add"], min_level=2, max_level=2, trace_style="verbose",
                                eval_size=40)).eval_prompts()
    rows = []
    for p in [p for p in verbose if p.meta["trace"].count("\n") >= 4][:4]:
        concise = "\n".join(x for x in p.meta["trace"].splitlines() if not x.startswith(("check", "verify")))
        texts = [(p.meta["trace"], True), (concise, True), (p.meta["trace"].replace("A: ", "A: 9"), False)]
        responses = []
        for text, ok in texts:
            ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            responses.append({"text": text, "token_ids": ids, "tokens": len(ids), "correct": ok,
                              "finish_reason": "stop"})
        rows.append({"id": p.id, "prompt": p.text, "answer": p.answer, "responses": responses})
    path = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_moves_the_margin_towards_the_shortest_correct(tmp_path, tiny_model_dir, samples_file):
    args = ["dpo", f"out_dir={tmp_path}", "name=dpo", f"model.path={tiny_model_dir}",
            f"sample.samples_file={samples_file}", "steps=6", "lr=1e-3", "warmup_steps=1", "pairs_per_step=8",
            "log_every=1", "--no-progress", *TINY_EVAL]
    assert main(args) == 0
    logged = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["dpo/margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert logged[0]["dpo/loss"] == pytest.approx(0.6931, abs=1e-3)  # −log σ(0) = log 2
    assert logged[-1]["dpo/margin"] > 0.1
    # recompute with the saved model: chosen gained log-prob relative to rejected, against the reference
    ref, tokenizer = load_policy(tiny_model_dir)
    new, _ = load_policy(tmp_path / "dpo" / "final")
    pairs = preference_pairs(load_groups(samples_file), tokenizer, 1.5)
    assert len(pairs) == 8  # per prompt: the verbose correct one (> 1.5x) and the wrong one
    prompts, responses = [p for p, _, _ in pairs] * 2, [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    with torch.no_grad():
        before = sequence_logprobs(ref, prompts, responses, 512, tokenizer.pad_token_id)  # [2P]
        after = sequence_logprobs(new, prompts, responses, 512, tokenizer.pad_token_id)
    delta = after - before  # [2P]
    assert (delta[:8] - delta[8:]).mean() > 1.0


def test_shortest_rs_keeps_the_shortest_correct_and_fine_tunes(tmp_path, tiny_model_dir, samples_file):
    args = ["shortest-rs", f"out_dir={tmp_path}", "name=rs", f"model.path={tiny_model_dir}",
            f"sample.samples_file={samples_file}", "steps=3", "warmup_steps=1", "rows_per_step=2",
            "--no-progress", *TINY_EVAL]
    assert main(args) == 0
    kept = [json.loads(line) for line in (tmp_path / "rs" / "shortest.jsonl").read_text().splitlines()]
    groups = load_groups(samples_file)
    assert [k["response"] for k in kept] == [g["responses"][1]["text"] for g in groups]  # the concise one
    assert (tmp_path / "rs" / "final" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "rs" / "eval.json").read_text())
    assert metrics["rs/kept"] == 4 and "eval/pass@1" in metrics


def test_shortest_rs_samples_with_the_model_and_says_when_nothing_is_correct(tmp_path, tiny_model_dir, capsys):
    args = ["shortest-rs", f"out_dir={tmp_path}", "name=rs", f"model.path={tiny_model_dir}",
            "sample.num_prompts=3", "sample.n=2", "sample.max_new_tokens=6", "--no-progress", *TINY_EVAL]
    assert main(args) == 2
    assert "no prompt had a correct sample" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "rs" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["responses"]) == 2 for r in rows)
    assert all(r["tokens"] <= 6 for row in rows for r in row["responses"])
