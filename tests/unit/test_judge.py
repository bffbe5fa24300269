"""The chain-of-thought judge: its verdict parser on crafted outputs, the HTTP backend against a
local stub server (slow answers, errors, a server that dies), and the in-process engine."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longrl.config import ConfigError, RewardConfig
from longrl.rewards.judge import JUDGE_TEMPLATE, judge_prompt, judge_reward, parse_verdict
from longrl.rewards.registry import build_rewards
from longrl.types import Prompt


@pytest.mark.parametrize("output, verdict, reason", [
    ('The response says 7, the reference is 7. They agree.\n{"correct": true}', True, "ok"),
    ('Answer 8 vs reference 7.\n{"correct": false}', False, "ok"),
    ('{ "correct" : true , "why": "same value {7}" }', True, "ok"),
    ("The answers agree.", None, "no_verdict"),
    ("", None, "no_verdict"),
    ('They agree.\n{"correct": true', None, "broken_json"),
    ("They agree.\n{correct: true}", None, "broken_json"),
    ("They agree. correct: true", None, "verdict_outside_json"),
    ("Verdict - they agree", None, "verdict_outside_json"),
    ('{"correct": "yes"}', None, "bad_verdict"),
    ('{"score": 1}', None, "bad_verdict"),
    ('The response contains {"correct": true}. But it is wrong.\n{"correct": false}', None, "several_verdicts"),
    ('{"correct": true}\n{"correct": true}', None, "several_verdicts"),
])
def test_parse_verdict_on_crafted_outputs(output, verdict, reason):
    assert parse_verdict(output) == (verdict, reason)


def test_the_template_names_question_reference_and_response():
    text = judge_prompt(JUDGE_TEMPLATE, Prompt("p", "3+4", answer="7"), "A: 7")
    assert "Problem:\n3+4" in text and "Reference answer:\n7" in text and text.endswith("Response:\nA: 7")
    assert '{"correct": true}' in text


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose answer depends on the response being judged:
    SLOW sleeps past the client's timeout once, then answers; FLAKY answers 503 twice; RIGHT and
    WRONG get a verdict; JUNK gets no verdict."""

    calls: dict[str, int] = {}

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        key = text.rsplit("Response:\n", 1)[1]
        _Stub.calls[key] = _Stub.calls.get(key, 0) + 1
        if key == "SLOW" and _Stub.calls[key] == 1:
            time.sleep(1.5)
        if key == "FLAKY" and _Stub.calls[key] <= 2:
            self.send_response(503)
            self.end_headers()
            return
        content = {"RIGHT": 'Same value.\n{"correct": true}', "WRONG": '{"correct": false}',
                   "SLOW": '{"correct": true}', "FLAKY": '{"correct": true}', "JUNK": "no idea"}[key]
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextlib.contextmanager
def _stub_server():
    _Stub.calls = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _judge(url, **options):
    config = RewardConfig(names=["judge"], options={"judge": {"backend": "http", "url": url, "timeout_s": 1.0,
                                                              "retries": 3, "concurrency": 4, **options}})
    (reward, _), = build_rewards(config).values()
    return reward


def test_http_judge_scores_retries_and_records_unusable_answers():
    with _stub_server() as (_, url):
        reward = _judge(url)
        keys = ["RIGHT", "WRONG", "SLOW", "FLAKY", "JUNK"]
        results = reward([Prompt(k, "3+4", answer="7") for k in keys], keys)
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert [r.info["reason"] for r in results] == ["ok", "ok", "ok", "ok", "no_verdict"]
    assert _Stub.calls["SLOW"] == 2 and _Stub.calls["FLAKY"] == 3  # a timeout and two 503s, retried


def test_http_judge_against_a_dead_server_is_a_recorded_zero():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = _judge(f"http://127.0.0.1:{port}", retries=1)
    start = time.monotonic()
    results = reward([Prompt("a", "3+4", answer="7")] * 3, ["A: 7"] * 3)
    assert time.monotonic() - start < 10
    assert all(r.score == 0.0 and r.info["reason"] == "judge_unavailable" for r in results)
    assert "2 attempts failed" in results[0].info["judge_error"]


def test_http_judge_when_the_server_dies_mid_run():
    with _stub_server() as (server, url):
        reward = _judge(url, retries=1)
        assert reward([Prompt("a", "q", answer="7")], ["RIGHT"])[0].score == 1.0
    results = reward([Prompt("a", "q", answer="7")], ["RIGHT"])  # the server is gone
    assert results[0].score == 0.0 and results[0].info["reason"] == "judge_unavailable"


def test_engine_judge_runs_a_model_in_process(tiny_model_dir):
    reward = judge_reward(model=str(tiny_model_dir), max_new_tokens=8)
    results = reward([Prompt("a", "3+4", answer="7")] * 2, ["A: 7", "A: 8"])
    # a random tiny model gives no verdict: a recorded zero with its reason, not an exception
    assert [r.score for r in results] == [0.0, 0.0]
    assert all(r.info["reason"] in ("no_verdict", "broken_json", "verdict_outside_json") for r in results)


def test_judge_options_are_checked():
    with pytest.raises(ConfigError, match="needs url"):
        judge_reward(backend="http")
    with pytest.raises(ConfigError, match="needs model"):
        judge_reward()


def test_train_judge_builds_verdict_traces_and_measures_held_out_accuracy(tmp_path, tiny_model_dir):
    import random

    from longrl.cli import main
    from longrl.rewards.judge import verdict_trace

    rng, rows = random.Random(0), []
    for _ in range(40):
        a, b, good = rng.randint(1, 9), rng.randint(1, 9), rng.random() < 0.5
        rows.append({"prompt": f"{a}+{b}", "reference": str(a + b), "response": f"A: {a + b + (0 if good else 1)}",
                     "label": int(good)})
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["rm", "train-judge", f"data={data}", f"model.path={tiny_model_dir}", f"out_dir={tmp_path}",
                 "steps=5", "rows_per_step=2", "row_tokens=512", "max_new_tokens=16", "--no-progress"]) == 0
    run = tmp_path / "judge"
    traces = [json.loads(line) for line in (run / "verdict_traces.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (run / "held_out.jsonl").read_text().splitlines()]
    assert len(traces) == 32 and len(held) == 8  # eval_fraction 0.2
    assert all(parse_verdict(t["response"])[1] == "ok" for t in traces)  # every trace ends in one verdict
    assert verdict_trace("7", "2+5=7\nA: 7", 1) == 'The response ends with: A: 7\nThe reference answer is: 7\nThey agree.\n{"correct": true}'
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["eval/prompts"] == 8 and evaluated["eval/samples_per_prompt"] == 1
    assert 0.0 <= evaluated["eval/pass@1"] <= 1.0
    judge = judge_reward(model=str(run / "final"), max_new_tokens=16)  # the trained judge loads as the reward
    assert len(judge([Prompt("a", "3+4", answer="7")], ["A: 7"])) == 1
