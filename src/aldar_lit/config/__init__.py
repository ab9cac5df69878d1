"""Every tool's typed configuration, the one place Hydra's schemas live.

`core`: the error type and the composed-config-to-dataclass step; `shared`: sub-configs several tools compose (trigger,
paths, CLIP/DINO scorer, W&B); one module per tool: `train`, `infer`, `evaluate`, `prep` (caption and curate).
The training schema and the core are importable from here too (`from aldar_lit.config import TrainConfig`).
"""

from aldar_lit.config.core import (ConfigError, Schema, as_plain_dict, check_choices, require, to_schema,
                                   unknown_keys)
from aldar_lit.config.shared import (SCORE_TERMS, TRIGGER, ClipConfig, DinoConfig, ImageDetail, PathsConfig,
                                     ScorerConfig, WandbConfig)
from aldar_lit.config.train import (BadFilePolicy, CheckpointConfig, CompileScope, Crop, DataConfig, DemoDataConfig,
                                    Dtype, LoraConfig, LoraInit, ModelConfig, ObjectiveConfig, OptimConfig,
                                    PredictionType, TrainConfig, ValidationConfig, register_configs, to_train_config)

__all__ = ["SCORE_TERMS", "TRIGGER", "BadFilePolicy", "CheckpointConfig", "ClipConfig", "CompileScope", "ConfigError",
           "Crop", "DataConfig", "DemoDataConfig", "DinoConfig", "Dtype", "ImageDetail", "LoraConfig", "LoraInit",
           "ModelConfig", "ObjectiveConfig", "OptimConfig", "PathsConfig", "PredictionType", "Schema", "ScorerConfig",
           "TrainConfig", "ValidationConfig", "WandbConfig", "as_plain_dict", "check_choices",
           "register_configs", "require", "to_schema", "to_train_config", "unknown_keys"]
