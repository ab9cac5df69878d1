"""Exported adapters: diffusers and kohya files reproduce the trained model, the card says what it was trained for."""

from __future__ import annotations

import errno
import json
import os
import re
import stat

import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_unet_state_dict_to_peft
from safetensors import safe_open
from torch import nn

from aldar_lit.artifacts import ADAPTER_CARD, AdapterCard, read_adapter_card
from aldar_lit.atomic_write import WriteError
from aldar_lit.config import LoraConfig
from aldar_lit.models.export import KOHYA_WEIGHTS, export_lora, ldm_unet_module
from aldar_lit.models.loading import load_sdxl
from aldar_lit.models.lora import attach_lora
from aldar_lit.offline.random_init import spec_dir


def perturbed_lora(tiny_model_config, cfg: LoraConfig):
    """Tiny SDXL with LoRA whose up-projections were moved by random values, as training would."""
    parts = load_sdxl(tiny_model_config)
    modules = attach_lora(
        {"unet": parts.unet, "text_encoder": parts.text_encoder, "text_encoder_2": parts.text_encoder_2}, cfg
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in modules.values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return parts, modules, cfg


@pytest.fixture(scope="module")
def trained(tiny_model_config):
    """Rank 4, alpha 8."""
    return perturbed_lora(tiny_model_config, LoraConfig(rank=4, alpha=8.0))


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


def assert_reproduces(parts, pipe: StableDiffusionXLPipeline) -> None:
    """The pipeline's text encoders and UNet compute what the trained ones do."""
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


def test_diffusers_export_reproduces_trained_model(trained, tmp_path, tiny_model_dir) -> None:
    parts, modules, cfg = trained
    export_lora(modules, cfg, tmp_path / "lora")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(tmp_path / "lora")
    assert_reproduces(parts, pipe)


def test_kohya_export_in_ldm_naming_reproduces_trained_model(trained, tmp_path, tiny_model_dir) -> None:
    """kohya's SDXL tools name UNet modules as the LDM UNet does; diffusers' own kohya loader maps those names
    back (from the UNet config) and the result computes what the trained model does, with alpha != rank."""
    parts, modules, cfg = trained
    assert cfg.alpha != cfg.rank
    paths = export_lora(modules, cfg, tmp_path / "lora")
    with safe_open(paths["kohya"], "pt") as f:
        unet_modules = {k.split(".")[0] for k in f.keys() if k.startswith("lora_unet_")}
    adapted = {n for n, m in modules["unet"].named_modules() if hasattr(m, "lora_A")}
    assert len(unet_modules) == len(adapted)
    ldm_name = re.compile(r"lora_unet_(input_blocks_\d+_\d|middle_block_\d|output_blocks_\d+_\d)_")
    assert all(ldm_name.match(m) for m in unet_modules)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(tmp_path / "lora", weight_name=KOHYA_WEIGHTS)
    assert_reproduces(parts, pipe)


@pytest.mark.parametrize("spec", ["tiny", "sdxl"])
def test_kohya_names_of_every_unet_module_map_back_through_diffusers(spec: str) -> None:
    """Every adaptable UNet module (attention, ResNet, feed-forward, resamplers) of the tiny model and of full
    SDXL (3 levels, 2 layers per block: other indices than the tiny one's) gets an LDM name that diffusers'
    kohya reader maps back to the same module, using nothing but the UNet config."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((spec_dir(spec) / "unet.json").read_text()))
    modules = {name for name, module in unet.named_modules()
               if isinstance(module, (nn.Linear, nn.Conv2d)) and ("_blocks." in name or "mid_block." in name)}
    kohya = {}
    for name in modules:
        key = "lora_unet_" + ldm_unet_module(name, unet.config).replace(".", "_")
        kohya |= {f"{key}.lora_down.weight": torch.zeros(1, 1), f"{key}.lora_up.weight": torch.zeros(1, 1),
                  f"{key}.alpha": torch.tensor(1.0)}
    converted, _ = StableDiffusionXLPipeline.lora_state_dict(kohya, unet_config=unet.config)
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    assert {key.rsplit(".lora_", 1)[0] for key in peft_keys} == modules


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
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CARD, "lora_kohya.safetensors",
                                                     "pytorch_lora_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]


def test_full_disk_keeps_the_previous_adapter_and_names_the_folder(trained, full_disk_dir) -> None:
    """safetensors' own error names no file; the export's does, and leaves no hidden temporary folder."""
    _, modules, cfg = trained
    out = full_disk_dir / "lora"
    export_lora(modules, cfg, out)
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    space = os.statvfs(full_disk_dir)
    (full_disk_dir / "filler").write_bytes(bytes(space.f_bavail * space.f_frsize - 64 * 1024))
    with pytest.raises(WriteError, match=f"No space left on device while writing {out}") as failure:
        export_lora(modules, cfg, out)
    assert failure.value.errno == errno.ENOSPC
    assert sorted(p.name for p in full_disk_dir.iterdir()) == ["filler", "lora"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous


def test_export_honours_the_umask(trained, tmp_path) -> None:
    """A teammate on a shared cluster can read the adapter, as every other output (umask 022: 0755 / 0644)."""
    _, modules, cfg = trained
    previous = os.umask(0o022)
    try:
        export_lora(modules, cfg, tmp_path / "lora")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "lora").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "lora").iterdir()} == {0o644}


def test_adapter_card_records_what_the_adapter_was_trained_for(trained, tmp_path) -> None:
    _, modules, cfg = trained
    export_lora(modules, cfg, tmp_path / "lora", base_model="stabilityai/stable-diffusion-xl-base-1.0",
                trigger="aldar_kose_man", prediction_type="v_prediction", resolution=1024, training_steps=400,
                best_score=0.93)
    card = read_adapter_card(tmp_path / "lora")
    assert card == AdapterCard(
        rank=4, alpha=8.0, init="gaussian", unet_targets=["to_q", "to_k", "to_v", "to_out.0"],
        text_encoder_targets=["q_proj", "k_proj", "v_proj", "out_proj"],
        files={"diffusers": "pytorch_lora_weights.safetensors", "kohya": "lora_kohya.safetensors"},
        base_model="stabilityai/stable-diffusion-xl-base-1.0", trigger="aldar_kose_man",
        prediction_type="v_prediction", resolution=1024, training_steps=400, best_score=0.93, version=1,
    )
    (tmp_path / "lora" / ADAPTER_CARD).write_text('{"version": 99}')
    with pytest.raises(ValueError, match=ADAPTER_CARD):
        read_adapter_card(tmp_path / "lora")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_inits_that_rewrite_the_base_weights_export_their_equivalent_on_the_original_model(
        init, tiny_model_config, tiny_model_dir, tmp_path) -> None:
    """PiSSA/OLoRA change the frozen weights at injection; both exported files, loaded by diffusers into the
    original model, reproduce the trained one (a rank-2r adapter)."""
    parts, modules, cfg = perturbed_lora(tiny_model_config, LoraConfig(rank=4, alpha=8.0, init=init))
    paths = export_lora(modules, cfg, tmp_path / "lora")
    assert (read_adapter_card(tmp_path / "lora").rank, read_adapter_card(tmp_path / "lora").alpha) == (8, 16.0)
    for weight_name in (paths["diffusers"].name, paths["kohya"].name):
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
        pipe.load_lora_weights(tmp_path / "lora", weight_name=weight_name)
        assert_reproduces(parts, pipe)
