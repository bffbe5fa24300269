"""The colocated vLLM engine on a tiny model, on CPU: log-probs, continuation, weight sync.

Skipped only when vLLM is not installed (scripts/setup_vllm.sh installs it). vLLM's CPU attention
refuses head_dim 16, so this tiny model has 2 heads of width 32.
"""

import importlib.util

import pytest
import torch

# find_spec, not an import: vLLM is imported only when the engine fixture starts, so collecting
# this file changes nothing for the other tests. An installed but broken vLLM fails, not skips.
if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed: run scripts/setup_vllm.sh", allow_module_level=True)

from longrl.config import RolloutConfig, TinyModelConfig
from longrl.tiny import save_tiny_model
from longrl.models import encode_prompt, load_policy, token_logprobs
from longrl.rollout.engine import HFEngine, make_engine
from longrl.rollout.vllm_engine import VLLMEngine
from longrl.types import GenerationRequest, SamplingParams
from longrl.weight_sync import WeightSync, WeightSyncError

ATOL = 1e-4  # measured: max gap 1e-6 over these prompts, float32 on both sides


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    model_dir = save_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                                tmp_path_factory.mktemp("tiny_vllm"))
    return load_policy(model_dir)


@pytest.fixture(scope="module")
def engine(policy):
    model, tok = policy
    engine = make_engine(RolloutConfig(engine="vllm", batch_size=32), model, tok, seed=0)
    assert isinstance(engine, VLLMEngine) and not engine.inplace_sync  # the default: vLLM's reload
    yield engine
    del engine


@pytest.fixture(scope="module")
def inplace_engine(policy):
    """An engine with plain weights, whose pushes copy in place (rollout.vllm_inplace_sync)."""
    model, tok = policy
    engine = make_engine(RolloutConfig(engine="vllm", batch_size=8, vllm_inplace_sync=True), model, tok, seed=0)
    assert engine.inplace_sync
    yield engine
    del engine


@pytest.fixture(scope="module")
def sharded_engine(policy):
    """The model sharded over two vLLM worker processes (rollout.vllm_tensor_parallel_size = 2),
    each bound to its own core: the tensor-parallel path that GPUs take, on CPU."""
    model, tok = policy
    engine = make_engine(RolloutConfig(engine="vllm", batch_size=8, vllm_tensor_parallel_size=2), model, tok, seed=0)
    assert engine.tensor_parallel_size == 2
    yield engine
    del engine


def _prompts(tok):
    return [encode_prompt(tok, t) for t in ("1+2", "345+678", "9", "12-3", "77*8", "1+2+3+4+5+6")]


def _max_gap(model, requests, completions, temperature):
    gap = 0.0
    for request, completion in zip(requests, completions):
        context = request.prompt_ids + request.prefix_ids
        ids = torch.tensor([context + completion.token_ids])  # [1, T]
        with torch.no_grad():
            plain = token_logprobs(model, ids, torch.arange(ids.shape[1])[None], temperature or 1.0)
        assert len(completion.logprobs) == len(completion.token_ids) > 0
        gap = max(gap, float((torch.tensor(completion.logprobs) - plain[0, len(context):]).abs().max()))
    return gap


def test_logprobs_equal_a_plain_forward_pass(engine, policy):
    model, tok = policy
    prompts = _prompts(tok)
    requests = [GenerationRequest(p) for p in prompts] * 2  # repeats hit the prefix cache
    requests += [GenerationRequest(p, prefix_ids=[10, 11, 12]) for p in prompts]  # continuations
    for temperature in (1.0, 0.7, 0.0):
        completions = engine.generate(requests, SamplingParams(temperature=temperature, max_new_tokens=24))
        assert _max_gap(model, requests, completions, temperature) < ATOL
    seq, n = prompts[1] + completions[1].token_ids, len(prompts[1])
    with torch.no_grad():
        plain = token_logprobs(model, torch.tensor([seq]), torch.arange(len(seq))[None], 1.0)[0, n:]
    torch.testing.assert_close(torch.tensor(engine.score([seq], [n], 1.0)[0]), plain, rtol=0, atol=ATOL)


def test_finish_reasons(engine, policy):
    _, tok = policy
    prompt = encode_prompt(tok, "1+1")
    everything = SamplingParams(max_new_tokens=5, stop_token_ids=tuple(range(len(tok))))
    (stopped,) = engine.generate([GenerationRequest(prompt)], everything)
    assert stopped.finish_reason == "stop" and len(stopped.token_ids) == 1
    capped, full = engine.generate([GenerationRequest(prompt, max_new_tokens=3), GenerationRequest(prompt)],
                                   SamplingParams(temperature=0.0, max_new_tokens=40))
    assert (capped.finish_reason, len(capped.token_ids)) == ("budget", 3)
    assert full.finish_reason in ("length", "stop") and full.token_ids[:3] == capped.token_ids


def test_the_position_limit_ends_as_length_in_both_engines(engine, policy):
    """A continuation cut by the model's positions cannot continue (contract, 3): `length`."""
    model, tok = policy
    near_end = GenerationRequest([5] * 4, [6] * (engine.max_positions - 7), max_new_tokens=8)  # room 3
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)  # greedy picks no EOS here
    for each in (engine, HFEngine(model, tok, batch_size=4)):
        (out,) = each.generate([near_end], greedy)
        assert (len(out.token_ids), out.finish_reason) == (3, "length")


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_three_greedy_segments_equal_one_greedy_run(kind, engine, policy):
    model, tok = policy
    engine = engine if kind == "vllm" else HFEngine(model, tok, batch_size=16)
    prompts = _prompts(tok)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=36)
    whole = engine.generate([GenerationRequest(p) for p in prompts], greedy)
    prefixes = [[] for _ in prompts]
    for _ in range(3):
        parts = engine.generate([GenerationRequest(p, pre, max_new_tokens=12)
                                 for p, pre in zip(prompts, prefixes)], greedy)
        for pre, part in zip(prefixes, parts):
            pre.extend(part.token_ids)
    for one, pre in zip(whole, prefixes):
        assert one.token_ids == pre[:len(one.token_ids)] and len(one.token_ids) == 36


@pytest.mark.parametrize("which", ["engine", "inplace_engine", "sharded_engine"])
def test_weight_sync_reloads_and_its_check_catches_a_lost_push(which, request, policy, forgetful):
    engine = request.getfixturevalue(which)
    model, tok = policy
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        with pytest.raises(WeightSyncError, match="after sync at iteration 2: weights were not reloaded"):
            WeightSync(model, forgetful(engine), tok, tolerance=1e-3)(iteration=2)
        metrics = WeightSync(model, engine, tok, tolerance=ATOL)(iteration=3)
        assert metrics["sync/probe_max_diff"] < ATOL
        # sampling, not only scoring, now follows the new weights (the prefix cache was reset)
        requests = [GenerationRequest(p) for p in _prompts(tok)]
        for temperature in (1.0, 0.0):
            completions = engine.generate(requests, SamplingParams(temperature=temperature, max_new_tokens=16))
            assert _max_gap(model, requests, completions, temperature) < ATOL
    finally:
        model.load_state_dict(original)
        engine.load_weights(model.named_parameters())


def _qkv_rows(model) -> int:
    return model.model.layers[0].self_attn.qkv_proj.output_size_per_partition


def test_a_sharded_engine_splits_the_model_and_samples_the_same_policy(sharded_engine, engine, policy):
    model, tok = policy
    # two worker processes, each holding half of every attention projection's rows
    assert sharded_engine.llm.apply_model(_qkv_rows) == [3 * 64 // 2] * 2
    assert engine.llm.apply_model(_qkv_rows) == [3 * 64]
    requests = [GenerationRequest(p) for p in _prompts(tok)]
    for temperature in (1.0, 0.0):
        completions = sharded_engine.generate(requests, SamplingParams(temperature=temperature, max_new_tokens=16))
        assert _max_gap(model, requests, completions, temperature) < ATOL
    greedy = [c.token_ids for c in sharded_engine.generate(requests, SamplingParams(temperature=0.0, max_new_tokens=16))]
    assert greedy == [c.token_ids for c in engine.generate(requests, SamplingParams(temperature=0.0, max_new_tokens=16))]


def test_a_sharded_engine_refuses_in_place_pushes(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="inplace_sync needs the engine's weights in this process"):
        VLLMEngine(model.name_or_path, tok, inplace_sync=True, tensor_parallel_size=2)


def test_in_place_push_refuses_an_incomplete_state(inplace_engine, policy):
    model, _ = policy
    params = list(model.named_parameters())
    with pytest.raises(ValueError, match=r"left \d+ vLLM parameters unwritten, e.g. \['model.layers"):
        inplace_engine.load_weights([(n, p) for n, p in params if ".layers.1." not in n])
    inplace_engine.load_weights(params)


def test_in_place_pushes_after_the_first_are_plain_copies(inplace_engine, policy):
    model, tok = policy
    params = list(model.named_parameters())
    inplace_engine.load_weights(params)  # a complete push through vLLM's loader finds the plan
    assert isinstance(inplace_engine._plan, dict)
    assert set(inplace_engine._plan) == {n for n, _ in params}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        WeightSync(model, inplace_engine, tok, tolerance=ATOL)(iteration=1)  # checked: raises if stale
        (vllm_model,) = inplace_engine.llm.apply_model(lambda m: m)
        attn = model.model.layers[1].self_attn
        fused = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        assert torch.equal(vllm_model.model.layers[1].self_attn.qkv_proj.weight, fused)
        name, weight = params[-1]
        with pytest.raises(ValueError, match=f"weight push: {name} has shape"):
            inplace_engine.load_weights([(n, p) for n, p in params[:-1]] + [(name, weight[:1])])
    finally:
        model.load_state_dict(original)
        inplace_engine.load_weights(model.named_parameters())


class FiresAtFifth:
    """A stand-in repetition detector: fires on the 5th token it sees, counting primed ones."""

    def __init__(self):
        self.seen = 0

    def prime(self, prefix_ids):
        self.seen += len(prefix_ids)

    def feed(self, token):
        self.seen += 1
        return self.seen == 5


def test_repetition_stop_matches_the_hf_engine(engine, policy):
    model, tok = policy
    hf = HFEngine(model, tok, batch_size=16)
    requests = [GenerationRequest(p) for p in _prompts(tok)] + [GenerationRequest(_prompts(tok)[0], [10, 11])]
    params = SamplingParams(temperature=0.0, max_new_tokens=20, detector=FiresAtFifth)
    ours, theirs = engine.generate(requests, params), hf.generate(requests, params)
    for a, b, request in zip(ours, theirs, requests):
        assert (a.finish_reason, a.token_ids) == (b.finish_reason, b.token_ids)
        assert a.finish_reason == "repetition" and len(a.token_ids) == 5 - len(request.prefix_ids)
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=ATOL)


def test_repetition_stops_inside_vllm(engine, policy):
    """The logits processor ends a request one token after its detector fires (a forced stop
    token, which the engine then cuts), instead of letting it run to its cap."""
    from vllm import SamplingParams as VLLMSamplingParams

    from longrl.rollout.vllm_stop import EXTRA_KEY

    _, tok = policy
    prompt = _prompts(tok)[1]
    raw = VLLMSamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=[tok.eos_token_id], ignore_eos=True,
                             detokenize=False, extra_args={EXTRA_KEY: (FiresAtFifth, [10, 11], tok.eos_token_id)})
    (out,) = engine.llm.generate([{"prompt_token_ids": prompt + [10, 11]}], raw, use_tqdm=False)
    # primed with 2 tokens, the detector fires on the 3rd generated one; the 4th is the forced stop
    assert len(out.outputs[0].token_ids) == 4 and out.outputs[0].token_ids[-1] == tok.eos_token_id
    assert out.outputs[0].finish_reason == "stop"
    (free,) = engine.llm.generate([{"prompt_token_ids": prompt + [10, 11]}], VLLMSamplingParams(
        temperature=0.0, max_tokens=20, stop_token_ids=[tok.eos_token_id], ignore_eos=True, detokenize=False),
        use_tqdm=False)
    free_ids = list(free.outputs[0].token_ids)
    assert free_ids[:3] == list(out.outputs[0].token_ids[:3])  # same greedy tokens until the stop
    assert len(free_ids) == 20 and tok.eos_token_id not in free_ids  # unwatched, it runs to its cap


def test_eos_stops_like_the_hf_engine(engine, policy):
    model, tok = policy
    prompt = encode_prompt(tok, "1+1")
    (greedy,) = engine.generate([GenerationRequest(prompt)], SamplingParams(temperature=0.0, max_new_tokens=8))
    # make the 3rd greedy token the stop token: both engines must stop right after it
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=(greedy.token_ids[2],))
    ours = engine.generate([GenerationRequest(prompt)], params)[0]
    theirs = HFEngine(model, tok).generate([GenerationRequest(prompt)], params)[0]
    assert ours.finish_reason == theirs.finish_reason == "stop"
    assert ours.token_ids == theirs.token_ids == greedy.token_ids[:greedy.token_ids.index(greedy.token_ids[2]) + 1]


def test_partial_rollouts_continue_beside_new_samples_in_one_call(engine, policy):
    """vLLM batches ragged contexts, so an iteration's continuations and new samples share one
    call (rollout/partial.py); greedy trajectories built that way equal one-shot greedy runs."""
    from longrl.buffer import ReplayBuffer
    from longrl.config import PartialRolloutConfig
    from longrl.rollout.partial import partial_rollout
    from longrl.types import Prompt

    model, tok = policy
    prompts = [Prompt(f"p{i}", text) for i, text in enumerate(("1+2", "345+678", "77*8", "1+2+3+4+5+6"))]
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    one_shot = engine.generate([GenerationRequest(encode_prompt(tok, p.text)) for p in prompts], params)
    assert any(c.finish_reason == "length" for c in one_shot)  # some need all three segments
    calls = []
    generate = engine.generate
    engine.generate = lambda requests, p: calls.append([len(r.prefix_ids) for r in requests]) or generate(requests, p)
    try:
        fresh, buffer, done = iter(prompts), ReplayBuffer(), []
        cfg = PartialRolloutConfig(enabled=True, segment_tokens=10, max_age=5, token_budget=1000)
        for version in range(4):  # weights unchanged between iterations
            out, _ = partial_rollout(engine, tok, lambda text: encode_prompt(tok, text), buffer,
                                     lambda n: [p for _, p in zip(range(n), fresh)], cfg, 2, 1, params, version)
            done += out
    finally:
        engine.generate = generate
    assert len(calls) == 4  # one call per iteration
    assert any(0 in c and any(n > 0 for n in c) for c in calls)  # continuations beside new samples
    by_prompt = {t.prompt.id: t for t in done}
    assert sorted(by_prompt) == [p.id for p in prompts]
    for p, ref in zip(prompts, one_shot):
        assert by_prompt[p.id].response_ids == ref.token_ids


def test_request_seeds_make_sampling_repeat_from_a_saved_generator_state(policy):
    # rollout.vllm_request_seeds: the engine's generator (saved in checkpoints) fixes every sample,
    # so a resumed run draws what the uninterrupted one drew
    model, tok = policy
    engine = make_engine(RolloutConfig(engine="vllm", batch_size=8, vllm_request_seeds=True), model, tok, seed=3)
    requests = [GenerationRequest(p) for p in _prompts(tok)]
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    saved = engine.generator.get_state()
    first = [c.token_ids for c in engine.generate(requests, params)]
    second = [c.token_ids for c in engine.generate(requests, params)]
    engine.generator.set_state(saved)
    again = [c.token_ids for c in engine.generate(requests, params)]
    assert again == first != second
    del engine
