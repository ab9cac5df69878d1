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
from typing import Any, Optional, TypeVar

from aldar_lit.artifacts import ADAPTER_CARD, ArtifactError, read_adapter_card
from aldar_lit.config.evaluate import EvalConfig
from aldar_lit.config.infer import GenerationConfig, InferConfig, StoryConfig
from aldar_lit.config.train import ModelConfig
from aldar_lit.pipelines.generator import AdapterError

log = logging.getLogger(__name__)
Tool = TypeVar("Tool", InferConfig, EvalConfig)


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


def infer_with_card(config: InferConfig) -> InferConfig:
    """infer.py's config with the adapter card's trigger, base model and resolution where it holds defaults."""
    if config.mode == "baseline":
        return config  # SDXL alone: the LoRA, and so its card, is ignored
    return _with_card(config, "story")


def evaluate_with_card(config: EvalConfig) -> EvalConfig:
    """evaluate.py's config with the adapter card's trigger, base model and resolution where it holds defaults."""
    return _with_card(config, "suite")


def _with_card(config: Tool, trigger_section: str) -> Tool:
    """`config` (with `lora`, `model`, `generation` and the trigger in `trigger_section`) resolved against the card."""
    section, model, generation = getattr(config, trigger_section), config.model, config.generation
    trigger_key = f"{trigger_section}.trigger"
    chosen = card_defaults(config.lora.path, [
        Setting(trigger_key, section.trigger, StoryConfig.__dataclass_fields__["trigger"].default, "trigger"),
        Setting("model.pretrained", model.pretrained, ModelConfig().pretrained, "base_model"),
        Setting("generation.width", generation.width, GenerationConfig().width, "resolution"),
        Setting("generation.height", generation.height, GenerationConfig().height, "resolution")])
    return replace(config, **{trigger_section: replace(section, trigger=chosen[trigger_key])},
                   model=replace(model, pretrained=chosen["model.pretrained"]),
                   generation=replace(generation, width=chosen["generation.width"], height=chosen["generation.height"]))
