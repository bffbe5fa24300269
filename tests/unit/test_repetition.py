"""Repetition detection: exact detection points on crafted streams, the engine hook, the penalty."""

from longrl.config import RepetitionConfig
from longrl.rollout.repetition import RepetitionDetector, apply_penalty
from longrl.types import GenerationRequest, Prompt, SamplingParams, Segment, Trajectory


def _first_hit(config, stream, prefix=()):
    d = RepetitionDetector(config)
    d.prime(prefix)
    hits = [i for i, t in enumerate(stream) if d.feed(t)]
    assert len(hits) <= 1  # fires at most once
    return (hits[0], d.fired) if hits else (None, None)


LOOP = RepetitionConfig(min_period=1, max_period=8, loop_repeats=3, min_loop_tokens=6, ngram_size=0)
NGRAM = RepetitionConfig(min_period=1, max_period=1, loop_repeats=2, min_loop_tokens=10**6,
                         ngram_size=3, ngram_repeats=2)


def test_loop_fires_at_the_token_completing_the_last_copy():
    # "abc" x 3: positions 3..8 equal the token 3 back; run[3] reaches (3-1)*3 = 6 at index 8
    assert _first_hit(LOOP, [1, 2, 3] * 5) == (8, "loop")
    # period 1 needs ceil(6/1) = 6 copies -> index 5; period 2 needs 3 copies of "aa" -> also index 5
    assert _first_hit(LOOP, [7] * 10) == (5, "loop")
    # a loop after a non-repeating head: head of 4, then "ab" x 3 spans 6 tokens -> index 4 + 5 = 9
    assert _first_hit(LOOP, [9, 8, 7, 6] + [1, 2] * 4) == (9, "loop")
    # period 5 > loop_repeats needs only 3 copies (15 tokens >= 6): index 14
    assert _first_hit(LOOP, [1, 2, 3, 4, 5] * 4) == (14, "loop")


def test_short_natural_runs_and_long_periods_do_not_fire():
    assert _first_hit(LOOP, [1, 0, 0, 0, 2, 0, 0, 0, 3]) == (None, None)  # "1000" runs of 3 < 6
    assert _first_hit(LOOP, list(range(9)) * 2) == (None, None)  # period 9 > max_period 8
    assert _first_hit(LOOP, [1, 2, 3, 1, 2, 3, 4]) == (None, None)  # two copies only


def test_ngram_fires_on_the_second_occurrence_even_when_not_adjacent():
    assert _first_hit(NGRAM, [1, 2, 3, 9, 1, 2, 3]) == (6, "ngram")
    assert _first_hit(NGRAM, [1, 2, 3, 9, 1, 2, 4, 1, 2]) == (None, None)
    three = RepetitionConfig(min_period=1, max_period=1, min_loop_tokens=10**6, ngram_size=2, ngram_repeats=3)
    assert _first_hit(three, [5, 6, 0, 5, 6, 1, 5, 6]) == (7, "ngram")


def test_primed_prefix_counts_but_does_not_report():
    assert _first_hit(LOOP, [1, 2, 3], prefix=[1, 2, 3, 1, 2, 3]) == (2, "loop")
    # a repetition already inside the prefix stays silent afterwards
    assert _first_hit(NGRAM, [4, 5], prefix=[1, 2, 3, 1, 2, 3]) == (None, None)


def test_engine_stops_a_request_when_its_detector_fires(tiny_model_dir):
    from longrl.models import encode_prompt, load_model, load_tokenizer
    from longrl.rollout.engine import HFEngine

    tok = load_tokenizer(tiny_model_dir)
    engine = HFEngine(load_model(tiny_model_dir), tok, batch_size=8)
    primed = []

    class FiresAtFifth:
        def __init__(self):
            self.n = 0

        def prime(self, prefix):
            primed.append(list(prefix))

        def feed(self, token):
            self.n += 1
            return self.n == 5

    ids = encode_prompt(tok, "1+2")
    requests = [GenerationRequest(ids), GenerationRequest(ids, prefix_ids=[ids[-1]]), GenerationRequest(ids, max_new_tokens=3)]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop_token_ids=(), detector=FiresAtFifth)
    # no EOS possible: make EOS unreachable by checking only requests that did not stop
    out = engine.generate(requests, params)
    for completion in out[:2]:
        if completion.finish_reason != "stop":
            assert completion.finish_reason == "repetition" and len(completion.token_ids) == 5
    assert out[2].finish_reason in ("budget", "stop") and len(out[2].token_ids) <= 3
    assert sorted(map(len, primed)) == [0, 0, 1]
    plain = engine.generate(requests[:1], SamplingParams(max_new_tokens=12))[0]
    assert plain.finish_reason != "repetition"


def test_penalty_is_reward_side_and_recorded():
    p = Prompt(id="x", text="1+1", answer="2")
    ts = [Trajectory(p, i, [1], [Segment([2], [0.0], 0)], reason, reward=1.0)
          for i, reason in enumerate(["stop", "repetition"])]
    m = apply_penalty(ts, 0.5)
    assert [t.reward for t in ts] == [1.0, 0.5]
    assert ts[1].reward_info == {"repetition_penalty": -0.5} and ts[0].reward_info == {}
    assert m == {"reward/repetition_share": 0.5}
