"""Exported adapters: diffusers format reproduces the trained weights, kohya keys carry the real alpha."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open

from aldar_lit.config import LoraConfig
from aldar_lit.models.export import export_lora
from aldar_lit.models.loading import load_sdxl
from aldar_lit.models.lora import attach_lora


@pytest.fixture(scope="module")
def trained(tiny_model_config):
    """Tiny SDXL with rank-4, alpha-8 LoRA whose up-projections were given random values."""
    parts = load_sdxl(tiny_model_config)
    cfg = LoraConfig(rank=4, alpha=8.0)
    modules = attach_lora(
        {"unet": parts.unet, "text_encoder": parts.text_encoder, "text_encoder_2": parts.text_encoder_2}, cfg
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in modules.values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return parts, modules, cfg


def test_only_lora_parameters_are_trainable(trained) -> None:
    _, modules, _ = trained
    for module in modules.values():
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert all(p.dtype == torch.float32 for p in module.parameters() if p.requires_grad)


def test_text_encoder_1_last_layer_has_no_adapter(trained) -> None:
    """SDXL reads its penultimate hidden state; an adapter on the last layer could never train."""
    parts, modules, _ = trained
    last = parts.text_encoder.config.num_hidden_layers - 1
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in modules["text_encoder"].named_parameters()
               if "lora_" in n}
    assert adapted == {str(i) for i in range(last)}
    assert any(f".layers.{last}." in n for n, _ in modules["text_encoder_2"].named_parameters() if "lora_" in n)


def test_diffusers_export_reproduces_trained_model(trained, tmp_path, tiny_model_dir) -> None:
    parts, modules, cfg = trained
    export_lora(modules, cfg, tmp_path / "lora")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(tmp_path / "lora")

    ids = parts.tokenizer(["aldar_kose_man waving"], padding="max_length", return_tensors="pt").input_ids
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    prompt = torch.randn(1, 77, 64)
    with torch.no_grad():
        for ours, loaded in ((parts.text_encoder, pipe.text_encoder), (parts.text_encoder_2, pipe.text_encoder_2)):
            torch.testing.assert_close(
                loaded(ids, output_hidden_states=True).hidden_states[-2],
                ours(ids, output_hidden_states=True).hidden_states[-2],
            )
        expected = parts.unet(latents, 500, prompt, added_cond_kwargs=cond).sample
        torch.testing.assert_close(pipe.unet(latents, 500, prompt, added_cond_kwargs=cond).sample, expected)


def test_loaded_adapter_changes_pipeline_output(trained, tmp_path, tiny_model_dir) -> None:
    _, modules, cfg = trained
    export_lora(modules, cfg, tmp_path / "lora")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    kwargs = dict(prompt="aldar_kose_man in the steppe", num_inference_steps=2, height=64, width=64,
                  output_type="np")
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(tmp_path / "lora")
    adapted = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(adapted - base).max() > 1e-3


def test_kohya_export_keys_and_configured_alpha(trained, tmp_path) -> None:
    _, modules, cfg = trained
    paths = export_lora(modules, cfg, tmp_path / "lora")
    with safe_open(paths["kohya"], "pt") as f:
        keys = list(f.keys())
        alphas = {k: f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        metadata = f.metadata()
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in keys}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    downs = [k for k in keys if k.endswith(".lora_down.weight")]
    assert len(downs) == len(alphas) == len([k for k in keys if k.endswith(".lora_up.weight")])
    assert set(alphas.values()) == {8.0}  # the configured alpha, not the rank (4)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8.0"


def test_export_replaces_previous_adapter_whole(trained, tmp_path) -> None:
    _, modules, cfg = trained
    out = tmp_path / "lora"
    export_lora(modules, cfg, out)
    (out / "stale.txt").write_text("from an older export")
    export_lora(modules, cfg, out)
    assert sorted(p.name for p in out.iterdir()) == ["lora_kohya.safetensors", "pytorch_lora_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]
