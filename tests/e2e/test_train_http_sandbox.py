"""The `code` reward through `longrl sandbox serve`, started as a user would start it.

1. The `http` backend scores HumanEval-style, stdin/stdout and assert-style solutions exactly
   as the `local` backend does (same scores, same info), one request per judged program.
2. `longrl train` with `[reward.code] backend = "http"` runs RL on a tiny model over a JSONL of
   code prompts, and its rewards come from that service.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import httpx
import pytest

from longrl.data.sources import load_humaneval
from longrl.sandbox.load import spawned_service
from longrl.rewards.code import CodeReward, CodeRewardConfig, code_reward
from longrl.types import Prompt


@contextlib.contextmanager
def sandbox_service(log_path: Path, workers: int = 2):
    """`longrl sandbox serve` in a subprocess on a free port; yields its base URL."""
    with spawned_service(workers, log_path=log_path) as (url, _):
        yield url


def completed_runs(url: str) -> int:
    """Requests the service has finished judging (its pool counter)."""
    return httpx.get(f"{url}/health", timeout=10).json()["completed"]


@pytest.fixture(scope="module")
def service_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sandbox") / "serve.log"


@pytest.fixture(scope="module")
def service(service_log):
    with sandbox_service(service_log) as url:
        yield url


# -- 1. http judges like local -----------------------------------------------------------------

ADD_IO = [{"stdin": "1 2\n", "expected_stdout": "3\n"}, {"stdin": "-4 1", "expected_stdout": "-3"},
          {"input": "0 0", "output": "0\n"}]  # fmt: skip
ADD_FN = [{"assert": "assert add(1, 2) == 3"}, {"assert": "assert add(-1, 1) == 0"},
          {"assert": "assert add(5, 5) == 10"}]  # fmt: skip


def _cases() -> tuple[list[Prompt], list[str], list[float], list[float]]:
    """Prompts, responses, expected all-or-nothing scores, expected partial-credit scores."""
    humaneval = load_humaneval(limit=4)
    prompts = humaneval * 2
    responses = [p.meta["canonical_solution"] for p in humaneval] + ["    return None\n"] * 4
    strict, partial = [1.0] * 4 + [0.0] * 4, [1.0] * 4 + [0.0] * 4
    io, fn = Prompt("add_io", "add", tests=ADD_IO), Prompt("add_fn", "add", tests=ADD_FN)
    cpp = Prompt("add_cpp", "add", tests=ADD_IO, meta={"language": "cpp"})
    more = [
        (io, "```python\na, b = map(int, input().split())\nprint(a + b)\n```", 1.0, 1.0),
        (io, "```python\na, b = map(int, input().split())\nprint(abs(a) + b)\n```", 0.0, 2 / 3),
        (io, "```python\nimport time\ntime.sleep(60)\n```", 0.0, 0.0),
        (fn, "```python\ndef add(a, b):\n    return a + b + (a == 5)\n```", 0.0, 2 / 3),
        (fn, "```python\nimport os\nos._exit(0)\n```", 0.0, 0.0),
        (cpp, "```cpp\n#include <iostream>\n"
              "int main(){long a,b;std::cin>>a>>b;std::cout<<a+b;}\n```", 1.0, 1.0),  # fmt: skip
        (cpp, "```cpp\nint main() { oops }\n```", 0.0, 0.0),
    ]
    prompts += [m[0] for m in more]
    responses += [m[1] for m in more]
    strict += [m[2] for m in more]
    partial += [m[3] for m in more]
    return prompts, responses, strict, partial


@pytest.mark.parametrize("partial_credit", [False, True])
def test_http_backend_scores_exactly_like_the_local_backend(service, partial_credit):
    prompts, responses, strict, partial = _cases()
    options = {"partial_credit": partial_credit, "run_timeout_s": 2.0}
    local = CodeReward(CodeRewardConfig(max_workers=2, **options))
    http = code_reward(backend="http", url=service, **options)
    before = completed_runs(service)
    over_http = http(prompts, responses)
    requests = completed_runs(service) - before
    here = local(prompts, responses)
    assert [r.score for r in over_http] == (partial if partial_credit else strict)
    assert [(r.score, r.info) for r in over_http] == [(r.score, r.info) for r in here]
    # One request per judged program: a stdin/stdout batch, or the harness of the asserts.
    assert requests == len(prompts)


# -- 2. training against the service -----------------------------------------------------------

TRAIN = [
    {"id": f"sq{i}", "text": f"Write square(x) in Python; square({i}) is {i * i}.",
     "tests": [{"assert": f"assert square({i}) == {i * i}"}, {"assert": "assert square(0) == 0"}]}
    for i in range(3)
] + [
    {"id": f"echo{i}", "text": "Print the line you read.",
     "tests": [{"stdin": f"{i}\n", "expected_stdout": f"{i}\n"}]}
    for i in range(3)
]  # fmt: skip
HELD_OUT = [{"id": "sq_eval", "text": "Write square(x) in Python.",
             "tests": [{"assert": "assert square(7) == 49"}]}]  # fmt: skip
ITERATIONS, PROMPTS_PER_ITER, SAMPLES = 2, 4, 2


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_train_scores_code_prompts_through_the_sandbox_service(
    service, service_log, tiny_model_dir, tmp_path
):
    from longrl.cli import main

    train = _jsonl(tmp_path / "train.jsonl", TRAIN)
    held_out = _jsonl(tmp_path / "eval.jsonl", HELD_OUT)
    config = tmp_path / "code.toml"
    config.write_text(f"""
name = "code"
out_dir = {json.dumps(str(tmp_path))}
iterations = {ITERATIONS}
log_samples = 2

[model]
path = {json.dumps(str(tiny_model_dir))}

[data]
train = [{json.dumps("jsonl:" + train)}]
eval = [{json.dumps("jsonl:" + held_out)}]

[rollout]
prompts_per_iter = {PROMPTS_PER_ITER}
samples_per_prompt = {SAMPLES}
max_new_tokens = 16

[train]
mini_batch_size = 8
row_tokens = 256

[eval]
every = 0
num_prompts = 1
n_samples = 1
max_new_tokens = 16

[reward]
names = ["code"]

[reward.code]
backend = "http"
url = "{service}"
run_timeout_s = 5
""")
    before = completed_runs(service)
    assert main(["train", str(config), "--no-progress"]) == 0
    run = tmp_path / "code"
    assert (run / "final" / "config.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "reward/mean" in r]
    assert len(scored) == ITERATIONS and all(0.0 <= r["reward/mean"] <= 1.0 for r in scored)
    assert all(r.get("reward/errors", 0.0) == 0.0 for r in scored)  # no request failed
    # Every sampled response was judged by the service: one request each, at least.
    assert completed_runs(service) - before >= ITERATIONS * PROMPTS_PER_ITER * SAMPLES
    assert "Traceback" not in service_log.read_text()  # the service answered every request
