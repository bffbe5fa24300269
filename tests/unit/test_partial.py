"""Partial rollouts: continuation, budget, age limit, segment treatments in the loss, the buffer."""

import math

import pytest
import torch

from longrl.buffer import ReplayBuffer
from longrl.config import PartialRolloutConfig
from longrl.losses import opmd_loss
from longrl.rollout.partial import partial_rollout, plan, prepare_loss, segment_weights
from longrl.packing import build_train_batch
from longrl.types import Completion, GenerationRequest, Prompt, SamplingParams, Segment, Trajectory


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


class BudgetEngine:
    """Always uses the whole cap and never stops: every request ends with `budget` or `length`."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, params):
        self.calls.append(requests)
        out = []
        for r in requests:
            cap = min(r.max_new_tokens or params.max_new_tokens, params.max_new_tokens)
            reason = "budget" if (r.max_new_tokens or 10**9) < params.max_new_tokens else "length"
            out.append(Completion([7] * cap, [-0.5] * cap, reason))
        return out


def _prompts():
    counter = iter(range(10**6))
    return lambda n: [Prompt(id=f"p{next(counter)}", text="1+1", answer="2") for _ in range(n)]


def _run(config, iterations, k=2, prompts_per_iter=2, max_new=100, engine=None):
    engine, buffer, new = engine or BudgetEngine(), ReplayBuffer(), _prompts()
    results = []
    for version in range(iterations):
        out, m = partial_rollout(engine, FakeTokenizer(), lambda text: [1, 2], buffer, new, config,
                                 prompts_per_iter, k, SamplingParams(max_new_tokens=max_new), version)
        results.append((out, m))
    return results, buffer, engine


def test_budget_reserves_caps_continuations_first_then_new_groups():
    cfg = PartialRolloutConfig(enabled=True, token_budget=100, segment_tokens=20, max_age=10)
    old = [Trajectory(Prompt("a", "x"), j, [1], [Segment([5] * n, [0.0] * n, v)]) for j, (n, v) in
           enumerate([(20, 3), (90, 1), (40, 2), (0, 0)])]
    continued, left, new_groups, cap = plan(old, cfg, budget=100, k=2, max_new_tokens=100, prompts_per_iter=8)
    # oldest first: (0 tok, v0) cap 20, (90, v1) cap min(20, 100-90)=10, (40, v2) cap 20, (20, v3) cap 20
    assert [(t.segments[0].policy_version, c) for t, c in continued] == [(0, 20), (1, 10), (2, 20), (3, 20)]
    assert left == [] and cap == 20
    assert new_groups == (100 - 70) // (2 * 20) == 0
    continued, left, new_groups, _ = plan(old, cfg, budget=60, k=2, max_new_tokens=100, prompts_per_iter=8)
    assert [c for _, c in continued] == [20, 10, 20] and len(left) == 1 and new_groups == 0
    _, _, new_groups, _ = plan([], cfg, budget=100, k=2, max_new_tokens=100, prompts_per_iter=8)
    assert new_groups == 2  # 100 // 40
    _, _, new_groups, _ = plan([], cfg, budget=100, k=2, max_new_tokens=100, prompts_per_iter=1)
    assert new_groups == 1  # prompts_per_iter caps it


def test_partial_rollout_accounting_and_completion_by_length():
    cfg = PartialRolloutConfig(enabled=True, segment_tokens=40, max_age=10)  # budget 2*2*40 = 160
    results, buffer, engine = _run(cfg, 3)
    (out0, m0), (out1, m1), (out2, m2) = results
    assert m0["rollout/budget"] == 160 and m0["rollout/budget_reserved"] == 160
    assert m0["rollout/new_groups"] == 2 and out0 == []
    assert m1["rollout/continued"] == 4 and m1["rollout/new_groups"] == 0 and out1 == []
    # iteration 2: 80 tokens + cap min(40, 20) = 20 -> 100 = max_new: finished as `length`
    # 4 continuations reserve 4 x 20 = 80; the 80 left fit 80 // (2 x 40) = 1 new group
    assert m2["rollout/budget_reserved"] == 160 and m2["rollout/new_groups"] == 1
    assert len(out2) == 4 and all(t.finish_reason == "length" and t.num_response_tokens == 100 for t in out2)
    assert [[s.policy_version for s in t.segments] for t in out2] == [[0, 1, 2]] * 4
    assert [len(s.token_ids) for s in out2[0].segments] == [40, 40, 20]
    assert m2["rollout/old_token_share"] == 80 / 100
    # continuations carry the earlier segments as prefix
    assert [len(r.prefix_ids) for r in engine.calls[2][:4]] == [80] * 4


@pytest.mark.parametrize("pads", [True, False])
def test_continuations_and_new_samples_share_a_call_only_without_padding(pads):
    class Engine(BudgetEngine):
        pads_contexts = pads

    cfg = PartialRolloutConfig(enabled=True, token_budget=400, segment_tokens=40, max_age=10)
    _, _, engine = _run(cfg, 2, engine=Engine())  # iteration 1: 4 continuations + 2 new groups
    calls = [[len(r.prefix_ids) for r in call] for call in engine.calls[1:]]
    if pads:  # continuations alone, then new samples: new rows are not padded to 40-token prefixes
        assert calls == [[40] * 4, [0] * 4]
    else:
        assert calls == [[40] * 4 + [0] * 4]


@pytest.mark.parametrize("policy", ["drop", "finish"])
def test_age_limit(policy):
    cfg = PartialRolloutConfig(enabled=True, segment_tokens=10, max_age=2, age_policy=policy)
    results, buffer, _ = _run(cfg, 2, prompts_per_iter=1)
    (out0, _), (out1, m1) = results
    assert out0 == []
    if policy == "drop":  # age 2 reached unfinished after iteration 1: the group is gone
        assert out1 == [] and m1["rollout/aged_out_dropped"] == 2 and len(buffer.unfinished) == 0
    else:
        assert len(out1) == 2 and all(t.finish_reason == "length" and len(t.segments) == 2 for t in out1)
        assert m1["rollout/aged_out_finished"] == 2 and len(buffer.unfinished) == 0


def test_groups_wait_for_all_k_samples():
    class OneStops(BudgetEngine):
        def generate(self, requests, params):
            out = super().generate(requests, params)
            out[0] = Completion([3], [-0.1], "stop")  # only the first request of each call stops
            return out

    cfg = PartialRolloutConfig(enabled=True, segment_tokens=10, max_age=5)
    results, buffer, _ = _run(cfg, 1, prompts_per_iter=1, engine=OneStops())
    assert results[0][0] == [] and len(buffer.waiting) == 1 and len(buffer.unfinished) == 1


def _three_segment_trajectory():
    # response of 5 tokens: v0 (2 tokens), v1 (1 token), v2 (2 tokens, current)
    return Trajectory(Prompt("a", "x"), 0, [1, 2], [Segment([3, 4], [-1.0, -2.0], 0), Segment([5], [-0.5], 1),
                                                    Segment([6, 7], [-0.3, -0.2], 2)], "stop", reward=1.0)


def test_segment_treatments_masks_and_weights():
    t = _three_segment_trajectory()
    assert segment_weights([t], 2, "all", 1.0) == [[1.0] * 5]
    assert segment_weights([t], 2, "latest_only", 1.0) == [[0.0, 0.0, 0.0, 1.0, 1.0]]
    now = [[-1.5, -1.0, -0.5, 0.0, 0.0]]  # π_θi log-probs of the 5 tokens
    w = segment_weights([t], 2, "importance", 2.0, now)[0]
    # min(2, exp(-1.5+1.0)), min(2, exp(-1.0+2.0)) = min(2, e) = 2, min(2, exp(0)) = 1, then current
    assert w == pytest.approx([math.exp(-0.5), 2.0, 1.0, 1.0, 1.0], abs=1e-12)
    batch = build_train_batch([t], torch.tensor([0.5]), 64, 0, segment_weights([t], 2, "latest_only", 1.0))
    assert batch.loss_mask.tolist() == [[0, 0, 0, 0, 0, 1, 1]]  # prompt 2, old 3, current 2


def test_prepare_loss_reweights_and_rebases_older_segments_on_current_policy():
    t = _three_segment_trajectory()
    now = torch.tensor([-1.5, -1.0, -0.5, -9.0, -9.0])
    weights, m = prepare_loss([t], 2, PartialRolloutConfig(segment_loss="importance", importance_cap=2.0),
                              lambda ts: [now for _ in ts])
    assert weights[0] == pytest.approx([math.exp(-0.5), 2.0, 1.0, 1.0, 1.0])
    # older segments now hold π_θi's log-probs (the OPMD reference); the current one keeps the engine's
    assert t.response_logprobs == [-1.5, -1.0, -0.5, -0.3, -0.2]
    assert m["train/old_token_share"] == 3 / 5
    assert m["train/old_token_weight_mean"] == pytest.approx((math.exp(-0.5) + 2.0 + 1.0) / 3)
    fresh = _three_segment_trajectory()
    called = []
    weights, _ = prepare_loss([fresh], 2, PartialRolloutConfig(segment_loss="latest_only"), called.append)
    assert called == [] and weights == [[0.0, 0.0, 0.0, 1.0, 1.0]]
    assert prepare_loss([fresh], 0, PartialRolloutConfig(), called.append)[0] is None  # nothing older


def test_opmd_loss_with_token_weights_by_hand():
    # one sequence, 3 loss tokens, a = 0.5, τ = 0.5, ρ = (0.2, -0.4, 0.1), w = (1, 0.5, 2)
    logprobs = torch.tensor([[0.0, 0.2, -0.4, 0.1]])
    old = torch.zeros(1, 4)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    seq = torch.zeros(1, 4, dtype=torch.long)
    w = torch.tensor([[0.0, 1.0, 0.5, 2.0]])
    a = torch.tensor([0.5])
    # token: [1·(0.5−0.1)² + 0.5·(0.5+0.2)² + 2·(0.5−0.05)²] / (2·0.5) / 3 = (0.16+0.245+0.405)/3
    loss, _ = opmd_loss(logprobs, old, mask, seq, a, 0.5, "token", w)
    assert loss.item() == pytest.approx((0.16 + 0.245 + 0.405) / 3, abs=1e-6)
    # sequence: ρ = 1·0.2 + 0.5·(−0.4) + 2·0.1 = 0.2; (0.5 − 0.5·0.2)² / (2·0.5) = 0.16
    loss, _ = opmd_loss(logprobs, old, mask, seq, a, 0.5, "sequence", w)
    assert loss.item() == pytest.approx(0.16, abs=1e-6)
    ones = torch.ones(1, 4)
    for level in ("token", "sequence"):
        assert opmd_loss(logprobs, old, mask, seq, a, 0.5, level, ones)[0].item() == pytest.approx(
            opmd_loss(logprobs, old, mask, seq, a, 0.5, level)[0].item(), abs=1e-7)


def test_buffer_round_trip_through_torch_save_keeps_unfinished(tmp_path):
    buffer = ReplayBuffer(max_unfinished=8)
    p = Prompt("a", "x", answer="2")
    unfinished = Trajectory(p, 0, [1, 2], [Segment([3, 4], [-0.1, -0.2], 0), Segment([5], [-0.3], 1)], group="a@0:0")
    waiting = Trajectory(p, 1, [1, 2], [Segment([6], [-0.4], 0)], "stop", group="a@0:0")
    done = Trajectory(p, 0, [1, 2], [Segment([7], [-0.5], 1)], "stop", reward=1.0, group="a@1:0")
    buffer.add([unfinished, waiting, done])
    torch.save({"buffer": buffer.state_dict()}, tmp_path / "state.pt")
    restored = ReplayBuffer(max_unfinished=8)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False)["buffer"])
    assert restored.unfinished == [unfinished] and restored.waiting == [waiting] and restored.finished == [done]
    got = restored.unfinished[0]
    assert [s.policy_version for s in got.segments] == [0, 1] and got.response_ids == [3, 4, 5]
    assert got.response_logprobs == [-0.1, -0.2, -0.3] and got.finish_reason is None
    assert restored.take_complete_groups() == []  # the group is still open


def test_buffer_bound_drops_whole_oldest_groups():
    buffer = ReplayBuffer(max_unfinished=2)
    p = Prompt("a", "x")
    ts = [Trajectory(p, j, [1], [Segment([2], [0.0], v)], group=f"g{v}") for v in (0, 1) for j in range(2)]
    buffer.add(ts[:2])
    buffer.add(ts[2:])
    assert [t.group for t in buffer.unfinished] == ["g1", "g1"] and buffer.dropped == 2
    newest = ReplayBuffer(max_unfinished=2, drop_policy="newest")
    newest.add(ts[:2])
    newest.add(ts[2:])
    assert [t.group for t in newest.unfinished] == ["g0", "g0"]


def test_three_segment_continuation_equals_one_shot_greedy(tiny_model_dir):
    from longrl.models import encode_prompt, load_model, load_tokenizer
    from longrl.rollout.engine import HFEngine

    tok = load_tokenizer(tiny_model_dir)
    engine = HFEngine(load_model(tiny_model_dir), tok, batch_size=8)
    prompts = [Prompt("p", "12+34", answer="46"), Prompt("q", "7+8", answer="15")]
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    one_shot = engine.generate([GenerationRequest(encode_prompt(tok, p.text)) for p in prompts], params)
    cfg = PartialRolloutConfig(enabled=True, segment_tokens=10, max_age=5)
    buffer, done = ReplayBuffer(), []
    for version in range(3):  # weights unchanged between iterations
        out, _ = partial_rollout(engine, tok, lambda text: encode_prompt(tok, text), buffer,
                                 lambda n: prompts[:n] if version == 0 else [], cfg, 2, 1, params, version)
        done += out
    assert len(done) == 2
    by_prompt = {t.prompt.id: t for t in done}
    for p, ref in zip(prompts, one_shot):
        t = by_prompt[p.id]
        assert t.response_ids == ref.token_ids
        torch.testing.assert_close(torch.tensor(t.response_logprobs), torch.tensor(ref.logprobs), rtol=0, atol=1e-4)
        if ref.finish_reason == "length":
            assert [s.policy_version for s in t.segments] == [0, 1, 2] and t.finish_reason == "length"
    assert any(r.finish_reason == "length" for r in one_shot)  # at least one ran all three segments
