"""Chunked log-probs through the LM head: hand-computed values, and equality with the plain
[N, V] computation (values and gradients) written out here as the reference."""

import math

import pytest
import torch

from longrl.logprobs import chunked_logprobs, policy_logprobs, supports_chunked
from longrl.models import load_model, token_logprobs
from longrl.packing import pack


def naive(hidden, weight, targets, temperature, bias=None):
    """The reference: full float32 logits, log-softmax, gather; entropy from the same."""
    logits = (hidden @ weight.T + (0 if bias is None else bias)).float() / temperature  # [N, V]
    logp = logits.log_softmax(-1)  # [N, V]
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def test_two_token_vocabulary_by_hand():
    # logits z = h·W = [0, ln 3] -> p = [1/4, 3/4]; the target is token 1
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]], requires_grad=True)
    logp, entropy = chunked_logprobs(hidden, weight, torch.tensor([1]), with_entropy=True)
    assert logp.item() == pytest.approx(math.log(3 / 4), abs=1e-7)
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-7)
    logp.sum().backward()
    # d logp / d z = onehot - p = [-1/4, 1/4]; d z_v / d h = W_v; d z_v / d W_v = h = 1
    assert hidden.grad.item() == pytest.approx(math.log(3) / 4, abs=1e-7)
    torch.testing.assert_close(weight.grad, torch.tensor([[-0.25], [0.25]]), rtol=0, atol=1e-7)


def test_temperature_scales_logits_and_gradient_by_hand():
    # T = 2: z = [0, ln 3] / 2 -> p ∝ [1, √3]; d logp / d h = (onehot - p)·W / T
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]])
    logp, _ = chunked_logprobs(hidden, weight, torch.tensor([0]), temperature=2.0)
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert logp.item() == pytest.approx(math.log(1 - p1), abs=1e-7)
    logp.sum().backward()
    assert hidden.grad.item() == pytest.approx(-p1 * math.log(3) / 2, abs=1e-7)


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_values_and_gradients_equal_the_plain_computation(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    N, H, V, temperature = 13, 8, 50, 0.7  # 13 tokens: the last chunk is partial for 4 and 5
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    bias = torch.randn(V, generator=g, requires_grad=True) if with_bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g)  # a loss that weighs each token differently

    got, got_entropy = chunked_logprobs(hidden, weight, targets, temperature, chunk, bias, with_entropy=True)
    got_grads = torch.autograd.grad((got * upstream).sum(), [x for x in (hidden, weight, bias) if x is not None])
    want, want_entropy = naive(hidden, weight, targets, temperature, bias)
    want_grads = torch.autograd.grad((want * upstream).sum(), [x for x in (hidden, weight, bias) if x is not None])

    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_entropy, want_entropy.detach(), rtol=0, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_no_tensor_of_tokens_times_vocabulary_is_kept_for_backward():
    N, H, V = 32, 4, 100
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logp, _ = chunked_logprobs(hidden, weight, torch.zeros(N, dtype=torch.long), chunk_tokens=8)
    assert max(saved) == V * H  # the weight itself; the plain path would keep N x V = 3200
    logp.sum().backward()


def test_without_grad_gives_the_same_values():
    hidden, weight = torch.randn(7, 4), torch.randn(11, 4)
    targets = torch.arange(7)
    with torch.no_grad():
        got, _ = chunked_logprobs(hidden, weight, targets, 1.3, chunk_tokens=3)
    torch.testing.assert_close(got, naive(hidden, weight, targets, 1.3)[0], rtol=0, atol=1e-5)


def test_bf16_autocast_matches_the_plain_path_under_autocast():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 16, generator=g)
    weight = torch.randn(40, 16, generator=g)
    targets = torch.randint(0, 40, (9,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = chunked_logprobs(hidden, weight, targets, chunk_tokens=4)
        logits = (hidden @ weight.T).float()  # autocast: a bf16 matmul, as the model's lm_head
    want = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_model_logprobs_and_parameter_gradients_equal_the_plain_path(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert supports_chunked(model)
    ids = torch.tensor([[3, 20, 21, 22, 4, 30, 31, 5], [3, 25, 4, 40, 41, 42, 43, 44]])
    positions = torch.arange(8).expand(2, 8)
    results = []
    for chunk in (3, 0):  # chunked, then the plain path through the full logits
        model.zero_grad()
        logp = token_logprobs(model, ids, positions, temperature=0.8, chunk_tokens=chunk)
        (logp * torch.linspace(-1, 1, 8)).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (chunked, chunked_grads), (plain, plain_grads) = results
    assert chunked[:, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_packed_entropy_and_logprobs_equal_unpacked(tiny_model_dir):
    model = load_model(tiny_model_dir).eval()
    seqs = [[3, 20, 21, 22, 4, 30, 31], [3, 25, 4, 40, 41, 42], [3, 26, 27, 4, 50]]
    rows = pack(seqs, [], row_tokens=13, pad_id=0)  # two rows: [7 + 6 tokens], [5 + 8 padding]
    assert rows.input_ids.shape == (2, 13)
    with torch.no_grad():
        packed, packed_h = policy_logprobs(model, rows.input_ids, rows.position_ids, 1.0, 4, with_entropy=True)
        # the layout flash-attention gets: both rows end to end in one
        flat = token_logprobs(model, rows.input_ids.reshape(1, -1), rows.position_ids.reshape(1, -1), 1.0, 4)
        at = [(0, 0), (0, 7), (1, 0)]
        for seq, (row, col) in zip(seqs, at):
            alone, alone_h = policy_logprobs(model, torch.tensor([seq]), torch.arange(len(seq))[None], 1.0, 4,
                                             with_entropy=True)
            span = slice(col + 1, col + len(seq))  # position 0 of each sequence has no prediction
            torch.testing.assert_close(packed[row, span], alone[0, 1:], rtol=0, atol=1e-5)
            torch.testing.assert_close(packed_h[row, span], alone_h[0, 1:], rtol=0, atol=1e-5)
            torch.testing.assert_close(flat[0, row * 13 + col + 1:row * 13 + col + len(seq)], alone[0, 1:],
                                       rtol=0, atol=1e-5)


def test_rejects_a_non_positive_chunk():
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_logprobs(torch.zeros(2, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), chunk_tokens=0)
