"""OPMD loss and baselines against hand-computed values (SPEC §3)."""

import math

import pytest
import torch

from longrl.config import ConfigError, LossConfig
from longrl.losses import (advantages_for, group_baseline, grpo_advantages, grpo_loss, loss_for, opmd_advantages,
                           opmd_loss, rest_loss, rest_weights)


def _batch():
    # One packed row: [prompt, s0 t1, s0 t2, prompt, s1 t1]
    # seq 0: logp [-1.0, -2.0], old [-1.5, -2.0] -> token log-ratios [0.5, 0.0], sum 0.5
    # seq 1: logp [-0.5],       old [-0.25]      -> token log-ratio  [-0.25]
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0, -0.5]], requires_grad=True)
    old = torch.tensor([[0.0, -1.5, -2.0, 0.0, -0.25]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    seq = torch.tensor([[-1, 0, 0, -1, 1]])
    return logp, old, mask, seq


def test_mean_baseline_and_advantages():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    adv, _ = opmd_advantages(rewards, groups, tau=0.5, baseline="mean")
    # group 0 mean 0.5; group 1 mean 2/3
    expected = torch.tensor([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)


def test_logmeanexp_baseline():
    rewards = torch.tensor([1.0, 0.0, 3.0])
    groups = torch.tensor([0, 0, 1])
    tau = 0.5
    got = group_baseline(rewards, groups, tau, "logmeanexp")
    g0 = tau * math.log((math.exp(1 / tau) + math.exp(0 / tau)) / 2)  # 0.5 * log((e^2 + 1) / 2)
    g1 = tau * math.log(math.exp(3 / tau))  # a group of one: its own reward
    torch.testing.assert_close(got, torch.tensor([g0, g0, g1]), rtol=0, atol=1e-6)
    assert g0 == pytest.approx(0.7168904, abs=1e-6)


def test_sequence_level_value_and_gradient():
    logp, old, mask, seq = _batch()
    adv, tau = torch.tensor([0.5, -0.5]), 0.5
    loss, _ = opmd_loss(logp, old, mask, seq, adv, tau, level="sequence")
    # seq 0: (0.5 - 0.5*0.5)^2 / (2*0.5) = 0.0625 ; seq 1: (-0.5 - 0.5*(-0.25))^2 / 1 = 0.140625
    assert loss.item() == pytest.approx((0.0625 + 0.140625) / 2, abs=1e-7)
    loss.backward()
    # d/d logp_t = -(a_j - tau * rho_j) / N for every token of sequence j; 0 off the mask
    expected = torch.tensor([[0.0, -0.25 / 2, -0.25 / 2, 0.0, 0.375 / 2]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-7)


def test_token_level_value_and_gradient():
    logp, old, mask, seq = _batch()
    adv, tau = torch.tensor([0.5, -0.5]), 0.5
    loss, _ = opmd_loss(logp, old, mask, seq, adv, tau, level="token")
    # seq 0: mean((0.5 - 0.25)^2, (0.5 - 0)^2) = (0.0625 + 0.25) / 2 = 0.15625
    # seq 1: (-0.5 + 0.125)^2 = 0.140625
    assert loss.item() == pytest.approx((0.15625 + 0.140625) / 2, abs=1e-7)
    loss.backward()
    # d/d logp_t = -(a_j - tau * delta_t) / (N * T_j)
    expected = torch.tensor([[0.0, -0.25 / 4, -0.5 / 4, 0.0, 0.375 / 2]])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-7)


def test_gradient_equals_paper_gradient_at_the_sampling_policy():
    # At θ = θi the log-ratio is 0 and the gradient is -(1/N) Σ_j a_j ∇ log π(y_j|x) (SPEC §3).
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0, -0.5]], requires_grad=True)
    _, _, mask, seq = _batch()
    adv = torch.tensor([0.7, -0.2])
    loss, _ = opmd_loss(logp, logp.detach().clone(), mask, seq, adv, tau=0.1, level="sequence")
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.35, -0.35, 0.0, 0.1]]), rtol=0, atol=1e-7)


def test_sequences_without_loss_tokens_are_ignored():
    logp, old, mask, seq = _batch()
    mask = mask.clone()
    mask[0, 4] = 0.0  # sequence 1 fully masked (e.g. an excluded old segment)
    loss, _ = opmd_loss(logp, old, mask, seq, torch.tensor([0.5, -0.5]), 0.5, level="sequence")
    assert loss.item() == pytest.approx(0.0625, abs=1e-7)


def test_unknown_options_are_errors():
    logp, old, mask, seq = _batch()
    with pytest.raises(ValueError, match="level"):
        opmd_loss(logp, old, mask, seq, torch.tensor([0.0, 0.0]), 0.5, level="word")
    with pytest.raises(ValueError, match="baseline"):
        group_baseline(torch.tensor([1.0]), torch.tensor([0]), 0.5, "median")


# -- baselines (loss.kind) --------------------------------------------------------------------


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    adv, _ = grpo_advantages(rewards, groups, eps=0.0)
    # group 0: mean 1/2, unbiased std sqrt(1/2); group 1: mean 2/3, std sqrt(1/3); a group of one: 0
    s0, s1 = math.sqrt(0.5), math.sqrt(1 / 3)
    expected = torch.tensor([0.5 / s0, -0.5 / s0, (1 / 3) / s1, (1 / 3) / s1, (-2 / 3) / s1, 0.0])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    unscaled, _ = grpo_advantages(rewards, groups, scale=False)
    torch.testing.assert_close(unscaled, torch.tensor([0.5, -0.5, 1 / 3, 1 / 3, -2 / 3, 0.0]), rtol=0, atol=1e-7)


def test_opmd_scaled_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv, _ = opmd_advantages(rewards, groups, tau=0.1, scale=True)
    # group 0: mean 1/4, unbiased std sqrt(1/4) = 1/2 -> (3/4) / (1/2), (-1/4) / (1/2); group 1 all equal: 0
    s = 0.5 + 1e-4
    torch.testing.assert_close(adv, torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0.0, 0.0]), rtol=0, atol=1e-6)


def test_grpo_loss_and_gradient_by_hand():
    logp, old, mask, seq = _batch()
    # seq 0 (a = +1): ratios e^0.5 = 1.65 (clipped to 1.2: the minimum takes 1.2) and 1 -> -1.2, -1,
    #   mean -1.1; seq 1 (a = -1): ratio e^-0.25 = 0.78 < 0.8, clipped: min(-0.78, -0.8) = -0.8 -> +0.8
    loss, m = grpo_loss(logp, old, mask, seq.clamp(min=0), torch.tensor([1.0, -1.0]), 0.2, 0.2)
    assert loss.item() == pytest.approx((-1.1 + 0.8) / 2, abs=1e-6)
    assert m["loss/clip_fraction"] == pytest.approx(2 / 3)
    loss.backward()
    # only the unclipped token of seq 0 has a gradient: -ratio * a = -1, / 2 tokens / 2 sequences
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -0.25, 0.0, 0.0]]), rtol=0, atol=1e-7)


def test_grpo_clip_high_lets_a_rewarded_token_rise_further():
    logp, old, mask, seq = _batch()
    loss, _ = grpo_loss(logp, old, mask, seq.clamp(min=0), torch.tensor([1.0, -1.0]), 0.2, 1.0)
    # seq 0's first token: ratio 1.65 < 2.0, unclipped: -1.65
    assert loss.item() == pytest.approx((-(math.exp(0.5) + 1) / 2 + 0.8) / 2, abs=1e-6)


def test_rest_trains_on_the_kept_responses_only():
    logp, old, mask, seq = _batch()
    kept, m = rest_weights(torch.tensor([1.0, 0.0]), threshold=1.0)
    assert kept.tolist() == [1.0, 0.0] and m["loss/rest_kept"] == 0.5
    loss, _ = rest_loss(logp, mask, seq.clamp(min=0), kept)
    assert loss.item() == pytest.approx(1.5 / 2)  # seq 0's mean NLL (1 + 2) / 2, over 2 sequences
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25, -0.25, 0.0, 0.0]]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["opmd", "grpo", "rest"])
def test_loss_kind_dispatches_to_its_pure_function(kind):
    logp, old, mask, seq = _batch()
    config = LossConfig(kind=kind)
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    adv, _ = advantages_for(config, rewards, groups)
    loss, m = loss_for(config, logp, old, mask, seq.clamp(min=0), adv)
    direct = {"opmd": lambda: opmd_loss(logp, old, mask, seq.clamp(min=0), opmd_advantages(rewards, groups, 0.1)[0], 0.1),
              "grpo": lambda: grpo_loss(logp, old, mask, seq.clamp(min=0), grpo_advantages(rewards, groups)[0]),
              "rest": lambda: rest_loss(logp, mask, seq.clamp(min=0), rest_weights(rewards, 1.0)[0])}[kind]()
    assert loss.item() == pytest.approx(direct[0].item()) and f"loss/{kind}" in m


def test_bad_clip_is_a_config_error():
    with pytest.raises(ConfigError, match="clip_low"):
        LossConfig(kind="grpo", clip_low=1.5)
