"""The chain-of-thought reward model (SPEC §6): a generative judge reasons step by step about a
response, then gives its verdict as JSON.

The judge reads `JUDGE_TEMPLATE` filled with the question, the reference answer and the response
(a file of your own with the same `{question}`, `{reference}` and `{response}` fields replaces it:
`template = "judge.txt"`), samples its reasoning, and must end with exactly one JSON object
`{"correct": true}` or `{"correct": false}`. Its output is read by `parse_verdict`; whatever it
says, a verdict is a score, never an exception:

| judge output | score | `info["reason"]` |
|---|---|---|
| one JSON object with a boolean `correct` | 1.0 or 0.0 | `ok` |
| no JSON object, and no verdict-like words | 0.0 | `no_verdict` |
| `correct: true` (or similar) written outside JSON | 0.0 | `verdict_outside_json` |
| a `{...}` that is not valid JSON | 0.0 | `broken_json` |
| JSON without a boolean `correct` | 0.0 | `bad_verdict` |
| two or more JSON verdicts | 0.0 | `several_verdicts` |
| the judge could not be reached (HTTP backend, after retries) | 0.0 | `judge_unavailable` |

Several verdicts score 0 even when they agree: a policy that writes `{"correct": true}` into its
own response hopes the judge will quote it, and a judge that echoes the response must not pay.

`train_judge` (`longrl rm train-judge`) fine-tunes a judge on verdict traces built from labelled
responses (the same JSONL as `longrl rm train`): for each row, the filled template as the prompt
and, as the answer, a short comparison and the verdict the label gives (`verdict_trace`); it runs
`longrl sft` on them and reports the judge's held-out accuracy (its verdicts, parsed as above,
against the labels).

Backends (`backend`):
- `engine`: the judge model (`model = DIR`) runs in this process on a longrl engine, batched.
- `http`: an OpenAI-compatible `/v1/chat/completions` endpoint (`url`, e.g. a vLLM server), with
  at most `concurrency` requests in flight, a timeout per request, and `retries` retries with
  exponential backoff on transport errors, timeouts, 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from longrl.types import Prompt, RewardResult

JUDGE_TEMPLATE = """You are grading a response to a problem against the reference answer.
Think step by step: find the response's final answer, compare it with the reference, and decide
whether they agree (the same value, however written). Then, on the last line, give your verdict
as one JSON object: {{"correct": true}} or {{"correct": false}}.

Problem:
{question}

Reference answer:
{reference}

Response:
{response}"""

_OUTSIDE_JSON = re.compile(r"\bcorrect\b\W{0,3}(true|false|yes|no)\b|\bverdict\b", re.IGNORECASE)


def parse_verdict(text: str) -> tuple[bool | None, str]:
    """(verdict, reason) of a judge's output (module docstring's table); verdict None unless `ok`."""
    objects, broken = [], False
    depth, start = 0, -1
    for i, ch in enumerate(text):  # top-level {...} spans; a JSON string with braces is rare in a verdict
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                try:
                    objects.append(json.loads(text[start:i + 1]))
                except json.JSONDecodeError:
                    broken = True
    if depth:  # an unclosed brace
        broken = True
    verdicts = [o for o in objects if isinstance(o, dict) and "correct" in o]
    if len(verdicts) > 1:
        return None, "several_verdicts"
    if len(verdicts) == 1:
        value = verdicts[0]["correct"]
        return (value, "ok") if isinstance(value, bool) else (None, "bad_verdict")
    if broken:
        return None, "broken_json"
    if objects:
        return None, "bad_verdict"
    if _OUTSIDE_JSON.search(text):
        return None, "verdict_outside_json"
    return None, "no_verdict"


@dataclass
class JudgeRewardConfig:
    """Options of the `judge` reward: a run's `[reward.judge]` table."""

    backend: Literal["engine", "http"] = field(default="engine", metadata={
        "help": "engine: the judge model runs in this process; http: an OpenAI-compatible server."})
    model: str = field(default="", metadata={
        "help": "engine: the judge's model directory; http: the model name sent to the server."})
    url: str = field(default="", metadata={"help": "http: the server's base URL (…/v1/chat/completions is added)."})
    template: str = field(default="", metadata={"help": "A file with the judge prompt ('' = the built-in one)."})
    max_new_tokens: int = field(default=512, metadata={"help": "The judge's longest answer."})
    temperature: float = field(default=0.0, metadata={"help": "The judge's sampling temperature (0 = greedy)."})
    batch_size: int = field(default=32, metadata={"help": "engine: responses judged together."})
    timeout_s: float = field(default=60.0, metadata={"help": "http: seconds a request may take."})
    retries: int = field(default=3, metadata={"help": "http: retries of a failed request."})
    concurrency: int = field(default=16, metadata={"help": "http: requests in flight at once."})
    device: str = field(default="auto", metadata={"help": "engine: auto (CUDA when present), cpu, cuda, cuda:N."})


def judge_prompt(template: str, prompt: Prompt, response: str) -> str:
    return template.format(question=prompt.text, reference=prompt.answer or "(none given)", response=response)


def _result(output: str | None, error: str | None = None) -> RewardResult:
    if output is None:
        return RewardResult(0.0, {"reason": "judge_unavailable", "judge_error": error})
    verdict, reason = parse_verdict(output)
    return RewardResult(float(verdict is True), {"reason": reason, "judge_output": output[-2000:]})


class Judge:
    """The `judge` reward: `(prompts, responses) -> [RewardResult]`."""

    def __init__(self, config: JudgeRewardConfig):
        from longrl.errors import ConfigError

        self.config = config
        self.template = Path(config.template).read_text() if config.template else JUDGE_TEMPLATE
        if config.backend == "http":
            if not config.url:
                raise ConfigError("reward judge: backend 'http' needs url = the server's base URL")
        elif not config.model:
            raise ConfigError("reward judge: backend 'engine' needs model = the judge's model directory")
        else:
            self._load_engine()

    def _load_engine(self) -> None:
        from longrl.config import RolloutConfig
        from longrl.device import resolve_device
        from longrl.models import load_policy
        from longrl.rollout.engine import make_engine

        model, self.tokenizer = load_policy(self.config.model)
        model = model.to(resolve_device(self.config.device))
        self.engine = make_engine(RolloutConfig(batch_size=self.config.batch_size), model, self.tokenizer)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        texts = [judge_prompt(self.template, p, r) for p, r in zip(prompts, responses)]
        if self.config.backend == "http":
            return [_result(out, err) for out, err in asyncio.run(self._ask_server(texts))]
        return [_result(out) for out in self._ask_engine(texts)]

    def _ask_engine(self, texts: list[str]) -> list[str]:
        from longrl.models import encode_prompt
        from longrl.types import GenerationRequest, SamplingParams

        c = self.config
        requests = [GenerationRequest(encode_prompt(self.tokenizer, t)) for t in texts]
        params = SamplingParams(temperature=c.temperature, max_new_tokens=c.max_new_tokens)
        completions = self.engine.generate(requests, params)
        return [self.tokenizer.decode(done.token_ids, skip_special_tokens=True) for done in completions]

    async def _ask_server(self, texts: list[str]) -> list[tuple[str | None, str | None]]:
        import httpx

        c = self.config
        slots = asyncio.Semaphore(c.concurrency)
        async with httpx.AsyncClient(base_url=c.url.rstrip("/"), timeout=c.timeout_s) as client:

            async def ask(text: str) -> tuple[str | None, str | None]:
                body = {"model": c.model or "judge", "messages": [{"role": "user", "content": text}],
                        "max_tokens": c.max_new_tokens, "temperature": c.temperature}
                error = "no attempt"
                async with slots:
                    for attempt in range(c.retries + 1):
                        if attempt:
                            await asyncio.sleep(min(0.1 * 2 ** attempt, 5.0) * (0.5 + random.random()))
                        try:
                            response = await client.post("/v1/chat/completions", json=body)
                        except httpx.HTTPError as exc:  # refused, reset, timed out
                            error = f"{type(exc).__name__}: {exc}"
                            continue
                        if response.status_code == 429 or response.status_code >= 500:
                            error = f"HTTP {response.status_code}"
                            continue
                        try:
                            response.raise_for_status()
                            return response.json()["choices"][0]["message"]["content"], None
                        except (httpx.HTTPStatusError, ValueError, KeyError, IndexError, TypeError) as exc:
                            return None, f"unusable answer from the judge server: {type(exc).__name__}: {exc}"
                return None, f"{c.retries + 1} attempts failed (last: {error})"

            return await asyncio.gather(*(ask(t) for t in texts))


def judge_reward(**options) -> Judge:
    return Judge(JudgeRewardConfig(**options))


# ----------------------------------------------------------------------------------------------
# Training a judge
# ----------------------------------------------------------------------------------------------


def verdict_trace(reference: str | None, response: str, label: int) -> str:
    """The judge output a labelled row teaches: the response's last line against the reference,
    then the label's verdict."""
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    last = lines[-1][-200:] if lines else "(empty)"
    agree = "They agree." if label else "They differ."
    return (f"The response ends with: {last}\nThe reference answer is: {reference or '(none given)'}\n{agree}\n"
            + json.dumps({"correct": bool(label)}))


def verdict_matches(prompt: Prompt, response: str) -> float:
    """1.0 when a judge output's verdict equals the label kept in `prompt.answer` ("true"/"false")."""
    verdict, _ = parse_verdict(response)
    return float(verdict is not None and verdict == (prompt.answer == "true"))


def train_judge(config, show_progress: bool = True) -> dict[str, float]:
    """`longrl rm train-judge` (a `JudgeTrainConfig`): returns the SFT job's metrics plus
    `judge/accuracy`."""
    from longrl.config import DataConfig, EvalConfig, RewardConfig, SFTConfig, dump_toml
    from longrl.rewards.rm import split_labelled
    from longrl.sft import run_sft

    template = Path(config.template).read_text() if config.template else JUDGE_TEMPLATE
    rows, held = split_labelled(config)
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "judge_config.toml").write_text(dump_toml(config))
    fill = lambda r: template.format(question=r.question, reference=r.reference or "(none given)",  # noqa: E731
                                     response=r.response)
    train_file, eval_file = run_dir / "verdict_traces.jsonl", run_dir / "held_out.jsonl"
    with train_file.open("w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": fill(r), "response": verdict_trace(r.reference, r.response, r.label)}) + "\n")
    with eval_file.open("w") as f:
        for i, r in enumerate(held):
            f.write(json.dumps({"id": f"held-{i}", "prompt": fill(r), "answer": "true" if r.label else "false"}) + "\n")
    sft = SFTConfig(name=config.name, out_dir=config.out_dir, seed=config.seed, threads=config.threads,
                    steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps,
                    rows_per_step=config.rows_per_step, row_tokens=config.row_tokens, log_every=config.log_every,
                    model=config.model, data=DataConfig(train=[f"jsonl:{train_file}"], eval=[f"jsonl:{eval_file}"]),
                    reward=RewardConfig(names=["longrl.rewards.judge:verdict_matches"], weights=[1.0]),
                    eval=EvalConfig(num_prompts=len(held), n_samples=1, temperature=0.0,
                                    max_new_tokens=config.max_new_tokens))
    metrics = run_sft(sft, show_progress=show_progress)
    return metrics | {"judge/accuracy": metrics["eval/pass@1"], "judge/held_out_rows": float(len(held)),
                      "judge/train_rows": float(len(rows))}
