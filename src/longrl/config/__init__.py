"""Typed configuration: one dataclass per component, a strict TOML loader (`loader.py`).

`run.py` holds the RL run's components, `jobs.py` the SFT and long2short jobs, `curate.py` the
curation job. Everything is importable from `longrl.config`.
"""

from longrl.config.curate import CURATE_STEPS, CurateConfig
from longrl.config.jobs import (DPOConfig, JudgeTrainConfig, L2SSampleConfig, RejectionSFTConfig, RMLabelConfig,
                                RMTrainConfig,                                 ShortestRSConfig, SFTConfig)
from longrl.config.loader import ConfigError, config_to_dict, describe, dump_toml, load_config, nearest, opt
from longrl.config.run import (ClusterConfig, DataConfig, EvalConfig, LoggingConfig, LossConfig, ModelConfig,
                               PartialRolloutConfig, RepetitionConfig, RewardConfig, RolloutConfig, RunConfig,
                               SamplerConfig, TinyModelConfig, TrainConfig, WorldConfig)

__all__ = [
    "CURATE_STEPS", "ClusterConfig", "ConfigError", "CurateConfig", "DPOConfig", "DataConfig", "EvalConfig",
    "JudgeTrainConfig", "L2SSampleConfig", "LoggingConfig", "LossConfig", "ModelConfig", "PartialRolloutConfig",
    "RMLabelConfig", "RMTrainConfig", "RejectionSFTConfig", "RepetitionConfig", "RewardConfig", "RolloutConfig", "RunConfig",
    "SFTConfig", "SamplerConfig", "ShortestRSConfig", "TinyModelConfig", "TrainConfig", "WorldConfig",
    "config_to_dict", "describe", "dump_toml", "load_config", "nearest", "opt",
]
