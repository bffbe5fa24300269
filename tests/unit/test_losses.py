"""OPMD loss and baselines against hand-computed values (SPEC §3)."""

import math

import pytest
import torch

from longrl.losses import group_baseline, opmd_advantages, opmd_loss


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
