"""The transformers engine: exact log-probs, finish reasons, continuation, top-p."""

import pytest
import torch

from longrl.models import encode_prompt, load_model, load_tokenizer, token_logprobs
from longrl.rollout.engine import HFEngine, KVBuffer, kv_cache, sample_next
from longrl.types import GenerationRequest, SamplingParams


def _engine(model_dir, seed=0, batch_size=64):
    tok = load_tokenizer(model_dir)
    return HFEngine(load_model(model_dir), tok, batch_size=batch_size, seed=seed), tok


def _requests(tok, texts):
    return [GenerationRequest(encode_prompt(tok, t)) for t in texts]


def test_logprobs_equal_a_plain_forward_pass(tiny_model_dir):
    engine, tok = _engine(tiny_model_dir, batch_size=8)
    # different prompt lengths exercise left padding inside a batch
    requests = _requests(tok, ["1+2", "345+678", "9", "12-3", "77*8", "1+2+3+4+5+6", "0", "42"] * 2)
    for temperature in (1.0, 0.7):
        completions = engine.generate(requests, SamplingParams(temperature=temperature, max_new_tokens=24))
        for request, completion in zip(requests, completions):
            ids = torch.tensor([request.prompt_ids + completion.token_ids])  # [1, T]
            with torch.no_grad():
                plain = token_logprobs(engine.model, ids, torch.arange(ids.shape[1])[None], temperature)
            plain = plain[0, len(request.prompt_ids):]
            assert len(completion.logprobs) == len(completion.token_ids) > 0
            torch.testing.assert_close(torch.tensor(completion.logprobs), plain, rtol=0, atol=1e-4)


def test_contexts_of_very_different_lengths_prefill_in_groups(tiny_model_dir):
    """Contexts of 1x, ~2x and ~4x a prompt's length are prefilled as separate groups; sampling
    and log-probs are those of each request alone."""
    engine, tok = _engine(tiny_model_dir, batch_size=8)
    prompt = encode_prompt(tok, "12+34")
    n = len(prompt)
    requests = [GenerationRequest(prompt, prefix_ids=[7] * extra) for extra in (0, 3 * n, n + 2, 0, 3 * n)]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=())
    together = engine.generate(requests, params)
    for request, completion in zip(requests, together):
        (alone,) = engine.generate([request], params)
        assert completion.token_ids == alone.token_ids
        ids = torch.tensor([request.prompt_ids + request.prefix_ids + completion.token_ids])  # [1, T]
        with torch.no_grad():
            plain = token_logprobs(engine.model, ids, torch.arange(ids.shape[1])[None], 1.0)
        torch.testing.assert_close(torch.tensor(completion.logprobs), plain[0, -len(completion.token_ids):],
                                   rtol=0, atol=1e-4)


def test_finish_reasons_and_budgets(tiny_model_dir):
    engine, tok = _engine(tiny_model_dir)
    eos = tok.eos_token_id
    reqs = [GenerationRequest(encode_prompt(tok, "1+1")), GenerationRequest(encode_prompt(tok, "1+1"), max_new_tokens=3)]
    # a stop set holding every token forces an immediate stop
    out = engine.generate(reqs[:1], SamplingParams(max_new_tokens=5, stop_token_ids=tuple(range(len(tok)))))
    assert out[0].finish_reason == "stop" and len(out[0].token_ids) == 1
    # no token may stop: forbid EOS by checking the reasons of long greedy runs
    out = engine.generate(reqs, SamplingParams(temperature=0.0, max_new_tokens=6))
    for completion, cap in zip(out, (6, 3)):
        if eos in completion.token_ids:
            assert completion.finish_reason == "stop" and completion.token_ids[-1] == eos
        else:
            assert len(completion.token_ids) == cap
            assert completion.finish_reason == ("length" if cap == 6 else "budget")


def test_greedy_continuation_equals_one_shot(tiny_model_dir):
    engine, tok = _engine(tiny_model_dir)
    prompt = encode_prompt(tok, "123+456")
    params = SamplingParams(temperature=0.0, max_new_tokens=30, stop_token_ids=())
    whole = engine.generate([GenerationRequest(prompt)], params)[0]
    first = engine.generate([GenerationRequest(prompt, max_new_tokens=7)], params)[0]
    if first.finish_reason == "stop":
        assert first.token_ids == whole.token_ids[: len(first.token_ids)]
        return
    rest = engine.generate([GenerationRequest(prompt, prefix_ids=first.token_ids, max_new_tokens=23)], params)[0]
    assert first.token_ids + rest.token_ids == whole.token_ids
    torch.testing.assert_close(torch.tensor(first.logprobs + rest.logprobs), torch.tensor(whole.logprobs),
                               rtol=0, atol=1e-4)


def test_kv_buffer_appends_in_place_and_drops_rows():
    layer = KVBuffer(capacity=5)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).reshape(2, 1, 3, 2)  # [B=2, H=1, T=3, D=2]
    keys, values = layer.update(k, -k)
    assert torch.equal(keys, k) and torch.equal(values, -k) and layer.get_seq_length() == 3
    step = torch.full((2, 1, 1, 2), 7.0)
    keys, _ = layer.update(step, step)
    assert keys.shape == (2, 1, 4, 2) and torch.equal(keys[:, :, :3], k) and torch.equal(keys[:, :, 3:], step)
    layer.batch_select_indices(torch.tensor([1]))  # keep row 1 only
    assert torch.equal(layer.keys, torch.cat([k[1:], step[1:]], 2)) and torch.equal(layer.values[:, :, :3], -k[1:])
    layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="KV buffer of 5 positions cannot take position 6"):
        layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))


def test_kv_buffer_decodes_like_the_dynamic_cache(tiny_model_dir):
    from transformers import DynamicCache

    model = load_model(tiny_model_dir).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])  # [2, 5]; row 0 left-padded by 2
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = {}
    for name, cache in (("dynamic", DynamicCache()), ("buffer", kv_cache(model, 8))):
        with torch.no_grad():
            out = [model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache).logits[:, -1]]
            for step in range(3):
                mask = torch.cat([attention, torch.ones(2, step + 1, dtype=torch.long)], 1)
                out.append(model(input_ids=torch.tensor([[8 + step]] * 2), attention_mask=mask,
                                 position_ids=positions[:, -1:] + step + 1, past_key_values=cache).logits[:, -1])
        logits[name] = torch.stack(out)  # [4, 2, V]
    torch.testing.assert_close(logits["buffer"], logits["dynamic"], rtol=0, atol=1e-5)


def test_same_seed_same_samples(tiny_model_dir):
    a, tok = _engine(tiny_model_dir, seed=3)
    b, _ = _engine(tiny_model_dir, seed=3)
    reqs = _requests(tok, ["1+2", "3+4"] * 4)
    params = SamplingParams(max_new_tokens=12)
    assert [c.token_ids for c in a.generate(reqs, params)] == [c.token_ids for c in b.generate(reqs, params)]


def test_top_p_keeps_the_smallest_sufficient_set():
    # probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps {0, 1}; top_p 0.4 keeps {0} only
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_next(logits, 1.0, 0.6, torch.rand(2000, generator=gen))
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.04
    # reported log-probs are those of the full distribution, before truncation
    torch.testing.assert_close(logprobs[tokens == 1][:1], torch.log(torch.tensor([0.3])), rtol=0, atol=1e-6)
    tokens, _ = sample_next(logits, 1.0, 0.4, torch.rand(2000, generator=gen))
    assert set(tokens.tolist()) == {0}


def test_inverse_cdf_sampling_picks_the_bucket_of_each_rows_number():
    # CDF of (0.5, 0.3, 0.2) at T=1 is (0.5, 0.8, 1.0): u < 0.5 -> 0, 0.5 <= u < 0.8 -> 1, else 2
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(6, 1)
    uniform = torch.tensor([0.0, 0.49, 0.51, 0.79, 0.81, 0.999999])
    tokens, _ = sample_next(logits, 1.0, 1.0, uniform)
    assert tokens.tolist() == [0, 0, 1, 1, 2, 2]
    # top-p 0.6 keeps {0, 1} with mass 0.8: CDF (0.5, 0.8, 0.8), target u * 0.8, so token 0 for
    # u < 0.5 / 0.8 = 0.625 and token 1 above; u=0.999999 never reaches the dropped token 2
    tokens, _ = sample_next(logits, 1.0, 0.6, uniform)
    assert tokens.tolist() == [0, 0, 0, 1, 1, 1]
    # a zero-probability token is never drawn, even at the very top of the range
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert sample_next(logits, 1.0, 1.0, torch.tensor([1.0 - 2**-24]))[0].tolist() == [1]


def test_dropping_finished_rows_changes_no_sample(tiny_model_dir):
    """Rows that end early leave the running batch; the others sample exactly as if they stayed."""
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    prompts = [encode_prompt(tok, t) for t in ["12+34", "5+6", "987-65", "4*4"] * 2]
    params = SamplingParams(temperature=1.0, max_new_tokens=20, stop_token_ids=())
    runs = {}
    for caps in ((None,) * 8, (2, None, 5, None, 1, None, 3, None)):
        engine = HFEngine(model, tok, batch_size=8, seed=7)
        runs[caps] = engine.generate([GenerationRequest(p, max_new_tokens=c) for p, c in zip(prompts, caps)], params)
    full, mixed = runs.values()
    for row, (a, b) in enumerate(zip(full, mixed)):
        n = len(b.token_ids)
        assert b.token_ids == a.token_ids[:n], row  # short rows: the prefix of their full run
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs[:n]), rtol=0, atol=1e-5)
    assert [len(c.token_ids) for c in mixed[::2]] == [min(c, len(a.token_ids)) for c, a in zip((2, 5, 1, 3), full[::2])]


def test_load_weights_changes_what_the_engine_samples(tiny_model_dir):
    engine, _ = _engine(tiny_model_dir)
    other = load_model(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.load_weights(other.named_parameters())
    for (name, p), q in zip(engine.model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), name
