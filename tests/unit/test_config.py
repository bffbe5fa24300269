"""Config loading is strict: unknown keys, wrong types and bad files name the place and the fix."""

from pathlib import Path

import pytest

from longrl.cli import main
from longrl.config import ConfigError, RunConfig, SFTConfig, describe, dump_toml, load_config


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, 'iterations = 7\n[loss]\ntau = 0.5\n[world]\ntasks = ["add"]\n')
    config = load_config(RunConfig, path, ["train.lr=3e-5", "loss.level=sequence", "model.path=runs/x/final"])
    assert config.iterations == 7
    assert config.loss.tau == 0.5 and config.loss.level == "sequence"
    assert config.train.lr == 3e-5
    assert config.world.tasks == ["add"]
    assert config.model.path == "runs/x/final"  # a bare string override
    assert config.rollout.samples_per_prompt == RunConfig().rollout.samples_per_prompt


def test_unknown_key_names_file_line_and_nearest(tmp_path):
    path = write(tmp_path, "iterations = 3\n\n[train]\nmini_batch_size = 8\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, path)
    message = str(err.value)
    assert str(path) in message and "line 5" in message
    assert "'train.learning_rate'" in message and "did you mean 'train.lr'" in message


def test_unknown_section(tmp_path):
    path = write(tmp_path, "[rolout]\nmax_new_tokens = 3\n")
    with pytest.raises(ConfigError, match=r"line 1: key 'rolout': unknown key; did you mean 'rollout'"):
        load_config(RunConfig, path)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = write(tmp_path, '[rollout]\nsamples_per_prompt = "eight"\n')
    with pytest.raises(ConfigError, match=r"line 2: key 'rollout.samples_per_prompt': must be int, got str 'eight'"):
        load_config(RunConfig, path)


@pytest.mark.parametrize("override, fragment", [
    ("loss.level=word", "must be one of 'sequence' | 'token'"),
    ("train.optimizer_reset=some", "must be one of 'all' | 'first_moment' | 'none'"),
    ("train.gradient_checkpointing=1", "must be true or false"),
    ("iterations=2.5", "must be int"),
    ("rollout.temprature=0.5", "did you mean 'rollout.temperature'"),
    ("world.tasks=add", "must be a list"),
])
def test_bad_overrides(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(RunConfig, None, [override])
    assert "command-line override" in str(err.value) and fragment in str(err.value)


def test_int_is_accepted_for_float():
    assert load_config(RunConfig, None, ["loss.tau=1"]).loss.tau == 1.0


def test_invariant_errors_say_the_fix():
    with pytest.raises(ConfigError, match="one weight per reward"):
        load_config(RunConfig, None, ["reward.names=['world', 'math']"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(RunConfig, write(tmp_path, "[train\nlr = 1"))


def test_dump_round_trip(tmp_path):
    config = load_config(RunConfig, None, ["loss.tau=0.3", "world.tasks=['mul']"])
    again = load_config(RunConfig, write(tmp_path, dump_toml(config)))
    assert again == config


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for line in describe(RunConfig):
        if line.startswith("  ") and not line.startswith("      "):
            assert line.split()[0] in out
    assert "loss.tau" in out and "τ" in out


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "[sft]\nsteps = 3\n")
    assert main(["sft", str(path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert SFTConfig().steps > 0


def test_cli_missing_model_directory(tmp_path, capsys):
    assert main(["train", f"model.path={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "model directory" in err and "does not exist" in err


def test_an_unknown_world_task_is_caught_when_the_config_loads(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[world]\ntasks = ["add", "mull"]\n')
    with pytest.raises(ConfigError, match=r"w.toml: world.tasks: unknown task 'mull'; did you mean 'mul'\?"):
        load_config(RunConfig, path)
    with pytest.raises(ConfigError, match=r"need 1 <= min_level <= max_level, got 3 and 2"):
        load_config(RunConfig, None, ["world.min_level=3", "world.max_level=2"])


SHIPPED = {  # every file in configs/ and the job that reads it
    "ablation_sampler": "RunConfig", "ablation_sampler_sft": "SFTConfig", "curate_champ": "CurateConfig",
    "curate_gym": "CurateConfig", "curate_world": "CurateConfig", "default": "RunConfig",
    "long2short_dpo": "DPOConfig", "long2short_rl": "RunConfig", "long2short_short": "SFTConfig",
    "long2short_shortest_rs": "ShortestRSConfig", "long_rl": "RunConfig", "long_sft": "SFTConfig",
    "curate_smollm2": "CurateConfig", "partial": "RunConfig", "rl_verbose": "RunConfig", "rm_label": "RMLabelConfig", "sft": "SFTConfig",
    "sft_verbose": "SFTConfig", "smollm2_math": "RunConfig", "vision_rl": "RunConfig", "vision_sft": "SFTConfig",
}


def test_every_shipped_config_loads_as_its_job():
    import longrl.config as configs

    root = Path(__file__).resolve().parents[2] / "configs"
    assert {p.stem for p in root.glob("*.toml")} == set(SHIPPED)
    for stem, cls in SHIPPED.items():
        load_config(getattr(configs, cls), root / f"{stem}.toml")


@pytest.mark.parametrize("overrides, message", [
    (["rollout.vllm_tensor_parallel_size=0"], r"rollout.vllm_tensor_parallel_size is 0: give 1 \(no sharding\) or more"),
    (["rollout.vllm_tensor_parallel_size=2"], r'tensor parallelism needs rollout.engine = "vllm"'),
    (["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2", "rollout.vllm_inplace_sync=true"],
     "rollout.vllm_inplace_sync with rollout.vllm_tensor_parallel_size = 2"),
    (["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2", "cluster.enabled=true",
      "cluster.placement=split", "cluster.gpus_per_rollout_worker=1"],
     "cluster.gpus_per_rollout_worker is 1 with rollout.vllm_tensor_parallel_size = 2: .* must ask Ray for 2"),
    (["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2", "cluster.enabled=true",
      "cluster.gpus_per_rollout_worker=2"], "use cluster.placement = split"),
])
def test_tensor_parallel_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, None, overrides)


def test_a_sharded_engine_on_its_own_gpus_is_accepted():
    config = load_config(RunConfig, None, ["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2",
                                           "cluster.enabled=true", "cluster.placement=split",
                                           "cluster.gpus_per_trainer_rank=1", "cluster.gpus_per_rollout_worker=2"])
    assert config.rollout.vllm_tensor_parallel_size == 2


@pytest.mark.parametrize("overrides, transport", [
    ([], "broadcast"),  # CPU actors
    (["cluster.placement=split", "cluster.gpus_per_trainer_rank=1", "cluster.gpus_per_rollout_worker=1"], "broadcast"),
    (["cluster.gpus_per_trainer_rank=0.5", "cluster.gpus_per_rollout_worker=0.5"], "object_store"),  # colocated GPUs
    (["cluster.sync_transport=object_store"], "object_store"),
])
def test_the_auto_sync_transport_broadcasts_except_between_processes_sharing_a_gpu(overrides, transport):
    assert load_config(RunConfig, None, ["cluster.enabled=true", *overrides]).cluster.transport() == transport


def test_a_broadcast_between_processes_sharing_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="NCCL cannot broadcast between two processes on one GPU"):
        load_config(RunConfig, None, ["cluster.enabled=true", "cluster.sync_transport=broadcast",
                                      "cluster.gpus_per_trainer_rank=0.5", "cluster.gpus_per_rollout_worker=0.5"])
