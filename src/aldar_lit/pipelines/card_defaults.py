"""What an adapter was trained for, from its card, as infer.py's and evaluate.py's defaults: `lora.path=` is enough.

Trigger, base model and resolution come from `lora/adapter_card.json` wherever the config holds the schema's
default. A value the config sets (command line or preset) wins, with a warning naming both when the card says
otherwise. An adapter exported before cards loads with a warning, its settings from the config. (The prediction
type goes on the scheduler in `pipelines.generator`, with the same precedence.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from aldar_lit.artifacts import ADAPTER_CARD, ArtifactError, read_adapter_card
from aldar_lit.config.evaluate import EvalConfig
from aldar_lit.config.infer import GenerationConfig, InferConfig, StoryConfig
from aldar_lit.config.train import ModelConfig
from aldar_lit.pipelines.generator import AdapterError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    key: str  # the config key, as the user writes it
    configured: Any
    default: Any  # the schema's default: a configured value equal to it was not set
    card_field: str  # the AdapterCard field it defaults to


def card_defaults(lora_path: Optional[str], settings: list[Setting]) -> dict[str, Any]:
    """config key -> the value to use: the card's where the config holds the default, else the configured one."""
    chosen = {s.key: s.configured for s in settings}
    if lora_path is None:
        return chosen
    lora_dir = Path(lora_path).expanduser()
    if not (lora_dir / ADAPTER_CARD).is_file():
        log.warning("lora.path: %s has no %s (an adapter exported before cards): %s come from the config",
                    lora_dir, ADAPTER_CARD, ", ".join(s.key for s in settings))
        return chosen
    try:
        card = read_adapter_card(lora_dir)
    except ArtifactError as err:
        raise AdapterError(f"lora: {err}") from err
    for setting in settings:
        value = getattr(card, setting.card_field)
        if value is None or value == setting.configured:
            continue
        if setting.configured == setting.default:
            chosen[setting.key] = value
        else:
            log.warning("%s=%s overrides %s, which says the adapter was trained with %s=%s", setting.key,
                        setting.configured, lora_dir / ADAPTER_CARD, setting.card_field, value)
    return chosen


def _settings(trigger_key: str, trigger: str, model: ModelConfig, generation: GenerationConfig) -> list[Setting]:
    defaults = GenerationConfig()
    return [Setting(trigger_key, trigger, StoryConfig.__dataclass_fields__["trigger"].default, "trigger"),
            Setting("model.pretrained", model.pretrained, ModelConfig().pretrained, "base_model"),
            Setting("generation.width", generation.width, defaults.width, "resolution"),
            Setting("generation.height", generation.height, defaults.height, "resolution")]


def infer_with_card(config: InferConfig) -> InferConfig:
    """infer.py's config with the adapter card's trigger, base model and resolution where it holds defaults."""
    if config.mode == "baseline":
        return config  # SDXL alone: the LoRA, and so its card, is ignored
    chosen = card_defaults(config.lora.path, _settings("story.trigger", config.story.trigger, config.model,
                                                       config.generation))
    return replace(config, story=replace(config.story, trigger=chosen["story.trigger"]),
                   model=replace(config.model, pretrained=chosen["model.pretrained"]),
                   generation=replace(config.generation, width=chosen["generation.width"],
                                      height=chosen["generation.height"]))


def evaluate_with_card(config: EvalConfig) -> EvalConfig:
    """evaluate.py's config with the adapter card's trigger, base model and resolution where it holds defaults."""
    chosen = card_defaults(config.lora.path, _settings("suite.trigger", config.suite.trigger, config.model,
                                                       config.generation))
    return replace(config, suite=replace(config.suite, trigger=chosen["suite.trigger"]),
                   model=replace(config.model, pretrained=chosen["model.pretrained"]),
                   generation=replace(config.generation, width=chosen["generation.width"],
                                      height=chosen["generation.height"]))
