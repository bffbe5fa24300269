"""Weight sync with its check, and the engine seam's `score` and continuation, on HFEngine."""

import pytest
import torch

from longrl.config import RolloutConfig
from longrl.models import encode_prompt, load_model, load_tokenizer, token_logprobs
from longrl.rollout.engine import HFEngine, make_engine
from longrl.types import GenerationRequest, SamplingParams
from longrl.weight_sync import WeightSync, WeightSyncError, default_sync_tolerance, sync_tolerance


def _perturb(model, scale=0.02):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.fixture()
def trainer_and_engine(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    engine = make_engine(RolloutConfig(engine="hf", batch_size=16), model, tok, seed=0)
    return model, engine, tok


def test_make_engine_gives_the_engine_its_own_copy(trainer_and_engine):
    model, engine, _ = trainer_and_engine
    assert isinstance(engine, HFEngine) and engine.model is not model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.parameters(), engine.model.parameters()))


def test_score_equals_a_plain_forward_pass(trainer_and_engine):
    model, engine, tok = trainer_and_engine
    prompt = encode_prompt(tok, "12+34")
    seq = prompt + tok("46 and so on", add_special_tokens=False).input_ids
    for temperature in (1.0, 0.6):
        got = torch.tensor(engine.score([seq], [len(prompt)], temperature)[0])
        with torch.no_grad():
            want = token_logprobs(model, torch.tensor([seq]), torch.arange(len(seq))[None], temperature)
        assert got.shape == (len(seq) - len(prompt),)
        torch.testing.assert_close(got, want[0, len(prompt):], rtol=0, atol=1e-5)


def test_sync_check_passes_after_a_real_push(trainer_and_engine):
    model, engine, tok = trainer_and_engine
    _perturb(model)
    metrics = WeightSync(model, engine, tok, tolerance=1e-4)(iteration=3)
    assert metrics["sync/probe_max_diff"] < 1e-5
    assert metrics["perf/weight_sync_s"] >= 0
    for a, b in zip(model.parameters(), engine.model.parameters()):
        assert torch.equal(a, b)


def test_sync_check_fails_loudly_when_weights_are_not_reloaded(trainer_and_engine, forgetful):
    model, engine, tok = trainer_and_engine
    _perturb(model)
    sync = WeightSync(model, forgetful(engine), tok, tolerance=1e-3)
    with pytest.raises(WeightSyncError, match=r"differ from the trainer's by .* > tol 0.001 after "
                                              r"sync at iteration 7: weights were not reloaded"):
        sync(iteration=7)


def test_sync_check_off_at_zero_tolerance(trainer_and_engine, forgetful):
    model, engine, tok = trainer_and_engine
    _perturb(model)
    assert "sync/probe_max_diff" not in WeightSync(model, forgetful(engine), tok, tolerance=0)(1)


def test_three_greedy_segments_equal_one_greedy_run(trainer_and_engine):
    _, engine, tok = trainer_and_engine
    prompts = [encode_prompt(tok, t) for t in ("1+2", "345+678", "9*9")]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=36)
    whole = engine.generate([GenerationRequest(p) for p in prompts], greedy)
    prefixes = [[] for _ in prompts]
    for _ in range(3):
        parts = engine.generate([GenerationRequest(p, pre, max_new_tokens=12)
                                 for p, pre in zip(prompts, prefixes)], greedy)
        for pre, part in zip(prefixes, parts):
            assert part.finish_reason == "budget" and len(part.token_ids) == 12
            pre.extend(part.token_ids)
    for one, pre in zip(whole, prefixes):
        assert one.finish_reason == "length" and one.token_ids == pre


def test_sync_tolerance_follows_the_dtype_when_left_at_its_default():
    assert default_sync_tolerance("float32") == 1e-3
    assert default_sync_tolerance(torch.bfloat16) == 0.25
    assert sync_tolerance(1e-3, "bfloat16") == 0.25  # the config default: follow the dtype
    assert sync_tolerance(1e-3, "float32") == 1e-3
    assert sync_tolerance(0.5, "bfloat16") == 0.5  # set on purpose: kept
    assert sync_tolerance(0.0, "bfloat16") == 0.0  # the check turned off stays off
    with pytest.raises(ValueError, match="int8"):
        default_sync_tolerance("int8")


def test_bf16_engine_passes_after_a_push_and_catches_a_lost_one(tiny_model_dir, forgetful):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, "bfloat16")
    engine = make_engine(RolloutConfig(engine="hf", batch_size=16), model, tok, seed=0)  # a bf16 copy
    model.float()  # the trainer's float32 masters (longrl.device)
    _perturb(model)
    tolerance = sync_tolerance(RolloutConfig().sync_check_tolerance, "bfloat16")
    metrics = WeightSync(model, engine, tok, tolerance=tolerance)(iteration=1)
    assert 0 < metrics["sync/probe_max_diff"] < 0.02  # bf16 rounding only (4e-3 measured)
    _perturb(model, scale=0.5)  # a policy far from the engine's
    with pytest.raises(WeightSyncError, match="tol 0.25"):
        WeightSync(model, forgetful(engine), tok, tolerance=tolerance)(iteration=2)
