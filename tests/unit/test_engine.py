"""The transformers engine: exact log-probs, finish reasons, continuation, top-p."""

import torch

from longrl.models import encode_prompt, load_model, load_tokenizer, token_logprobs
from longrl.rollout.engine import HFEngine, sample_next
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
    tokens, logprobs = sample_next(logits, 1.0, 0.6, gen)
    assert set(tokens.tolist()) == {0, 1}
    share = (tokens == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.04
    # reported log-probs are those of the full distribution, before truncation
    torch.testing.assert_close(logprobs[tokens == 1][:1], torch.log(torch.tensor([0.3])), rtol=0, atol=1e-6)
    tokens, _ = sample_next(logits, 1.0, 0.4, gen)
    assert set(tokens.tolist()) == {0}


def test_load_weights_changes_what_the_engine_samples(tiny_model_dir):
    engine, tok = _engine(tiny_model_dir)
    other = load_model(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.load_weights(other.named_parameters())
    for (name, p), q in zip(engine.model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), name
