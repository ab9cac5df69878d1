"""The tiny SDXL goes through the real diffusers/transformers loading path, with SDXL's invariants."""

from __future__ import annotations

import json

import open_clip
import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from aldar_lit.config import ConfigError, ModelConfig
from aldar_lit.models.loading import load_sdxl
from aldar_lit.offline.random_init import SPEC_ROOT, materialise_random_sdxl
from aldar_lit.offline.tokenizer import build_clip_tokenizer


@pytest.mark.parametrize(
    "text",
    ["aldar_kose_man riding a horse past a yurt", "Close-up, WIDE smile!! 3 hats & a köse's beard", ""],
)
def test_tokenizer_matches_open_clip(text: str) -> None:
    ours = build_clip_tokenizer()([text], padding="max_length", max_length=77, truncation=True).input_ids[0]
    reference = open_clip.tokenize([text])[0].tolist()
    used = [i for i in reference if i != 0]
    assert ours[: len(used)] == used
    assert len(build_clip_tokenizer()) == 49408


def test_second_tokenizer_pads_with_exclamation_mark_like_sdxl() -> None:
    assert build_clip_tokenizer(pad_token="!").pad_token_id == 0
    assert build_clip_tokenizer().pad_token_id == 49407


@pytest.mark.parametrize("spec", ["tiny", "sdxl"])
def test_specs_satisfy_sdxl_shape_contract(spec: str) -> None:
    cfg = {p.stem: json.loads(p.read_text()) for p in (SPEC_ROOT / spec).glob("*.json")}
    unet, te1, te2 = cfg["unet"], cfg["text_encoder"], cfg["text_encoder_2"]
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == te2["projection_dim"] + 6 * unet["addition_time_embed_dim"]
    assert unet["addition_embed_type"] == "text_time"


def test_tiny_model_loads_with_from_pretrained(tiny_model_config: ModelConfig) -> None:
    parts = load_sdxl(tiny_model_config)
    assert isinstance(parts.unet, UNet2DConditionModel)
    assert isinstance(parts.vae, AutoencoderKL)
    assert type(parts.text_encoder) is CLIPTextModel
    assert type(parts.text_encoder_2) is CLIPTextModelWithProjection
    assert parts.training_noise_scheduler().config.num_train_timesteps == 1000


def test_materialise_is_idempotent_and_seeded(tmp_path, tiny_model_dir) -> None:
    weights = tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert materialise_random_sdxl("tiny", 0, tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before
    other = materialise_random_sdxl("tiny", 1, tmp_path / "seed1")
    assert (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != weights.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_unknown_spec_names_the_key() -> None:
    with pytest.raises(ConfigError, match="model.random_init"):
        ModelConfig(name="x", pretrained="/nowhere", random_init="huge")
