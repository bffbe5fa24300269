"""HumanEval through the sandbox service: all 164 canonical solutions pass, wrong ones fail."""

from __future__ import annotations

import pytest

from longrl.data.sources import load_humaneval
from longrl.rewards.code import CodeReward, CodeRewardConfig
from longrl.sandbox.server import ServerConfig
from tests.e2e.test_sandbox_service import serve


@pytest.fixture(scope="module")
def http_reward():
    with serve(ServerConfig(workers=2, queue=400)) as (url, _app):
        yield CodeReward(CodeRewardConfig(backend="http", url=url, run_timeout_s=10))


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_loader_returns_all_164_problems(problems):
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.meta["entry_point"] == "has_close_elements"
    assert (
        first.tests[0]["entry_point"] == "has_close_elements"
        and "def check" in first.tests[0]["test"]
    )


def test_all_canonical_solutions_pass(http_reward, problems):
    results = http_reward(problems, [p.meta["canonical_solution"] for p in problems])
    failed = [(p.id, r.info) for p, r in zip(problems, results) if r.score != 1.0]
    assert failed == []


def test_wrong_solutions_fail(http_reward, problems):
    # Another problem's (correct) solution, and a stub, both under this problem's signature.
    shifted = [problems[(i + 1) % len(problems)] for i in range(len(problems))]
    wrong = [f"```python\n{q.meta['prompt']}{q.meta['canonical_solution']}\n```" for q in shifted]
    stubs = ["    return None\n"] * 40
    results = http_reward(problems + problems[:40], wrong + stubs)
    passed = [p.id for p, r in zip(problems + problems[:40], results) if r.score != 0.0]
    assert passed == []
