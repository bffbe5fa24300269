"""The engine contract (`rollout/contract.py`): caps, stops, finish reasons, log-prob temperature,
each rule on hand-written cases; then the HF engine at the model's position limit."""

import pytest

from longrl.models import load_model, load_tokenizer
from longrl.rollout.contract import (
    ends_response, finish_reason, logprob_temperature, primed_detector, request_budget, stop_cause,
    stop_token_ids)
from longrl.rollout.engine import HFEngine
from longrl.rollout.sample import segment_finish as trajectory_finish_reason
from longrl.types import GenerationRequest, SamplingParams


def _request(prompt=4, prefix=0, cap=None):
    return GenerationRequest([1] * prompt, [2] * prefix, cap)


class FiresOn:
    """A stand-in repetition detector that fires when it is fed `token`; records what it saw."""

    def __init__(self, token=9):
        self.token, self.primed, self.fed = token, [], []

    def prime(self, prefix_ids):
        self.primed += prefix_ids

    def feed(self, token):
        self.fed.append(token)
        return token == self.token


@pytest.mark.parametrize("request_cap, params_cap, max_positions, prompt, prefix, expected", [
    (None, 16, None, 4, 0, 16),    # only the sampling cap
    (5, 16, None, 4, 0, 5),        # the request's own cap is lower
    (30, 16, None, 4, 0, 16),      # a request cannot raise the sampling cap
    (None, 16, None, 4, 100, 16),  # earlier segments do not count against the sampling cap
    (None, 16, 24, 4, 0, 16),      # room 24 - 4 = 20 > 16
    (None, 16, 24, 4, 6, 14),      # room 24 - (4 + 6) = 14
    (8, 16, 24, 4, 13, 7),         # room 24 - 17 = 7 < 8 < 16
    (8, 16, 24, 4, 19, 1),         # one position left
])
def test_request_budget_is_the_least_of_the_caps(request_cap, params_cap, max_positions, prompt,
                                                 prefix, expected):
    request = _request(prompt, prefix, request_cap)
    assert request_budget(request, SamplingParams(max_new_tokens=params_cap), max_positions) == expected


@pytest.mark.parametrize("prefix", [20, 21])
def test_a_context_without_room_is_an_error(prefix):
    fits_not = f"context of {4 + prefix} tokens does not fit the model's 24 positions"
    with pytest.raises(ValueError, match=fits_not):
        request_budget(_request(4, prefix, cap=3), SamplingParams(max_new_tokens=16), 24)


def test_stop_set_is_eos_plus_the_given_ids_sorted():
    assert stop_token_ids(2, SamplingParams(stop_token_ids=(7, 2, 5))) == [2, 5, 7]
    assert stop_token_ids(2, SamplingParams()) == [2]
    assert stop_token_ids(None, SamplingParams(stop_token_ids=(3,))) == [3]


def test_stop_cause_and_its_precedence():
    detector = FiresOn(token=9)
    assert [stop_cause(t, [2, 9], None) for t in (4, 2, 9)] == [None, "stop", "stop"]
    assert stop_cause(4, [2], detector) is None
    assert stop_cause(9, [2], detector) == "repetition"
    assert stop_cause(9, [2, 9], detector) == "stop"  # fires on a stop token: the stop token wins
    assert detector.fed == [4, 9, 9]  # every token is fed, the stop token too


def test_primed_detector_has_seen_the_earlier_segments():
    assert primed_detector(None, [1, 2]) is None
    detector = primed_detector(FiresOn, (5, 6))
    assert isinstance(detector, FiresOn) and detector.primed == [5, 6] and detector.fed == []


@pytest.mark.parametrize("request_cap, params_cap, max_positions, prefix, n, expected", [
    (None, 16, None, 0, 16, "length"),  # the sampling cap
    (5, 16, None, 0, 5, "budget"),      # the request's own cap, below the sampling cap
    (16, 16, None, 0, 16, "length"),    # equal caps: the sampling cap binds too
    (30, 16, None, 0, 16, "length"),    # a request cap above the sampling cap never binds
    (8, 16, 24, 0, 8, "budget"),        # room 20: the request's cap binds alone
    (8, 16, 24, 13, 7, "length"),       # room 7 < 8: the model's positions bind, nothing can follow
    (7, 16, 24, 13, 7, "length"),       # room 7 = 7: continuing could not generate more
    (None, 16, 24, 13, 7, "length"),
])
def test_running_to_the_cap_is_budget_only_when_the_request_cap_binds_alone(
        request_cap, params_cap, max_positions, prefix, n, expected):
    request, params = _request(4, prefix, request_cap), SamplingParams(max_new_tokens=params_cap)
    assert finish_reason(request, params, None, n, max_positions) == expected


def test_a_stop_is_its_own_reason_at_any_length():
    request, params = _request(cap=5), SamplingParams(max_new_tokens=16)
    assert finish_reason(request, params, "stop", 1) == "stop"
    assert finish_reason(request, params, "repetition", 5) == "repetition"


def test_a_completion_short_of_its_cap_without_a_stop_breaks_the_contract():
    with pytest.raises(RuntimeError, match="returned 4 tokens without a stop, but the request's cap is 5"):
        finish_reason(_request(cap=5), SamplingParams(max_new_tokens=16), None, 4)


def test_only_budget_leaves_a_response_open():
    assert [ends_response(r) for r in ("stop", "repetition", "length", "budget")] == [True, True, True, False]
    # partial rollouts: `budget` continues unless the response reached the total cap
    assert trajectory_finish_reason("budget", 60, 100) is None
    assert trajectory_finish_reason("budget", 100, 100) == "length"
    assert trajectory_finish_reason("length", 20, 100) == "length"
    assert trajectory_finish_reason("repetition", 100, 100) == "repetition"


def test_greedy_reports_log_probs_at_temperature_one():
    assert [logprob_temperature(t) for t in (0.0, -1.0, 0.7, 1.0)] == [1.0, 1.0, 0.7, 1.0]


def test_hf_engine_at_the_position_limit_finishes_as_length(tiny_model_dir):
    """A continuation cut by the model's positions cannot continue: `length`, not `budget` (a
    partial rollout would otherwise send it back and fail on a context with no room)."""
    tok = load_tokenizer(tiny_model_dir)
    engine = HFEngine(load_model(tiny_model_dir), tok, batch_size=4)
    positions = engine.max_positions
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)  # greedy picks no EOS on these
    near_end = GenerationRequest([5] * 4, [6] * (positions - 7), max_new_tokens=8)  # room 3
    middle = GenerationRequest([5] * 4, [6] * 10, max_new_tokens=8)
    out = engine.generate([near_end, middle], greedy)
    assert [(len(c.token_ids), c.finish_reason) for c in out] == [(3, "length"), (8, "budget")]
