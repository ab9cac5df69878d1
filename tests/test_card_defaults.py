"""infer.py and evaluate.py take trigger, base model and resolution from the adapter card: `lora.path=` is enough."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from aldar_lit.artifacts import ADAPTER_CARD, read_adapter_card, write_adapter_card
from aldar_lit.config.evaluate import to_eval_config
from aldar_lit.config.infer import to_infer_config
from aldar_lit.config.train import ModelConfig
from aldar_lit.pipelines.card_defaults import evaluate_with_card, infer_with_card
from aldar_lit.pipelines.storyboard import run
from fixtures_storyboard import compose_infer, tiny_lora_dir, write_story  # noqa: F401
from test_evaluate import compose_evaluate

STEPS = ["generation.steps=2", "generation.device=cpu", "qa=off", "adapters=tiny"]


@pytest.fixture
def carded_lora(tiny_lora_dir, tiny_model_dir, tmp_path) -> Path:
    """The tiny LoRA whose card says it was trained on the tiny model at 64 px with the trigger zorb_man."""
    lora = shutil.copytree(tiny_lora_dir, tmp_path / "lora")
    write_adapter_card(lora, dataclasses.replace(read_adapter_card(lora), trigger="zorb_man", resolution=64,
                                                 base_model=str(tiny_model_dir)))
    return lora


def test_infer_with_only_lora_path_generates_what_the_card_says(carded_lora, tiny_model_dir, tmp_path):
    """The real infer.py job: no trigger, model or size given; the frames are 64 px and the prompts carry the
    card's trigger, on the card's base model (the tiny model: a hub SDXL would not load offline)."""
    story = write_story(tmp_path / "one.yaml", [{"text": "zorb_man smiling in front of a yurt"}])
    out = tmp_path / "out"
    run(compose_infer(["mode=simple", f"lora.path={carded_lora}", f"story.file={story}", f"paths.output_dir={out}",
                       "model.random_init=tiny", "model.variant=null", *STEPS]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["story"]["trigger"] == "zorb_man" and manifest["base_model"] == str(tiny_model_dir)
    assert Image.open(out / manifest["frames"][0]["file"]).size == (64, 64)


def test_a_configured_value_wins_over_the_card_with_a_warning_naming_both(carded_lora, caplog, tmp_path):
    config = to_infer_config(compose_infer(["mode=simple", f"lora.path={carded_lora}", "generation.width=32",
                                            "story.trigger=other_man", "model=tiny", f"paths.output_dir={tmp_path}"]))
    with caplog.at_level(logging.WARNING, logger="aldar_lit.pipelines.card_defaults"):
        resolved = infer_with_card(config)
    assert (resolved.generation.width, resolved.generation.height, resolved.story.trigger) == (32, 64, "other_man")
    card = carded_lora / ADAPTER_CARD
    assert f"generation.width=32 overrides {card}, which says the adapter was trained with resolution=64" in caplog.text
    assert f"story.trigger=other_man overrides {card}, which says the adapter was trained with trigger=zorb_man" in (
        caplog.text)


def test_evaluate_takes_the_card_defaults_too(carded_lora, tiny_model_dir, tmp_path):
    overrides = [f"lora.path={carded_lora}", "modes=[simple]", f"paths.output_dir={tmp_path}"]
    config = evaluate_with_card(to_eval_config(compose_evaluate(overrides)))
    assert (config.suite.trigger, config.model.pretrained) == ("zorb_man", str(tiny_model_dir))
    assert (config.generation.width, config.generation.height) == (64, 64)


def test_an_adapter_without_a_card_loads_with_a_warning(carded_lora, caplog, tmp_path):
    (carded_lora / ADAPTER_CARD).unlink()
    config = to_infer_config(compose_infer(["mode=simple", f"lora.path={carded_lora}", f"paths.output_dir={tmp_path}"]))
    with caplog.at_level(logging.WARNING, logger="aldar_lit.pipelines.card_defaults"):
        assert infer_with_card(config) == config
    assert f"{carded_lora} has no {ADAPTER_CARD} (an adapter exported before cards)" in caplog.text
    assert config.model.pretrained == ModelConfig().pretrained
