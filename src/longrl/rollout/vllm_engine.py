"""The vLLM engine: colocated with the trainer in this process (SPEC §8, hybrid deployment).

`VLLMEngine` implements the `InferenceEngine` seam of `rollout/engine.py` on `vllm.LLM`, run
in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so that weights pass from the trainer as tensors,
with no serialisation, and the engine shares the device and memory with the trainer.

What it promises, and how (the caps, stops and finish reasons of `rollout/contract.py`, as
`HFEngine`):
- Log-probs under the temperature-scaled distribution softmax(logits / T), the quantity the
  trainer recomputes (`longrl.models.token_logprobs`): vLLM's default reports log-probs of the raw
  logits, so the engine is built with `logprobs_mode="processed_logprobs"`. Greedy decoding
  (T = 0) reports log-probs at T = 1, as `HFEngine` does.
- Continuation of a partial rollout: the context is `prompt_ids + prefix_ids`, and prefix caching
  reuses the KV blocks that the k samples of a prompt, or an earlier segment, already filled.
- `load_weights(named tensors)`, then `reset_prefix_cache()` (cached KV blocks were computed by
  the old weights and must not be reused). Two paths:
  - vLLM's reload (`collective_rpc("reload_weights")`, the default): rebuilds each layer and
    re-runs its post-load processing; on CPU that repacks every linear layer's weight into
    oneDNN's blocked layout (vLLM keeps only the packed copy). SmolLM2-135M: 5-7x a plain copy.
  - in place (`rollout.vllm_inplace_sync`, CPU only): the engine is built with plain weight
    tensors, and a push is the model's own `load_weights`, which maps checkpoint names onto
    vLLM's fused q/k/v and gate/up tensors and copies into them: no layer rebuilt, nothing
    repacked, a tied LM head stays the embedding's tensor; a push that leaves any vLLM
    parameter unwritten raises. SmolLM2-135M: 1.2x a plain copy, but unpacked products decode
    at ~0.8x, so it pays only when syncs cost more than a fifth of the rollouts.
- `sleep()/wake()`: vLLM's sleep mode frees the weights and KV cache of a GPU engine while the
  trainer steps. vLLM's CPU build has no sleep mode; there they do nothing.

Tensor parallelism (`tensor_parallel_size` > 1, `rollout.vllm_tensor_parallel_size`): the model
is sharded over that many devices by vLLM's own worker processes (its `mp` executor; the engine
core stays in this process). Log-probs, continuation, scoring and the sync probe are unchanged; a
weight push sends every worker the whole checkpoint-named state, of which each loads its slices
(vLLM's loaders shard by rank), so there is no in-place push. On CPU each rank is bound to its
own cores (`_cpu_rank_cores`), which is how the sharded path is tested on a CPU-only machine.

Deviations, on purpose:
- top-p < 1: vLLM's processed log-probs are those of the renormalised nucleus distribution,
  while `HFEngine` reports the full temperature-scaled distribution. The gap is log(kept mass)
  per token; use `train.recompute_old_logprobs=true` with top-p < 1 on this engine.
- `score()` uses vLLM's prompt log-probs, which vLLM always takes from the raw logits: it scores
  at T = 1 (or 0) only and refuses other temperatures rather than answer wrongly.
- Repetition detection (`SamplingParams.detector`) stops a request inside vLLM: a logits
  processor (`rollout/vllm_stop.py`) feeds each request's tokens to its detector and, once it
  fires, forces a stop token at the next step. The completion is then cut at the token where the
  detector fired (the forced token dropped), finish reason `repetition`: the same tokens and
  log-probs as `HFEngine`'s early stop, one extra decoding step per stopped request.
- Sampling is seeded once (the `LLM`'s seed) by default: a run repeats from its start, not across
  a resume (the engine's RNG lives inside vLLM and is not saved). With `request_seeds`
  (`rollout.vllm_request_seeds`) every request carries a seed drawn from the engine's own torch
  `generator`, which checkpoints save like the HF engine's, so a resumed run samples what the
  uninterrupted one did (given the same batches on the same hardware: vLLM's logits are not
  batch-invariant). Off by default: per-request generators take a slower path in vLLM's sampler.

Measured limits of vLLM CPU 0.32 here: its attention kernels refuse head_dim 16 (use heads of
width >= 32 in tiny models), and after it starts it replaces `torch.set_num_threads` in this
process with a no-op (it has bound its OpenMP threads): set threads before building the engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from longrl.rollout.contract import (
    finish_reason, primed_detector, request_budget, stop_cause, stop_token_ids)
from longrl.types import Completion, GenerationRequest, SamplingParams


@contextlib.contextmanager
def _cpu_rank_cores(tensor_parallel_size: int):
    """While a sharded CPU engine starts, bind each of its worker processes to its own cores.

    vLLM's default binding ("auto") gives each rank a NUMA node of its own and refuses to start
    when there are fewer nodes than ranks (one node here). Unless `VLLM_CPU_OMP_THREADS_BIND` is
    set, rank r gets the r-th of `tensor_parallel_size` contiguous slices of this process's
    allowed cores ("0|1" for two ranks on two cores), or no binding when there are fewer cores
    than ranks. Set only for the build: an unsharded engine built later keeps vLLM's default.
    """
    if tensor_parallel_size == 1 or torch.cuda.is_available() or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        yield
        return
    import vllm.envs

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < tensor_parallel_size:
        bind = "nobind"
    else:
        size = len(cores) // tensor_parallel_size
        bind = "|".join(",".join(map(str, cores[r * size:(r + 1) * size])) for r in range(tensor_parallel_size))
    # an engine started earlier in this process froze vLLM's reading of its variables; thaw it
    # so this engine reads the binding, and again after, so the next engine does not inherit it
    vllm.envs.disable_envs_cache()
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    try:
        yield
    finally:
        del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
        vllm.envs.disable_envs_cache()


def _prepare_env(kv_cache_gib: float) -> None:
    """vLLM reads these at import and engine start; they must be set before either."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: colocated, tensors by reference
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def _plain_cpu_linear_weights():
    """While an engine is built, have vLLM's CPU build keep linear weights as plain tensors.

    vLLM skips its CPU GEMM dispatch (repack into oneDNN's layout, drop the plain weight) for a
    linear layer that has `_cpu_skip_gemm_dispatch` set, and uses `torch.nn.functional.linear`
    (vLLM 0.32, `UnquantizedLinearMethod.process_weights_after_loading`). Set on the base class
    for the duration of the build only.
    """
    from vllm.model_executor.layers.linear import LinearBase

    LinearBase._cpu_skip_gemm_dispatch = True
    try:
        yield
    finally:
        del LinearBase._cpu_skip_gemm_dispatch


def _unpack_embedding_gemms(model: torch.nn.Module) -> None:
    """Make the (tied) LM head multiply by its live weight tensor, not a oneDNN copy of it.

    Embedding-type layers keep their weight on CPU but also get a packed oneDNN copy for the
    LM-head GEMM; an in-place weight update would leave that copy stale.
    """
    for module in model.modules():
        if getattr(module, "cpu_linear", None) is not None:
            module.cpu_linear = torch.nn.functional.linear


def _parameter_names(model: torch.nn.Module) -> frozenset[str]:
    return frozenset(name for name, _ in model.named_parameters())


def _locate(block: torch.Tensor, params: dict[str, torch.Tensor], like: str) -> tuple[str, int] | None:
    """(parameter name, row offset) where `block` sits along dim 0 of one of `params`, trying
    parameters that share the longest name prefix with `like` first; None if nowhere."""
    def shared(name: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(name, like)) if a != b), min(len(name), len(like)))

    rows = block.reshape(block.shape[0], -1)  # [R, C]
    for name in sorted(params, key=shared, reverse=True):
        p = params[name]
        if p.dim() != block.dim() or p.shape[1:] != block.shape[1:] or p.shape[0] < block.shape[0]:
            continue
        flat = p.reshape(p.shape[0], -1)
        for offset in (flat == rows[0]).all(-1).nonzero().flatten().tolist():
            if offset + len(rows) <= len(flat) and torch.equal(flat[offset:offset + len(rows)], rows):
                return name, offset
    return None


@torch.no_grad()
def _push_plan(model: torch.nn.Module, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor] | str:
    """Where the model's own `load_weights` puts each checkpoint tensor: name -> the view (rows
    of one vLLM parameter) it is copied into, so that later pushes are plain copies.

    Found once by pushing a distinct random tensor per name through `load_weights` and locating
    each in the parameters (their values are saved first and put back after). Returns the reason
    instead when the loader writes some rows in another form than a copy of one checkpoint
    tensor (a transform): the loader then stays the push path.
    """
    params = dict(model.named_parameters())
    dtype = next(iter(params.values())).dtype
    saved = {name: p.detach().clone() for name, p in params.items()}
    generator = torch.Generator().manual_seed(0)  # not the process's RNG: the trainer's draws stay put
    markers = {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()}
    try:
        model.load_weights(list(markers.items()))
        plan = {}
        covered = {name: torch.zeros(p.shape[0], dtype=torch.int) for name, p in params.items()}  # [rows]
        for name, marker in markers.items():
            found = _locate(marker, params, name)
            if found is None:
                continue  # a name the loader skips (a tied head, rotary buffers) or transforms
            target, offset = found
            plan[name] = params[target].data[offset:offset + marker.shape[0]]
            covered[target][offset:offset + marker.shape[0]] += 1
        for name, count in covered.items():
            if (count > 1).any():
                return f"{name}: two checkpoint tensors were located on the same rows"
            # rows no tensor was located in must be rows the loader does not write (vocabulary
            # padding); a changed one was written in some other form
            if not torch.equal(params[name][count == 0], saved[name][count == 0]):
                return f"{name} is written in a form other than a copy of checkpoint tensors"
        return plan
    finally:
        for name, p in params.items():
            p.data.copy_(saved[name])


def _retie_lm_head(model: torch.nn.Module) -> None:
    """Point a tied LM head at the reloaded embedding again and re-run its kernel preparation.

    vLLM's in-place reload (0.32) rebuilds the embedding's parameter, which unties it from the LM
    head; the head, which no checkpoint name reaches when tied, is then put back with its old
    weights ("ParallelLMHead: Failed to load weights"), and the engine samples from a stale
    output layer. Measured here: a log-prob gap of 1.6 nats after one reload, 0 with this fix.
    """
    head, embed = model.lm_head, model.model.embed_tokens
    head.quant_method.tie_weights(head, embed)
    head.quant_method.process_weights_after_loading(head)  # e.g. the CPU GEMM's packed weight


class _QuietExpectedReloadWarnings(logging.Filter):
    """Drop the reload warnings that are expected here: rotary embeddings have no weights, and a
    tied LM head gets none by name (`_retie_lm_head` refreshes it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().endswith("Failed to load weights")
                    and record.args and record.args[0] in ("RotaryEmbedding", "ParallelLMHead"))


class VLLMEngine:
    """`vllm.LLM` behind the `InferenceEngine` seam, in this process."""

    pads_contexts = False  # paged KV cache, continuous batching: ragged contexts cost no padding

    def __init__(self, model_dir: str | Path, tokenizer, *, dtype: str = "float32",
                 batch_size: int = 256, seed: int = 0, kv_cache_gib: float = 1.0,
                 enforce_eager: bool = True, prefix_caching: bool = True,
                 max_model_len: int | None = None, inplace_sync: bool = False, request_seeds: bool = False,
                 tensor_parallel_size: int = 1):
        if tensor_parallel_size > 1 and inplace_sync:
            raise ValueError("inplace_sync needs the engine's weights in this process; a sharded engine "
                             f"(tensor_parallel_size = {tensor_parallel_size}) keeps them in its workers")
        _prepare_env(kv_cache_gib)
        from vllm import LLM

        from longrl.rollout.vllm_stop import RepetitionStop

        on_gpu = torch.cuda.is_available()
        extra = {}
        if on_gpu:  # colocated: take a fixed KV budget, not vLLM's default 90% of the device
            extra = {"enable_sleep_mode": True, "kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}
        if tensor_parallel_size > 1:  # the shards live in worker processes that vLLM starts and owns
            extra |= {"tensor_parallel_size": tensor_parallel_size, "distributed_executor_backend": "mp"}
        self.tensor_parallel_size = tensor_parallel_size
        self.tokenizer = tokenizer
        if request_seeds:  # checkpointed by the loop as `engine.generator` (module docstring)
            self.generator = torch.Generator().manual_seed(seed)
        self.sleep_supported = on_gpu
        self.inplace_sync = inplace_sync and not on_gpu
        with (_plain_cpu_linear_weights() if self.inplace_sync else contextlib.nullcontext(),
              _cpu_rank_cores(tensor_parallel_size)):
            self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, max_num_seqs=batch_size,
                           enable_prefix_caching=prefix_caching, logprobs_mode="processed_logprobs",
                           enforce_eager=enforce_eager, max_model_len=max_model_len,
                           logits_processors=[RepetitionStop], **extra)
        if self.inplace_sync:
            self.llm.apply_model(_unpack_embedding_gemms)
            (self._parameter_names,) = self.llm.apply_model(_parameter_names)
        self._plan: dict[str, torch.Tensor] | str | None = None  # in-place pushes (`_push_plan`)
        self.max_positions = self.llm.llm_engine.model_config.max_model_len
        self.tied_embeddings = bool(getattr(self.llm.llm_engine.model_config.hf_text_config,
                                            "tie_word_embeddings", False))
        self._asleep = False
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
            _QuietExpectedReloadWarnings())

    @classmethod
    def from_model(cls, model, tokenizer, config, seed: int = 0) -> VLLMEngine:
        """An engine for a transformers `model` (its directory, or a copy saved to a temp dir).

        `config` is a `RolloutConfig`. The engine loads the weights from disk itself; the loop
        then keeps it in step with the trainer through `load_weights`.
        """
        model_dir = Path(getattr(model, "name_or_path", "") or "")
        keep = None
        if not (model_dir.is_dir() and (model_dir / "config.json").is_file()):
            keep = tempfile.TemporaryDirectory(prefix="longrl-vllm-")
            model.save_pretrained(keep.name)
            tokenizer.save_pretrained(keep.name)
            model_dir = Path(keep.name)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        engine = cls(model_dir, tokenizer, dtype=dtype, batch_size=config.batch_size, seed=seed,
                     kv_cache_gib=config.vllm_kv_cache_gib, enforce_eager=config.vllm_enforce_eager,
                     prefix_caching=config.vllm_prefix_caching,
                     max_model_len=getattr(model.config, "max_position_embeddings", None),
                     inplace_sync=config.vllm_inplace_sync, request_seeds=config.vllm_request_seeds,
                     tensor_parallel_size=config.vllm_tensor_parallel_size)
        engine._model_dir_keeper = keep  # the temp dir lives as long as the engine
        return engine

    # -- weights and lifecycle ------------------------------------------------------------------

    def load_weights(self, state: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy trainer tensors (checkpoint names) into the live engine (module docstring)."""
        weights = [(name, tensor.detach()) for name, tensor in state]
        # unsharded, the list reaches the in-process worker by reference; sharded, every worker gets a
        # copy of all of it and keeps its own slices. vLLM fuses q/k/v and gate/up itself.
        if self.inplace_sync:
            self._push_in_place(weights)
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                              "is_checkpoint_format": True})
            if self.tied_embeddings:
                self.llm.apply_model(_retie_lm_head)
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights

    def _push_in_place(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Copy into the live tensors: through the push plan (`_push_plan`, found at the first
        complete push) when there is one, else through the model's own `load_weights`, which maps
        names and fuses q/k/v and gate/up on every push."""
        names = {name for name, _ in weights}
        if isinstance(self._plan, dict) and names >= self._plan.keys():
            with torch.no_grad():
                for name, tensor in weights:
                    if (view := self._plan.get(name)) is None:
                        continue
                    if view.shape != tensor.shape:  # copy_ would broadcast a wrong shape silently
                        raise ValueError(f"weight push: {name} has shape {tuple(tensor.shape)}, the "
                                         f"engine holds {tuple(view.shape)}")
                    view.copy_(tensor)
            return
        (loaded,) = self.llm.apply_model(lambda model: model.load_weights(weights))
        missed = sorted(self._parameter_names - set(loaded))
        if missed:
            raise ValueError(f"weight push left {len(missed)} vLLM parameters unwritten, e.g. "
                             f"{missed[:3]}: push every parameter (named as in the checkpoint)")
        if self._plan is None:  # a complete push: find the plan for the next ones
            shapes = {name: tensor.shape for name, tensor in weights}
            (self._plan,) = self.llm.apply_model(lambda model: _push_plan(model, shapes))
            if isinstance(self._plan, str):
                logging.getLogger(__name__).warning("in-place weight push keeps vLLM's loader: %s", self._plan)

    def sleep(self) -> None:
        if self.sleep_supported and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # -- sampling -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VLLMSamplingParams

        from longrl.rollout.vllm_stop import EXTRA_KEY

        # the contract's stop set: the tokenizer's EOS and the given ids. `ignore_eos` keeps vLLM from
        # adding its own (the generation config's extra EOS ids); stop_token_ids still stop.
        stops = stop_token_ids(self.tokenizer.eos_token_id, params)
        prompts = [{"prompt_token_ids": r.prompt_ids + r.prefix_ids} for r in requests]
        generator = getattr(self, "generator", None)
        seeds = (torch.randint(0, 2**62, (len(requests),), generator=generator).tolist() if generator is not None
                 else [None] * len(requests))
        sampling = [VLLMSamplingParams(
            temperature=max(params.temperature, 0.0), top_p=params.top_p,
            max_tokens=request_budget(r, params, self.max_positions), stop_token_ids=stops, logprobs=0,
            ignore_eos=True, detokenize=False, skip_special_tokens=False, seed=seed,
            extra_args=None if params.detector is None else {  # the in-engine repetition stop
                EXTRA_KEY: (params.detector, r.prefix_ids, self.tokenizer.eos_token_id)})
            for r, seed in zip(requests, seeds)]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [self._completion(r, out.outputs[0], params, stops) for r, out in zip(requests, outputs)]

    def _completion(self, request: GenerationRequest, out, params: SamplingParams,
                    stops: list[int]) -> Completion:
        """vLLM's output as a `Completion`: its tokens up to the first one that ends generation
        under the contract (`stop_cause`), which cuts a repetition stop before the stop token the
        logits processor forced after it."""
        tokens = list(out.token_ids)
        logprobs = [step[token].logprob for step, token in zip(out.logprobs, tokens)]
        detector = primed_detector(params.detector, request.prefix_ids)
        cause = None
        for n, token in enumerate(tokens, 1):
            if (cause := stop_cause(token, stops, detector)) is not None:
                tokens, logprobs = tokens[:n], logprobs[:n]
                break
        return Completion(tokens, logprobs,
                          finish_reason(request, params, cause, len(tokens), self.max_positions))

    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]:
        """Log-probs of each sequence's tokens after its prompt (T = 1; see the module docstring)."""
        from vllm import SamplingParams as VLLMSamplingParams

        if temperature not in (0.0, 1.0):
            raise ValueError(f"VLLMEngine.score scores at temperature 1 only (vLLM takes prompt "
                             f"log-probs from the raw logits), not {temperature}")
        if any(n < 1 for n in prompt_lens):
            raise ValueError("score needs at least one prompt token before the scored ones")
        sampling = VLLMSamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], sampling,
                                    use_tqdm=False)
        return [[out.prompt_logprobs[t][seq[t]].logprob for t in range(n, len(seq))]
                for seq, n, out in zip(sequences, prompt_lens, outputs)]
