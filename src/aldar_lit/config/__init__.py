"""Every tool's typed configuration, the one place Hydra's schemas live.

`core`: the error type and the composed-config-to-dataclass step; `shared`: sub-configs several tools compose (trigger,
paths, CLIP/DINO scorer, W&B); one module per tool: `train`, `infer`, `evaluate`, `prep` (caption and curate).
The training schema and the core are importable from here too (`from aldar_lit.config import TrainConfig`).
"""

from aldar_lit.config.core import ConfigError, Schema, require, to_schema, unknown_keys
from aldar_lit.config.shared import SCORE_TERMS, TRIGGER, DinoConfig, PathsConfig, ScorerConfig, WandbConfig
from aldar_lit.config.train import (BAD_FILE_POLICIES, COMPILE_SCOPES, CROPS, DTYPES, LORA_INITS, PREDICTION_TYPES,
                                    CheckpointConfig, DataConfig, DemoDataConfig, LoraConfig, ModelConfig,
                                    ObjectiveConfig, OptimConfig, TrainConfig, ValidationConfig, register_configs,
                                    to_train_config)

__all__ = ["BAD_FILE_POLICIES", "COMPILE_SCOPES", "CROPS", "DTYPES", "LORA_INITS", "PREDICTION_TYPES", "SCORE_TERMS",
           "TRIGGER", "CheckpointConfig", "ConfigError", "DataConfig", "DemoDataConfig", "DinoConfig", "LoraConfig",
           "ModelConfig", "ObjectiveConfig", "OptimConfig", "PathsConfig", "Schema", "ScorerConfig", "TrainConfig",
           "ValidationConfig", "WandbConfig", "register_configs", "require", "to_schema", "to_train_config",
           "unknown_keys"]
