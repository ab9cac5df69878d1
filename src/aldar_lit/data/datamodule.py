"""LightningDataModule over a folder of captioned images (or the generated demo character)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from aldar_lit.config import DataConfig
from aldar_lit.data.buckets import BucketBatchSampler, BucketSampler, sdxl_buckets
from aldar_lit.data.caches import fill_latent_cache, fill_text_cache
from aldar_lit.data.dataset import CaptionedImageDataset, ScanReport, scan_folder


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `BucketBatchSampler` that can resume part-way through an epoch.

    `state_dict` records the epoch and how many of its batches this loader has handed out (its workers
    may have loaded more); once given that state, iterating over that epoch starts at the next batch.
    These are the methods of Lightning's stateful-dataloader protocol.
    """

    batch_sampler: BucketBatchSampler

    def __init__(self, dataset: CaptionedImageDataset, batch_sampler: BucketBatchSampler, **kwargs: Any):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.epoch = self.batches_handed_out = 0
        self._resume_at: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # runs at the first batch, after Lightning's set_epoch
        resume, self._resume_at = self._resume_at, None
        self.epoch = self.batch_sampler.sampler.epoch
        skipped = resume["batches"] if resume and resume["epoch"] == self.epoch else 0
        self.batch_sampler.first_batch = self.batches_handed_out = skipped
        for batch in super().__iter__():
            self.batches_handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches_handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)


class CaptionedImageDataModule(L.LightningDataModule):
    """Scans and validates the folder in `setup`; `fill_caches` fills the latent and text caches with a
    module's frozen VAE and text encoders (`SDXLLoRAModule.on_fit_start` calls it, the model on its device
    by then); batches are drawn from one aspect bucket each, in an order fixed by (seed, epoch).

    Its checkpointed state is the train loader's place in the epoch, so a run resumed from a mid-epoch
    checkpoint continues at the next batch. (Lightning restores stateful loaders itself only when
    they are built after the checkpoint is loaded; `trainer.estimated_stepping_batches`, which the
    LR schedule needs, builds it before: Lightning issue #20550.)
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.train_dataset: CaptionedImageDataset | None = None
        self.scan_report: ScanReport | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._loader_state: dict[str, int] | None = None

    @property
    def root(self) -> Path:
        return Path(self.cfg.root).expanduser()

    def prepare_data(self) -> None:
        if self.cfg.demo is not None:
            from aldar_lit.offline.demo_character import generate_demo_dataset

            demo = self.cfg.demo
            generate_demo_dataset(self.root, demo.num_images, demo.size, demo.seed, self.cfg.trigger)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        cfg = self.cfg
        self.scan_report = scan_folder(self.root, cfg.trigger, cfg.on_bad_file, cfg.min_image_side,
                                       cfg.max_image_pixels)
        self.scan_report.log_summary()
        buckets = sdxl_buckets(cfg.resolution, cfg.bucket_multiple) if cfg.bucketing else None
        self.train_dataset = CaptionedImageDataset(
            self.scan_report.examples, cfg.resolution, cfg.crop, cfg.random_flip, buckets, cfg.on_bad_file,
            cfg.max_image_pixels, self.seed,
        )

    def fill_caches(self, module: Any, rank: int = 0, world_size: int = 1) -> None:
        """Encode what the caches lack with `module`'s frozen parts (an `SDXLLoRAModule` after `configure_model`)."""
        cfg, dataset = self.cfg, self.train_dataset
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
        if cfg.cache_latents:
            fill_latent_cache(dataset, module.vae, cache_dir, cfg.batch_size, rank, world_size)
        if cfg.cache_text_embeddings and not module.lora_cfg.train_text_encoders:
            fill_text_cache(dataset, module.tokenizers, (module.text_encoder, module.text_encoder_2), cache_dir,
                            cfg.batch_size, rank, world_size)

    def train_dataloader(self) -> DataLoader:
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        # The order is a function of (seed, epoch) only, so a resumed run sees the same batches.
        sampler = BucketSampler(self.train_dataset.item_buckets, self.cfg.batch_size, world_size, rank, self.seed)
        self._train_loader = ResumableDataLoader(
            self.train_dataset,
            BucketBatchSampler(sampler),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if self._loader_state is not None:
            self._train_loader.load_state_dict(self._loader_state)
        return self._train_loader

    def state_dict(self) -> dict[str, int]:
        return self._train_loader.state_dict() if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict:  # a checkpoint saved before the loader existed
            return
        self._loader_state = state_dict
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state_dict)
