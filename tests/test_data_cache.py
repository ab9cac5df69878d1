"""Latent and text-embedding caches: same loss as from pixels, reused across runs, invalidated by every key part."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from aldar_lit.config import DataConfig, LoraConfig, ObjectiveConfig, OptimConfig
from aldar_lit.data.caches import fill_latent_cache, fill_text_cache
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.training.module import SDXLLoRAModule

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True}
CONSTANT = {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"}


def frozen_text_module(model_cfg) -> SDXLLoRAModule:
    module = SDXLLoRAModule(model_cfg, LoraConfig(rank=4, alpha=4.0, train_text_encoders=False),
                            OptimConfig(optimizer=ADAMW, scheduler=CONSTANT), ObjectiveConfig(), seed=0)
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def module(tiny_model_config) -> SDXLLoRAModule:
    return frozen_text_module(tiny_model_config)


@pytest.fixture
def images(tmp_path, demo_data_dir):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("000", "001", "002"):
        (root / f"{name}.png").write_bytes((demo_data_dir / f"{name}.png").read_bytes())
        (root / f"{name}.txt").write_text((demo_data_dir / f"{name}.txt").read_text())
    Image.open(demo_data_dir / "003.png").resize((96, 64)).save(root / "wide.png")  # a second bucket
    (root / "wide.txt").write_text("aldar_kose_man, a wide shot")
    return root


def datamodule(root, cache_dir, resolution=64, **overrides) -> CaptionedImageDataModule:
    cfg = DataConfig(root=str(root), resolution=resolution, bucket_multiple=8, batch_size=2, num_workers=0,
                     cache_latents=True, cache_text_embeddings=True, cache_dir=str(cache_dir), **overrides)
    data = CaptionedImageDataModule(cfg)
    data.setup()
    return data


def first_batch(data) -> dict:
    return next(iter(DataLoader(data.train_dataset, batch_size=3, sampler=[0, 1, 2])))


def test_cached_batches_give_the_same_loss_as_pixels(module, images, tmp_path) -> None:
    data = datamodule(images, tmp_path / "cache")
    from_pixels = first_batch(data)
    assert fill_latent_cache(data.train_dataset, module.vae, tmp_path / "cache") == 4
    assert fill_text_cache(data.train_dataset, module.tokenizers, (module.text_encoder, module.text_encoder_2),
                           tmp_path / "cache") == 4
    from_cache = first_batch(data)
    assert "pixel_values" not in from_cache and from_cache["latent_dist"].shape == (3, 8, 32, 32)
    assert from_cache["prompt_embeds"].shape == (3, 77, 64) and from_cache["pooled_prompt_embeds"].shape == (3, 32)
    for key in ("original_size", "crop_top_left", "target_size"):
        assert torch.equal(from_cache[key], from_pixels[key])
    with torch.no_grad():
        losses = [module.compute_loss(b, torch.Generator().manual_seed(3)).item() for b in (from_pixels, from_cache)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_cache_is_reused_and_invalidated_by_each_key_part(module, images, tmp_path) -> None:
    cache = tmp_path / "cache"

    def encoded(root=images, vae=module.vae, **overrides) -> int:
        return fill_latent_cache(datamodule(root, cache, **overrides).train_dataset, vae, cache)

    assert encoded() == 4
    assert encoded() == 0  # a second run (or sweep member) reuses every entry
    Image.open(images / "001.png").rotate(90).save(images / "001.png")  # image content
    assert encoded() == 1
    assert encoded(resolution=32) == 4  # buckets and crops
    assert encoded(min_image_side=64, bucketing=False) == 1  # the wide image's bucket changes, the rest do not
    other_vae = copy.deepcopy(module.vae)
    with torch.no_grad():
        next(other_vae.parameters()).add_(1e-3)  # VAE weights
    assert encoded(vae=other_vae) == 4

    text = lambda m: fill_text_cache(datamodule(images, cache).train_dataset, m.tokenizers,  # noqa: E731
                                     (m.text_encoder, m.text_encoder_2), cache)
    assert text(module) == 4 and text(module) == 0
    (images / "002.txt").write_text("aldar_kose_man, a changed caption")
    assert text(module) == 1


def test_training_through_lightning_fills_and_trains_from_the_caches(tiny_model_config, images, tmp_path) -> None:
    module = SDXLLoRAModule(tiny_model_config, LoraConfig(rank=4, alpha=4.0, train_text_encoders=False),
                            OptimConfig(optimizer=ADAMW, scheduler=CONSTANT), ObjectiveConfig(), seed=0)
    data = datamodule(images, tmp_path / "cache")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert data.train_dataset.latent_cache is not None and data.train_dataset.text_cache is not None
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 8  # 4 latents + 4 captions


def test_building_the_train_loader_encodes_nothing(images, tmp_path) -> None:
    """The caches are filled by the module's `on_fit_start` (the test above), not as a side effect of the loader."""
    data = datamodule(images, tmp_path / "cache")
    data.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    data.train_dataloader()
    assert data.train_dataset.latent_cache is None and data.train_dataset.text_cache is None
    assert not (tmp_path / "cache").exists()


def test_trained_text_encoders_bypass_the_text_cache(tiny_model_config, images, tmp_path) -> None:
    module = SDXLLoRAModule(tiny_model_config, LoraConfig(rank=4, alpha=4.0, train_text_encoders=True),
                            OptimConfig(optimizer=ADAMW, scheduler=CONSTANT), ObjectiveConfig(), seed=0)
    module.configure_model()
    data = datamodule(images, tmp_path / "cache")
    data.fill_caches(module)
    assert data.train_dataset.latent_cache is not None and data.train_dataset.text_cache is None
    assert not (tmp_path / "cache" / "text").exists()
